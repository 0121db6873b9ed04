"""Rollouts at scale: device results committed without the stage lock and the stage settled after,
idle polls checked in batches. SQLite, and PostgreSQL when reachable."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from server_testkit import TOKEN_TTL, make_csr, record_package_row

from edgefleet.server import deployments as dp
from edgefleet.server import devices, fleets, registry
from edgefleet.server.ca import FleetCA
from edgefleet.server.polls import IdlePolls, Poll

Db = Any  # the db fixture yields a Database


def _fleet(db: Db, n: int) -> dict[str, str]:
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
        record_package_row(s, "detector", "2")
        registry.set_approval(s, "detector", "2", "Approved", "bob", db.now())
        dp.create_plan(
            s,
            dp.PlanSpec(
                name="rollout",
                fleet_name="fleet",
                model_configs=[dp.ModelConfigSpec("detector", "detector", version="2")],
                stages=[dp.StageSpec("all", "PERCENTAGE", percentage=100)],
            ),
            "alice",
            db.now(),
        )
    serials = {}
    for name, token in zip(names, tokens, strict=True):
        with db.session() as s:
            device, _ = devices.enrol(s, token, make_csr()[1], ca, db.now(), 365)
            assert device.cert_serial is not None
            serials[name] = device.cert_serial
    return serials


def _start_and_fetch(db: Db, names: list[str]) -> None:
    with db.session() as s:
        dp.start_stage(s, "rollout", "all", db.now())
    for name in names:
        with db.session() as s:
            assert [d.name for d in dp.device_deployments(s, devices.get_device(s, name), db.now())] == [
                "rollout.all"
            ]


def _report(db: Db, name: str, status: str = "SUCCEEDED") -> tuple[int, bool]:
    """What the ReportDeploymentResult route does first: the row only, committed."""
    with db.session() as s:
        row = dp.record_result(
            s, devices.get_device(s, name), dp.ResultReport("rollout.all", status), db.now(), refresh=False
        )
        return row.stage_id, row.status == dp.DeviceStatus.FAILED


def _settle(db: Db, stage_id: int, failed: bool = False) -> None:
    with db.session() as s:
        dp.settle_stage(s, stage_id, db.now(), device_failed=failed)


def _stage(db: Db) -> str:
    with db.session() as s:
        return str(dp.get_stage(dp.get_plan(s, "rollout"), "all").status)


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
        stage = dp.get_stage(dp.get_plan(s, "rollout"), "all")
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
        page = dp.list_stage_devices(s, "rollout", "all", limit=100, next_token=None)
        statuses = {row.device.name: (row.status, row.rollback) for row in page.items}
    assert statuses[names[0]] == ("FAILED", "DONE")
    assert all(statuses[n] == ("STOPPING", "REQUESTED") for n in names[1:])


def test_idle_polls_are_checked_in_one_query(db: Db) -> None:
    serials = _fleet(db, 4)
    names = list(serials)
    polls = IdlePolls(db)
    try:
        everyone = [Poll(n, serials[n], "fleet") for n in names]
        assert polls.check(everyone) == [True] * 4
        with db.session() as s:
            dp.start_stage(s, "rollout", "all", db.now())
        assert polls.check(everyone) == [False] * 4  # READYTODEPLOY: the ordinary path hands it out
        _start_and_fetch_one(db, names[0])
        _report(db, names[0])
        assert polls.check(everyone) == [True, False, False, False]
        assert polls.check(
            [
                Poll(names[0], serials[names[0]], "elsewhere"),  # names another fleet
                Poll(names[0], "ffff", "fleet"),  # not its certificate
                Poll("ghost", "abcd", "fleet"),  # not registered
            ]
        ) == [False, False, False]
        with db.session() as s:
            devices.deregister_devices(s, None, [names[0]], db.now())
        assert polls.check([Poll(names[0], serials[names[0]], "fleet")]) == [False]  # revoked at once

        async def through_the_queue() -> list[bool]:
            return await asyncio.gather(
                *(polls.is_idle(p.device_name, p.serial, p.fleet_name) for p in everyone)
            )

        assert asyncio.run(through_the_queue()) == [False] * 4
    finally:
        polls.close()


def _start_and_fetch_one(db: Db, name: str) -> None:
    with db.session() as s:
        assert dp.device_deployments(s, devices.get_device(s, name), db.now())
