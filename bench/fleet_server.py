"""A real control plane for the fleet benchmarks: a server process on loopback, its database, a token.

``start_server`` runs ``python bench/fleet_server.py serve ...`` (the replica runner of
``edgefleet server``, with ``--workers``) on free loopback ports, waits for its ready line, and
creates an operator token directly in the database (as ``edgefleet admin create-token`` does).
``postgres_database`` creates a throw-away PostgreSQL database and drops it afterwards; it yields
None when PostgreSQL is not reachable on 127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
READY_PREFIX = "FLEET-BENCH-READY "


@dataclass
class BenchServer:
    """A running server process and what clients need to reach it."""

    process: subprocess.Popen[str]
    api_url: str
    device_url: str
    ca_cert: Path
    token: str
    data_dir: Path
    database_url: str
    workers: int

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def cpu_seconds(self) -> float:
        """User+system CPU time of the server process and its workers so far (from /proc)."""
        return sum(_proc_cpu(pid) for pid in [self.process.pid, *_children(self.process.pid)])


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (from /proc/stat), to measure a window's total load."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """CPU seconds used so far by every PostgreSQL process of this machine (0 if none is visible)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(entry, "comm").read_text().strip() in ("postgres", "postmaster"):
                    total += _proc_cpu(int(entry.name))
            except OSError:
                continue
    return total


@contextlib.contextmanager
def postgres_database() -> Iterator[str | None]:
    """A fresh PostgreSQL database URL (dropped afterwards), or None when PostgreSQL is unreachable."""
    try:
        from sqlalchemy import create_engine, text
        from sqlalchemy.exc import OperationalError
    except ImportError:
        yield None
        return
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"edgefleet_bench_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        print(f"PostgreSQL is not reachable on 127.0.0.1:5432: {exc.orig}", file=sys.stderr)
        admin.dispose()
        yield None
        return
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def start_server(
    data_dir: Path,
    *,
    database_url: str | None = None,
    workers: int = 1,
    trust_dir: Path | None = None,
    extra: list[str] | None = None,
    timeout: float = 120.0,
) -> BenchServer:
    """Start a server process on free loopback ports and return once it serves."""
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "serve",
        "--data-dir",
        str(data_dir),
        "--port",
        "0",  # the server binds free ports itself; its ready line says which
        "--device-port",
        "0",
        "--workers",
        str(workers),
    ]
    if database_url:
        command += ["--database", database_url]
    if trust_dir:
        command += ["--trust", str(trust_dir)]
    command += extra or []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    line = ""
    while not line.startswith(READY_PREFIX):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or process.poll() is not None:
            process.kill()
            raise RuntimeError(f"the server did not start (exit code {process.poll()})")
        ready, _, _ = select.select([process.stdout], [], [], remaining)
        if ready:
            line = process.stdout.readline()
            if not line:
                continue
    info = json.loads(line[len(READY_PREFIX) :])
    url = database_url or f"sqlite:///{data_dir / 'edgefleet.db'}"
    return BenchServer(
        process=process,
        api_url=info["api_url"],
        device_url=info["device_url"],
        ca_cert=Path(info["ca_cert"]),
        token=create_token(url),
        data_dir=data_dir,
        database_url=url,
        workers=workers,
    )


def create_token(database_url: str, name: str = "bench") -> str:
    """An operator token written straight to the database (what ``edgefleet admin create-token`` does)."""
    from edgefleet.server import tokens
    from edgefleet.server.db.engine import Database

    db = Database(database_url, pool_size=1)
    try:
        with db.session() as session:
            return tokens.create_token(session, f"{name}-{uuid.uuid4().hex[:8]}", db.now())
    finally:
        db.close()


def _serve(args: argparse.Namespace) -> int:
    import logging

    from edgefleet.server.config import ServerConfig, Timing
    from edgefleet.server.runner import Endpoints, run

    logging.basicConfig(level=logging.WARNING, format="server %(levelname)s %(name)s: %(message)s")
    config = ServerConfig(
        data_dir=args.data_dir,
        database_url=args.database,
        trust_dir=args.trust,
        port=args.port,
        device_port=args.device_port,
        timing=Timing(shutdown_grace=2.0),
        workers=args.workers,
    )

    def ready(endpoints: Endpoints) -> None:
        info = {
            "api_url": endpoints.api_url,
            "device_url": endpoints.device_url,
            "ca_cert": endpoints.ca_cert,
        }
        print(READY_PREFIX + json.dumps(info), flush=True)

    run(config, ready)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run one replica (what start_server launches)")
    serve.add_argument("--data-dir", type=Path, required=True)
    serve.add_argument("--database")
    serve.add_argument("--trust", type=Path)
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--device-port", type=int, required=True)
    serve.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
