"""Sustained CaptureData throughput through a real agent, to Disk and to an S3-protocol server.

    .venv/bin/python bench/capture.py [--seconds 5] [--clients 8] [--no-s3] [--no-fsync]

For each destination (Disk; Cloud on a moto S3 server on loopback, when moto is installed) and
each payload (digits-sized: 64 float32 in, 10 out; 600 KiB through System V shared memory), client
processes call CaptureData for --seconds, first over the agent's fast socket (extension
``fast-capture``, the client's default), then over gRPC. The figure is acknowledged captures per second (each
acknowledged capture is durably in the agent's spool). Then the run waits until every
acknowledged capture is in the destination and checks that none is lost or duplicated, and that
none was refused (the spool's bounds are set larger than the run).

The baseline, measured in the same run: the same captures submitted in-process to a
CaptureService (no gRPC, no agent) by as many threads, with the same spool settings. The ratio
says what the agent's transport costs on top of the capture pipeline itself.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

SMALL = ((1, 64), (1, 10))
LARGE = ((1, 600 * 1024 // 4), (1, 10))  # 600 KiB float32 input


def tiny_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).random((64, 10), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "digits_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _client(address: str, shapes: Any, seconds: float, fast: bool, ready: Any, start: Any, out: Any) -> None:
    from edgefleet.client import AgentClient

    x = np.random.default_rng().random(shapes[0], dtype=np.float32)
    y = np.random.default_rng().random(shapes[1], dtype=np.float32)
    ids: list[str] = []
    with AgentClient(address, timeout=120, fast_path=fast) as client:
        client.capture("m", inputs={"x": x}, outputs={"y": y})  # connected and warm
        ready.put(True)
        start.wait()
        began = time.perf_counter()
        while time.perf_counter() - began < seconds:
            ids.append(client.capture("m", inputs={"x": x}, outputs={"y": y}))
        elapsed = time.perf_counter() - began
    out.put((ids, elapsed))


def agent_run(address: str, shapes: Any, clients: int, seconds: float, fast: bool) -> tuple[float, list[str]]:
    """Captures/s of ``clients`` processes started together once all are connected, and the ids
    acknowledged (the warm-up capture of each client is not counted but is checked like the rest)."""
    ctx = mp.get_context("spawn")
    ready, start, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_client, args=(address, shapes, seconds, fast, ready, start, out))
        for _ in range(clients)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=300)
    start.set()
    results = [out.get(timeout=seconds + 300) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    ids = [i for batch, _ in results for i in batch]
    elapsed = max(seconds_taken for _, seconds_taken in results)
    return len(ids) / elapsed, ids


def inprocess_run(work: Path, shapes: Any, threads: int, seconds: float, fsync: bool) -> float:
    from edgefleet.capture import CaptureConfig, CaptureRequest, CaptureService, CaptureTensor
    from edgefleet.core.tensors import DataType

    spool = work / f"inproc-{uuid.uuid4().hex[:8]}"
    service = CaptureService(
        CaptureConfig(
            spool_dir=spool / "spool",
            destination_root=spool / "disk",
            device_name="bench",
            fleet_name="bench",
            buffer_size=1_000_000,
            buffer_bytes=8 << 30,
            batch_size=100,
            push_period_seconds=0.5,
            fsync=fsync,
        )
    )
    x = np.random.default_rng().random(shapes[0], dtype=np.float32).tobytes()
    y = np.random.default_rng().random(shapes[1], dtype=np.float32).tobytes()
    counts = [0] * threads
    barrier = threading.Barrier(threads + 1)
    deadline = [0.0]

    def work_thread(index: int) -> None:
        barrier.wait()
        while time.perf_counter() < deadline[0]:
            service.submit(
                CaptureRequest(
                    capture_id=str(uuid.uuid4()),
                    model_name="m",
                    model_version="1",
                    inference_time=datetime.now(UTC),
                    inputs=(CaptureTensor("x", DataType.FLOAT32, shapes[0], x),),
                    outputs=(CaptureTensor("y", DataType.FLOAT32, shapes[1], y),),
                )
            )
            counts[index] += 1

    pool = [threading.Thread(target=work_thread, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    deadline[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    barrier.wait()
    for thread in pool:
        thread.join()
    rate = sum(counts) / (time.perf_counter() - began)
    service.close()
    return rate


def written_ids(destination: str, endpoint: str | None) -> list[str]:
    if destination.startswith("s3://"):
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint)
        bucket, prefix = destination.removeprefix("s3://").split("/", 1)
        bodies = [
            client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents", [])
            if item["Key"].endswith(".jsonl")
        ]
    else:
        bodies = [p.read_bytes() for p in Path(destination).rglob("*.jsonl")]
    return [
        json.loads(line)["eventMetadata"]["eventId"] for body in bodies for line in body.splitlines() if line
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each run")
    parser.add_argument("--clients", type=int, default=8, help="client processes (and baseline threads)")
    parser.add_argument("--no-s3", action="store_true", help="skip the Cloud destination")
    parser.add_argument("--no-fsync", dest="fsync", action="store_false", help="capture.fsync = false")
    args = parser.parse_args()

    from edgefleet.client import AgentClient
    from edgefleet.core.signing import init_keys
    from edgefleet.packager.build import build_package

    work = Path(tempfile.mkdtemp(prefix="ef-capbench-"))
    init_keys(work / "keys")
    package = build_package(
        tiny_onnx(work / "m.onnx"), name="m", version="1", key_dir=work / "keys", out_dir=work
    )

    endpoint: str | None = None
    server: Any = None
    if not args.no_s3:
        try:
            import boto3
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            print(f"(Cloud destination skipped: {exc}; install the dev extra)")
        else:
            for name, value in (
                ("AWS_ACCESS_KEY_ID", "bench"),
                ("AWS_SECRET_ACCESS_KEY", "bench"),
                ("AWS_DEFAULT_REGION", "us-east-1"),
            ):
                os.environ.setdefault(name, value)
            import logging

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")

    destinations = [("Disk", "")]
    if endpoint:
        destinations.append(("Cloud", f's3_bucket = "bench"\ns3_endpoint_url = "{endpoint}"\n'))
    print(
        f"edgefleet capture benchmark — {os.cpu_count()} CPUs, {args.clients} clients, {args.seconds:.0f} s runs, "
        f"fsync {args.fsync}"
    )
    try:
        for label, shapes in (
            ("digits-sized (256 B in, 40 B out)", SMALL),
            ("600 KiB input via shared memory", LARGE),
        ):
            baseline = inprocess_run(work, shapes, args.clients, args.seconds, args.fsync)
            print(f"\n{label}:")
            print(f"  {'in-process CaptureService (baseline)':44s} {baseline:9.0f} captures/s")
            for destination, extra in destinations:
                run = uuid.uuid4().hex[:8]
                config = work / f"agent-{run}.toml"
                disk = work / f"disk-{run}"
                config.write_text(
                    f'[device]\nname = "bench"\nfleet = "bench"\n[agent]\ntrust_dir = "{work / "keys" / "trust"}"\n'
                    f'data_dir = "{work / ("data-" + run)}"\n[capture]\ndestination = "{destination}"\n'
                    f'disk_path = "{disk}"\nfolder_prefix = "{run}"\nbuffer_size = 1000000\n'
                    f"buffer_bytes = {8 << 30}\nbatch_size = 100\npush_period_seconds = 0.5\n"
                    f"fsync = {str(args.fsync).lower()}\n{extra}"
                )
                sock = Path(tempfile.mkdtemp(prefix="ef-", dir="/tmp")) / "agent.sock"
                agent = subprocess.Popen(
                    [sys.executable, "-m", "edgefleet", "agent", "-a", f"unix://{sock}", "-c", str(config)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    address = f"unix://{sock}"
                    with AgentClient(address, timeout=60) as client:
                        client.wait_ready(60)
                        client.load(str(package), "m")
                    ids = []
                    for transport, fast in (("fast socket", True), ("gRPC", False)):
                        rate, acked = agent_run(address, shapes, args.clients, args.seconds, fast)
                        ids += acked
                        print(
                            f"  {'agent -> ' + destination + ', ' + transport:44s} {rate:9.0f} captures/s  "
                            f"({rate / baseline:.2f}x baseline; {len(acked)} acknowledged)"
                        )
                    target = f"s3://bench/{run}" if destination == "Cloud" else str(disk / run)
                    began = time.perf_counter()
                    while True:
                        got = written_ids(target, endpoint)
                        if len(got) >= len(ids) + 2 * args.clients or time.perf_counter() - began > 600:
                            break
                        time.sleep(0.5)
                    drained = time.perf_counter() - began
                    counts = Counter(got)
                    lost = len(set(ids) - set(counts))  # warm-up captures are extra, not lost
                    duplicated = sum(1 for n in counts.values() if n > 1)
                    print(
                        f"  {'':44s} {len(ids)} acknowledged in both runs: {lost} lost, {duplicated} "
                        f"duplicated, all written {drained:.1f} s after the runs"
                    )
                finally:
                    agent.terminate()
                    agent.wait(timeout=60)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
