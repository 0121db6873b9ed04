"""Serving one replica: the operator/enrolment listener and the mutual-TLS device listener.

Both listeners serve the same application (one event loop, two uvicorn servers); device routes
accept only connections that presented a client certificate, which only the device listener asks
for. ``run`` blocks until SIGINT/SIGTERM; ``start_in_thread`` is for tests and simulations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from edgefleet.core.errors import FailedPrecondition, Unavailable
from edgefleet.server.api.app import create_app
from edgefleet.server.api.state import AppState
from edgefleet.server.artifacts import open_artifact_store
from edgefleet.server.ca import FleetCA
from edgefleet.server.config import ServerConfig
from edgefleet.server.db.engine import Clock, Database, utc_now
from edgefleet.server.tls import TLSFiles, client_cert_protocol, prepare_tls

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoints:
    """Where a started replica listens."""

    api_url: str
    device_url: str
    ca_cert: str


def open_state(config: ServerConfig, *, clock: Clock = utc_now) -> AppState:
    """Database (migrated), fleet CA and artifact store of a replica."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(config.resolved_database_url, clock=clock)
    db.migrate()
    ca = FleetCA.load_or_create(db)
    artifacts = open_artifact_store(config.resolved_artifacts_uri, s3_endpoint_url=config.s3_endpoint_url)
    return AppState(config=config, db=db, artifacts=artifacts, ca=ca)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto says
    # TCP, and without it every TLS response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise Unavailable(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to us and reports when it is up."""

    def __init__(self, config: uvicorn.Config, started: threading.Event) -> None:
        super().__init__(config)
        self._started_event = started
        #: whether startup succeeded (meaningful once ``started`` is set)
        self.up = False

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
            self.up = not self.should_exit
        finally:
            self._started_event.set()  # also on failure, so nobody waits for a server that is not coming


class Replica:
    """One control-plane replica: state, application and its two listeners."""

    def __init__(self, config: ServerConfig, *, clock: Clock = utc_now, run_jobs: bool = True) -> None:
        self.config = config
        self.state = open_state(config, clock=clock)
        self.tls: TLSFiles = prepare_tls(config, self.state.ca, self.state.db.now())
        self._api_sock = _bind(config.host, config.port)
        self._device_sock = _bind(config.host, config.device_port)
        api_port = self._api_sock.getsockname()[1]
        device_port = self._device_sock.getsockname()[1]
        self.state.device_url = config.device_url or _url(config.host, device_port)
        self.endpoints = Endpoints(_url(config.host, api_port), self.state.device_url, str(self.tls.ca))
        app = create_app(self.state, run_jobs=run_jobs)
        common = {
            "ssl_certfile": str(self.tls.cert),
            "ssl_keyfile": str(self.tls.key),
            "log_config": None,
            "access_log": False,
            "timeout_graceful_shutdown": config.timing.shutdown_grace,
        }
        self._started = [threading.Event(), threading.Event()]
        self._servers = [
            _Server(uvicorn.Config(app, lifespan="on", **common), self._started[0]),  # type: ignore[arg-type]
            _Server(
                uvicorn.Config(
                    app,
                    lifespan="off",
                    ssl_cert_reqs=ssl.CERT_REQUIRED,
                    ssl_ca_certs=str(self.tls.ca),
                    http=client_cert_protocol(AutoHTTPProtocol),
                    **common,  # type: ignore[arg-type]
                ),
                self._started[1],
            ),
        ]

    async def serve(self) -> None:
        """Serve both listeners until :meth:`request_stop`."""
        try:
            await asyncio.gather(
                self._servers[0].serve(sockets=[self._api_sock]),
                self._servers[1].serve(sockets=[self._device_sock]),
            )
        finally:
            self._api_sock.close()
            self._device_sock.close()
            self.state.db.close()

    def request_stop(self) -> None:
        """Ask both listeners to finish (thread-safe)."""
        for server in self._servers:
            server.should_exit = True

    def wait_started(self, timeout: float) -> bool:
        """Whether both listeners came up within ``timeout`` seconds."""
        return all(event.wait(timeout) for event in self._started) and all(
            server.up for server in self._servers
        )


def run(config: ServerConfig, on_ready: Callable[[Endpoints], None]) -> None:
    """Run a replica until SIGINT/SIGTERM; ``on_ready`` is called once both listeners accept."""
    replica = Replica(config)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, replica.request_stop)
        serving = asyncio.create_task(replica.serve())
        ready = await loop.run_in_executor(None, replica.wait_started, 60.0)
        if ready:
            on_ready(replica.endpoints)
        await serving

    asyncio.run(main())


@dataclass
class ThreadedServer:
    """A replica running on a background thread (tests, simulations)."""

    replica: Replica
    thread: threading.Thread

    @property
    def endpoints(self) -> Endpoints:
        return self.replica.endpoints

    @property
    def state(self) -> AppState:
        return self.replica.state

    def stop(self, timeout: float = 30.0) -> None:
        """Stop serving and wait for the thread."""
        self.replica.request_stop()
        self.thread.join(timeout)


def start_in_thread(
    config: ServerConfig, *, clock: Clock = utc_now, run_jobs: bool = False
) -> ThreadedServer:
    """Start a replica on a daemon thread and return once both listeners accept connections."""
    replica = Replica(config, clock=clock, run_jobs=run_jobs)
    thread = threading.Thread(
        target=asyncio.run, args=(replica.serve(),), name="edgefleet-server", daemon=True
    )
    thread.start()
    if not replica.wait_started(60.0):
        replica.request_stop()
        thread.join(10)
        raise FailedPrecondition("the control plane did not start within 60 s")
    return ThreadedServer(replica, thread)
