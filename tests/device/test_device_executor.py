"""The executor against the in-process agent and control plane, with real signed packages on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from device_testkit import CrashHere, Device, ScriptedAgent, deployment, make_device, null_package

from edgefleet.core.deviceplane import (
    Definition,
    Deployment,
    DesiredState,
    FailurePolicy,
    PackageRef,
    Result,
)
from edgefleet.core.errors import FailedPrecondition, NotFound, Unavailable
from edgefleet.core.signing import init_keys
from edgefleet.device.config import DeploymentSettings
from edgefleet.device.sim.control_plane import FakeControlPlane
from edgefleet.device.sim.nullagent import NullAgent
from edgefleet.device.state import JournalKind, StateStore, StepStatus


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("packages")
    return {
        "1.0": null_package(keys, out, "1.0"),
        "2.0": null_package(keys, out, "2.0"),
        "bad": null_package(keys, out, "3.0", fail=True),
    }


@pytest.fixture
def plane(packages: dict[str, Path]) -> FakeControlPlane:
    return FakeControlPlane()


def ref(plane: FakeControlPlane, packages: dict[str, Path], version: str) -> PackageRef:
    return plane.add_package(packages[version])


def device(tmp_path: Path, trust: Path, plane: FakeControlPlane, agent: object | None = None) -> Device:
    return make_device(tmp_path / "state", trust, plane, agent or NullAgent())  # type: ignore[arg-type]


def test_first_deployment_serves_the_handle(
    tmp_path: Path, trust: Path, plane: FakeControlPlane, packages: dict[str, Path]
) -> None:
    dev = device(tmp_path, trust, plane)
    v1 = ref(plane, packages, "1.0")
    outcome = dev.executor.apply(deployment("p1.s1", ("detector", "1.0", v1)))
    assert outcome.result is Result.SUCCEEDED
    assert dev.handles() == {"detector": "detector-1-0-g1"}
    assert dev.loaded() == {"detector-1-0-g1"}
    state = dev.store.state
    assert state.journal is None
    assert state.installed["detector"].model_version == "1.0"
    assert state.managed == {"detector-1-0-g1"}
    staged = tmp_path / "state" / "packages" / "staged" / v1.key
    assert (staged / "manifest.json").is_file()
    assert not list((tmp_path / "state" / "packages" / "downloads").iterdir())  # archive gone once staged


def test_upgrade_switches_then_unloads_the_old_version(
    tmp_path: Path, trust: Path, plane: FakeControlPlane, packages: dict[str, Path]
) -> None:
    dev = device(tmp_path, trust, plane)
    v1, v2 = ref(plane, packages, "1.0"), ref(plane, packages, "2.0")
    dev.executor.apply(deployment("p1.s1", ("detector", "1.0", v1)))
    outcome = dev.executor.apply(deployment("p2.s1", ("detector", "2.0", v2)))
    assert outcome.result is Result.SUCCEEDED
    assert dev.handles() == {"detector": "detector-2-0-g2"}
    assert dev.loaded() == {"detector-2-0-g2"}
    # the previous version stays staged for a rollback the server may still ask for
    assert (tmp_path / "state" / "packages" / "staged" / v1.key).is_dir()


def test_smoke_test_failure_rolls_back_and_the_old_version_keeps_serving(
    tmp_path: Path, trust: Path, plane: FakeControlPlane, packages: dict[str, Path]
) -> None:
    dev = device(tmp_path, trust, plane)
    v1, bad = ref(plane, packages, "1.0"), ref(plane, packages, "bad")
    dev.executor.apply(deployment("p1.s1", ("detector", "1.0", v1)))
    outcome = dev.executor.apply(deployment("p2.s1", ("detector", "3.0", bad)))
    assert outcome.result is Result.FAILED_ROLLED_BACK
    assert outcome.message.startswith("smoke detector-3-0-g2 failed: INVALID_ARGUMENT: ")
    assert dev.handles() == {"detector": "detector-1-0-g1"}
    assert dev.loaded() == {"detector-1-0-g1"}
    state = dev.store.state
    assert state.installed["detector"].alias == "detector-1-0-g1"
    assert state.managed == {"detector-1-0-g1"}
    assert state.journal is None
    assert state.history[-1].result is Result.FAILED_ROLLED_BACK


def test_smoke_failure_under_do_nothing_reports_no_change(
    tmp_path: Path, trust: Path, plane: FakeControlPlane, packages: dict[str, Path]
) -> None:
    dev = device(tmp_path, trust, plane)
    v1, bad = ref(plane, packages, "1.0"), ref(plane, packages, "bad")
    dev.executor.apply(deployment("p1.s1", ("detector", "1.0", v1)))
    outcome = dev.executor.apply(
        deployment("p2.s1", ("detector", "3.0", bad), policy=FailurePolicy.DO_NOTHING)
    )
    assert outcome.result is Result.FAILED_NO_CHANGE
    assert dev.handles() == {"detector": "detector-1-0-g1"}
    assert dev.loaded() == {"detector-1-0-g1"}


def test_a_multi_model_deployment_switches_all_or_none(
    tmp_path: Path, trust: Path, plane: FakeControlPlane, packages: dict[str, Path]
) -> None:
    dev = device(tmp_path, trust, plane)
    v1, bad = ref(plane, packages, "1.0"), ref(plane, packages, "bad")
    outcome = dev.executor.apply(deployment("p1.s1", ("a", "1.0", v1), ("b", "3.0", bad)))
    assert outcome.result is Result.FAILED_ROLLED_BACK
    assert dev.handles() == {}
    assert dev.loaded() == set()
    assert dev.store.state.installed == {}


def test_a_digest_mismatch_is_retried_then_fails_without_change(
    tmp_path: Path, trust: Path, plane: FakeControlPlane, packages: dict[str, Path]
) -> None:
    dev = device(tmp_path, trust, plane)
    good = ref(plane, packages, "1.0")
    lying = PackageRef(good.url, sha256="0" * 64, size=good.size)
    outcome = dev.executor.apply(deployment("p1.s1", ("detector", "1.0", lying)))
    assert outcome.result is Result.FAILED_NO_CHANGE
    assert f"digest {good.sha256} is not the announced {'0' * 64}" in outcome.message
    assert len(plane.downloads) == 3  # NO_WAIT allows three attempts, each from scratch
    assert dev.loaded() == set()
    assert not list((tmp_path / "state" / "packages" / "downloads").iterdir())


def test_an_untrusted_signature_fails_without_change(
    tmp_path: Path, trust: Path, plane: FakeControlPlane
) -> None:
    other_keys = init_keys(tmp_path / "other-keys")
    foreign = null_package(other_keys.directory, tmp_path / "foreign", "1.0")
    dev = device(tmp_path, trust, plane)
    outcome = dev.executor.apply(deployment("p1.s1", ("detector", "1.0", plane.add_package(foreign))))
    assert outcome.result is Result.FAILED_NO_CHANGE
    assert "stage det 1.0 failed: FAILED_PRECONDITION" in outcome.message
    assert dev.loaded() == set()
    assert not list((tmp_path / "state" / "packages" / "staged").iterdir())


def test_an_unreachable_server_defers_the_deployment(
    tmp_path: Path, trust: Path, plane: FakeControlPlane, packages: dict[str, Path]
) -> None:
    dev = device(tmp_path, trust, plane)
    v1 = ref(plane, packages, "1.0")
    plane.online = False
    outcome = dev.executor.apply(deployment("p1.s1", ("detector", "1.0", v1)))
    assert outcome.result is None
    assert outcome.message.startswith("deferred: fetch det 1.0 failed: UNAVAILABLE")
    assert dev.store.state.history == [] and dev.store.state.journal is None
    plane.online = True
    assert dev.executor.apply(deployment("p1.s1", ("detector", "1.0", v1))).result is Result.SUCCEEDED


def test_a_broken_download_resumes_with_a_range_request(
    tmp_path: Path, trust: Path, plane: FakeControlPlane, packages: dict[str, Path]
) -> None:
    dev = device(tmp_path, trust, plane)
    v1 = ref(plane, packages, "1.0")
    plane.cut_next_download_after = 300
    outcome = dev.executor.apply(deployment("p1.s1", ("detector", "1.0", v1)))
    assert outcome.result is Result.SUCCEEDED
    assert plane.downloads == [(v1.url, 0), (v1.url, 300)]


def test_the_server_can_ask_for_a_rollback_after_success(
    tmp_path: Path, trust: Path, plane: FakeControlPlane, packages: dict[str, Path]
) -> None:
    dev = device(tmp_path, trust, plane)
    v1, v2 = ref(plane, packages, "1.0"), ref(plane, packages, "2.0")
    dev.executor.apply(deployment("p1.s1", ("detector", "1.0", v1)))
    second = deployment("p2.s1", ("detector", "2.0", v2))
    dev.executor.apply(second)
    outcome = dev.executor.rollback(second)
    assert (outcome.kind, outcome.result) == (JournalKind.ROLLBACK, Result.FAILED_ROLLED_BACK)
    assert dev.handles() == {"detector": "detector-1-0-g3"}
    assert dev.loaded() == {"detector-1-0-g3"}
    assert dev.store.state.installed["detector"].model_version == "1.0"
    assert not plane.downloads[2:]  # the previous package came from the cache


def test_a_rollback_of_something_never_applied_changes_nothing(
    tmp_path: Path, trust: Path, plane: FakeControlPlane, packages: dict[str, Path]
) -> None:
    dev = device(tmp_path, trust, plane)
    outcome = dev.executor.rollback(deployment("p9.s1", ("detector", "1.0", ref(plane, packages, "1.0"))))
    assert outcome.result is Result.FAILED_NO_CHANGE
    assert outcome.message == "nothing of this deployment is applied on the device"


def test_a_failed_undo_is_reported_and_converge_cleans_up_later(
    tmp_path: Path, trust: Path, plane: FakeControlPlane, packages: dict[str, Path]
) -> None:
    broken = {"on": True}

    def before(call: str, name: str) -> None:
        if broken["on"] and call == "unload" and name.startswith("detector-3-0"):
            raise FailedPrecondition("agent refuses to unload (simulated)")

    agent = NullAgent()
    dev = device(tmp_path, trust, plane, ScriptedAgent(agent, before))
    v1, bad = ref(plane, packages, "1.0"), ref(plane, packages, "bad")
    dev.executor.apply(deployment("p1.s1", ("detector", "1.0", v1)))
    outcome = dev.executor.apply(deployment("p2.s1", ("detector", "3.0", bad)))
    assert outcome.result is Result.FAILED_ROLLBACK_FAILED
    assert "undo failed: undo load detector-3-0-g2: FAILED_PRECONDITION" in outcome.message
    assert dev.handles() == {"detector": "detector-1-0-g1"}  # applications never saw the bad version
    broken["on"] = False
    assert dev.executor.converge() == []
    assert dev.loaded() == {"detector-1-0-g1"}
    assert dev.store.state.managed == {"detector-1-0-g1"}


def test_a_crash_mid_deployment_is_undone_then_applied_again(
    tmp_path: Path, trust: Path, plane: FakeControlPlane, packages: dict[str, Path]
) -> None:
    def crash_at_unload(call: str, name: str) -> None:
        if call == "unload" and name == "detector-1-0-g1":
            raise CrashHere

    agent = NullAgent()  # the agent survives the daemon's crash
    first = device(tmp_path, trust, plane, agent)
    v1, v2 = ref(plane, packages, "1.0"), ref(plane, packages, "2.0")
    first.executor.apply(deployment("p1.s1", ("detector", "1.0", v1)))
    crashing = device(tmp_path, trust, plane, ScriptedAgent(agent, crash_at_unload))
    second = deployment("p2.s1", ("detector", "2.0", v2))
    with pytest.raises(CrashHere):
        crashing.executor.apply(second)
    assert crashing.handles() == {"detector": "detector-2-0-g2"}  # it died after the switch
    assert agent.handles() == {"detector": "detector-2-0-g2"}

    restarted = device(tmp_path, trust, plane, agent)  # a new process over the same state directory
    journal = restarted.store.state.journal
    assert journal is not None and journal.steps[-1].status is StepStatus.STARTED
    outcome = restarted.executor.recover()
    assert outcome is not None and outcome.result is None
    assert "interrupted (attempt 1" in outcome.message
    assert restarted.handles() == {"detector": "detector-1-0-g1"}
    assert agent.handles() == {"detector": "detector-1-0-g1"}  # the agent's handle moved back too
    assert restarted.loaded() == {"detector-1-0-g1"}
    assert restarted.store.state.interrupted == {"p2.s1": 1}

    again = restarted.executor.apply(second)
    assert again.result is Result.SUCCEEDED
    assert restarted.handles() == {"detector": "detector-2-0-g3"}
    assert agent.handles() == {"detector": "detector-2-0-g3"}
    assert restarted.loaded() == {"detector-2-0-g3"}
    assert restarted.store.state.interrupted == {}


def test_a_deployment_interrupted_too_often_is_given_up(
    tmp_path: Path, trust: Path, plane: FakeControlPlane, packages: dict[str, Path]
) -> None:
    def crash_at_smoke(call: str, name: str) -> None:
        if call == "predict":
            raise CrashHere

    agent = NullAgent()
    v2 = ref(plane, packages, "2.0")
    second = deployment("p2.s1", ("detector", "2.0", v2))
    settings = DeploymentSettings(max_interrupted_attempts=2)
    for _attempt in (1, 2):
        crashing = make_device(tmp_path / "state", trust, plane, ScriptedAgent(agent, crash_at_smoke))
        with pytest.raises(CrashHere):
            crashing.executor.apply(second)
        restarted = make_device(tmp_path / "state", trust, plane, agent, settings=settings)
        outcome = restarted.executor.recover()
        assert outcome is not None
    assert outcome.result is Result.FAILED_ROLLED_BACK
    assert "given up after 2 interrupted attempts" in outcome.message
    assert restarted.loaded() == set() and restarted.handles() == {}
    assert StateStore(tmp_path / "state").state.history[-1].result is Result.FAILED_ROLLED_BACK


def test_converge_restores_the_installed_models_into_a_fresh_agent(
    tmp_path: Path, trust: Path, plane: FakeControlPlane, packages: dict[str, Path]
) -> None:
    dev = device(tmp_path, trust, plane)
    dev.executor.apply(deployment("p1.s1", ("detector", "1.0", ref(plane, packages, "1.0"))))
    plane.online = False  # restoring needs no server: the package is staged on disk
    fresh = NullAgent()  # a restarted agent: no models, no handles
    fresh.load(str(next((tmp_path / "state" / "packages" / "staged").iterdir())), "someone-elses")
    fresh.set_handle("theirs", "someone-elses")  # not the daemon's: left alone
    rebooted = device(tmp_path, trust, plane, fresh)
    assert rebooted.executor.converge() == []
    assert rebooted.loaded() == {"detector-1-0-g1", "someone-elses"}
    assert rebooted.handles() == {"detector": "detector-1-0-g1"}
    assert fresh.handles() == {"detector": "detector-1-0-g1", "theirs": "someone-elses"}


def test_converge_reports_what_it_cannot_restore(
    tmp_path: Path, trust: Path, plane: FakeControlPlane, packages: dict[str, Path]
) -> None:
    dev = device(tmp_path, trust, plane)
    dev.executor.apply(deployment("p1.s1", ("detector", "1.0", ref(plane, packages, "1.0"))))
    for staged in (tmp_path / "state" / "packages" / "staged").iterdir():
        for f in staged.iterdir():
            f.unlink()
        staged.rmdir()
    plane.online = False
    rebooted = device(tmp_path, trust, plane, NullAgent())
    problems = rebooted.executor.converge()
    assert len(problems) == 1
    assert problems[0].startswith("cannot restore handle detector (detector-1-0-g1): UNAVAILABLE")
    plane.online = True
    assert rebooted.executor.converge() == []  # fetched and staged again
    assert rebooted.loaded() == {"detector-1-0-g1"}


def test_unavailable_agent_is_retried(
    tmp_path: Path, trust: Path, plane: FakeControlPlane, packages: dict[str, Path]
) -> None:
    calls = {"load": 0}

    def flaky(call: str, name: str) -> None:
        if call == "load":
            calls["load"] += 1
            if calls["load"] == 1:
                raise Unavailable("agent restarting (simulated)")

    dev = device(tmp_path, trust, plane, ScriptedAgent(NullAgent(), flaky))
    outcome = dev.executor.apply(deployment("p1.s1", ("detector", "1.0", ref(plane, packages, "1.0"))))
    assert outcome.result is Result.SUCCEEDED
    assert calls["load"] == 2


def test_the_result_queue_is_bounded(
    tmp_path: Path,
    trust: Path,
    plane: FakeControlPlane,
    packages: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    dev = make_device(
        tmp_path / "state", trust, plane, NullAgent(), settings=DeploymentSettings(keep_history=1)
    )
    dev.executor.max_unsent_results = 2
    v1 = ref(plane, packages, "1.0")
    for name in ("d1.s", "d2.s", "d3.s", "d4.s"):
        assert dev.executor.apply(deployment(name, ("detector", "1.0", v1))).result is Result.SUCCEEDED
    history = StateStore(tmp_path / "state").state.history
    assert [e.deployment for e in history] == ["d3.s", "d4.s"]
    assert "result queue full: dropping the unsent result of d2.s" in caplog.text


X = {"x": np.ones((1, 4), dtype=np.float32)}


def test_the_agent_resolves_the_handle_through_swaps_rollbacks_and_an_undeploy(
    tmp_path: Path, trust: Path, plane: FakeControlPlane, packages: dict[str, Path]
) -> None:
    agent = NullAgent()  # implements model-handles, refuses to unload a handle's target like the agent
    dev = device(tmp_path, trust, plane, agent)
    v1, v2, bad = (ref(plane, packages, v) for v in ("1.0", "2.0", "bad"))

    def served() -> str:
        agent.predict("detector", X)  # what an unmodified application calls
        return agent.describe("detector").name

    dev.executor.apply(deployment("p1.s1", ("detector", "1.0", v1)))
    assert agent.handles() == {"detector": "detector-1-0-g1"} and served() == "detector-1-0-g1"
    second = deployment("p2.s1", ("detector", "2.0", v2))
    assert dev.executor.apply(second).result is Result.SUCCEEDED
    assert agent.handles() == {"detector": "detector-2-0-g2"} and served() == "detector-2-0-g2"
    assert (
        dev.executor.apply(deployment("p3.s1", ("detector", "3.0", bad))).result is Result.FAILED_ROLLED_BACK
    )
    assert agent.handles() == {"detector": "detector-2-0-g2"} and dev.loaded() == {"detector-2-0-g2"}
    assert dev.executor.rollback(second).result is Result.FAILED_ROLLED_BACK
    assert agent.handles() == {"detector": "detector-1-0-g4"} and served() == "detector-1-0-g4"

    undeploy = Deployment("p5.s1", (Definition("detector", "det", "1.0", v1, state=DesiredState.UNDEPLOY),))
    assert dev.executor.apply(undeploy).result is Result.SUCCEEDED
    assert agent.handles() == {} and dev.loaded() == set() and dev.handles() == {}
    with pytest.raises(NotFound, match="detector"):
        agent.predict("detector", X)


def test_an_agent_without_model_handles_gets_the_map_only(
    tmp_path: Path, trust: Path, plane: FakeControlPlane, packages: dict[str, Path]
) -> None:
    agent = NullAgent(handles=False)
    dev = device(tmp_path, trust, plane, agent)
    v1, v2 = ref(plane, packages, "1.0"), ref(plane, packages, "2.0")
    dev.executor.apply(deployment("p1.s1", ("detector", "1.0", v1)))
    assert dev.executor.apply(deployment("p2.s1", ("detector", "2.0", v2))).result is Result.SUCCEEDED
    assert dev.handles() == {"detector": "detector-2-0-g2"} and dev.loaded() == {"detector-2-0-g2"}
    assert dev.executor.converge() == []
    with pytest.raises(NotFound, match="'detector'"):
        agent.predict("detector", X)  # applications resolve the handle through handles.json


@pytest.mark.parametrize(
    ("policy", "result", "handles", "loaded"),
    [
        (FailurePolicy.ROLLBACK_ON_FAILURE, Result.FAILED_ROLLED_BACK, {}, {"b"}),
        (FailurePolicy.DO_NOTHING, Result.FAILED_NO_CHANGE, {"a": "a-1-0-g2"}, {"a-1-0-g2", "b"}),
    ],
)
def test_a_switch_the_agent_refuses_is_undone_in_the_agent_and_the_map(
    tmp_path: Path,
    trust: Path,
    plane: FakeControlPlane,
    packages: dict[str, Path],
    policy: FailurePolicy,
    result: Result,
    handles: dict[str, str],
    loaded: set[str],
) -> None:
    agent = NullAgent()
    v1, v2 = ref(plane, packages, "1.0"), ref(plane, packages, "2.0")
    dev = device(tmp_path, trust, plane, agent)
    dev.executor.apply(deployment("p0.s1", ("a", "1.0", v1)))  # stages the package for the foreign load
    dev.executor.apply(Deployment("p0.s2", (Definition("a", "det", "1.0", v1, state=DesiredState.UNDEPLOY),)))
    agent.load(str(next((tmp_path / "state" / "packages" / "staged").iterdir())), "b")  # not the daemon's

    # handle "a" switches first, then "b" cannot: a handle may not shadow a loaded model
    outcome = dev.executor.apply(deployment("p1.s1", ("a", "1.0", v1), ("b", "2.0", v2), policy=policy))
    assert outcome.result is result
    assert "switch b: nothing -> b-2-0-g3 failed: ALREADY_EXISTS" in outcome.message
    assert agent.handles() == handles == dev.handles()
    assert dev.loaded() == loaded
    assert dev.store.state.journal is None


def test_a_crash_in_the_middle_of_an_undo_leaves_no_handle_behind(
    tmp_path: Path, trust: Path, plane: FakeControlPlane, packages: dict[str, Path]
) -> None:
    failed = {"unload": False}

    def unload_fails_then_crash(call: str, name: str) -> None:
        if call == "unload" and name == "detector-1-0-g1":
            failed["unload"] = True
            raise FailedPrecondition("cannot unload (simulated)")
        if call == "set_handle" and failed["unload"]:
            raise CrashHere  # the undo marked the switch UNDONE, then died before moving the handle

    agent = NullAgent()
    first = device(tmp_path, trust, plane, agent)
    v1, v2 = ref(plane, packages, "1.0"), ref(plane, packages, "2.0")
    first.executor.apply(deployment("p1.s1", ("detector", "1.0", v1)))
    crashing = device(tmp_path, trust, plane, ScriptedAgent(agent, unload_fails_then_crash))
    with pytest.raises(CrashHere):
        crashing.executor.apply(deployment("p2.s1", ("detector", "2.0", v2)))
    assert agent.handles() == {"detector": "detector-2-0-g2"}
    journal = StateStore(tmp_path / "state").state.journal
    assert journal is not None and journal.phase.value == "UNDOING"

    restarted = device(tmp_path, trust, plane, agent)
    outcome = restarted.executor.recover()
    assert outcome is not None and outcome.result is Result.FAILED_ROLLED_BACK
    assert agent.handles() == {"detector": "detector-1-0-g1"} == restarted.handles()
    assert restarted.loaded() == {"detector-1-0-g1"}
