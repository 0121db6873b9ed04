"""``edgefleet demo``: the whole story on the embedded default, offline.

Part 1 (the device): trains a digits classifier, creates signing keys, builds and signs a package,
starts a real agent process on a Unix socket, loads the package, runs predictions through the
client, captures some of them to disk in the Edge Manager record format, and shuts the agent down
cleanly. Part 2 (:mod:`edgefleet.demo.fleet`): compiles the model, runs the control plane and two
device daemons, and rolls versions out in stages with a hot swap under load.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

Say = Callable[[str], None]


def edgefleet_process(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``edgefleet ARGS`` as a child process, its output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edgefleet", *args], stdout=out, stderr=subprocess.STDOUT, env=env
        )


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 60) -> int | None:
    """SIGTERM ``proc`` and wait (SIGKILL after ``timeout`` s); its exit code (None: no process)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _step(say: Say, number: int, text: str) -> None:
    say(f"\n[{number}] {text}")


def train_digits(out_dir: Path, say: Say) -> tuple[Path, np.ndarray, np.ndarray, float]:
    """Train a small classifier on scikit-learn's bundled digits data; export it to ONNX."""
    try:
        from skl2onnx import to_onnx
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        from sklearn.neural_network import MLPClassifier
    except ImportError as exc:
        raise SystemExit(
            f"the demo needs scikit-learn and skl2onnx: pip install 'edgefleet[demo]' ({exc})"
        ) from exc

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.3, random_state=0)
    start = time.perf_counter()
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=400, random_state=0)
    clf.fit(x_train, y_train)
    accuracy = float(clf.score(x_test, y_test))
    say(
        f"    trained an MLP on {len(x_train)} digits in {time.perf_counter() - start:.1f}s, test accuracy {accuracy:.1%}"
    )
    onx = to_onnx(clf, x_train[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    onx.graph.input[0].name = onx.graph.input[0].name  # keep skl2onnx's name ("X")
    path = out_dir / "digits.onnx"
    path.write_bytes(onx.SerializeToString())
    say(f"    exported ONNX model {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return path, x_test, y_test, accuracy


def run_demo(workdir: Path, say: Say = print, *, keep_running: bool = False, fleet: bool = True) -> int:
    """Run the story in ``workdir`` (created); returns a process exit code.

    ``fleet``: also the second part (compiler, control plane, device daemons, staged rollouts).
    """
    from edgefleet.client import AgentClient
    from edgefleet.core.package import inspect_package
    from edgefleet.core.signing import init_keys
    from edgefleet.packager.build import build_package

    workdir.mkdir(parents=True, exist_ok=True)
    say(f"edgefleet demo — working in {workdir}")

    _step(say, 1, "Train a real classifier (scikit-learn digits, no network)")
    model_path, x_test, y_test, sk_accuracy = train_digits(workdir, say)

    _step(say, 2, "Create a signing root CA and a signer certificate")
    keys = workdir / "keys"
    if not (keys / "signer.key").exists():
        init_keys(keys)
    trust = keys / "trust"
    say(f"    keys in {keys}; the device trust store is {trust}")

    _step(say, 3, "Build and sign the model package")
    version = "1.0"
    packages = workdir / "packages"
    pkg = build_package(model_path, name="digits", version=version, key_dir=keys, out_dir=packages)
    info = inspect_package(pkg)
    say(f"    {pkg} ({pkg.stat().st_size / 1024:.0f} KiB)")
    say(
        f"    runtime {info.manifest.runtime.name}, inputs {[(t.name, t.dtype.name, list(t.shape)) for t in info.manifest.inputs]}"
    )

    _step(say, 4, "Start the agent with an Edge Manager style config file")
    capture_dir = workdir / "captures"
    config = {
        "sagemaker_edge_core_device_name": "demo-camera-01",
        "sagemaker_edge_core_device_fleet_name": "demo-fleet",
        "sagemaker_edge_core_region": "local",
        "sagemaker_edge_core_root_certs_path": str(trust),
        "sagemaker_edge_provider_provider": "None",
        "sagemaker_edge_core_capture_data_destination": "Disk",
        "sagemaker_edge_core_capture_data_disk_path": str(capture_dir),
        "sagemaker_edge_core_folder_prefix": "demo",
        "sagemaker_edge_core_capture_data_buffer_size": 30,
        "sagemaker_edge_core_capture_data_batch_size": 10,
        "sagemaker_edge_core_capture_data_push_period_seconds": 1,
    }
    config_path = workdir / "agent-config.json"
    config_path.write_text(json.dumps(config, indent=2))
    # The socket lives in the work directory, so that demos run side by side never share one; a
    # work directory too deep for a Unix socket path (~107 bytes) gets a private one under /tmp.
    private_dir = (
        None if len(str(workdir.absolute() / "agent.sock")) < 100 else tempfile.mkdtemp(prefix="ef-demo-")
    )
    sock = (Path(private_dir) if private_dir else workdir.absolute()) / "agent.sock"
    env = dict(os.environ, XDG_DATA_HOME=str(workdir / "data"))
    log_path = workdir / "agent.log"
    log_path.write_bytes(b"")
    agent = edgefleet_process(["agent", "-a", f"unix://{sock}", "-c", str(config_path), "-f"], log_path, env)
    try:
        client = AgentClient(f"unix://{sock}", timeout=30)
        deadline = time.monotonic() + 30
        while True:
            try:
                meta = client.server_metadata()
                break
            except Exception:
                if agent.poll() is not None or time.monotonic() > deadline:
                    say(f"    the agent did not start; its log ({log_path}):\n{log_path.read_text()}")
                    return 1
                time.sleep(0.05)
        say(
            f"    agent pid {agent.pid} serving on unix://{sock} — {meta.name} {meta.version}, "
            f"extensions: {', '.join(meta.extensions)}"
        )

        _step(say, 5, "Load the signed package (signature and digests are verified first)")
        model = client.load(str(pkg), "digits")
        say(
            f"    loaded as {model.name!r}: inputs {[(t.name, list(t.shape)) for t in model.inputs]}, "
            f"outputs {[(t.name, list(t.shape)) for t in model.outputs]}"
        )

        _step(say, 6, f"Predict the {len(x_test)} held-out digits one by one through the agent")
        input_name = model.inputs[0].name
        label_name = model.outputs[0].name
        latencies = []
        correct = 0
        for row, label in zip(x_test, y_test, strict=True):
            start = time.perf_counter()
            out = client.predict("digits", {input_name: row[None, :]})
            latencies.append(time.perf_counter() - start)
            correct += int(out[label_name].reshape(-1)[0] == label)
        lat = np.array(latencies) * 1000
        accuracy = correct / len(x_test)
        say(
            f"    accuracy {accuracy:.1%} (scikit-learn in-process: {sk_accuracy:.1%}); "
            f"latency p50 {np.percentile(lat, 50):.2f} ms, p99 {np.percentile(lat, 99):.2f} ms"
        )

        _step(say, 7, "Capture 12 inferences (inputs and outputs) to disk")
        ids = []
        for row in x_test[:12]:
            out = client.predict("digits", {input_name: row[None, :]})
            ids.append(
                client.capture(
                    "digits", capture_id=str(uuid.uuid4()), inputs={input_name: row[None, :]}, outputs=out
                )
            )
        deadline = time.monotonic() + 30
        statuses = [client.capture_status(i) for i in ids]
        while any(s == "IN_PROGRESS" for s in statuses) and time.monotonic() < deadline:
            time.sleep(0.1)
            statuses = [client.capture_status(i) for i in ids]
        say(f"    statuses: {', '.join(sorted(set(statuses)))}")
        files = sorted(capture_dir.rglob("*.jsonl"))
        for f in files:
            say(f"    {f.relative_to(workdir)} ({sum(1 for _ in f.open())} records)")
        if files:
            first = json.loads(files[0].read_text().splitlines()[0])
            entry = first["deviceFleetInputs"][0]
            say(
                f"    a record: eventId {first['eventMetadata']['eventId']}, model "
                f"{first['eventMetadata']['modelName']} {first['eventMetadata']['modelVersion']}, "
                f"input {entry['name']} {entry['observedContentType']}"
            )

        _step(say, 8, "Per-model statistics (edgefleet extension)")
        for stats in client.model_stats():
            say(
                f"    {stats.name}: {stats.request_count} requests, {stats.error_count} errors, "
                f"p50 {stats.p50_ms:.3f} ms, p99 {stats.p99_ms:.3f} ms (server side)"
            )
        client.close()
        if keep_running:
            say(f"\nThe agent keeps running on unix://{sock} (pid {agent.pid}); stop it with Ctrl-C.")
            agent.wait()
    finally:
        _step(say, 9, "Stop the agent (SIGTERM: finishes requests, flushes captures, unloads)")
        stop_process(agent, 30)
        say(f"    agent exited with code {agent.returncode}; its log is {log_path}")
        if private_dir:
            shutil.rmtree(private_dir, ignore_errors=True)
    ok = agent.returncode == 0 and accuracy > 0.9 and all(s == "SUCCESS" for s in statuses)
    if fleet and ok:
        from edgefleet.demo.fleet import run_fleet_demo

        say("\nPart 2: compiler, control plane and device daemons")
        ok = run_fleet_demo(
            workdir,
            say,
            model_path=model_path,
            x_test=x_test,
            y_test=y_test,
            keys=keys,
            package_v1=pkg,
            first_step=10,
        )
    say("\ndemo finished: " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1
