"""Predict calls overlap: on one model up to its limit, and across models; the queue is bounded."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from support import AgentProcess, build, build_null, make_slow_onnx, running_agent, tensor, wait_for

from edgefleet.protocol.agent.proto import agent_pb2, extensions_pb2


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, trust: Path) -> Iterator[AgentProcess]:
    workdir = tmp_path_factory.mktemp("concurrency")
    with running_agent(
        workdir, trust, agent={"max_concurrent_per_model": 3, "max_queued_per_model": 2}
    ) as proc:
        yield proc


def stats(agent: AgentProcess) -> dict[str, extensions_pb2.ModelStatistics]:
    response = agent.ext().GetModelStatistics(extensions_pb2.ModelStatisticsRequest())
    return {m.name: m for m in response.models}


def test_calls_overlap_on_one_model_and_across_models(
    agent: AgentProcess, keys: Path, tmp_path: Path
) -> None:
    # The null model holds every call until the gate file exists (releasing the GIL like a real
    # engine): the calls stay in flight for as long as the test looks, however busy the machine.
    gate = tmp_path / "gate"
    pkg = build_null(keys, tmp_path / "pkgs", name="slow", gate=str(gate))
    stub = agent.stub()
    stub.LoadModel(agent_pb2.LoadModelRequest(url=str(pkg), name="slow-a"))
    stub.LoadModel(agent_pb2.LoadModelRequest(url=str(pkg), name="slow-b"))
    x = tensor("x", np.ones((1, 4), np.float32))
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [
            pool.submit(stub.Predict, agent_pb2.PredictRequest(name="slow-a", tensors=[x]), timeout=60)
            for _ in range(5)
        ]
        futures.append(
            pool.submit(stub.Predict, agent_pb2.PredictRequest(name="slow-b", tensors=[x]), timeout=60)
        )
        # three calls run at once on slow-a (its limit), two wait, and slow-b runs beside them
        wait_for(
            lambda: (s := stats(agent))["slow-a"].in_flight == 3
            and s["slow-a"].queued == 2
            and s["slow-b"].in_flight == 1,
            "3 running + 2 queued on slow-a and 1 running on slow-b",
        )
        # the queue is full: one more call is refused at once
        with pytest.raises(grpc.RpcError, match=r".") as info:
            stub.Predict(agent_pb2.PredictRequest(name="slow-a", tensors=[x]), timeout=60)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queued" in info.value.details()
        gate.touch()
        for future in futures:
            assert len(future.result().tensors) == 1
    final = stats(agent)
    assert (final["slow-a"].request_count, final["slow-a"].error_count) == (
        6,
        1,
    )  # the refused call is an error
    assert final["slow-a"].in_flight == 0
    assert final["slow-b"].request_count == 1


def test_unload_waits_for_running_calls(agent: AgentProcess, keys: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"  # the call runs until the test opens the gate
    pkg = build_null(keys, tmp_path / "pkgs", name="slow", gate=str(gate))
    stub = agent.stub()
    stub.LoadModel(agent_pb2.LoadModelRequest(url=str(pkg), name="draining"))
    x = tensor("x", np.ones((1, 4), np.float32))
    results: list[object] = []
    worker = threading.Thread(
        target=lambda: results.append(
            stub.Predict(agent_pb2.PredictRequest(name="draining", tensors=[x]), timeout=120)
        )
    )
    worker.start()
    wait_for(lambda: "draining" in (s := stats(agent)) and s["draining"].in_flight == 1, "the call to start")
    unloader = threading.Thread(
        target=lambda: stub.UnLoadModel(agent_pb2.UnLoadModelRequest(name="draining"))
    )
    unloader.start()

    wait_for(  # an unloading model leaves the list at once (and takes no new calls)
        lambda: "draining" not in {m.name for m in stub.ListModels(agent_pb2.ListModelsRequest()).models},
        "the unload to begin",
    )
    assert unloader.is_alive() and worker.is_alive()  # the unload waits for the running call
    gate.touch()
    worker.join(120)
    unloader.join(120)
    assert not unloader.is_alive()
    assert len(results) == 1 and len(results[0].tensors) == 1  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError, match=r".") as info:
        stub.Predict(agent_pb2.PredictRequest(name="draining", tensors=[x]))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND


def test_adaptive_threads_config_serves_overlapping_calls(tmp_path: Path, trust: Path, keys: Path) -> None:
    """`adaptive_threads = true`: overlapping Predicts on an ONNX model give the lone call's answer,
    and the model's memory estimate counts the single-threaded twin."""
    model = make_slow_onnx(tmp_path / "slow.onnx")
    pkg = build(model, keys, tmp_path / "pkgs", name="slow-onnx")
    x = np.random.default_rng(3).standard_normal((1024, 1024)).astype(np.float32)
    with running_agent(tmp_path, trust, agent={"adaptive_threads": True, "intra_op_threads": 2}) as proc:
        stub = proc.stub()
        stub.LoadModel(agent_pb2.LoadModelRequest(url=str(pkg), name="m"))
        request = agent_pb2.PredictRequest(name="m", tensors=[tensor("x", x)])
        lone = stub.Predict(request, timeout=60).tensors[0].byte_data
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = [pool.submit(stub.Predict, request, timeout=120) for _ in range(3)]
            wait_for(lambda: stats(proc)["m"].in_flight >= 2, "two calls to overlap")
            answers = [f.result().tensors[0].byte_data for f in futures]
        expected = np.frombuffer(lone, np.float32)
        scale = float(np.abs(expected).max())
        for answer in answers:
            np.testing.assert_allclose(
                np.frombuffer(answer, np.float32), expected, rtol=1e-4, atol=1e-4 * scale
            )
        final = stats(proc)["m"]
        assert (final.request_count, final.error_count) == (4, 0)
        # the wide session (weights counted twice while it is optimised) plus the twin
        assert final.memory_bytes >= 3 * model.stat().st_size
