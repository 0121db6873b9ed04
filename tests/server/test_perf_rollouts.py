"""Rollouts at scale: results committed without the stage lock and the stage settled after; polls,
plain results and downloads handled in batches, equal to the ordinary path. SQLite, and PostgreSQL
when reachable."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from server_testkit import TOKEN_TTL, enrol_tokens, record_package_row
from sqlalchemy import select

from edgefleet.core.deviceplane import HealthGate
from edgefleet.server import devices, fleets, registry
from edgefleet.server.ca import FleetCA
from edgefleet.server.deployments.device_side import device_deployments, record_result
from edgefleet.server.deployments.plans import create_plan, get_plan, get_stage
from edgefleet.server.deployments.records import (
    DeviceDeployment,
    ModelConfigSpec,
    PlanSpec,
    ResultReport,
    StageSpec,
)
from edgefleet.server.deployments.rollout import DeviceStatus
from edgefleet.server.deployments.stages import list_stage_devices, settle_stage, start_stage, stop_stage
from edgefleet.server.deviceplane.download import DownloadItem, DownloadService
from edgefleet.server.deviceplane.poll import PollItem, PollService
from edgefleet.server.deviceplane.result import ResultItem, ResultService

Db = Any  # the db fixture yields a Database


def _fleet(db: Db, n: int, *, arch: str = "any") -> dict[str, str]:
    """A fleet of ``n`` enrolled devices, an approved package and a one-stage plan; name -> serial."""
    ca = FleetCA.load_or_create(db)
    names = [f"dev-{i:02d}" for i in range(n)]
    with db.session() as s:
        s.info["now"] = db.now()  # record_package_row stamps the rows with it
        fleets.create_fleet(s, fleets.FleetSpec(name="fleet", output_location="s3://b/p"), db.now())
        registrations = devices.register_devices(
            s, "fleet", [devices.DeviceSpec(x) for x in names], ca, db.now(), TOKEN_TTL
        )
        tokens = [r.enrolment_token for r in registrations]
        record_package_row(s, "detector", "2", arch=arch)
        registry.set_approval(s, "detector", "2", "Approved", "bob", db.now())
        create_plan(
            s,
            PlanSpec(
                name="rollout",
                fleet_name="fleet",
                model_configs=[ModelConfigSpec("detector", "detector", version="2")],
                stages=[StageSpec("all", "PERCENTAGE", percentage=100)],
            ),
            "alice",
            db.now(),
        )
    return enrol_tokens(db, tokens, names)


def _start_and_fetch(db: Db, names: list[str]) -> None:
    with db.session() as s:
        start_stage(s, "rollout", "all", db.now())
    for name in names:
        with db.session() as s:
            assert [d.name for d in device_deployments(s, devices.get_device(s, name), db.now())] == [
                "rollout.all"
            ]


def _report(db: Db, name: str, status: str = "SUCCEEDED") -> tuple[int, bool]:
    """What the ReportDeploymentResult route does first: the row only, committed."""
    with db.session() as s:
        row = record_result(
            s, devices.get_device(s, name), ResultReport("rollout.all", status), db.now(), refresh=False
        )
        return row.stage_id, row.status == DeviceStatus.FAILED


def _settle(db: Db, stage_id: int, failed: bool = False) -> None:
    with db.session() as s:
        settle_stage(s, stage_id, db.now(), device_failed=failed)


def _stage(db: Db) -> str:
    with db.session() as s:
        return str(get_stage(get_plan(s, "rollout"), "all").status)


def test_the_last_committed_report_finishes_the_stage(db: Db) -> None:
    names = list(_fleet(db, 3))
    _start_and_fetch(db, names)
    stage_id, _ = _report(db, names[0])
    _settle(db, stage_id)
    assert _stage(db) == "INPROGRESS"
    # Two reports commit before either settles (as when two replicas handle them at once): the
    # settle that runs after both commits sees no pending device, whichever it is.
    _report(db, names[1])
    _report(db, names[2])
    _settle(db, stage_id)
    assert _stage(db) == "DEPLOYED"
    with db.session() as s:
        stage = get_stage(get_plan(s, "rollout"), "all")
        assert stage.status_message == "3 device(s) deployed, 0 failed, 0 stopped"
    _settle(db, stage_id)  # settling a finished stage again changes nothing
    assert _stage(db) == "DEPLOYED"


def test_concurrent_reports_never_leave_a_finished_stage_running(db: Db) -> None:
    names = list(_fleet(db, 12))
    _start_and_fetch(db, names)
    barrier = threading.Barrier(len(names))
    failures: list[BaseException] = []

    def device(name: str) -> None:
        try:
            barrier.wait(30)
            stage_id, failed = _report(db, name)
            _settle(db, stage_id, failed)
        except BaseException as exc:  # reported below; a thread must not die silently
            failures.append(exc)

    threads = [threading.Thread(target=device, args=(n,)) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []
    assert _stage(db) == "DEPLOYED"


def test_a_failed_device_fails_the_stage_when_settled(db: Db) -> None:
    names = list(_fleet(db, 4))
    _start_and_fetch(db, names)
    stage_id, failed = _report(db, names[0], "FAILED_ROLLED_BACK")
    assert failed
    _settle(db, stage_id, failed)
    assert _stage(db) == "FAILED"  # threshold 0: one failure fails the stage, the rest roll back
    with db.session() as s:
        page = list_stage_devices(s, "rollout", "all", limit=100, next_token=None)
        statuses = {row.device.name: (row.status, row.rollback) for row in page.items}
    assert statuses[names[0]] == ("FAILED", "DONE")
    assert all(statuses[n] == ("STOPPING", "REQUESTED") for n in names[1:])


def _rendered(items: list[DeviceDeployment] | None, artifacts: Path) -> Any:
    from edgefleet.server.api import render
    from edgefleet.server.artifacts import open_artifact_store

    assert items is not None
    store = open_artifact_store(artifacts.as_uri())  # a local store creates its directory
    return [render.deployment(item, store).model_dump() for item in items]


def test_polls_answered_in_batches_match_the_ordinary_path(db: Db, tmp_path: Path) -> None:
    serials = _fleet(db, 5)
    names = list(serials)
    polls = PollService(db)
    try:
        everyone = [PollItem(n, serials[n], "fleet") for n in names]
        assert polls.batch(everyone) == [[]] * 5  # nothing to do
        with db.session() as s:
            start_stage(s, "rollout", "all", db.now())
        assert polls.batch(everyone) == [None] * 5  # a STARTING stage: the ordinary path starts it
        _fetch_ordinary(db, names[0])  # -> the stage is INPROGRESS
        # dev-01 through the batch, dev-02 through the ordinary path: the same deployment, both INPROGRESS
        [batched] = polls.batch([everyone[1]])
        ordinary = _fetch_ordinary(db, names[2])
        assert _rendered(batched, tmp_path) == _rendered(ordinary, tmp_path) and len(ordinary) == 1
        with db.session() as s:
            page = list_stage_devices(s, "rollout", "all", limit=100, next_token=None)
            statuses = {row.device.name: row.status for row in page.items}
        assert [statuses[n] for n in names] == [
            "INPROGRESS",
            "INPROGRESS",
            "INPROGRESS",
            "READYTODEPLOY",
            "READYTODEPLOY",
        ]
        # asked again before reporting
        assert _rendered(polls.batch([everyone[1]])[0], tmp_path) == _rendered(ordinary, tmp_path)
        _report(db, names[1])
        answers = polls.batch(everyone)
        assert answers[1] == [] and all(a is not None and len(a) == 1 for a in answers[2:])
        assert polls.batch(
            [
                PollItem(names[3], serials[names[3]], "elsewhere"),  # names another fleet
                PollItem(names[3], "ffff", "fleet"),  # not its certificate
                PollItem("ghost", "abcd", "fleet"),  # not registered
            ]
        ) == [None, None, None]
        with db.session() as s:
            stop_stage(s, "rollout", "all", db.now())
        assert polls.batch([everyone[0]]) == [None]  # a rollback to ask for: the ordinary path does it
        with db.session() as s:
            devices.deregister_devices(s, None, [names[1]], db.now())
        assert polls.batch([everyone[1]]) == [None]  # revoked at once

        async def through_the_queue() -> list[Any]:
            return await asyncio.gather(*(polls.submit(p) for p in everyone))

        assert asyncio.run(through_the_queue()) == [None] * 5
    finally:
        polls.close()


def test_a_device_without_a_package_for_its_platform_takes_the_ordinary_path(db: Db) -> None:
    serials = _fleet(db, 2, arch="x86_64")
    names = list(serials)
    with db.session() as s:
        devices.update_device(s, names[0], db.now(), platform=("linux", "x86_64", "none"))
        devices.update_device(s, names[1], db.now(), platform=("linux", "aarch64", "none"))
    polls = PollService(db)
    try:
        with db.session() as s:
            start_stage(s, "rollout", "all", db.now())
        _fetch_ordinary(db, names[0])
        assert polls.batch([PollItem(names[1], serials[names[1]], "fleet")]) == [None]
        assert _fetch_ordinary(db, names[1], expect=0) == []  # the ordinary path fails it
        with db.session() as s:
            page = list_stage_devices(s, "rollout", "all", limit=100, next_token=None)
            assert {row.device.name: row.status for row in page.items}[names[1]] == "FAILED"
    finally:
        polls.close()


def _fetch_ordinary(db: Db, name: str, expect: int = 1) -> list[DeviceDeployment]:
    with db.session() as s:
        found = device_deployments(s, devices.get_device(s, name), db.now())
    assert len(found) == expect
    return found


def _row_state(db: Db, name: str, deployment: str = "all") -> tuple[Any, ...]:
    with db.session() as s:
        page = list_stage_devices(s, "rollout", deployment, limit=100, next_token=None)
        row = next(r for r in page.items if r.device.name == name)
        return (
            row.status,
            row.device_result,
            row.message,
            row.rollback,
            row.observing,
            row.reported_at,
            row.activated_at,
            row.fetched_at is not None,
        )


def test_plain_results_recorded_in_batches_match_the_ordinary_path(db: Db) -> None:
    serials = _fleet(db, 5)
    names = list(serials)
    recorder = ResultService(db)
    try:
        _start_and_fetch(db, names)

        def report(name: str, status: str = "SUCCEEDED", **changes: str) -> ResultItem:
            fields = {
                "fleet_name": "fleet",
                "deployment_name": "rollout.all",
                "serial": serials.get(name, "abcd"),
                **changes,
            }
            return ResultItem(
                name, fields["serial"], fields["fleet_name"], fields["deployment_name"], status, "ok"
            )

        outcome = recorder.batch(
            [
                report(names[0]),
                report(names[1], "FAILED_ROLLED_BACK"),  # not plain: the ordinary path
                report(names[1], fleet_name="elsewhere"),
                report(names[1], serial="ffff"),
                report(names[1], deployment_name="rollout.nope"),
                report(names[1], deployment_name="no-dot"),
                report("ghost"),
            ]
        )
        assert outcome == ["DEPLOYED", None, None, None, None, None, None]
        with db.session() as s:  # the reference: dev-04 through the ordinary path
            record_result(
                s,
                devices.get_device(s, names[4]),
                ResultReport("rollout.all", "SUCCEEDED", "ok"),
                db.now(),
            )
        assert _row_state(db, names[0]) == _row_state(db, names[4])
        assert _stage(db) == "INPROGRESS"
        # The batch that records the last pending devices finishes the stage.
        assert recorder.batch([report(names[1]), report(names[2]), report(names[3])]) == ["DEPLOYED"] * 3
        assert _stage(db) == "DEPLOYED"
        assert recorder.batch([report(names[0])]) == [None]  # already DEPLOYED: the ordinary path
    finally:
        recorder.close()


def test_results_of_stopped_or_gated_deployments_take_the_ordinary_path(db: Db) -> None:
    serials = _fleet(db, 2)
    names = list(serials)
    with db.session() as s:
        create_plan(
            s,
            PlanSpec(
                name="gated",
                fleet_name="fleet",
                model_configs=[ModelConfigSpec("detector", "detector", version="2")],
                stages=[StageSpec("all", "PERCENTAGE", percentage=100)],
                health_gate=HealthGate(max_error_rate=0.1),
            ),
            "alice",
            db.now(),
        )
        start_stage(s, "gated", "all", db.now())
    recorder = ResultService(db)
    try:
        _fetch_ordinary(db, names[0])  # the gated deployment: -> INPROGRESS
        gated = ResultItem(names[0], serials[names[0]], "fleet", "gated.all", "SUCCEEDED", None)
        assert recorder.batch([gated]) == [None]
        with db.session() as s:
            start_stage(s, "rollout", "all", db.now())
        _fetch_ordinary(db, names[1], expect=2)  # both deployments
        with db.session() as s:
            stop_stage(s, "rollout", "all", db.now())
        stopped = ResultItem(names[1], serials[names[1]], "fleet", "rollout.all", "SUCCEEDED", None)
        assert recorder.batch([stopped]) == [None]  # STOPPING: the device must roll back
        assert _row_state(db, names[1])[0] == "STOPPING"
    finally:
        recorder.close()


def test_concurrent_result_batches_finish_the_stage(db: Db) -> None:
    serials = _fleet(db, 12)
    names = list(serials)
    _start_and_fetch(db, names)
    recorders = [ResultService(db), ResultService(db)]  # as two workers
    barrier = threading.Barrier(2)
    failures: list[BaseException] = []

    def worker(recorder: ResultService, part: list[str]) -> None:
        try:
            barrier.wait(30)
            reports = [ResultItem(n, serials[n], "fleet", "rollout.all", "SUCCEEDED", None) for n in part]
            assert recorder.batch(reports) == ["DEPLOYED"] * len(part)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(recorders[i], names[i::2])) for i in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        for recorder in recorders:
            recorder.close()
    assert failures == []
    assert _stage(db) == "DEPLOYED"


def test_downloads_are_granted_only_for_assigned_packages(db: Db, tmp_path: Any) -> None:
    import hashlib

    from edgefleet.server.artifacts import open_artifact_store
    from edgefleet.server.db.schema import ModelPackage

    serials = _fleet(db, 3)
    names = list(serials)
    store = open_artifact_store(tmp_path.as_uri())
    archive = b"not really a tar.gz, but content-addressed all the same"
    with db.session() as s:
        package = s.scalar(select(ModelPackage))
        assert package is not None
        package.sha256, package.size = hashlib.sha256(archive).hexdigest(), len(archive)
        package_id, key = package.id, package.artifact_key
    store.put_bytes(key, archive)
    grants = DownloadService(db, store)
    try:
        asks = [DownloadItem(n, serials[n], package_id) for n in names]
        assert grants.batch(asks) == [None] * 3  # no stage started: nobody may download
        with db.session() as s:
            start_stage(s, "rollout", "all", db.now())
        granted = grants.batch(
            [
                *asks,
                DownloadItem(names[0], "ffff", package_id),
                DownloadItem(names[0], serials[names[0]], package_id + 1),
            ]
        )
        assert [g is not None for g in granted] == [True, True, True, False, False]
        grant = granted[0]
        assert grant is not None and (grant.artifact_key, grant.size) == (key, len(archive))
        assert asyncio.run(grants.content(grant)) == archive
        store.delete(key)
        assert asyncio.run(grants.content(grant)) == archive  # served from memory now
        with db.session() as s:
            devices.deregister_devices(s, None, [names[1]], db.now())
        assert grants.batch([asks[1]]) == [None]  # revoked at once
    finally:
        grants.close()
