"""The agent's lifecycle enum and its thread-safe holder."""

from __future__ import annotations

import threading

from edgefleet.agent.server import AgentLifecycle, AgentState


def test_the_wire_strings_are_unchanged() -> None:
    assert [s.value for s in AgentState] == ["STARTING", "SERVING", "STOPPING", "STOPPED"]


def test_only_one_of_many_concurrent_stops_begins() -> None:
    lifecycle = AgentLifecycle()
    lifecycle.set(AgentState.SERVING)
    barrier = threading.Barrier(8)
    began: list[bool] = []

    def stop() -> None:
        barrier.wait(timeout=60)
        began.append(lifecycle.begin_stop())

    threads = [threading.Thread(target=stop) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(began) == [False] * 7 + [True]
    assert lifecycle.state is AgentState.STOPPING
    lifecycle.set(AgentState.STOPPED)
    assert not lifecycle.begin_stop() and lifecycle.state is AgentState.STOPPED
