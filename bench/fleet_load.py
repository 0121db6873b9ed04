"""Lean simulated devices for the fleet benchmarks (asyncio, one process per slice of the fleet).

Why not ``edgefleet simulate``: each of its devices is a full device daemon (journal, planner,
executor, thread pool, blocking ``http.client``), which costs several times the server's own CPU per
request. On a 2-core machine that shares its cores with the server, the load generator must be
as cheap as possible or it measures itself. These devices speak the same wire protocol
(docs/fleet-api.md §5) with the same semantics — real enrolment (own EC key, CSR, one-time
token), one keep-alive mutual-TLS connection per device with its own certificate, heartbeats,
GetDeployments, package download with SHA-256 check, ReportDeploymentResult — and nothing else.

Everything here talks to 127.0.0.1 only and is bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class HttpError(Exception):
    """A request failed (transport) or was refused (status >= 300)."""


# ---------------------------------------------------------------------------------------------
# a minimal keep-alive HTTP/1.1 client over TLS


class Connection:
    """One keep-alive HTTPS connection (one request at a time), reopened when the server closed it."""

    def __init__(self, url: str, context: ssl.SSLContext) -> None:
        parts = urlsplit(url)
        assert parts.hostname in ("127.0.0.1", "localhost", "::1"), "benchmarks talk to loopback only"
        self.host = parts.hostname
        self.port = parts.port or 443
        self.context = context
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.lock = asyncio.Lock()
        self.handshakes = 0

    async def _open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.context, server_hostname=self.host
        )
        self.handshakes += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()
        self._reader = self._writer = None

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body). A reused connection the server closed meanwhile is retried once."""
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", "User-Agent: edgefleet-bench"]
        if body or method == "POST":
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        payload = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        async with self.lock:
            for attempt in (0, 1):
                reused = self._writer is not None
                try:
                    if self._writer is None:
                        await self._open()
                    assert self._reader is not None and self._writer is not None
                    self._writer.write(payload)
                    raw = await self._reader.readuntil(b"\r\n\r\n")
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError) as exc:
                    self.close()
                    if reused and attempt == 0:
                        continue
                    raise HttpError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
                try:
                    status, answer_headers, data = await self._read_rest(raw)
                except (OSError, asyncio.IncompleteReadError, ValueError, ssl.SSLError) as exc:
                    self.close()
                    raise HttpError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
                if answer_headers.get("connection", "").lower() == "close":
                    self.close()
                return status, answer_headers, data
        raise AssertionError("unreachable")

    async def _read_rest(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        assert self._reader is not None
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        if "content-length" in headers:
            data = await self._reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self._reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            data = b"".join(parts)
        else:
            data = b""
        return status, headers, data

    async def call(self, operation: str, body: dict[str, Any]) -> Any:
        """POST a device-plane operation; the decoded answer (HttpError on a refusal)."""
        status, _, data = await self.request("POST", f"/device/v1/{operation}", json.dumps(body).encode())
        if status >= 300:
            raise HttpError(f"{operation}: HTTP {status}: {data[:200]!r}")
        return json.loads(data) if data else {}


def use_uvloop() -> None:
    """Use uvloop in this process when it is installed (a cheaper event loop for the load generator)."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# ---------------------------------------------------------------------------------------------
# enrolment


@dataclass(frozen=True)
class DeviceFiles:
    """An enrolled device: name, fleet and its key/certificate files."""

    name: str
    fleet: str
    cert: str
    key: str


def device_context(ca_file: str, device: DeviceFiles) -> ssl.SSLContext:
    """TLS context presenting the device certificate and trusting the fleet CA."""
    context = ssl.create_default_context(cafile=ca_file)
    context.load_cert_chain(device.cert, device.key)
    return context


def _csr() -> tuple[bytes, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode()


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


@dataclass(frozen=True)
class EnrolJob:
    """One process's share of the enrolments."""

    api_url: str
    ca_file: str
    out_dir: str
    pairs: list[tuple[str, str]]
    concurrency: int = 16


def enrol_worker(job: EnrolJob) -> list[DeviceFiles]:
    """Enrol every (name, token) of ``job``: local key + CSR + one-time token -> certificate files."""
    use_uvloop()
    return asyncio.run(_enrol_all(job))


async def _enrol_all(job: EnrolJob) -> list[DeviceFiles]:
    context = ssl.create_default_context(cafile=job.ca_file)
    out = Path(job.out_dir)
    queue = list(reversed(job.pairs))
    done: list[DeviceFiles] = []

    async def lane() -> None:
        conn = Connection(job.api_url, context)
        try:
            while queue:
                name, token = queue.pop()
                key_pem, csr_pem = _csr()
                body = json.dumps({"EnrolmentToken": token, "CertificateSigningRequest": csr_pem}).encode()
                status, _, data = await conn.request("POST", "/enrol/v1/enrol", body)
                if status != 200:
                    raise HttpError(f"enrolling {name}: HTTP {status}: {data[:300]!r}")
                answer = json.loads(data)
                key_path, cert_path = out / f"{name}.key", out / f"{name}.pem"
                _write(key_path, key_pem)
                _write(cert_path, answer["Certificate"].encode())
                done.append(DeviceFiles(name, answer["DeviceFleetName"], str(cert_path), str(key_path)))
        finally:
            conn.close()

    await asyncio.gather(*(lane() for _ in range(min(job.concurrency, len(job.pairs)) or 1)))
    return done


# ---------------------------------------------------------------------------------------------
# heartbeats


def digits_summary(calls: int = 300) -> dict[str, Any]:
    """The wire form of a live summary like the agent keeps for the digits model over a window of
    ``calls`` Predicts: KLL sketches of 64 input features and 10 output scores, predicted classes."""
    import numpy as np

    from edgefleet.monitoring import ModelSummary

    data = np.random.default_rng(0)
    summary = ModelSummary.empty()
    for _ in range(calls):
        scores = data.random((1, 10), dtype=np.float32)
        summary.update({"input": data.random((1, 64), dtype=np.float32) * 16}, ["probabilities"], [scores])
    wire: dict[str, Any] = summary.to_wire()
    return wire


def summary_window(model: str, version: str, summary: dict[str, Any], start: float) -> dict[str, Any]:
    """One ``ModelSummaries`` item for the window starting at Unix second ``start`` (a window a
    device has not sent before: the server stores each once)."""
    return {
        "ModelName": model,
        "ModelVersion": version,
        "WindowStart": start,
        "WindowEnd": start + 300.0,
        "Calls": 300,
        "Summary": summary,
    }


def heartbeat_body(
    device: DeviceFiles,
    models: dict[str, str],
    rng: random.Random,
    summaries: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A heartbeat shaped like the device daemon's: 9 agent metrics, per model 5 metrics; and
    ``summaries``, the model summary windows it carries (``ModelSummaries``)."""
    stamp = time.time()
    agent = [
        ("device", "cpu_percent", rng.uniform(0, 100)),
        ("device", "memory_used_bytes", float(rng.randrange(1 << 28, 1 << 31))),
        ("device", "memory_percent", rng.uniform(0, 100)),
        ("device", "uptime_seconds", stamp % 100000),
        ("agent", "loaded_models", float(len(models))),
        ("agent", "model_memory_bytes", 1.5e6 * len(models)),
        ("daemon", "uptime_seconds", stamp % 5000),
        ("daemon", "queued_heartbeats", 0.0),
        ("daemon", "dropped_heartbeats", 0.0),
    ]
    return {
        "DeviceName": device.name,
        "DeviceFleetName": device.fleet,
        "AgentVersion": "1.0.0",
        "AgentMetrics": [
            {"Dimension": d, "MetricName": n, "Value": v, "Timestamp": stamp} for d, n, v in agent
        ],
        "Models": [
            {
                "ModelName": name,
                "ModelVersion": version,
                "LatestInference": stamp,
                "LatestSampleTime": None,
                "ModelMetrics": [
                    {"Dimension": "model", "MetricName": m, "Value": rng.uniform(0, 50), "Timestamp": stamp}
                    for m in ("requests", "errors", "latency_p50_ms", "latency_p99_ms", "memory_bytes")
                ],
            }
            for name, version in models.items()
        ],
        "Platform": {"Os": "linux", "Arch": "x86_64", "Accelerator": "none"},
        **({"ModelSummaries": summaries} if summaries else {}),
    }


@dataclass(frozen=True)
class HeartbeatJob:
    """One process's share of the heartbeat load."""

    device_url: str
    ca_file: str
    devices: list[DeviceFiles]
    #: requests in flight at once from this process (each on its own device's connection)
    concurrency: int
    #: length of the measured window (seconds)
    seconds: float
    #: every N-th heartbeat of a device carries a model summary window (0: none)
    summary_every: int = 0


def heartbeat_worker(job: HeartbeatJob, warmed: Any, go: Any, start_at: Any, results: Any) -> None:
    """Warm up (every device connects and sends one heartbeat), tell ``warmed``, wait for ``go``, then
    send heartbeats as fast as the server answers for the window starting at ``start_at.value``."""
    use_uvloop()
    results.put(asyncio.run(_heartbeats(job, warmed, go, start_at)))


async def _heartbeats(job: HeartbeatJob, warmed: Any, go: Any, start_value: Any) -> dict[str, Any]:
    rng = random.Random(os.getpid())
    conns = [Connection(job.device_url, device_context(job.ca_file, d)) for d in job.devices]
    models = {"detector": "1"}
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    ok = 0
    index = 0
    summary = digits_summary() if job.summary_every else None
    sent = [0] * len(conns)
    #: model summary windows the server acknowledged within the measured window
    windows = 0

    async def one(i: int) -> int:
        """0: refused; 1: taken; 2: taken, with a summary window."""
        carried = None
        if summary is not None and sent[i] % job.summary_every == 0:
            # each window a new one of this device (the server stores each once)
            carried = [summary_window("detector", "1", summary, 1e9 + 300.0 * sent[i])]
        sent[i] += 1
        try:
            await conns[i].call("SendHeartbeat", heartbeat_body(job.devices[i], models, rng, carried))
            return 2 if carried else 1
        except HttpError as exc:
            errors[str(exc)[:160]] += 1
            return 0

    sem = asyncio.Semaphore(job.concurrency)

    async def warm(i: int) -> None:
        async with sem:
            await one(i)

    await asyncio.gather(*(warm(i) for i in range(len(conns))))
    warm_errors = sum(errors.values())
    errors.clear()
    warmed.put(os.getpid())
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, go.wait)
    start_at = float(start_value.value)
    end_at = start_at + job.seconds
    await asyncio.sleep(max(0.0, start_at - time.time()))
    cpu_start = time.process_time()

    async def lane() -> None:
        nonlocal ok, index, windows
        while time.time() < end_at:
            i = index % len(conns)
            index += 1
            started = time.perf_counter()
            success = await one(i)
            finished = time.time()
            if success and start_at <= finished < end_at:
                ok += 1
                windows += success == 2
                latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(lane() for _ in range(job.concurrency)))
    cpu = time.process_time() - cpu_start
    for conn in conns:
        conn.close()
    return {
        "cpu_seconds": cpu,
        "ok": ok,
        "windows": windows,
        "errors": dict(errors),
        "warmup_errors": warm_errors,
        "latencies": latencies,
        "handshakes": sum(c.handshakes for c in conns),
    }


# ---------------------------------------------------------------------------------------------
# rollouts


@dataclass(frozen=True)
class RolloutJob:
    """One process's share of a simulated fleet running through a rollout."""

    device_url: str
    ca_file: str
    devices: list[DeviceFiles]
    heartbeat_interval: float
    poll_interval: float
    #: hard stop (time.time()) even if nobody says stop
    deadline: float
    #: "device": every device downloads the package; "shared": one download per process (each
    #: device still fetches its deployment and reports its result)
    download: str = "device"
    seed: int = 0


@dataclass
class _Stats:
    calls: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    results: Counter[str] = field(default_factory=Counter)
    downloaded: int = 0
    report_times: list[float] = field(default_factory=list)
    #: per operation, (wall-clock start, seconds) of each call (for latency percentiles)
    latencies: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    #: (wall-clock start, operation, seconds) of calls that took over a second
    slow: list[tuple[float, str, float]] = field(default_factory=list)


def rollout_worker(job: RolloutJob, ready: Any, warmed: Any, stop: Any, results: Any) -> None:
    """Run devices until ``stop`` (a multiprocessing Event) is set or the deadline passes; ``ready``
    gets this pid once the devices run, ``warmed`` once each has sent a heartbeat and polled."""
    use_uvloop()
    results.put(asyncio.run(_rollout(job, stop, ready, warmed)))


async def _rollout(job: RolloutJob, stop: Any, ready: Any, warmed: Any) -> dict[str, Any]:
    stats = _Stats()
    rng = random.Random(job.seed)
    shared: dict[str, asyncio.Future[bytes]] = {}

    warm_devices: list[str] = []  # devices that have sent a heartbeat and polled once

    async def watch_stop() -> None:
        while not stop.is_set() and time.time() < job.deadline:
            await asyncio.sleep(0.2)

    async def call(conn: Connection, op: str, body: dict[str, Any]) -> Any:
        stats.calls[op] += 1
        started = time.perf_counter()
        try:
            return await conn.call(op, body)
        except HttpError as exc:
            stats.errors[str(exc)[:160]] += 1
            return None
        finally:
            took = time.perf_counter() - started
            stats.latencies.setdefault(op, []).append((time.time() - took, took))
            if took > 1.0:
                stats.slow.append((time.time() - took, op, took))

    async def download(conn: Connection, url: str, sha256: str) -> bool:
        path = urlsplit(url).path if "://" in url else url
        if job.download == "shared":  # one download per process, shared by its devices
            if sha256 not in shared:
                shared[sha256] = asyncio.ensure_future(_get(conn, path))
                stats.calls["package"] += 1
            try:
                data = await asyncio.shield(shared[sha256])
            except HttpError as exc:
                stats.errors[str(exc)[:160]] += 1
                return False
        else:
            started = time.perf_counter()
            try:
                data = await _get(conn, path)
            except HttpError as exc:
                stats.errors[str(exc)[:160]] += 1
                return False
            stats.calls["package"] += 1
            took = time.perf_counter() - started
            stats.latencies.setdefault("package", []).append((time.time() - took, took))
        stats.downloaded += len(data)
        return hashlib.sha256(data).hexdigest() == sha256

    async def device_loop(device: DeviceFiles) -> None:
        conn = Connection(job.device_url, device_context(job.ca_file, device))
        ref = {"DeviceName": device.name, "DeviceFleetName": device.fleet}
        models: dict[str, str] = {}
        done: set[tuple[str, str]] = set()
        loop = asyncio.get_running_loop()
        next_hb = loop.time() + rng.uniform(0, job.heartbeat_interval)
        next_poll = loop.time() + rng.uniform(0, job.poll_interval)
        beat = polled = False
        try:
            while True:
                await asyncio.sleep(max(0.0, min(next_hb, next_poll) - loop.time()))
                if loop.time() >= next_hb:
                    next_hb += job.heartbeat_interval
                    sent = await call(conn, "SendHeartbeat", heartbeat_body(device, models, rng))
                    beat = beat or sent is not None
                if loop.time() >= next_poll:
                    next_poll += job.poll_interval
                    answer = await call(conn, "GetDeployments", ref)
                    if not polled and answer is not None and beat:
                        polled = True
                        warm_devices.append(device.name)
                        if len(warm_devices) == len(job.devices):
                            warmed.put(os.getpid())
                    for deployment in (answer or {}).get("Deployments", []):
                        key = (deployment["DeploymentName"], deployment.get("Action", "DEPLOY"))
                        if key in done:
                            continue
                        status = "FAILED_ROLLED_BACK"
                        if key[1] == "DEPLOY":
                            good = True
                            for definition in deployment["Definitions"]:
                                good = good and await download(
                                    conn, definition["PackageUrl"], definition["Sha256"]
                                )
                            status = "SUCCEEDED" if good else "FAILED_NO_CHANGE"
                            if good:
                                models.update(
                                    {d["ModelName"]: d["ModelVersion"] for d in deployment["Definitions"]}
                                )
                        result = {
                            "DeploymentName": key[0],
                            "DeploymentStatus": status,
                            "DeploymentStatusMessage": status.lower(),
                        }
                        answer = await call(
                            conn, "ReportDeploymentResult", {**ref, "DeploymentResult": result}
                        )
                        if answer is not None:
                            done.add(key)
                            stats.results[status] += 1
                            stats.report_times.append(time.time())
        finally:
            conn.close()

    ready.put(os.getpid())
    tasks = [asyncio.ensure_future(device_loop(d)) for d in job.devices]
    await watch_stop()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "calls": dict(stats.calls),
        "errors": dict(stats.errors),
        "results": dict(stats.results),
        "downloaded": stats.downloaded,
        "report_times": stats.report_times,
        "latencies": stats.latencies,
        "slow": stats.slow,
    }


async def _get(conn: Connection, path: str) -> bytes:
    status, _, data = await conn.request("GET", path)
    if status != 200:
        raise HttpError(f"GET {path}: HTTP {status}: {data[:200]!r}")
    return data
