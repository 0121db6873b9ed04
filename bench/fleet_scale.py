"""Fleet control plane at scale: sustained heartbeats/s and 3-stage rollouts, on SQLite and PostgreSQL.

    .venv/bin/python bench/fleet_scale.py                      # everything (about 15 minutes)
    .venv/bin/python bench/fleet_scale.py --backends postgresql --rollout-devices 1000 --hb-seconds 10
    .venv/bin/python bench/fleet_scale.py --backends postgresql --rollout-devices "" --summary-every 30

For each backend a real server process (``edgefleet server``'s replica runner, ``--workers``) is
started on loopback with a fresh database (PostgreSQL: a throw-away database on 127.0.0.1:5432,
dropped afterwards; skipped if unreachable). Devices are registered through the operator API and
enrolled for real (own key, CSR, one-time token -> client certificate), then:

* heartbeats: every device keeps a mutual-TLS connection; client processes keep ``--hb-concurrency``
  heartbeats in flight each for ``--hb-seconds``; the figure is the heartbeats the server
  acknowledged per second within the window (after a warm-up in which every device connected).
* rollouts: the fleet runs like device daemons (heartbeat and GetDeployments every 30 s at random
  phases, like the daemon's defaults); after one poll interval of steady state a plan with three
  stages (10 % / 40 % / rest) is created and each stage is started as soon as the previous one is
  DEPLOYED. Each device fetches the deployment, downloads the package (SHA-256 checked) and reports
  its result. The figure is the wall time from starting the first stage to the last stage DEPLOYED.

Targets (issue 4): >= 2,000 heartbeats/s on PostgreSQL; a 10,000-device rollout <= 120 s.
Client and server share this machine's cores; the server's CPU seconds are printed beside each
figure so the split is visible.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet_load import (
    DeviceFiles,
    EnrolJob,
    HeartbeatJob,
    RolloutJob,
    enrol_worker,
    heartbeat_worker,
    rollout_worker,
)
from fleet_server import (
    BenchServer,
    machine_busy_seconds,
    postgres_cpu_seconds,
    postgres_database,
    start_server,
)

HEARTBEAT_TARGET = 2000.0
ROLLOUT_TARGET_SECONDS = 120.0
FLEET = "bench"


@dataclass
class Figure:
    """One measured figure for the summary."""

    backend: str
    name: str
    value: float
    unit: str
    detail: str = ""
    target: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _pct(values: list[float], pct: float) -> float:
    """The ``pct`` percentile of ``values`` (seconds) in milliseconds."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))] * 1000 if ordered else float("nan")


def _split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts) if items[i::parts]]


def _client(server: BenchServer) -> Any:
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import ClientConfig

    return FleetClient(ClientConfig(server.api_url, server.token, server.ca_cert, timeout=300.0))


def enrol_fleet(
    server: BenchServer, count: int, work: Path, processes: int
) -> tuple[list[DeviceFiles], float]:
    """Register ``count`` devices (operator API, batches of 1000) and enrol them; (devices, seconds)."""
    started = time.monotonic()
    with _client(server) as client:
        client.create_fleet(FLEET, f"file://{work / 'capture'}")
        pairs: list[tuple[str, str]] = []
        names = [f"dev-{i:05d}" for i in range(count)]
        for start in range(0, count, 1000):
            answer = client.register_devices(FLEET, [{"DeviceName": n} for n in names[start : start + 1000]])
            pairs += [(d["DeviceName"], d["EnrolmentToken"]) for d in answer]
    registered = time.monotonic() - started
    out = work / "devices"
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        EnrolJob(server.api_url, str(server.ca_cert), str(out), part) for part in _split(pairs, processes)
    ]
    ctx = mp.get_context("spawn")
    with ctx.Pool(len(jobs)) as pool:
        devices = [d for part in pool.map(enrol_worker, jobs) for d in part]
    elapsed = time.monotonic() - started
    print(
        f"  registered {count} devices in {registered:.1f} s, enrolled them in {elapsed - registered:.1f} s "
        f"({count / max(elapsed - registered, 1e-9):.0f}/s)",
        flush=True,
    )
    return sorted(devices, key=lambda d: d.name), elapsed


def heartbeat_phase(
    backend: str, server: BenchServer, devices: list[DeviceFiles], args: argparse.Namespace
) -> Figure:
    """Sustained heartbeats/s with concurrent clients for a fixed window."""
    ctx = mp.get_context("spawn")
    warmed, results = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    jobs = [
        HeartbeatJob(
            server.device_url,
            str(server.ca_cert),
            part,
            args.hb_concurrency,
            args.hb_seconds,
            args.summary_every,
        )
        for part in _split(devices, args.clients)
    ]
    procs = [ctx.Process(target=heartbeat_worker, args=(job, warmed, go, start_at, results)) for job in jobs]
    for proc in procs:
        proc.start()
    for _ in procs:
        warmed.get(timeout=600)
    start_at.value = time.time() + 0.5
    go.set()
    time.sleep(max(0.0, start_at.value - time.time()))
    spy = _profile(server, args, f"heartbeats-{backend}", args.hb_seconds)
    cpu0, pg0, busy0 = server.cpu_seconds(), postgres_cpu_seconds(), machine_busy_seconds()
    time.sleep(args.hb_seconds)
    cpu1, pg1, busy1 = server.cpu_seconds(), postgres_cpu_seconds(), machine_busy_seconds()
    if spy is not None:
        spy.wait(60)
    answers = [results.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(60)
    ok = sum(a["ok"] for a in answers)
    windows = sum(a["windows"] for a in answers)
    latencies = sorted(x for a in answers for x in a["latencies"])
    errors: dict[str, int] = {}
    for a in answers:
        for k, v in a["errors"].items():
            errors[k] = errors.get(k, 0) + v
    rate = ok / args.hb_seconds
    p50 = statistics.median(latencies) * 1000 if latencies else float("nan")
    p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan")
    server_cpu = cpu1 - cpu0
    client_cpu = sum(a["cpu_seconds"] for a in answers)
    window = args.hb_seconds
    detail = (
        f"{len(devices)} devices, {args.clients} client processes x {args.hb_concurrency} in flight, "
        f"{window:.0f} s window; latency p50 {p50:.1f} ms p99 {p99:.1f} ms; "
        f"CPU cores busy: server {server_cpu / window:.2f}, PostgreSQL {(pg1 - pg0) / window:.2f}, "
        f"load generator {client_cpu / window:.2f}, whole machine {(busy1 - busy0) / window:.2f}; "
        f"server {server_cpu / max(ok, 1) * 1e6:.0f} us/heartbeat; "
        f"errors {sum(errors.values())}; TLS handshakes {sum(a['handshakes'] for a in answers)}"
        + (
            f"; model summary windows stored {windows / window:.0f}/s (every {args.summary_every}. "
            "heartbeat carries one)"
            if args.summary_every
            else ""
        )
    )
    print(f"  heartbeats: {rate:.0f}/s  ({detail})", flush=True)
    for message, count in sorted(errors.items(), key=lambda kv: -kv[1])[:5]:
        print(f"    error x{count}: {message}", flush=True)
    target = ""
    if backend == "postgresql":
        target = f"target >= {HEARTBEAT_TARGET:.0f}/s: ratio {rate / HEARTBEAT_TARGET:.2f} ({'met' if rate >= HEARTBEAT_TARGET else 'NOT met'})"
    return Figure(backend, "heartbeats/s", rate, "/s", detail, target)


def _profile(server: BenchServer, args: argparse.Namespace, name: str, seconds: float) -> Any:
    """With --profile DIR: sample the server (and its workers) with py-spy for ``seconds``."""
    if not args.profile:
        return None
    import shutil
    import subprocess

    spy = shutil.which("py-spy")
    if spy is None:
        print("    (--profile needs py-spy: pip install py-spy)", flush=True)
        return None
    out = Path(args.profile) / f"{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [spy, "record", "--subprocesses", "--format", "raw", "--nonblocking", "--gil", "--rate", "200"]
    command += [
        "--duration",
        str(max(1, int(seconds))),
        "--output",
        str(out),
        "--pid",
        str(server.process.pid),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _package(work: Path, trust_keys: Any) -> Path:
    from edgefleet.core.manifest import Target
    from edgefleet.core.tensors import DataType, TensorSpec
    from edgefleet.packager.build import build_package

    model = work / "detector.json"
    model.write_bytes(b'{"weights": [' + b", ".join(b"%d" % i for i in range(2000)) + b"]}")
    spec = (TensorSpec("x", DataType.FLOAT32, (1, 4)),)
    return build_package(
        model,
        name="detector",
        version="2",
        key_dir=trust_keys.directory,
        out_dir=work / "pkg",
        runtime="null",
        inputs=spec,
        outputs=spec,
        target=Target(os="linux", arch="any"),
    )


def rollout_phase(
    backend: str,
    server: BenchServer,
    devices: list[DeviceFiles],
    package: Path,
    args: argparse.Namespace,
) -> Figure:
    """A 3-stage rollout (10 % / 40 % / rest) to every enrolled device, stages started back to back."""
    with _client(server) as client:
        uploaded = client.upload_package(package)
        client.set_approval(uploaded["ModelName"], uploaded["ModelVersion"], "Approved")
    ctx = mp.get_context("spawn")
    ready, warmed, stop, results = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Queue()
    deadline = time.time() + args.poll_interval + args.rollout_timeout + 120
    jobs = [
        RolloutJob(
            server.device_url,
            str(server.ca_cert),
            part,
            args.heartbeat_interval,
            args.poll_interval,
            deadline,
            args.download,
            seed=i,
        )
        for i, part in enumerate(_split(devices, args.clients))
    ]
    procs = [ctx.Process(target=rollout_worker, args=(job, ready, warmed, stop, results)) for job in jobs]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=600)
    # A fleet in steady state: every device connected (its mutual-TLS handshake done), has sent a
    # heartbeat and polled once; then one more poll interval of routine traffic.
    warming = time.monotonic()
    for _ in procs:
        warmed.get(timeout=args.rollout_timeout)
    print(
        f"  {len(devices)} devices connected, heartbeating and polling after {time.monotonic() - warming:.0f} s; "
        f"steady state for {args.poll_interval:.0f} s more",
        flush=True,
    )
    time.sleep(args.poll_interval)
    plan_name = f"rollout-{len(devices)}"
    stages = [("canary", 10), ("wave", 40), ("rest", 100)]
    stage_times: list[float] = []
    status = "timeout"
    with _client(server) as client:
        client.create_plan(
            {
                "EdgeDeploymentPlanName": plan_name,
                "DeviceFleetName": FLEET,
                "ModelConfigs": [{"ModelHandle": "detector", "ModelName": "detector", "ModelVersion": "2"}],
                "Stages": [
                    {
                        "StageName": name,
                        "DeviceSelectionConfig": {"DeviceSubsetType": "PERCENTAGE", "Percentage": pct},
                    }
                    for name, pct in stages
                ],
            }
        )
        spy = _profile(server, args, f"rollout-{len(devices)}-{backend}", args.rollout_timeout)
        cpu0, pg0, busy0 = server.cpu_seconds(), postgres_cpu_seconds(), machine_busy_seconds()
        started = time.monotonic()
        started_wall = time.time()
        stage_started = started
        index = 0
        client.start_stage(plan_name, stages[0][0])
        while time.monotonic() - started < args.rollout_timeout:
            time.sleep(0.5)
            plan = client.describe_plan(plan_name)
            stage_status = plan["Stages"][index]["DeploymentStatus"]["StageStatus"]
            if stage_status == "FAILED":
                status = f"stage {stages[index][0]} FAILED: {plan['Stages'][index]['DeploymentStatus']}"
                break
            if stage_status == "DEPLOYED":
                now = time.monotonic()
                stage_times.append(now - stage_started)
                print(
                    f"    stage {stages[index][0]} DEPLOYED after {now - stage_started:.1f} s "
                    f"({plan['Stages'][index]['DeploymentStatus']['EdgeDeploymentSuccessInStage']} devices)",
                    flush=True,
                )
                index += 1
                if index == len(stages):
                    status = "DEPLOYED"
                    break
                stage_started = now
                client.start_stage(plan_name, stages[index][0])
        elapsed = time.monotonic() - started
        cpu1, pg1, busy1 = server.cpu_seconds(), postgres_cpu_seconds(), machine_busy_seconds()
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled so far
            spy.wait(60)
        final = client.describe_plan(plan_name)
    stop.set()
    answers = [results.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(60)
    calls: dict[str, int] = {}
    errors: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    for a in answers:
        for src, dst in ((a["calls"], calls), (a["errors"], errors), (a["results"], outcomes)):
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + v
    latency: dict[str, list[float]] = {}  # calls made while the rollout ran
    for a in answers:
        for op, values in a["latencies"].items():
            latency.setdefault(op, []).extend(t for at, t in values if at >= started_wall)
    latency_text = ", ".join(
        f"{op} p50 {_pct(v, 50):.0f}/p99 {_pct(v, 99):.0f}/max {max(v) * 1000:.0f} ms"
        for op, v in sorted(latency.items())
        if v
    )
    deployed = final["EdgeDeploymentSuccess"]
    detail = (
        f"{status}: {deployed}/{len(devices)} devices deployed; stages "
        + " / ".join(f"{t:.1f} s" for t in stage_times)
        + f"; heartbeat and poll every {args.heartbeat_interval:.0f}/{args.poll_interval:.0f} s; "
        f"CPU cores busy: server {(cpu1 - cpu0) / elapsed:.2f}, PostgreSQL {(pg1 - pg0) / elapsed:.2f}, "
        f"whole machine {(busy1 - busy0) / elapsed:.2f}; "
        f"device calls {calls}; latency during the rollout: {latency_text}; results {outcomes}; errors {sum(errors.values())}"
    )
    print(f"  rollout to {len(devices)}: {elapsed:.1f} s  ({detail})", flush=True)
    for message, count in sorted(errors.items(), key=lambda kv: -kv[1])[:5]:
        print(f"    error x{count}: {message}", flush=True)
    slow = sorted(x for a in answers for x in a["slow"])
    if slow:
        buckets: dict[int, int] = {}
        for at, _, _ in slow:
            second = int((at - started_wall) // 5 * 5)
            buckets[second] = buckets.get(second, 0) + 1
        print(
            f"    {len(slow)} calls took over 1 s; started at (s after the first stage started: count) "
            + ", ".join(f"{k:+d}: {v}" for k, v in sorted(buckets.items())[:12]),
            flush=True,
        )
    target = ""
    if len(devices) >= 10000:
        met = status == "DEPLOYED" and elapsed <= ROLLOUT_TARGET_SECONDS
        target = (
            f"target <= {ROLLOUT_TARGET_SECONDS:.0f} s: ratio {elapsed / ROLLOUT_TARGET_SECONDS:.2f} "
            f"({'met' if met else 'NOT met'})"
        )
    value = elapsed if status == "DEPLOYED" else float("inf")
    return Figure(backend, f"rollout to {len(devices)} devices", value, "s", detail, target)


def run_backend(backend: str, database_url: str | None, args: argparse.Namespace, work: Path) -> list[Figure]:
    """Every measurement on one backend (a fresh server and database per measurement)."""
    from edgefleet.core import signing

    figures: list[Figure] = []
    keys = signing.init_keys(work / "keys")
    package = _package(work, keys)
    runs: list[tuple[str, int]] = []
    if args.hb_devices:
        runs.append(("heartbeats", args.hb_devices))
    runs += [("rollout", n) for n in args.rollout_devices]
    for index, (kind, count) in enumerate(runs):
        run_dir = work / f"{kind}-{count}"
        url = database_url
        if backend == "postgresql":
            url = _fresh_pg(database_url, index)
        print(f"[{backend}] {kind}: {count} devices, {args.workers} server worker(s)", flush=True)
        server = start_server(
            run_dir / "server", database_url=url, workers=args.workers, trust_dir=keys.trust_dir
        )
        try:
            devices, _ = enrol_fleet(server, count, run_dir, args.clients)
            if kind == "heartbeats":
                figures.append(heartbeat_phase(backend, server, devices, args))
            else:
                figures.append(rollout_phase(backend, server, devices, package, args))
        finally:
            server.stop()
    return figures


def _fresh_pg(url: str | None, index: int) -> str:
    """A clean schema for each run: the bench database is emptied by dropping and re-creating it."""
    assert url is not None
    from sqlalchemy import create_engine, text

    name = url.rsplit("/", 1)[1]
    admin = create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return url


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--clients", type=int, default=2, help="load-generator processes")
    parser.add_argument(
        "--hb-devices", type=int, default=1000, help="devices for the heartbeat figure (0: skip)"
    )
    parser.add_argument("--hb-seconds", type=float, default=20.0, help="measured window")
    parser.add_argument(
        "--hb-concurrency", type=int, default=32, help="heartbeats in flight per client process"
    )
    parser.add_argument(
        "--summary-every",
        type=int,
        default=0,
        metavar="N",
        help="every N-th heartbeat of a device carries a model summary window of the digits model "
        "(KLL sketches of 64 inputs and 10 outputs; 0: none). A daemon with 10 s heartbeats and "
        "300 s windows sends one in 30",
    )
    parser.add_argument(
        "--rollout-devices", default="1000,10000", help="comma-separated fleet sizes ('' to skip rollouts)"
    )
    parser.add_argument(
        "--heartbeat-interval", type=float, default=30.0, help="rollout devices' heartbeat period"
    )
    parser.add_argument(
        "--poll-interval", type=float, default=30.0, help="rollout devices' GetDeployments period"
    )
    parser.add_argument(
        "--rollout-timeout", type=float, default=600.0, help="give up on a rollout after this"
    )
    parser.add_argument(
        "--download",
        choices=("device", "shared"),
        default="device",
        help="device: every device downloads the package; shared: one download per client process "
        "(every device still fetches its deployment and reports its result)",
    )
    parser.add_argument(
        "--profile", type=Path, help="write py-spy profiles of the server's measured windows here"
    )
    args = parser.parse_args()
    args.rollout_devices = [int(n) for n in args.rollout_devices.split(",") if n.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        for backend in backends:
            work = Path(tmp) / backend
            if backend == "sqlite":
                figures += run_backend("sqlite", None, args, work)
            elif backend == "postgresql":
                with postgres_database() as url:
                    if url is None:
                        print(
                            "[postgresql] skipped: PostgreSQL is not reachable on 127.0.0.1:5432", flush=True
                        )
                        continue
                    figures += run_backend("postgresql", url, args, work)
            else:
                parser.error(f"unknown backend {backend!r} (known: sqlite, postgresql)")
    print("\nsummary (2-core machine; load generator and server share the cores)")
    for f in figures:
        value = f"{f.value:8.1f} {f.unit}" if f.value != float("inf") else "  did not finish"
        print(f"  {f.backend:<10} {f.name:<28} {value}   {f.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
