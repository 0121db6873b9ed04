"""Agent process lifecycle: signals, socket handling, vendor config, extensions, memory on unload."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from support import (
    AgentProcess,
    big_side,
    build,
    make_big_onnx,
    make_conv_onnx,
    make_linear_onnx,
    running_agent,
    short_socket_dir,
    spawn_agent,
    start,
    tensor,
    wait_ready,
    write_native_config,
)

from edgefleet import __version__
from edgefleet.protocol.agent.proto import agent_pb2, extensions_pb2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_clean_shutdown_on_signal(tmp_path: Path, trust: Path, sig: int) -> None:
    proc = start(tmp_path, trust)
    assert stat.S_IMODE(proc.socket.stat().st_mode) == 0o660
    assert proc.stop(sig) == 0
    assert not proc.socket.exists()
    assert "agent stopped" in proc.log()


def test_socket_mode_is_configurable(tmp_path: Path, trust: Path) -> None:
    with running_agent(tmp_path, trust, agent={"socket_mode": "0600"}) as proc:
        assert stat.S_IMODE(proc.socket.stat().st_mode) == 0o600


def test_stale_socket_needs_force_and_live_socket_is_kept(tmp_path: Path, trust: Path) -> None:
    sock_path = short_socket_dir() / "agent.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock_path))
    stale.close()  # bound, never listened: a stale socket file
    config = write_native_config(
        tmp_path / "agent.json", trust_dir=trust, data_dir=tmp_path / "d", capture_dir=tmp_path / "c"
    )
    refused = spawn_agent(config, sock_path, tmp_path / "refused.log", force=False)
    assert refused.wait(timeout=60) == 1
    assert "start with -f" in (tmp_path / "refused.log").read_text()
    assert sock_path.exists()

    live = start(tmp_path, trust, config_path=config, socket=sock_path)  # -f removes the stale file
    try:
        second = spawn_agent(config, sock_path, tmp_path / "second.log", force=True)
        assert second.wait(timeout=60) == 1
        assert "another process is serving" in (tmp_path / "second.log").read_text()
        wait_ready(live)  # the first agent is unharmed
    finally:
        assert live.stop() == 0


def test_vendor_config_file_is_accepted_as_is(tmp_path: Path, trust: Path, keys: Path) -> None:
    vendor = {
        "sagemaker_edge_core_device_name": "vendor-device",
        "sagemaker_edge_core_device_fleet_name": "vendor-fleet",
        "sagemaker_edge_core_region": "us-west-2",
        "sagemaker_edge_core_root_certs_path": str(trust),
        "sagemaker_edge_provider_provider": "Aws",
        "sagemaker_edge_provider_provider_path": "/opt/agent/lib/libprovider_aws.so",
        "sagemaker_edge_provider_s3_bucket_name": "my-bucket",
        "sagemaker_edge_provider_aws_ca_cert_file": "/opt/agent/certs/AmazonRootCA1.pem",
        "sagemaker_edge_provider_aws_cert_file": "/opt/agent/certs/device.pem.crt",
        "sagemaker_edge_provider_aws_cert_pk_file": "/opt/agent/certs/private.pem.key",
        "sagemaker_edge_provider_aws_iot_cred_endpoint": "https://example.credentials.iot.us-west-2.amazonaws.com",
        "sagemaker_edge_core_capture_data_destination": "Disk",
        "sagemaker_edge_core_capture_data_disk_path": str(tmp_path / "captures"),
        "sagemaker_edge_core_folder_prefix": "prefix",
        "sagemaker_edge_core_capture_data_buffer_size": 30,
        "sagemaker_edge_core_capture_data_batch_size": 10,
        "sagemaker_edge_core_capture_data_push_period_seconds": 4,
        "sagemaker_edge_core_capture_data_base64_embed_limit": 3072,
        "sagemaker_edge_core_capture_data_periodic_upload": "false",
        "sagemaker_edge_core_capture_data_periodic_upload_period_seconds": 8,
        "sagemaker_edge_log_verbose": False,
        "sagemaker_edge_core_some_future_key": "whatever",
    }
    config = tmp_path / "sagemaker_edge_config.json"
    config.write_text(json.dumps(vendor))
    pkg = build(make_linear_onnx(tmp_path / "m.onnx"), keys, tmp_path / "pkgs", name="m", version="1")
    with running_agent(tmp_path, None, config_path=config) as proc:
        stub = proc.stub()
        stub.LoadModel(agent_pb2.LoadModelRequest(url=str(pkg), name="m"))
        out = stub.Predict(
            agent_pb2.PredictRequest(name="m", tensors=[tensor("x", np.ones((1, 4), np.float32))])
        )
        assert len(out.tensors) == 1
        assert "sagemaker_edge_core_some_future_key" in proc.log()


def test_bad_config_fails_with_reason(tmp_path: Path) -> None:
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"sagemaker_edge_core_device_name": "d"}))
    proc = spawn_agent(config, short_socket_dir() / "a.sock", tmp_path / "log")
    assert proc.wait(timeout=60) == 1
    assert "fleet_name" in (tmp_path / "log").read_text()


def test_writable_trust_dir_is_refused(tmp_path: Path, keys: Path) -> None:
    loose = tmp_path / "loose-trust"
    loose.mkdir()
    (loose / "root-ca.pem").write_bytes((keys / "trust" / "root-ca.pem").read_bytes())
    os.chmod(loose, 0o777)
    config = write_native_config(
        tmp_path / "agent.json", trust_dir=loose, data_dir=tmp_path / "d", capture_dir=tmp_path / "c"
    )
    proc = spawn_agent(config, short_socket_dir() / "a.sock", tmp_path / "log")
    assert proc.wait(timeout=60) == 1
    assert "writable" in (tmp_path / "log").read_text()


def test_extensions(tmp_path: Path, trust: Path, keys: Path) -> None:
    pkg = build(
        make_linear_onnx(tmp_path / "m.onnx"), keys, tmp_path / "pkgs", name="stats-model", version="2.1"
    )
    with running_agent(tmp_path, trust) as proc:
        ext = proc.ext()
        meta = ext.GetServerMetadata(extensions_pb2.ServerMetadataRequest())
        assert meta.version == __version__
        assert {"server-metadata", "health", "model-statistics", "posix-shm"} <= set(meta.extensions)
        assert "onnxruntime" in meta.runtimes and "null" in meta.runtimes
        health = ext.GetHealth(extensions_pb2.HealthRequest())
        assert health.live and health.ready and health.state == "SERVING"
        stub = proc.stub()
        stub.LoadModel(agent_pb2.LoadModelRequest(url=str(pkg), name="m"))
        for _ in range(20):
            stub.Predict(
                agent_pb2.PredictRequest(name="m", tensors=[tensor("x", np.ones((1, 4), np.float32))])
            )
        with pytest.raises(Exception, match=r"."):
            stub.Predict(
                agent_pb2.PredictRequest(name="m", tensors=[tensor("x", np.ones((1, 5), np.float32))])
            )
        (stats,) = ext.GetModelStatistics(extensions_pb2.ModelStatisticsRequest(name="m")).models
        assert (stats.model_name, stats.model_version) == ("stats-model", "2.1")
        assert (stats.request_count, stats.error_count) == (21, 1)  # the refused call counts as an error
        assert 0 < stats.latency.p50_ms <= stats.latency.p95_ms <= stats.latency.p99_ms
        assert stats.last_inference_time > 0
        assert stats.memory_bytes > 0


def _private_bytes(proc: AgentProcess) -> int:
    """The agent's anonymous (private) memory, resident or swapped: what its allocations hold.

    Not the process-wide RSS: that also counts the pages of shared libraries, which the kernel
    drops and faults back in as it likes, and which code paths a model happens to touch."""
    fields = {}
    for line in Path(f"/proc/{proc.proc.pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    return sum(int(fields.get(key, "0 kB").split()[0]) * 1024 for key in ("RssAnon", "VmSwap"))


def _warm_up(proc: AgentProcess, pkg: Path) -> None:
    """Load, run and unload a tiny model: the runtime's first-use memory (its libraries, thread
    pools) is the agent's for good, and a tiny model leaves no freed heap that the next load
    could reuse unseen (a baseline taken after unloading a big model can hold such heap, so a
    second load of it may add almost nothing to the agent's memory)."""
    stub = proc.stub()
    stub.LoadModel(agent_pb2.LoadModelRequest(url=str(pkg), name="warm-up"))
    stub.Predict(agent_pb2.PredictRequest(name="warm-up", tensors=[tensor("x", np.ones((1, 4), np.float32))]))
    stub.UnLoadModel(agent_pb2.UnLoadModelRequest(name="warm-up"))


def _weight_bytes(model: Path) -> int:
    import onnx
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(model)).graph.initializer)


def test_unload_frees_memory(tmp_path: Path, trust: Path, keys: Path) -> None:
    """Load and unload a 40 MiB model 25 times: the agent's memory returns near its baseline."""
    model = make_big_onnx(tmp_path / "big.onnx", megabytes=40)
    weights = _weight_bytes(model)
    pkg = build(model, keys, tmp_path / "pkgs", name="big", version="1")
    tiny = build(make_linear_onnx(tmp_path / "tiny.onnx"), keys, tmp_path / "pkgs", name="tiny", version="1")
    with running_agent(tmp_path, trust) as proc:
        stub = proc.stub()
        x = tensor("x", np.ones((1, big_side(40)), np.float32))

        def cycle() -> None:
            stub.LoadModel(agent_pb2.LoadModelRequest(url=str(pkg), name="big"))
            stub.Predict(agent_pb2.PredictRequest(name="big", tensors=[x]))
            stub.UnLoadModel(agent_pb2.UnLoadModelRequest(name="big"))

        _warm_up(proc, tiny)
        baseline = _private_bytes(proc)
        stub.LoadModel(agent_pb2.LoadModelRequest(url=str(pkg), name="big"))
        loaded = _private_bytes(proc)
        stub.UnLoadModel(agent_pb2.UnLoadModelRequest(name="big"))
        # a loaded model shows its weights (a few pages of heap freed before may be reused, so
        # nine tenths of them: the measurement sees the model, which is what the leak check needs)
        assert loaded - baseline >= weights * 9 // 10, (baseline >> 20, loaded >> 20, weights >> 20)
        for _ in range(25):
            cycle()
        after = _private_bytes(proc)
        # 25 loads of a model leave less than half of one model's weights behind: no copy of the
        # weights leaks, nor 2 % of them per load
        assert after - baseline < weights // 2, (baseline >> 20, loaded >> 20, after >> 20)


def test_a_loaded_model_stays_within_its_memory_reservation(tmp_path: Path, trust: Path, keys: Path) -> None:
    """What the agent reserves against its budget for a model covers what loading it and running
    4 requests at once adds to the agent's memory (load-time scratch memory is given back).

    The measured load must show at least the model's weights: a loaded model holds them, and
    the baseline (after a tiny warm-up model) holds no freed heap that could hide them. So a
    reservation smaller than the weights fails, and so does one that leaves out the runtime's
    working memory or scratch that stays resident."""
    model = make_conv_onnx(tmp_path / "conv.onnx")
    weights = _weight_bytes(model)
    pkg = build(model, keys, tmp_path / "pkgs", name="conv", version="1")
    tiny = build(make_linear_onnx(tmp_path / "tiny.onnx"), keys, tmp_path / "pkgs", name="tiny", version="1")
    with running_agent(tmp_path, trust) as proc:
        stub = proc.stub()
        x = tensor("x", np.ones((1, 512, 8, 8), np.float32))
        _warm_up(proc, tiny)
        baseline = _private_bytes(proc)
        stub.LoadModel(agent_pb2.LoadModelRequest(url=str(pkg), name="conv"))
        with ThreadPoolExecutor(4) as pool:
            list(
                pool.map(
                    lambda _: stub.Predict(agent_pb2.PredictRequest(name="conv", tensors=[x])), range(16)
                )
            )
        grown = _private_bytes(proc) - baseline
        (stats,) = proc.ext().GetModelStatistics(extensions_pb2.ModelStatisticsRequest(name="conv")).models
        assert grown >= weights, (grown >> 20, weights >> 20)
        assert grown <= stats.memory_bytes, (grown >> 20, stats.memory_bytes >> 20)


def test_stop_leaves_a_newer_agents_socket_alone(tmp_path: Path, trust: Path) -> None:
    proc = start(tmp_path, trust)
    proc.socket.unlink()  # a newer agent took over the path while this one shuts down
    newer = socket.socket(socket.AF_UNIX)
    newer.bind(str(proc.socket))
    try:
        assert proc.stop() == 0
        assert proc.socket.exists()
    finally:
        newer.close()
