"""Extension "shadow-models": a candidate mirrored on a handle's live traffic, against a real agent.

One agent process serves the module on a real Unix socket; models are tiny ONNX graphs run by
ONNX Runtime (the figures) and null-runtime packages (a shadow that fails, or waits at a gate the
test opens, so queue and shared-memory cases are decided by events, never by timing).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from support import (
    AgentProcess,
    build,
    build_null,
    make_linear_onnx,
    running_agent,
    wait_for,
)

from edgefleet.client import AgentClient, ShadowStatistics
from edgefleet.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from edgefleet.core.tensors import DataType, TensorSpec
from edgefleet.protocol.agent.proto import extensions_pb2

X = {"x": np.ones((1, 4), np.float32)}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, trust: Path) -> Iterator[AgentProcess]:
    with running_agent(tmp_path_factory.mktemp("shadow"), trust) as proc:
        yield proc


@pytest.fixture(scope="module")
def linear(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> dict[str, Path]:
    """ONNX packages: ``champion`` (seed 0), ``twin`` (the same graph, another version), ``faulty``
    (other weights: a planted fault)."""
    work = tmp_path_factory.mktemp("linear")
    base = make_linear_onnx(work / "lin0.onnx", seed=0)
    other = make_linear_onnx(work / "lin1.onnx", seed=1)
    return {
        "champion": build(base, keys, work / "c", name="lin", version="1"),
        "twin": build(base, keys, work / "t", name="lin", version="2"),
        "faulty": build(other, keys, work / "f", name="lin", version="3"),
    }


@pytest.fixture
def client(agent: AgentProcess) -> Iterator[AgentClient]:
    with AgentClient(agent.address, timeout=60) as client:
        yield client
        for pair in client.shadow_statistics():
            client.unload_shadow(pair.handle)
        for handle in client.handles():
            client.remove_handle(handle)
        for model in client.list():
            client.unload(model.name)


def stats(client: AgentClient, handle: str) -> ShadowStatistics:
    (pair,) = client.shadow_statistics(handle)
    return pair


def settled(client: AgentClient, handle: str, calls: int) -> ShadowStatistics:
    """The pair's figures once ``calls`` mirrored calls have been answered (or failed) by the shadow."""
    return wait_for(  # type: ignore[no-any-return]
        lambda: (p := stats(client, handle)).completed + p.shadow_errors >= calls and p,
        f"{calls} mirrored calls on {handle}",
    )


def test_figures_and_answers_from_the_champion(
    client: AgentClient, agent: AgentProcess, linear: dict[str, Path]
) -> None:
    client.load(linear["champion"], "lin-v1")
    client.load(linear["twin"], "lin-v2")
    client.load(linear["faulty"], "lin-v3")
    client.set_handle("same", "lin-v1")
    client.set_handle("fault", "lin-v1")
    # a shadow identical to the champion, and one with a planted fault (other weights)
    first = client.load_shadow("same", "lin-v2")
    assert (first.champion, first.shadow, first.mirrored, first.comparison) == ("lin-v1", "lin-v2", 0, "auto")
    assert (first.champion_model_version, first.shadow_model_version) == ("1", "2")
    client.load_shadow("fault", "lin-v3")
    assert "shadow-models" in client.server_metadata().extensions

    inputs = np.random.default_rng(7).standard_normal((40, 1, 4)).astype(np.float32)
    champion = np.stack([client.predict("lin-v1", {"x": x})["y"] for x in inputs])
    faulty = np.stack([client.predict("lin-v3", {"x": x})["y"] for x in inputs])
    with AgentClient(agent.address, timeout=60, fast_path=False) as over_grpc:
        for index, x in enumerate(inputs):
            caller = over_grpc if index % 2 else client  # both transports reach the one predict
            for handle in ("same", "fault"):
                np.testing.assert_array_equal(caller.predict(handle, {"x": x})["y"], champion[index])

    same = settled(client, "same", len(inputs))
    assert (same.mirrored, same.completed, same.agreed, same.disagreed) == (40, 40, 40, 0)
    assert (same.shadow_errors, same.dropped, same.agreement_rate, same.max_abs_diff) == (0, 0, 1.0, 0.0)
    assert same.champion_p50_ms > 0 and same.shadow_p50_ms > 0
    assert same.champion_p99_ms >= same.champion_p50_ms

    fault = settled(client, "fault", len(inputs))
    disagree = int(np.sum(champion.argmax(axis=-1) != faulty.argmax(axis=-1)))
    assert 0 < disagree < len(inputs)  # the planted fault changes some answers, not all
    assert (fault.completed, fault.agreed, fault.disagreed) == (40, 40 - disagree, disagree)
    assert fault.agreement_rate == pytest.approx((40 - disagree) / 40)
    assert fault.max_abs_diff == pytest.approx(float(np.max(np.abs(champion - faulty))), rel=1e-6)
    as_dict = fault.to_dict()
    assert as_dict["disagreed"] == disagree and as_dict["handle"] == "fault"


def test_close_comparison_uses_the_tolerance(client: AgentClient, linear: dict[str, Path]) -> None:
    client.load(linear["champion"], "lin-v1")
    client.load(linear["faulty"], "lin-v3")
    client.set_handle("reg", "lin-v1")
    x = {"x": np.full((1, 4), 0.5, np.float32)}
    diff = float(np.max(np.abs(client.predict("lin-v1", x)["y"] - client.predict("lin-v3", x)["y"])))
    for tolerance, agreed in ((diff * 2, 3), (diff / 2, 0)):
        client.load_shadow("reg", "lin-v3", comparison="close", tolerance=tolerance)
        for _ in range(3):
            client.predict("reg", x)
        pair = settled(client, "reg", 3)
        final = client.unload_shadow("reg")
        assert (pair.agreed, pair.disagreed, final.completed) == (agreed, 3 - agreed, 3)
        assert final.comparison == "close" and final.tolerance == tolerance
        assert final.max_abs_diff == pytest.approx(diff, rel=1e-6)
    assert [m.name for m in client.list()] == ["lin-v1", "lin-v3"]  # unpairing unloads nothing


def test_a_failing_shadow_never_reaches_the_application(
    client: AgentClient, keys: Path, tmp_path: Path
) -> None:
    client.load(build_null(keys, tmp_path / "c", name="det", version="1"), "det-v1")
    client.load(build_null(keys, tmp_path / "s", name="det", version="2", fail=True), "det-v2")
    client.set_handle("det", "det-v1")
    client.load_shadow("det", "det-v2")
    for i in range(20):
        x = {"x": np.full((1, 4), i, np.float32)}
        np.testing.assert_array_equal(client.predict("det", x)["y"], x["x"])
    pair = settled(client, "det", 20)
    assert (pair.mirrored, pair.shadow_errors, pair.completed, pair.agreed) == (20, 20, 0, 0)
    assert "configured to fail" in pair.last_error
    (champion,) = client.model_stats("det-v1")
    assert (champion.request_count, champion.error_count) == (20, 0)


def test_sample_rate_is_honoured_exactly(client: AgentClient, keys: Path, tmp_path: Path) -> None:
    client.load(build_null(keys, tmp_path / "c", name="det", version="1"), "det-v1")
    client.load(build_null(keys, tmp_path / "s", name="det", version="2"), "det-v2")
    client.set_handle("det", "det-v1")
    for rate, calls, mirrored in ((0.25, 43, 10), (0.1, 30, 3), (0.0, 10, 0), (1.0, 7, 7)):
        client.load_shadow("det", "det-v2", sample_rate=rate)
        for _ in range(calls):
            client.predict("det", X)
        pair = settled(client, "det", mirrored)
        assert (pair.mirrored, pair.completed, pair.agreed, pair.dropped) == (mirrored, mirrored, mirrored, 0)
        client.unload_shadow("det")
    # every 4th call exactly: the 44th call (the 4th of a fresh pair's 4) is the next one mirrored
    client.load_shadow("det", "det-v2", sample_rate=0.25)
    for expected in (0, 0, 0, 1, 1, 1, 1, 2):
        client.predict("det", X)
        assert wait_for(lambda e=expected: stats(client, "det").mirrored == e, f"{expected} mirrored")  # type: ignore[misc]


def test_a_full_queue_drops_and_never_blocks_the_champion(
    client: AgentClient, keys: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "open"
    client.load(build_null(keys, tmp_path / "c", name="det", version="1"), "det-v1")
    client.load(build_null(keys, tmp_path / "s", name="det", version="2", gate=str(gate)), "det-v2")
    client.set_handle("det", "det-v1")
    client.load_shadow("det", "det-v2", max_queue=2)
    client.predict("det", X)
    wait_for(lambda: client.model_stats("det-v2")[0].in_flight == 1, "the shadow holding a call at its gate")
    for _ in range(9):  # answered while the shadow is held: the champion does not wait on it
        np.testing.assert_array_equal(client.predict("det", X)["y"], X["x"])
    pair = stats(client, "det")
    assert (pair.mirrored, pair.queued, pair.dropped, pair.completed) == (3, 2, 7, 0)
    gate.touch()
    pair = settled(client, "det", 3)
    assert (pair.completed, pair.agreed, pair.dropped, pair.queued) == (3, 3, 7, 0)


def test_shared_memory_inputs_are_mirrored_after_the_client_reuses_them(
    agent: AgentProcess, client: AgentClient, keys: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "open"
    client.load(build_null(keys, tmp_path / "c", name="det", version="1"), "det-v1")
    client.load(build_null(keys, tmp_path / "s", name="det", version="2", gate=str(gate)), "det-v2")
    client.set_handle("det", "det-v1")
    client.load_shadow("det", "det-v2", comparison="close", tolerance=1e-30)
    with AgentClient(agent.address, timeout=60, shm_threshold=0) as shm:  # every tensor in shared memory
        first = {"x": np.full((1, 4), 1.0, np.float32)}
        np.testing.assert_array_equal(shm.predict("det", first)["y"], first["x"])
        # the shadow holds the first call at its gate, before it reads the inputs
        wait_for(lambda: client.model_stats("det-v2")[0].in_flight == 1, "the shadow holding a call")
        for value in (2.0, 3.0):  # the client writes each call into the segment it reuses
            x = {"x": np.full((1, 4), value, np.float32)}
            np.testing.assert_array_equal(shm.predict("det", x)["y"], x["x"])
    gate.touch()
    pair = settled(client, "det", 3)
    assert (pair.completed, pair.agreed, pair.disagreed, pair.max_abs_diff) == (3, 3, 0, 0.0)


def test_promotion_under_concurrent_clients_fails_no_call(
    client: AgentClient, agent: AgentProcess, keys: Path, tmp_path: Path
) -> None:
    client.load(build_null(keys, tmp_path / "c", name="det", version="1", delay_ms=2), "det-v1")
    client.load(build_null(keys, tmp_path / "s", name="det", version="2", op="zeros", delay_ms=2), "det-v2")
    client.set_handle("det", "det-v1")
    client.load_shadow("det", "det-v2")
    stop = threading.Event()
    promoted = threading.Event()
    errors: list[BaseException] = []
    answers: list[tuple[bool, float]] = []  # (after promotion returned?, the answer's value)
    lock = threading.Lock()

    def application(fast: bool) -> None:
        with AgentClient(agent.address, timeout=60, fast_path=fast) as app:
            while not stop.is_set():
                after = promoted.is_set()
                try:
                    y = app.predict("det", X)["y"]
                except BaseException as exc:
                    errors.append(exc)
                    return
                with lock:
                    answers.append((after, float(y[0, 0])))

    apps = [threading.Thread(target=application, args=(i % 2 == 0,)) for i in range(4)]
    for thread in apps:
        thread.start()

    def served(count: int) -> bool:
        if errors:
            raise AssertionError(f"an application call failed: {errors[0]!r}")
        return len(answers) >= count

    try:
        wait_for(lambda: served(40), "calls before the promotion")
        previous, final = client.promote_shadow("det")
        promoted.set()
        seen = len(answers)
        wait_for(lambda: served(seen + 40), "calls after the promotion")
    finally:
        stop.set()
        for thread in apps:
            thread.join()
    assert errors == []
    assert previous == "det-v1" and final.shadow == "det-v2" and final.mirrored > 0
    assert {value for _, value in answers} <= {1.0, 0.0}
    assert any(value == 1.0 for _, value in answers)  # the champion's identity before
    assert all(value == 0.0 for after, value in answers if after)  # the shadow's zeros after
    assert client.handles() == {"det": "det-v2"}
    assert client.shadow_statistics() == []
    assert [m.name for m in client.list()] == ["det-v1", "det-v2"]  # the old champion stays loaded
    with pytest.raises(NotFound, match="no shadow"):
        client.promote_shadow("det")


def test_bad_requests_get_clear_errors(
    client: AgentClient, agent: AgentProcess, keys: Path, tmp_path: Path
) -> None:
    client.load(build_null(keys, tmp_path / "c", name="det", version="1"), "det-v1")
    client.load(build_null(keys, tmp_path / "s", name="det", version="2"), "det-v2")
    wide = (TensorSpec("x", DataType.FLOAT32, (-1, 8)),)
    client.load(build_null(keys, tmp_path / "w", name="det", version="3", inputs=wide), "det-v3")
    two = (TensorSpec("y", DataType.FLOAT32, (-1, 4)), TensorSpec("z", DataType.FLOAT32, (-1, 4)))
    client.load(build_null(keys, tmp_path / "t", name="det", version="4", outputs=two), "det-v4")
    client.set_handle("det", "det-v1")

    with pytest.raises(NotFound, match="no handle named 'ghost'"):
        client.load_shadow("ghost", "det-v2")
    with pytest.raises(FailedPrecondition, match="not a handle"):
        client.load_shadow("det-v1", "det-v2")
    with pytest.raises(NotFound, match="not a loaded model"):
        client.load_shadow("det", "det-v9")
    with pytest.raises(InvalidArgument, match="same inputs"):
        client.load_shadow("det", "det-v3")
    with pytest.raises(InvalidArgument, match="2 output"):
        client.load_shadow("det", "det-v4")
    with pytest.raises(InvalidArgument, match="champion"):
        client.load_shadow("det", "det-v1")
    with pytest.raises(InvalidArgument, match="is a handle"):
        client.load_shadow("det", "det")
    with pytest.raises(InvalidArgument, match="model name"):
        client.load_shadow("det", "bad name")
    with pytest.raises(InvalidArgument, match="sample_rate"):
        client.load_shadow("det", "det-v2", sample_rate=1.5)
    with pytest.raises(InvalidArgument, match="sample_rate"):
        client.load_shadow("det", "det-v2", sample_rate=float("nan"))
    with pytest.raises(InvalidArgument, match="tolerance"):
        client.load_shadow("det", "det-v2", tolerance=-1.0)
    with pytest.raises(InvalidArgument, match="max_queue"):
        client.load_shadow("det", "det-v2", max_queue=100_000)
    with pytest.raises(InvalidArgument, match="comparison"):
        client.load_shadow("det", "det-v2", comparison="bogus")  # type: ignore[arg-type]
    raw = agent.ext()
    with pytest.raises(grpc.RpcError) as info:
        raw.LoadShadow(
            extensions_pb2.LoadShadowRequest(handle="det", shadow="det-v2", comparison=7), timeout=30
        )  # type: ignore[arg-type]
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "comparison" in (
        info.value.details() or ""
    )
    for call in (client.unload_shadow, client.promote_shadow, client.shadow_statistics):
        with pytest.raises(NotFound, match="has no shadow"):
            call("det")
    assert client.shadow_statistics() == []  # nothing half-made by the refusals

    client.load_shadow("det", "det-v2")
    with pytest.raises(AlreadyExists, match="already"):
        client.load_shadow("det", "det-v4")
    with pytest.raises(FailedPrecondition, match="shadow of handle"):
        client.unload("det-v2")
    with pytest.raises(FailedPrecondition, match="promote or unload"):
        client.set_handle("det", "det-v2")
    with pytest.raises(FailedPrecondition, match="promote or unload"):
        client.remove_handle("det")
    assert client.handles() == {"det": "det-v1"}
    assert [p.shadow for p in client.shadow_statistics()] == ["det-v2"]
    client.unload_shadow("det")
    client.unload("det-v2")  # free once unpaired


def test_cli_shadow_commands(client: AgentClient, agent: AgentProcess, keys: Path, tmp_path: Path) -> None:
    client.load(build_null(keys, tmp_path / "c", name="det", version="1"), "det-v1")
    client.load(build_null(keys, tmp_path / "s", name="det", version="2"), "det-v2")
    client.set_handle("det", "det-v1")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgefleet", "agent", "shadow", *args, "-a", agent.address],
            capture_output=True,
            text=True,
            env=os.environ.copy(),
            timeout=180,
            check=False,
        )

    loaded = cli("load", "det", "det-v2", "--rate", "0.5")
    assert loaded.returncode == 0, loaded.stderr
    assert "det-v2 shadows det-v1 on handle det" in loaded.stdout
    for _ in range(4):
        client.predict("det", X)
    settled(client, "det", 2)
    shown = cli("stats", "--json")
    assert shown.returncode == 0, shown.stderr
    assert '"agreed": 2' in shown.stdout and '"sample_rate": 0.5' in shown.stdout
    table = cli("stats", "det")
    assert table.returncode == 0 and "2/2 (100.0%)" in table.stdout, table.stdout + table.stderr
    missing = cli("unload", "ghost")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    promoted = cli("promote", "det")
    assert promoted.returncode == 0, promoted.stderr
    assert "handle det -> det-v2 (was det-v1" in promoted.stdout
    assert client.handles() == {"det": "det-v2"}


def test_agent_stops_cleanly_with_a_pair_mirroring(keys: Path, trust: Path, tmp_path: Path) -> None:
    gate = tmp_path / "open"
    (tmp_path / "agent").mkdir()
    with running_agent(tmp_path / "agent", trust) as proc, AgentClient(proc.address, timeout=60) as client:
        client.load(build_null(keys, tmp_path / "c", name="det", version="1"), "det-v1")
        client.load(build_null(keys, tmp_path / "s", name="det", version="2", gate=str(gate)), "det-v2")
        client.set_handle("det", "det-v1")
        client.load_shadow("det", "det-v2")
        for _ in range(3):
            client.predict("det", X)
        wait_for(lambda: client.model_stats("det-v2")[0].in_flight == 1, "the shadow holding a call")
        gate.touch()  # the held call may finish while the agent stops; the queued one is discarded
        assert proc.stop() == 0, proc.log()
