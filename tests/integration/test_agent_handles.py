"""Extension "model-handles": stable names resolved in the agent, switched atomically under load."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from support import AgentProcess, build_null, running_agent, wait_for

from edgefleet.client import AgentClient
from edgefleet.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, trust: Path) -> Iterator[AgentProcess]:
    with running_agent(tmp_path_factory.mktemp("handles"), trust) as proc:
        yield proc


@pytest.fixture
def client(agent: AgentProcess) -> Iterator[AgentClient]:
    with AgentClient(agent.address, timeout=60) as client:
        yield client
        for handle in client.handles():
            client.remove_handle(handle)
        for model in client.list():
            client.unload(model.name)


def test_handle_rules(client: AgentClient, keys: Path, tmp_path: Path) -> None:
    pkg = build_null(keys, tmp_path / "pkgs", name="det", version="1")
    client.load(str(pkg), "det-v1")
    assert client.set_handle("detector", "det-v1") is None
    assert client.handles() == {"detector": "det-v1"}
    x = {"x": np.ones((1, 4), np.float32)}
    np.testing.assert_array_equal(client.predict("detector", x)["y"], x["x"])
    assert client.describe("detector").name == "det-v1"
    assert [m.name for m in client.list()] == ["det-v1"]  # handles are not models

    with pytest.raises(NotFound, match="not a loaded model"):
        client.set_handle("other", "ghost")
    with pytest.raises(AlreadyExists, match="shadow"):
        client.set_handle("det-v1", "det-v1")
    with pytest.raises(AlreadyExists, match="handle"):
        client.load(str(pkg), "detector")
    with pytest.raises(InvalidArgument, match="model name"):
        client.set_handle("bad handle", "det-v1")
    with pytest.raises(FailedPrecondition, match="detector"):
        client.unload("det-v1")
    client.remove_handle("detector")
    with pytest.raises(NotFound, match="detector"):
        client.remove_handle("detector")
    with pytest.raises(NotFound, match="detector"):
        client.predict("detector", x)
    client.unload("det-v1")


def test_hot_swap_under_load_loses_no_call(
    client: AgentClient, agent: AgentProcess, keys: Path, tmp_path: Path
) -> None:
    v1 = build_null(keys, tmp_path / "v1", name="det", version="1", delay_ms=20)
    v2 = build_null(keys, tmp_path / "v2", name="det", version="2", delay_ms=20)
    client.load(str(v1), "det-v1")
    client.set_handle("detector", "det-v1")
    stop = threading.Event()
    errors: list[BaseException] = []
    done = [0]

    def application() -> None:
        with AgentClient(agent.address, timeout=60) as app:
            while not stop.is_set():
                try:
                    app.predict("detector", {"x": np.ones((1, 4), np.float32)})
                    done[0] += 1
                except BaseException as exc:
                    errors.append(exc)
                    return

    apps = [threading.Thread(target=application) for _ in range(3)]
    for thread in apps:
        thread.start()

    def served_more(than: int) -> bool:
        if errors:
            raise AssertionError(f"an application call failed: {errors[0]!r}")
        return done[0] > than

    try:
        for _ in range(3):  # swap back and forth while three applications keep calling
            # each swap happens while calls are being served (waited for, not assumed)
            wait_for(lambda seen=done[0]: served_more(seen), "the applications' calls")  # type: ignore[misc]
            client.load(str(v2), "det-v2")
            assert client.set_handle("detector", "det-v2") == "det-v1"
            client.unload("det-v1")
            wait_for(lambda seen=done[0]: served_more(seen), "calls on det-v2")  # type: ignore[misc]
            client.load(str(v1), "det-v1")
            assert client.set_handle("detector", "det-v1") == "det-v2"
            client.unload("det-v2")
    finally:
        stop.set()
        for thread in apps:
            thread.join()
    assert errors == []
    assert done[0] > 0
    client.remove_handle("detector")
