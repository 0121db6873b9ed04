"""The deployment plan state machine, over a real database (SQLite, and PostgreSQL when reachable)."""

from __future__ import annotations

from typing import Any

import pytest
from server_testkit import TOKEN_TTL, FakeClock, record_package_row

from edgefleet.core.deviceplane import Action, HealthGate, HealthReport, HealthVerdict
from edgefleet.core.errors import FailedPrecondition, InvalidArgument, NotFound
from edgefleet.server import devices, fleets, registry
from edgefleet.server.ca import FleetCA
from edgefleet.server.db.engine import Database
from edgefleet.server.deployments.device_side import device_deployments, record_health, record_result
from edgefleet.server.deployments.plans import create_plan, delete_plan, get_plan, get_stage, list_plans
from edgefleet.server.deployments.records import (
    DeviceDeployment,
    ModelConfigSpec,
    PlanSpec,
    ResultReport,
    StageCounts,
    StageSpec,
)
from edgefleet.server.deployments.stages import (
    list_stage_devices,
    refresh_stage,
    stage_counts,
    stage_events,
    start_stage,
    stop_stage,
)

Db = Any


def _setup(db: Database, n: int = 10, *, arch: str = "any", approve: bool = True, tags: bool = False) -> None:
    ca = FleetCA.load_or_create(db)
    with db.session() as s:
        s.info["now"] = db.now()
        fleets.create_fleet(s, fleets.FleetSpec(name="fleet", output_location="s3://b/p"), db.now())
        specs = [
            devices.DeviceSpec(f"dev-{i:02d}", tags={"ring": "canary" if i < 2 else "main"} if tags else None)
            for i in range(n)
        ]
        devices.register_devices(s, "fleet", specs, ca, db.now(), TOKEN_TTL)
        for i in range(n):
            devices.update_device(s, f"dev-{i:02d}", db.now(), platform=("linux", "x86_64", "none"))
        record_package_row(s, "detector", "2", arch=arch)
        if approve:
            registry.set_approval(s, "detector", "2", "Approved", "bob", db.now())


def _plan(
    db: Database, *stages: StageSpec, gate: HealthGate | None = None, timeout: float | None = None
) -> None:
    with db.session() as s:
        create_plan(
            s,
            PlanSpec(
                name="rollout",
                fleet_name="fleet",
                model_configs=[ModelConfigSpec("detector", "detector", version="2")],
                stages=list(stages),
                health_gate=gate or HealthGate(),
                device_timeout_seconds=timeout,
            ),
            "alice",
            db.now(),
        )


def _fetch(db: Database, name: str) -> list[DeviceDeployment]:
    with db.session() as s:
        return device_deployments(s, devices.get_device(s, name), db.now())


def _report(db: Database, name: str, status: str, deployment: str = "rollout.canary") -> None:
    with db.session() as s:
        record_result(s, devices.get_device(s, name), ResultReport(deployment, status), db.now())


def _stage(db: Database, stage: str = "canary") -> tuple[str, StageCounts]:
    with db.session() as s:
        st = refresh_stage(s, get_stage(get_plan(s, "rollout"), stage), db.now())
        return st.status, stage_counts(s, st)


def _rows(db: Database, stage: str = "canary") -> dict[str, str]:
    with db.session() as s:
        page = list_stage_devices(s, "rollout", stage, limit=1000, next_token=None)
        return {row.device.name: row.status for row in page.items}


def _events(db: Database, stage: str = "canary") -> list[tuple[str, str]]:
    """The stage's events (kind, message), newest first, as DescribeEdgeDeploymentPlan lists them."""
    with db.session() as s:
        return [(e.kind, e.message) for e in stage_events(s, get_stage(get_plan(s, "rollout"), stage))]


def _start(db: Database, stage: str = "canary") -> None:
    with db.session() as s:
        start_stage(s, "rollout", stage, db.now())


def test_plan_validation(db: Db) -> None:
    _setup(db, 2)
    stage = StageSpec("s", "PERCENTAGE", percentage=10)
    with pytest.raises(InvalidArgument, match="Stages must list 1-10 stages, got 11"):
        _plan(db, *[StageSpec(f"s{i}", "PERCENTAGE", percentage=10) for i in range(11)])
    with pytest.raises(InvalidArgument, match="PERCENTAGE needs Percentage in 1-100"):
        _plan(db, StageSpec("s", "PERCENTAGE", percentage=101))
    with pytest.raises(InvalidArgument, match="stage name 's' is listed twice"):
        _plan(db, stage, stage)
    with pytest.raises(
        InvalidArgument,
        match=r"FailureHandlingPolicy 'RETRY' is invalid \(known: ROLLBACK_ON_FAILURE, DO_NOTHING\)",
    ):
        _plan(db, StageSpec("s", "PERCENTAGE", percentage=10, failure_policy="RETRY"))
    with pytest.raises(InvalidArgument, match="DeviceSubsetType 'ALL' is invalid"):
        _plan(db, StageSpec("s", "ALL"))
    with pytest.raises(InvalidArgument, match="MaxErrorRate must be a fraction"):
        _plan(db, stage, gate=HealthGate(max_error_rate=5))
    with db.session() as s, pytest.raises(NotFound, match="model 'nope' does not exist"):
        create_plan(
            s,
            PlanSpec("p", "fleet", [ModelConfigSpec("h", "nope", version="1")], [stage]),
            "alice",
            db.now(),
        )
    with db.session() as s:  # nothing half-created
        assert list_plans(s, limit=10, next_token=None).items == []


def test_unapproved_version_cannot_start(db: Db) -> None:
    _setup(db, 2, approve=False)
    _plan(db, StageSpec("canary", "PERCENTAGE", percentage=50))
    with pytest.raises(FailedPrecondition, match="is PendingManualApproval, not Approved"):
        _start(db)
    assert _stage(db)[0] == "READYTODEPLOY"


def test_percentage_stage_then_the_rest(db: Db, clock: FakeClock) -> None:
    _setup(db, 10)
    _plan(
        db,
        StageSpec("canary", "PERCENTAGE", percentage=20),
        StageSpec("rest", "PERCENTAGE", percentage=100),
    )
    with pytest.raises(
        FailedPrecondition, match="stage 'canary' is READYTODEPLOY; stage 'rest' starts after it is DEPLOYED"
    ):
        _start(db, "rest")
    _start(db)
    selected = sorted(_rows(db))
    assert len(selected) == 2 and _stage(db)[0] == "STARTING"
    others = [f"dev-{i:02d}" for i in range(10) if f"dev-{i:02d}" not in selected]
    assert _fetch(db, others[0]) == []
    first = _fetch(db, selected[0])
    assert [(d.name, d.action, d.failure_policy) for d in first] == [
        ("rollout.canary", Action.DEPLOY, "ROLLBACK_ON_FAILURE")
    ]
    definition = first[0].definitions[0]
    assert (definition.handle, definition.model_name, definition.model_version, definition.state) == (
        "detector",
        "detector",
        "2",
        "DEPLOY",
    )
    assert _stage(db) == ("INPROGRESS", StageCounts(success=0, pending=2))
    _report(db, selected[0], "SUCCEEDED")
    assert _fetch(db, selected[0]) == []  # deployed: nothing more to do
    _report(db, selected[1], "SUCCEEDED")  # a result without a prior fetch is fine too
    assert _stage(db) == ("DEPLOYED", StageCounts(success=2))
    _start(db, "rest")
    assert sorted(_rows(db, "rest")) == sorted(others)
    with pytest.raises(
        FailedPrecondition, match="stage 'canary' is DEPLOYED; only READYTODEPLOY or STOPPED stages start"
    ):
        _start(db)


def test_failed_share_above_threshold_fails_and_rolls_back_the_stage(db: Db) -> None:
    _setup(db, 4)
    _plan(db, StageSpec("canary", "PERCENTAGE", percentage=100, failure_threshold=0.25))
    _start(db)
    names = sorted(_rows(db))
    for name in names:
        _fetch(db, name)
    _report(db, names[0], "SUCCEEDED")
    _report(db, names[1], "FAILED_ROLLED_BACK")
    assert _stage(db)[0] == "INPROGRESS"  # 1/4 is not above 25 %
    _report(db, names[2], "FAILED_NO_CHANGE")
    status, counts = _stage(db)
    assert status == "FAILED" and counts == StageCounts(pending=2, failed=2)
    rows = _rows(db)
    assert rows == {names[0]: "STOPPING", names[1]: "FAILED", names[2]: "FAILED", names[3]: "STOPPING"}
    # The deployed and the in-progress device are told to roll back.
    rollback = _fetch(db, names[0])
    assert [(d.action, d.definitions[0].state) for d in rollback] == [(Action.ROLLBACK, "UNDEPLOY")]
    assert _fetch(db, names[1]) == []
    _report(db, names[0], "FAILED_ROLLED_BACK")
    _report(db, names[3], "FAILED_NO_CHANGE")
    assert _rows(db)[names[0]] == "STOPPED" and _stage(db) == ("FAILED", StageCounts(failed=2, stopped=2))
    # the failure and the rollback are stage events with their reasons, recorded once
    assert _events(db) == [
        (
            "STAGE_ROLLBACK",
            "rolling the stage back: 2 device(s) asked to roll back, 0 stopped before they started",
        ),
        ("STAGE_FAILED", "2/4 device(s) failed, above the threshold of 25%"),
    ]


def test_a_failed_stage_is_one_pair_of_events_through_the_api(db: Db) -> None:
    """A stage whose first device fails (threshold 0): STAGE_FAILED and STAGE_ROLLBACK, newest
    first, in the API's own plan body; later reports and refreshes add no event."""
    from edgefleet.server.api import render

    _setup(db, 3)
    _plan(db, StageSpec("canary", "PERCENTAGE", percentage=100))
    _start(db)
    names = sorted(_rows(db))
    _fetch(db, names[0])  # in progress when the stage fails: asked to roll back
    _report(db, names[1], "FAILED_ROLLED_BACK")
    assert _rows(db) == {names[0]: "STOPPING", names[1]: "FAILED", names[2]: "STOPPED"}
    _report(db, names[0], "FAILED_ROLLED_BACK")
    assert _stage(db)[0] == "FAILED"
    with db.session() as s:
        body = render.plan(s, get_plan(s, "rollout"))
    [stage] = body.Stages
    assert [(e.Kind, e.Message) for e in stage.Events] == [
        (
            "STAGE_ROLLBACK",
            "rolling the stage back: 1 device(s) asked to roll back, 1 stopped before they started",
        ),
        ("STAGE_FAILED", "1/3 device(s) failed, above the threshold of 0%"),
    ]
    assert stage.Events[0].Time == stage.Events[1].Time


def test_a_failed_stage_under_do_nothing_records_no_rollback(db: Db) -> None:
    _setup(db, 2)
    _plan(db, StageSpec("canary", "PERCENTAGE", percentage=100, failure_policy="DO_NOTHING"))
    _start(db)
    _report(db, sorted(_rows(db))[0], "FAILED_NO_CHANGE")
    assert _stage(db)[0] == "FAILED"
    assert _events(db) == [("STAGE_FAILED", "1/2 device(s) failed, above the threshold of 0%")]


def test_do_nothing_policy_keeps_going_after_failure(db: Db) -> None:
    _setup(db, 3)
    _plan(db, StageSpec("canary", "PERCENTAGE", percentage=100, failure_policy="DO_NOTHING"))
    _start(db)
    names = sorted(_rows(db))
    _report(db, names[0], "FAILED_NO_CHANGE")
    assert _stage(db)[0] == "FAILED"
    assert [d.action for d in _fetch(db, names[1])] == [Action.DEPLOY]
    _report(db, names[1], "SUCCEEDED")
    assert _rows(db) == {names[0]: "FAILED", names[1]: "DEPLOYED", names[2]: "READYTODEPLOY"}


def test_stop_and_restart_stage(db: Db) -> None:
    _setup(db, 3)
    _plan(db, StageSpec("canary", "SELECTION", device_names=["dev-00", "dev-01", "dev-02"]))
    _start(db)
    _fetch(db, "dev-00")
    _fetch(db, "dev-01")
    _report(db, "dev-01", "SUCCEEDED")
    with db.session() as s:
        stop_stage(s, "rollout", "canary", db.now())
    assert _rows(db) == {"dev-00": "STOPPING", "dev-01": "DEPLOYED", "dev-02": "STOPPED"}
    assert _events(db) == [
        (
            "STAGE_STOPPED",
            "stopped by an operator: 1 device(s) asked to roll back, 1 stopped before they started",
        )
    ]
    assert _stage(db)[0] == "STOPPING"
    with db.session() as s, pytest.raises(FailedPrecondition, match="in flight; stop them first"):
        delete_plan(s, "rollout")
    assert [d.action for d in _fetch(db, "dev-00")] == [Action.ROLLBACK]
    _report(db, "dev-00", "FAILED_ROLLED_BACK")
    assert _stage(db)[0] == "STOPPED"
    _start(db)  # a stopped stage starts again for the devices that did not finish
    assert _rows(db) == {"dev-00": "READYTODEPLOY", "dev-01": "DEPLOYED", "dev-02": "READYTODEPLOY"}


def test_selection_of_unknown_devices_is_refused(db: Db) -> None:
    _setup(db, 2)
    _plan(db, StageSpec("canary", "SELECTION", device_names=["dev-00", "ghost"]))
    with pytest.raises(FailedPrecondition, match="names devices not registered in fleet 'fleet': ghost"):
        _start(db)
    assert _rows(db) == {}


def test_name_contains_and_tag_selection(db: Db) -> None:
    _setup(db, 12, tags=True)
    _plan(
        db,
        StageSpec("canary", "TAGS", tags={"ring": "canary"}),
        StageSpec("tens", "NAMECONTAINS", name_contains="dev-1"),
    )
    _start(db)
    assert sorted(_rows(db)) == ["dev-00", "dev-01"]
    _report(db, "dev-00", "SUCCEEDED")
    _report(db, "dev-01", "SUCCEEDED")
    _start(db, "tens")
    assert sorted(_rows(db, "tens")) == ["dev-10", "dev-11"]


def test_health_gate(db: Db, clock: FakeClock) -> None:
    _setup(db, 2)
    gate = HealthGate(max_error_rate=0.05, max_p99_latency_ms=50, min_inferences=10, observation_seconds=60)
    _plan(db, StageSpec("canary", "PERCENTAGE", percentage=100, failure_threshold=0.5), gate=gate)
    _start(db)
    deployment = _fetch(db, "dev-00")[0]
    assert deployment.health_gate == gate
    for name in ("dev-00", "dev-01"):
        _report(db, name, "SUCCEEDED")
    assert _rows(db) == {"dev-00": "INPROGRESS", "dev-01": "INPROGRESS"}  # observed, not yet deployed

    def health(name: str, inferences: int, errors: int, p99: float) -> HealthVerdict:
        with db.session() as s:
            report = HealthReport("rollout.canary", inferences, errors, p99)
            return record_health(s, devices.get_device(s, name), report, db.now())

    assert health("dev-00", 5, 0, 10).verdict == "PENDING"
    bad = health("dev-01", 100, 20, 10)
    assert (bad.verdict, bad.action) == ("FAIL", "ROLLBACK") and "error rate 20.00% > 5.00%" in bad.reason
    assert health("dev-00", 100, 1, 10).verdict == "PENDING"  # within limits but observed < 60 s
    clock.advance(61)
    assert health("dev-00", 200, 1, 12).verdict == "PASS"
    assert _rows(db) == {"dev-00": "DEPLOYED", "dev-01": "FAILED"}
    assert [d.action for d in _fetch(db, "dev-01")] == [Action.ROLLBACK]
    _report(db, "dev-01", "FAILED_ROLLED_BACK")
    assert _fetch(db, "dev-01") == []
    assert _stage(db) == ("DEPLOYED", StageCounts(success=1, failed=1))
    with db.session() as s, pytest.raises(InvalidArgument, match="Errors <= Inferences"):
        record_health(s, devices.get_device(s, "dev-00"), HealthReport("rollout.canary", 1, 2, 1.0), db.now())


def test_device_without_a_matching_package_fails(db: Db) -> None:
    _setup(db, 1, arch="aarch64")
    _plan(db, StageSpec("canary", "PERCENTAGE", percentage=100))
    _start(db)
    assert _fetch(db, "dev-00") == []
    with db.session() as s:
        row = list_stage_devices(s, "rollout", "canary", limit=10, next_token=None).items[0]
        assert row.status == "FAILED" and "no package for platform linux/x86_64/none" in (row.message or "")
    assert _stage(db)[0] == "FAILED"


def test_device_timeout_and_deregistration(db: Db, clock: FakeClock) -> None:
    _setup(db, 3)
    _plan(db, StageSpec("canary", "PERCENTAGE", percentage=100, failure_threshold=0.5), timeout=600)
    _start(db)
    _report(db, "dev-00", "SUCCEEDED")
    with db.session() as s:
        devices.deregister_devices(s, "fleet", ["dev-01"], db.now())
    assert _rows(db)["dev-01"] == "STOPPED"
    clock.advance(601)
    assert _stage(db) == ("DEPLOYED", StageCounts(success=1, failed=1, stopped=1))
    with db.session() as s:
        assert "no result within 600 s" in (
            list_stage_devices(s, "rollout", "canary", status="FAILED", limit=5, next_token=None)
            .items[0]
            .message
            or ""
        )
        delete_plan(s, "rollout")


def test_concurrent_reports_settle_the_stage_exactly(db: Db) -> None:
    """Results racing on one stage (threads, separate transactions) never leave a stale stage status."""
    import threading

    _setup(db, 8)
    _plan(db, StageSpec("canary", "PERCENTAGE", percentage=100, failure_threshold=0.5))
    _start(db)
    names = sorted(_rows(db))
    barrier = threading.Barrier(len(names))
    errors: list[BaseException] = []

    def report(index: int, name: str) -> None:
        try:
            barrier.wait(timeout=30)
            _report(db, name, "SUCCEEDED" if index % 2 else "FAILED_ROLLED_BACK")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=report, args=(i, n)) for i, n in enumerate(names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert _stage(db) == ("DEPLOYED", StageCounts(success=4, failed=4))


def test_periodic_job_times_out_devices_and_generates_reports(
    db: Db, clock: FakeClock, tmp_path: Any
) -> None:
    from edgefleet.server.api.state import AppState
    from edgefleet.server.artifacts import open_artifact_store
    from edgefleet.server.config import ServerConfig, Timing
    from edgefleet.server.jobs import run_once

    _setup(db, 2)
    _plan(db, StageSpec("canary", "PERCENTAGE", percentage=100, failure_threshold=0.9), timeout=60)
    _start(db)
    _report(db, "dev-00", "SUCCEEDED")
    state = AppState(
        config=ServerConfig(data_dir=tmp_path, timing=Timing(report_interval=3600)),
        db=db,
        artifacts=open_artifact_store(str(tmp_path / "artifacts")),
        ca=FleetCA.load_or_create(db),
    )
    assert run_once(state) == ["fleet"]
    assert run_once(state) == []  # fresh report, nothing due
    with db.session() as s:
        assert get_stage(get_plan(s, "rollout"), "canary").status == "INPROGRESS"
    clock.advance(3601)
    assert run_once(state) == ["fleet"]
    with db.session() as s:
        stage = get_stage(get_plan(s, "rollout"), "canary")
        assert (stage.status, stage_counts(s, stage)) == ("DEPLOYED", StageCounts(success=1, failed=1))


def test_an_unknown_deployment_status_is_refused_and_changes_nothing(db: Db) -> None:
    _setup(db, 1)
    _plan(db, StageSpec("canary", "PERCENTAGE", percentage=100))
    _start(db)
    _fetch(db, "dev-00")
    with pytest.raises(
        InvalidArgument,
        match=r"DeploymentStatus \(INPROGRESS or a result\) 'DONE' is invalid \(known: SUCCEEDED, ",
    ):
        _report(db, "dev-00", "DONE")
    assert _rows(db) == {"dev-00": "INPROGRESS"}
    _report(db, "dev-00", "INPROGRESS")  # a device still at work may say so
    assert _rows(db) == {"dev-00": "INPROGRESS"}
    with db.session() as s:
        row = list_stage_devices(s, "rollout", "canary", limit=10, next_token=None).items[0]
        assert (row.device_result, row.message) == ("INPROGRESS", "INPROGRESS")
