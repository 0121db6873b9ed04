"""Serving one replica: the operator/enrolment listener and the mutual-TLS device listener.

Both listeners serve the same application (one event loop, two uvicorn servers); device routes
accept only connections that presented a client certificate, which only the device listener asks
for. ``run`` blocks until SIGINT/SIGTERM; ``start_in_thread`` is for tests and simulations.

With ``workers > 1`` the process binds both listening sockets, migrates the database and writes the
TLS files once, then starts that many worker processes that inherit the sockets and each serve a
full replica (the kernel hands each new connection to whichever worker accepts it first, so busy
workers take fewer). Workers keep nothing in memory that matters (everything durable is in the
database and the artifact store), so this is the same as several replicas behind a balancer.
Only the first worker runs the periodic jobs. A worker that dies is started again. The workers'
request metrics go to files in a directory the supervisor creates and removes (prometheus-client's
multiprocess mode, :mod:`edgefleet.server.metrics`), so any worker's ``/metrics`` shows them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import queue
import shutil
import signal
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from edgefleet.core import logs
from edgefleet.core.errors import FailedPrecondition, InvalidArgument, Unavailable
from edgefleet.server.api.app import create_app
from edgefleet.server.api.fastpath import DeviceFastPath
from edgefleet.server.api.metrics import DEVICE_LISTENER, OPERATOR_LISTENER, HTTPMetrics
from edgefleet.server.api.state import AppState
from edgefleet.server.artifacts import open_artifact_store
from edgefleet.server.ca import FleetCA
from edgefleet.server.config import ServerConfig
from edgefleet.server.db.engine import Clock, Database, utc_now
from edgefleet.server.metrics import MULTIPROC_ENV, ServerMetrics
from edgefleet.server.tls import TLSFiles, client_cert_protocol, prepare_tls

log = logging.getLogger(__name__)

EVENT_LOOPS = ("auto", "uvloop", "asyncio")
#: a worker that keeps dying is restarted at most this often (seconds)
_RESTART_BACKOFF = 2.0


@dataclass(frozen=True)
class Endpoints:
    """Where a started replica listens."""

    api_url: str
    device_url: str
    ca_cert: str
    api_port: int = 0  # the ports really bound (what ``port=0`` / ``device_port=0`` picked)
    device_port: int = 0


def open_state(
    config: ServerConfig, *, clock: Clock = utc_now, migrate: bool = True, metrics_dir: Path | None = None
) -> AppState:
    """Database (migrated unless ``migrate`` is False), fleet CA and artifact store of a replica;
    its metrics in the multiprocess directory ``metrics_dir`` when given."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(config.resolved_database_url, clock=clock)
    if migrate:
        db.migrate()
    ca = FleetCA.load_or_create(db)
    artifacts = open_artifact_store(config.resolved_artifacts_uri, s3_endpoint_url=config.s3_endpoint_url)
    metrics = None
    if metrics_dir is not None:
        window = timedelta(seconds=config.timing.connected_window)
        metrics = ServerMetrics(db, window, multiprocess_dir=metrics_dir)
    return AppState(config=config, db=db, artifacts=artifacts, ca=ca, metrics=metrics)  # type: ignore[arg-type]


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """An event loop of ``kind``: uvloop (much cheaper TLS and I/O) when asked or, for ``auto``, installed."""
    if kind not in EVENT_LOOPS:
        raise InvalidArgument(f"event loop {kind!r} is not known (known: {', '.join(EVENT_LOOPS)})")
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError as exc:
            if kind == "uvloop":
                raise FailedPrecondition("event loop 'uvloop' asked for but uvloop is not installed") from exc
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _freeze_startup_objects() -> None:
    """Tune the cyclic garbage collector for a server.

    Everything allocated during start-up (modules, the app, ORM mappers) is moved out of its reach,
    so no collection walks it again. And the youngest generation is collected after 50,000 net
    allocations instead of 700: with hundreds of requests in flight, each holding a few hundred
    short-lived containers, the default ran a collection every couple of requests (a seventh of a
    busy replica's CPU). Request objects are freed by reference counting; cycles are rare.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(50_000, middle, old)


def _run_loop(main: Coroutine[Any, Any, None], kind: str) -> None:
    with asyncio.Runner(loop_factory=lambda: new_event_loop(kind)) as runner:
        runner.run(main)


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


@dataclass(frozen=True)
class _Listeners:
    """What a supervisor prepares once and hands to every worker."""

    api_sock: socket.socket
    device_sock: socket.socket
    tls: TLSFiles
    device_url: str
    #: prometheus-client's multiprocess directory, shared by the workers
    metrics_dir: Path | None = None


class Replica:
    """One control-plane replica: state, application and its two listeners."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        clock: Clock = utc_now,
        run_jobs: bool = True,
        listeners: _Listeners | None = None,
    ) -> None:
        self.config = config
        metrics_dir = listeners.metrics_dir if listeners is not None else None
        self.state = open_state(config, clock=clock, migrate=listeners is None, metrics_dir=metrics_dir)
        if listeners is None:
            self.tls: TLSFiles = prepare_tls(config, self.state.ca, self.state.db.now())
            self._api_sock = _bind(config.host, config.port)
            self._device_sock = _bind(config.host, config.device_port)
            device_port = self._device_sock.getsockname()[1]
            self.state.device_url = config.device_url or _url(config.host, device_port)
        else:
            self.tls = listeners.tls
            self._api_sock, self._device_sock = listeners.api_sock, listeners.device_sock
            self.state.device_url = listeners.device_url
        api_port = self._api_sock.getsockname()[1]
        self.endpoints = Endpoints(
            _url(config.host, api_port),
            self.state.device_url,
            str(self.tls.ca),
            api_port,
            self._device_sock.getsockname()[1],
        )
        app = create_app(self.state, run_jobs=run_jobs)
        # counted in front of everything: the device listener's fast path answers outside the app
        device_app = HTTPMetrics(
            DeviceFastPath(app, self.state), self.state, listener=DEVICE_LISTENER, routes=app.router.routes
        )
        api_app = HTTPMetrics(
            app, self.state, listener=OPERATOR_LISTENER, routes=app.router.routes, serve=True
        )
        common: dict[str, Any] = {
            "ssl_certfile": str(self.tls.cert),
            "ssl_keyfile": str(self.tls.key),
            # uvicorn leaves logging alone: its loggers (uvicorn.error, and uvicorn.access with
            # --access-log) propagate to the root handler, which writes text or JSON like every
            # other record (edgefleet.core.logs.configure_logging)
            "log_config": None,
            "access_log": config.access_log,
            "timeout_graceful_shutdown": config.timing.shutdown_grace,
        }
        self._started = [threading.Event(), threading.Event()]
        self._servers = [
            _Server(
                uvicorn.Config(
                    api_app, lifespan="on", timeout_keep_alive=int(config.timing.api_keep_alive), **common
                ),
                self._started[0],
            ),
            _Server(
                uvicorn.Config(
                    device_app,
                    lifespan="off",
                    ssl_cert_reqs=ssl.CERT_REQUIRED,
                    ssl_ca_certs=str(self.tls.ca),
                    http=client_cert_protocol(AutoHTTPProtocol),
                    timeout_keep_alive=int(config.timing.device_keep_alive),
                    **common,
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
            self.state.close()

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
    """Run a replica until SIGINT/SIGTERM; ``on_ready`` is called once both listeners accept.

    With ``config.workers > 1`` this process supervises that many worker processes instead.
    """
    if config.workers < 1:
        raise InvalidArgument(f"workers must be at least 1, got {config.workers}")
    if config.workers > 1:
        _supervise(config, on_ready)
        return
    replica = Replica(config)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, replica.request_stop)
        serving = asyncio.create_task(replica.serve())
        ready = await loop.run_in_executor(None, replica.wait_started, 60.0)
        if ready:
            _freeze_startup_objects()
            on_ready(replica.endpoints)
        await serving

    _run_loop(main(), config.event_loop)


# ---------------------------------------------------------------------------------------------
# several worker processes


def _supervise(config: ServerConfig, on_ready: Callable[[Endpoints], None]) -> None:
    """Prepare database, TLS files and sockets once; run and watch ``config.workers`` workers."""
    state = open_state(config)  # migrates and creates the CA once, before any worker starts
    try:
        tls = prepare_tls(config, state.ca, state.db.now())
    finally:
        state.close()
    api_sock = _bind(config.host, config.port)
    device_sock = _bind(config.host, config.device_port)
    device_url = config.device_url or _url(config.host, device_sock.getsockname()[1])
    # fresh for each run (old counts must not add to this run's); the workers inherit the variable,
    # which prometheus-client reads when it is imported
    metrics_dir = Path(tempfile.mkdtemp(prefix="edgefleet-metrics-"))
    previous_env = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = str(metrics_dir)
    listeners = _Listeners(api_sock, device_sock, tls, device_url, metrics_dir)
    api_port, device_port = api_sock.getsockname()[1], device_sock.getsockname()[1]
    endpoints = Endpoints(_url(config.host, api_port), device_url, str(tls.ca), api_port, device_port)
    context = multiprocessing.get_context("spawn")  # never fork a process that may hold threads
    ready = context.Queue()
    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}

    def start(index: int) -> Any:
        process = context.Process(
            target=_worker_main,
            args=(
                config,
                listeners,
                index,
                os.getpid(),
                ready,
                logging.getLogger().getEffectiveLevel(),
                logs.active_format(),
            ),
            name=f"edgefleet-worker-{index}",
            daemon=False,
        )
        process.start()
        return process

    workers = [start(i) for i in range(config.workers)]
    try:
        up: set[int] = set()
        deadline = time.monotonic() + 120.0
        while len(up) < config.workers and not stopping.is_set():
            if time.monotonic() > deadline or any(not w.is_alive() for w in workers):
                raise FailedPrecondition("the server workers did not start (see the log above)")
            with contextlib.suppress(queue.Empty):
                up.add(ready.get(timeout=0.2))
        if not stopping.is_set():
            on_ready(endpoints)
        last_restart = 0.0
        while not stopping.wait(0.5):
            for index, worker in enumerate(workers):
                if worker.is_alive():
                    continue
                wait = _RESTART_BACKOFF - (time.monotonic() - last_restart)
                if wait > 0 and stopping.wait(wait):
                    break
                log.error("server worker %d exited with code %s; starting it again", index, worker.exitcode)
                last_restart = time.monotonic()
                workers[index] = start(index)
    finally:
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                os.kill(worker.pid, signal.SIGTERM)
        grace = time.monotonic() + config.timing.shutdown_grace + 10.0
        for worker in workers:
            worker.join(max(0.0, grace - time.monotonic()))
            if worker.is_alive():
                worker.kill()
                worker.join(5.0)
        api_sock.close()
        device_sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        if previous_env is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous_env


def _worker_main(
    config: ServerConfig,
    listeners: _Listeners,
    index: int,
    parent: int,
    ready: Any,
    log_level: int,
    log_format: str = "text",
) -> None:
    """A worker process: one full replica on the inherited sockets; stops with its supervisor."""
    # a spawned process starts with no logging set up: log like the supervisor, marked by worker
    logging.basicConfig(level=log_level, format=f"worker-{index} %(levelname)s %(name)s: %(message)s")
    if log_format == "json":
        logs.configure_logging(log_format, "server", fields={"worker": str(index)})
    replica = Replica(replace(config, workers=1), run_jobs=index == 0, listeners=listeners)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, replica.request_stop)

        async def watch_parent() -> None:
            # a supervisor killed with SIGKILL cannot stop its workers: they notice and stop themselves
            while os.getppid() == parent:
                await asyncio.sleep(1.0)
            replica.request_stop()

        watcher = asyncio.create_task(watch_parent())
        serving = asyncio.create_task(replica.serve())
        if await loop.run_in_executor(None, replica.wait_started, 60.0):
            _freeze_startup_objects()
            ready.put(index)
        await serving
        watcher.cancel()

    _run_loop(main(), config.event_loop)


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
        target=_run_loop, args=(replica.serve(), config.event_loop), name="edgefleet-server", daemon=True
    )
    thread.start()
    if not replica.wait_started(60.0):
        replica.request_stop()
        thread.join(10)
        raise FailedPrecondition("the control plane did not start within 60 s")
    return ThreadedServer(replica, thread)
