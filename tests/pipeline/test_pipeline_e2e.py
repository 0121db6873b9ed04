"""Pipeline runs end to end on real processes: a control plane (TLS on loopback, its periodic work
on), an ``edgefleet worker`` process, a twin fleet and a production fleet of real devices (real
agent on ONNX Runtime, real daemon). A digits model is compiled for the fleets' device class,
packaged and signed, validated on the twins and rolled out; a planted fault (shuffled weights)
fails the twin validation and never reaches production; a manual gate that is rejected rolls
nothing out; a shadow step fails for want of figures rather than passing on none."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import support
from support import REPO

pytestmark = pytest.mark.e2e

pytest.importorskip("fastapi", reason="these tests need the server extra")
pytest.importorskip("huey", reason="these tests need the task queue (server extra)")
onnx = pytest.importorskip("onnx", reason="building the digits model needs onnx")


#: what these tests wait on takes whole processes on a busy machine
def wait_for(condition: Callable[[], Any], what: str, timeout: float = 240.0) -> Any:
    return support.wait_for(condition, what, timeout)


@dataclass
class Setup:
    running: Any
    op: Any
    url: str
    token: str
    ca_cert: Path
    twins: Any
    prod: Any
    work: Path
    model: Path
    faulty: Path
    validation: Path
    x_test: np.ndarray
    worker: subprocess.Popen[bytes]
    start_worker: Callable[[], subprocess.Popen[bytes]]


def _digits_table() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the digits data comes with scikit-learn, which is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    raw = np.loadtxt(path, delimiter=",")
    return (raw[:, :-1] / 16.0).astype(np.float32), raw[:, -1].astype(np.int64)


def _digits_model(weight: np.ndarray, bias: np.ndarray, path: Path) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["scores"]),
            helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0),
        ],
        "digits",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 64])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 10]),
        ],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    path.write_bytes(proto.SerializeToString())
    return path


def _start_worker(data_dir: Path, keys: Path, log: Any) -> subprocess.Popen[bytes]:
    """``edgefleet worker`` on the server's data directory: one thread slot, a 10 s lease."""
    args = ["--data-dir", str(data_dir), "--signing-keys", str(keys), "--trust", str(keys / "trust")]
    args += ["--worker-type", "thread", "--lease", "10", "--heartbeat", "1"]
    return subprocess.Popen(
        [sys.executable, "-m", "edgefleet", "worker", *args],
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> Iterator[Setup]:
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import ClientConfig
    from edgefleet.server import tokens
    from edgefleet.server.config import ServerConfig, Timing
    from edgefleet.server.runner import start_in_thread
    from edgefleet.twin import TwinFleet, TwinTiming

    work = tmp_path_factory.mktemp("pipeline")
    x, y = _digits_table()
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:1200], order[1200:1500]
    features = np.hstack([x[train], np.ones((len(train), 1), np.float32)])
    solution = np.linalg.solve(features.T @ features + 1e-1 * np.eye(65), features.T @ np.eye(10)[y[train]])
    weight, bias = solution[:64].astype(np.float32), solution[64].astype(np.float32)
    model = _digits_model(weight, bias, work / "digits.onnx")
    # the planted fault: the same weights, shuffled over the input pixels
    shuffled = weight[np.random.default_rng(1).permutation(64)]
    faulty = _digits_model(shuffled, bias, work / "digits-faulty.onnx")
    validation = work / "val.npz"
    np.savez(validation, X=x[test], labels=y[test])

    data_dir = work / "server"
    config = ServerConfig(
        data_dir=data_dir,
        port=0,
        device_port=0,
        trust_dir=keys / "trust",
        timing=Timing(shutdown_grace=1, job_tick=1),
    )
    running = start_in_thread(config, run_jobs=True)
    db = running.state.db
    with db.session() as session:
        token = tokens.create_token(session, "pipeline-tests", db.now())
    ca = Path(running.endpoints.ca_cert)
    url = running.endpoints.api_url
    op = FleetClient(ClientConfig(url, token, ca))
    worker_log = open(work / "worker.log", "ab")  # noqa: SIM115 (closed after the worker)
    worker = _start_worker(data_dir, keys, worker_log)
    fast = TwinTiming(heartbeat_interval_seconds=1, poll_interval_seconds=1, health_interval_seconds=1)
    twins = TwinFleet(work / "twins")
    prod = TwinFleet(work / "prod")
    value: Setup | None = None
    try:
        for fleet, name in ((twins, "twins"), (prod, "prod")):
            fleet.start(1, name, url, token, ca_cert=ca, trust_dir=keys / "trust", timing=fast, client=op)
        twins.wait_heartbeats(120)
        prod.wait_heartbeats(120)
        value = Setup(
            running, op, url, token, ca, twins, prod, work, model, faulty, validation, x[test], worker,
            lambda: _start_worker(data_dir, keys, worker_log),
        )  # fmt: skip
        yield value
    finally:
        twins.stop()
        prod.stop()
        worker = value.worker if value is not None else worker
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        worker_log.close()
        op.close()
        running.stop()


def _config(
    s: Setup, name: str, *, approval: str = "auto", compile_step: bool = True, shadow: bool = False
) -> str:
    compile_table = (
        '[compile]\nbackend = "onnxruntime"\nquantize = "none"\nbenchmark_seconds = 0.05\n'
        if compile_step
        else ""
    )
    shadow_table = '[shadow]\nfleet = "prod"\nduration_seconds = 5\n' if shadow else ""
    return f"""
[model]
name = "{name}"

[source]
model = "{s.model}"
framework = "onnx"
validation = "{s.validation}"

{compile_table}
[deploy]
fleets = ["prod"]

[twin]
fleet = "twins"
workdir = "{s.twins.workdir}"
min_accuracy = 0.9
max_p99_ms = 2000
load_seconds = 1
load_concurrency = 2

{shadow_table}
[approval]
mode = "{approval}"

[rollout]
stages = [{{ StageName = "all", DeviceSelectionConfig = {{ DeviceSubsetType = "PERCENTAGE", Percentage = 100 }} }}]
"""


def _wait_run(s: Setup, run_id: str, states: tuple[str, ...] = ("SUCCEEDED", "FAILED", "REJECTED")) -> Any:
    def settled() -> Any:
        run = s.op.describe_pipeline_run(run_id)
        return run if run["State"] in states else None

    try:
        return wait_for(settled, f"run {run_id} to reach {states}")
    except Exception:
        print((s.work / "worker.log").read_text()[-8000:])
        raise


def _steps(run: Any) -> dict[str, Any]:
    return {st["StepName"]: st for st in run["Steps"]}


def _prod_plans(s: Setup) -> list[str]:
    return [p["EdgeDeploymentPlanName"] for p in s.op.list_plans() if p["DeviceFleetName"] == "prod"]


@pytest.mark.slow
def test_a_run_compiles_validates_on_twins_and_rolls_out(setup: Setup) -> None:
    from edgefleet.client import AgentClient

    s = setup
    created = s.op.put_pipeline(_config(s, "digits"))
    assert created["Steps"] == ["compile", "package", "twin", "approval", "rollout"]
    run = s.op.start_pipeline_run("digits")
    assert run["State"] == "QUEUED" and run["ModelVersion"] == "r1"
    run = _wait_run(s, run["RunId"])
    steps = _steps(run)
    assert run["State"] == "SUCCEEDED", (run["Reason"], steps)
    assert all(st["State"] == "SUCCEEDED" for st in run["Steps"]), steps
    compile_jobs = steps["compile"]["Artifacts"]["Jobs"]
    assert compile_jobs and all(s.op.describe_job(j)["State"] == "SUCCEEDED" for j in compile_jobs.values())
    assert steps["package"]["Artifacts"]["Packages"]
    figures = steps["twin"]["Figures"]
    assert figures["Accuracy"] > 0.9 and figures["P99Ms"] > 0 and figures["Load"]["Errors"] == 0, figures
    assert figures["Load"]["Calls"] > 0
    assert run["Decision"] == "Approved" and run["DecidedBy"] == "auto"
    assert s.op.describe_version("digits", "r1")["ApprovalStatus"] == "Approved"
    # production serves the new version
    device = s.prod.twins[0]
    with AgentClient(device.agent_address, timeout=30) as app:
        wait_for(lambda: "digits" in app.handles(), "the production handle")
        label = app.predict("digits", {"X": s.x_test[:1]})["label"]
    assert label.shape == (1,)
    lines = [line["Line"] for line in s.op.pipeline_run_logs(run["RunId"])["Lines"]]
    assert any("compile job" in line for line in lines) and any("run SUCCEEDED" in line for line in lines)


def test_a_planted_fault_fails_twin_validation_and_leaves_production_alone(setup: Setup) -> None:
    s = setup
    s.op.put_pipeline(_config(s, "digits", compile_step=False), replace=True)
    before = _prod_plans(s)
    run = _wait_run(s, s.op.start_pipeline_run("digits", source=str(s.faulty))["RunId"])
    steps = _steps(run)
    assert run["State"] == "FAILED", steps
    assert steps["twin"]["State"] == "FAILED"
    assert (
        "accuracy" in steps["twin"]["Message"] and "below twin.min_accuracy 0.9" in steps["twin"]["Message"]
    )
    assert steps["twin"]["Figures"]["Accuracy"] < 0.5
    assert run["Reason"].startswith("step twin failed: twin validation failed")
    assert steps["approval"]["State"] == "PENDING" and steps["rollout"]["State"] == "PENDING"
    assert _prod_plans(s) == before  # production untouched
    version = s.op.describe_version("digits", run["ModelVersion"])
    assert version["ApprovalStatus"] == "Rejected"


def test_a_rejected_approval_rolls_nothing_out(setup: Setup) -> None:
    from edgefleet.core.errors import FailedPrecondition, NotFound

    s = setup
    s.op.put_pipeline(_config(s, "digits", approval="manual", compile_step=False), replace=True)
    before = _prod_plans(s)
    run = s.op.start_pipeline_run("digits")
    run = _wait_run(s, run["RunId"], ("WAITING_APPROVAL", "FAILED"))
    assert run["State"] == "WAITING_APPROVAL", run
    assert _steps(run)["approval"]["State"] == "WAITING"
    rejected = s.op.decide_pipeline_run(run["RunId"], approve=False, note="not this one")
    assert rejected["State"] == "REJECTED" and rejected["Decision"] == "Rejected"
    assert (
        rejected["DecidedBy"] == "pipeline-tests"
        and rejected["Reason"] == "rejected by pipeline-tests: not this one"
    )
    assert _steps(rejected)["rollout"]["State"] == "PENDING"
    assert _prod_plans(s) == before
    with pytest.raises(FailedPrecondition, match="is REJECTED, not WAITING_APPROVAL"):
        s.op.decide_pipeline_run(run["RunId"], approve=True)
    with pytest.raises(NotFound, match="no pipeline run"):
        s.op.decide_pipeline_run("0" * 32, approve=True)


@pytest.mark.slow
def test_a_run_survives_its_worker_sigkilled_mid_step(setup: Setup) -> None:
    """The worker dies (SIGKILL) during the twin step's load test: the job's lease runs out, the
    server queues attempt 2, a new worker continues the run from its journal (the twin plan is
    not made twice) and the run succeeds."""
    s = setup
    s.op.put_pipeline(
        _config(s, "digits", compile_step=False).replace("load_seconds = 1", "load_seconds = 20"),
        replace=True,
    )
    run = s.op.start_pipeline_run("digits")
    run_id = run["RunId"]

    def in_load_test() -> bool:
        lines = [line["Line"] for line in s.op.pipeline_run_logs(run_id)["Lines"]]
        return any("deployed to 1 twin(s)" in line for line in lines)

    wait_for(in_load_test, "the twin step's load test")
    time.sleep(2)  # well inside the 20 s load test
    s.worker.send_signal(signal.SIGKILL)
    s.worker.wait(30)
    s.worker = s.start_worker()
    run = _wait_run(s, run_id)
    assert run["State"] == "SUCCEEDED", (run["Reason"], _steps(run))
    job = s.op.describe_job(run["JobId"])
    assert job["State"] == "SUCCEEDED" and job["Attempt"] == 2, job
    job_lines = [line["Line"] for line in s.op.job_logs(run["JobId"])["Lines"]]
    assert any("lost (lease expired)" in line for line in job_lines), job_lines
    plans = [p["EdgeDeploymentPlanName"] for p in s.op.list_plans() if p["DeviceFleetName"] == "twins"]
    assert plans.count(f"pl-digits-{run['RunNumber']}-twins") == 1


@pytest.mark.slow
def test_a_shadow_step_passes_on_the_devices_figures(setup: Setup) -> None:
    """The candidate loaded as the shadow of the production handle (by hand, as `edgefleet agent
    shadow` does) and traffic on the handle: the daemon's heartbeats carry the figures, the server
    sums them, the step judges them and the run rolls out."""
    from edgefleet.client import AgentClient

    s = setup
    device = s.prod.twins[0]
    with AgentClient(device.agent_address, timeout=30) as app:
        has_champion = "digits" in app.handles()
    if not has_champion:  # the production fleet needs a champion first
        s.op.put_pipeline(_config(s, "digits", compile_step=False), replace=True)
        assert _wait_run(s, s.op.start_pipeline_run("digits")["RunId"])["State"] == "SUCCEEDED"
    config = _config(s, "digits", compile_step=False, shadow=True)
    config = config.replace("duration_seconds = 5", "duration_seconds = 15\nmax_latency_ratio = 50")
    s.op.put_pipeline(config, replace=True)
    run = s.op.start_pipeline_run("digits")
    run_id, version = run["RunId"], run["ModelVersion"]

    def shadow_started() -> bool:
        lines = [line["Line"] for line in s.op.pipeline_run_logs(run_id)["Lines"]]
        return any("as shadow on fleet prod" in line for line in lines)

    wait_for(shadow_started, "the shadow step")
    (package,) = s.op.describe_version("digits", version)["Packages"]
    archive = s.op.download_package("digits", version, package["Target"], s.work / f"dl-{version}")
    with AgentClient(device.agent_address, timeout=30) as app:
        app.load(archive, f"digits-{version}")
        app.load_shadow("digits", f"digits-{version}", sample_rate=1.0)
        for row in s.x_test[:200]:
            app.predict("digits", {"X": row[None, :]})

        def reported() -> bool:
            pairs = s.op.fleet_shadows("prod")["ShadowPairs"]
            return any(p["ShadowVersion"] == version and p["Completed"] > 0 for p in pairs)

        wait_for(reported, "the heartbeats to carry the shadow figures", 60)
        # the pair ends before the rollout brings the same version onto the device
        app.unload_shadow("digits")
        app.unload(f"digits-{version}")
    done = _wait_run(s, run_id)
    steps = _steps(done)
    assert done["State"] == "SUCCEEDED", (done["Reason"], steps)
    figures = steps["shadow"]["Figures"]
    assert figures["Agreement"] == 1.0 and figures["Completed"] > 0 and figures["Devices"] == 1, figures


@pytest.mark.slow
def test_a_shadow_step_without_figures_fails(setup: Setup) -> None:
    s = setup
    s.op.put_pipeline(_config(s, "digits", compile_step=False, shadow=True), replace=True)
    before = _prod_plans(s)
    run = _wait_run(s, s.op.start_pipeline_run("digits")["RunId"])
    steps = _steps(run)
    assert run["State"] == "FAILED" and steps["twin"]["State"] == "SUCCEEDED", steps
    assert steps["shadow"]["State"] == "FAILED"
    assert steps["shadow"]["Message"].startswith("shadow figures not available")
    assert _prod_plans(s) == before


def test_bad_requests_are_refused_with_the_reason(setup: Setup) -> None:
    from edgefleet.core.errors import AlreadyExists, InvalidArgument, NotFound

    s = setup
    with pytest.raises(InvalidArgument, match=r"twin\.min_accuracy must be at least 0 and at most 1"):
        s.op.put_pipeline(_config(s, "other").replace("min_accuracy = 0.9", "min_accuracy = 9"))
    with pytest.raises(NotFound, match="no pipeline 'other'"):
        s.op.start_pipeline_run("other")
    s.op.put_pipeline(_config(s, "other", compile_step=False))
    with pytest.raises(AlreadyExists, match="exists already"):
        s.op.put_pipeline(_config(s, "other"))
    with pytest.raises(InvalidArgument, match="must be an absolute path"):
        s.op.start_pipeline_run("other", source="relative.onnx")
    with pytest.raises(InvalidArgument, match="version"):
        s.op.start_pipeline_run("other", version="no/slashes")


def _cli(s: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "EDGEFLEET_SERVER": s.url,
        "EDGEFLEET_TOKEN": s.token,
        "EDGEFLEET_CA_CERT": str(s.ca_cert),
        "EDGEFLEET_CLIENT_CONFIG": "/nonexistent/client.json",
    }
    return subprocess.run(
        [sys.executable, "-m", "edgefleet", "pipeline", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_cli_creates_runs_and_approves(setup: Setup) -> None:
    s = setup
    config = s.work / "digits-manual.toml"
    config.write_text(_config(s, "digits", approval="manual", compile_step=False))
    missing = _cli(s, "create", str(s.work / "nope.toml"))
    assert missing.returncode != 0 and "does not exist" in missing.stderr
    bad = s.work / "bad.toml"
    bad.write_text(config.read_text().replace('mode = "manual"', 'mode = "later"'))
    refused = _cli(s, "create", str(bad), "--replace")
    assert refused.returncode != 0 and "approval.mode 'later' is not one of manual, auto" in refused.stderr
    created = _cli(s, "create", str(config), "--replace")
    assert created.returncode == 0, created.stderr
    assert "package -> twin -> approval -> rollout" in created.stdout
    assert "digits" in _cli(s, "list").stdout

    started = _cli(s, "run", "digits", "--wait")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "WAITING_APPROVAL" in started.stdout and "step twin SUCCEEDED" in started.stdout
    (run,) = [r for r in s.op.list_pipeline_runs(pipeline="digits", state="WAITING_APPROVAL")]
    approved = _cli(s, "approve", run["RunId"], "--note", "looks good")
    assert approved.returncode == 0, approved.stderr
    done = _wait_run(s, run["RunId"])
    assert done["State"] == "SUCCEEDED", (done["Reason"], _steps(done))
    assert done["Decision"] == "Approved" and done["DecidedBy"] == "pipeline-tests"
    assert _steps(done)["approval"]["Message"] == "approved by pipeline-tests: looks good"
    assert s.op.describe_version("digits", done["ModelVersion"])["ApprovalStatus"] == "Approved"
    shown = _cli(s, "show", run["RunId"])
    assert shown.returncode == 0 and "SUCCEEDED" in shown.stdout and "rollout" in shown.stdout
    logs = _cli(s, "logs", run["RunId"])
    assert "approved by pipeline-tests" in logs.stdout and "run SUCCEEDED" in logs.stdout
    listed = _cli(s, "runs", "digits")
    assert run["RunId"] in listed.stdout
    again = _cli(s, "reject", run["RunId"])
    assert again.returncode != 0 and "not WAITING_APPROVAL" in again.stderr
    # --json prints the API's answers
    for argv in (
        ("create", str(config), "--replace"),
        ("list",),
        ("show", run["RunId"]),
        ("logs", run["RunId"]),
        ("runs", "digits"),
    ):
        printed = _cli(s, *argv, "--json")
        assert printed.returncode == 0, printed.stderr
        # one JSON document, or one per line (logs), and nothing else
        decoder, text, at = json.JSONDecoder(), printed.stdout.strip(), 0
        while at < len(text):
            _doc, at = decoder.raw_decode(text, at)
            at = len(text) - len(text[at:].lstrip())
        assert text, argv
