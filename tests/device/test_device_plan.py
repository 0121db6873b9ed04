"""The planner: desired deployment vs installed models -> ordered, undoable steps (pure functions)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from edgefleet.core.deviceplane import Definition, Deployment, DesiredState, PackageRef, Result
from edgefleet.device.plan import alias_for, plan_apply, plan_rollback
from edgefleet.device.state import HistoryEntry, InstalledModel, JournalKind, StepKind

AGENT_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
V1 = PackageRef("/p/1", sha256="1" * 64, size=10)
V2 = PackageRef("/p/2", sha256="2" * 64, size=10)
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def model(handle: str, version: str, package: PackageRef, alias: str) -> InstalledModel:
    return InstalledModel(handle, "det", version, alias, package, deployment="old")


def kinds(plan_steps: tuple[object, ...]) -> list[tuple[str, str]]:
    return [(s.kind.value, s.handle) for s in plan_steps]  # type: ignore[attr-defined]


@given(
    handle=st.from_regex(r"\A[a-zA-Z0-9](-?[a-zA-Z0-9]){0,62}\Z"),
    version=st.from_regex(r"\A[a-zA-Z0-9 _.]{1,30}\Z"),
    generation=st.integers(min_value=0, max_value=10**9),
)
def test_aliases_are_valid_agent_names(handle: str, version: str, generation: int) -> None:
    alias = alias_for(handle, version, generation)
    assert len(alias) <= 63
    assert AGENT_NAME.match(alias), alias
    assert alias.endswith(f"-g{generation}")
    assert alias != alias_for(handle, version, generation + 1)


def test_first_deployment_loads_smoke_tests_then_switches() -> None:
    plan = plan_apply(Deployment("p.s", (Definition("detector", "det", "1.0", V1),)), {}, 0)
    assert kinds(plan.steps) == [
        ("FETCH", "detector"),
        ("STAGE", "detector"),
        ("LOAD", "detector"),
        ("SMOKE", "detector"),
        ("SWITCH", "detector"),
    ]
    switch = plan.steps[-1]
    assert switch.previous is None and switch.model is not None
    assert switch.model.alias == "detector-1-0-g1"
    assert plan.before == {"detector": None}
    assert plan.generation == 1


def test_upgrade_unloads_the_old_version_last() -> None:
    installed = {"detector": model("detector", "1.0", V1, "detector-1-0-g1")}
    plan = plan_apply(Deployment("p.s", (Definition("detector", "det", "2.0", V2),)), installed, 1)
    assert [s.kind for s in plan.steps][-2:] == [StepKind.SWITCH, StepKind.UNLOAD]
    assert plan.steps[-1].model == installed["detector"]
    assert plan.steps[-2].previous == installed["detector"]
    assert plan.after["detector"] is not None and plan.after["detector"].alias == "detector-2-0-g2"


def test_every_version_is_smoke_tested_before_any_handle_switches() -> None:
    deployment = Deployment("p.s", (Definition("a", "det", "2.0", V2), Definition("b", "det", "2.0", V2)))
    steps = plan_apply(deployment, {}, 0).steps
    last_smoke = max(i for i, s in enumerate(steps) if s.kind is StepKind.SMOKE)
    first_switch = min(i for i, s in enumerate(steps) if s.kind is StepKind.SWITCH)
    assert last_smoke < first_switch
    assert {s.model.alias for s in steps if s.kind is StepKind.LOAD and s.model} == {"a-2-0-g1", "b-2-0-g2"}


def test_a_handle_already_served_by_the_package_needs_nothing() -> None:
    installed = {"detector": model("detector", "1.0", V1, "detector-1-0-g1")}
    plan = plan_apply(Deployment("p.s", (Definition("detector", "det", "1.0", V1),)), installed, 1)
    assert plan.empty
    assert plan.after == installed


def test_undeploy_switches_the_handle_off_then_unloads() -> None:
    installed = {"detector": model("detector", "1.0", V1, "detector-1-0-g1")}
    definition = Definition("detector", "det", "1.0", V1, state=DesiredState.UNDEPLOY)
    plan = plan_apply(Deployment("p.s", (definition,)), installed, 1)
    assert kinds(plan.steps) == [("SWITCH", "detector"), ("UNLOAD", "detector")]
    assert plan.steps[0].model is None
    assert plan.after == {"detector": None}


def _applied(before: InstalledModel | None, after: InstalledModel | None) -> HistoryEntry:
    return HistoryEntry(
        deployment="p.s",
        kind=JournalKind.APPLY,
        result=Result.SUCCEEDED,
        message="deployed",
        before={"detector": before},
        after={"detector": after},
        started_at=NOW,
        finished_at=NOW,
    )


def test_rollback_restores_the_previous_version_under_a_fresh_alias() -> None:
    old = model("detector", "1.0", V1, "detector-1-0-g1")
    new = model("detector", "2.0", V2, "detector-2-0-g2")
    plan = plan_rollback(Deployment("p.s", ()), {"detector": new}, _applied(old, new), 2)
    assert kinds(plan.steps) == [
        ("FETCH", "detector"),
        ("STAGE", "detector"),
        ("LOAD", "detector"),
        ("SMOKE", "detector"),
        ("SWITCH", "detector"),
        ("UNLOAD", "detector"),
    ]
    restored = plan.after["detector"]
    assert restored is not None
    assert (restored.model_version, restored.package, restored.alias) == ("1.0", V1, "detector-1-0-g3")
    assert plan.steps[-1].model == new
    assert plan.kind is JournalKind.ROLLBACK


def test_rollback_of_a_first_deployment_removes_the_handle() -> None:
    new = model("detector", "2.0", V2, "detector-2-0-g2")
    plan = plan_rollback(Deployment("p.s", ()), {"detector": new}, _applied(None, new), 2)
    assert kinds(plan.steps) == [("SWITCH", "detector"), ("UNLOAD", "detector")]
    assert plan.after == {"detector": None}


def test_rollback_leaves_a_handle_a_later_deployment_replaced() -> None:
    old = model("detector", "1.0", V1, "detector-1-0-g1")
    new = model("detector", "2.0", V2, "detector-2-0-g2")
    later = model("detector", "3.0", V1, "detector-3-0-g3")
    assert plan_rollback(Deployment("p.s", ()), {"detector": later}, _applied(old, new), 3).empty


def test_rollback_with_nothing_applied_is_empty() -> None:
    assert plan_rollback(Deployment("p.s", ()), {}, None, 0).empty
