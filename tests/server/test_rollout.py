"""Properties of the per-device deployment state machine (edgefleet.server.deployments.rollout)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edgefleet.core.deviceplane import FailurePolicy, Result
from edgefleet.server.deployments.rollout import (
    Change,
    DeviceStatus,
    Report,
    Rollback,
    StageEvent,
    stage_changes,
    transition,
)

FINISHED = {DeviceStatus.DEPLOYED, DeviceStatus.FAILED, DeviceStatus.STOPPED}
PENDING = {DeviceStatus.READYTODEPLOY, DeviceStatus.INPROGRESS}

statuses = st.sampled_from(DeviceStatus)
rollbacks = st.sampled_from(Rollback)
# a rollback is only requested of a device that is rolling back (stage stopped or failed) or that
# failed its health gate
REACHABLE = [
    (status, rollback)
    for status in DeviceStatus
    for rollback in Rollback
    if rollback != Rollback.REQUESTED or status in (DeviceStatus.STOPPING, DeviceStatus.FAILED)
]
rows = st.sampled_from(REACHABLE)
reports: st.SearchStrategy[Report] = st.none() | st.sampled_from(Result)
events: st.SearchStrategy[Report | StageEvent] = reports | st.sampled_from(StageEvent)
policies = st.sampled_from(FailurePolicy)


def _after(status: DeviceStatus, rollback: Rollback, change: Change | None) -> tuple[DeviceStatus, Rollback]:
    if change is None:
        return status, rollback
    return change.status, change.rollback or rollback


@given(statuses, rollbacks, events, policies, st.booleans())
def test_finished_devices_never_become_pending_again(
    status: DeviceStatus, rollback: Rollback, event: Report | StageEvent, policy: FailurePolicy, gated: bool
) -> None:
    new, _ = _after(status, rollback, transition(status, rollback, event, policy=policy, gated=gated))
    if status in FINISHED:
        assert new not in PENDING
    if status == DeviceStatus.STOPPED:
        assert new == DeviceStatus.STOPPED  # nothing reopens a stopped device
    if status == DeviceStatus.FAILED:
        assert new == DeviceStatus.FAILED


@given(statuses, rollbacks, reports, policies, st.booleans())
def test_only_a_rollback_result_leaves_stopping(
    status: DeviceStatus, rollback: Rollback, report: Report, policy: FailurePolicy, gated: bool
) -> None:
    change = transition(status, rollback, report, policy=policy, gated=gated)
    new, new_rollback = _after(status, rollback, change)
    assert new != DeviceStatus.STOPPING or status == DeviceStatus.STOPPING  # reports never start a rollback
    assert new_rollback != Rollback.REQUESTED or rollback == Rollback.REQUESTED
    if status == DeviceStatus.STOPPING and new != DeviceStatus.STOPPING:
        assert report in (Result.FAILED_ROLLED_BACK, Result.FAILED_NO_CHANGE, Result.FAILED_ROLLBACK_FAILED)
        assert new_rollback == (Rollback.FAILED if report == Result.FAILED_ROLLBACK_FAILED else Rollback.DONE)
    if rollback == Rollback.REQUESTED and new_rollback != Rollback.REQUESTED:
        assert report in (Result.FAILED_ROLLED_BACK, Result.FAILED_NO_CHANGE, Result.FAILED_ROLLBACK_FAILED)


@given(st.sampled_from(sorted(PENDING)), rollbacks, policies, st.booleans())
def test_success_deploys_or_starts_the_observation(
    status: DeviceStatus, rollback: Rollback, policy: FailurePolicy, gated: bool
) -> None:
    change = transition(status, rollback, Result.SUCCEEDED, policy=policy, gated=gated)
    assert change is not None and change.activated
    assert change.status == (DeviceStatus.INPROGRESS if gated else DeviceStatus.DEPLOYED)
    assert change.observing is (True if gated else None)


@given(rows, events, policies, st.booleans())
def test_reachable_rows_stay_reachable(
    row: tuple[DeviceStatus, Rollback], event: Report | StageEvent, policy: FailurePolicy, gated: bool
) -> None:
    assert _after(*row, transition(*row, event, policy=policy, gated=gated)) in REACHABLE


@given(rows, reports, policies, st.booleans())
def test_a_repeated_report_changes_nothing_more(
    row: tuple[DeviceStatus, Rollback], report: Report, policy: FailurePolicy, gated: bool
) -> None:
    # the daemon's outbox resends a result until it is acknowledged
    status, rollback = row
    once = _after(status, rollback, transition(status, rollback, report, policy=policy, gated=gated))
    twice = _after(*once, transition(*once, report, policy=policy, gated=gated))
    assert twice == once


@given(st.sampled_from(StageEvent), policies)
def test_stage_events_are_set_updates_in_any_order(event: StageEvent, policy: FailurePolicy) -> None:
    groups = stage_changes(event, policy)
    sources = [s for group, _ in groups for s in group]
    assert len(sources) == len(set(sources))
    for group, change in groups:
        assert change.status not in sources  # no UPDATE feeds another
        for status in group:
            for rollback in Rollback:
                for gated in (False, True):  # the rollback sub-state and the gate do not matter
                    assert transition(status, rollback, event, policy=policy, gated=gated) == change
    touched = set(sources)
    assert not touched & {DeviceStatus.FAILED, DeviceStatus.STOPPED, DeviceStatus.STOPPING}
    if event == StageEvent.STOP:
        assert touched == PENDING  # a stop leaves deployed devices alone, whatever the policy
    elif event == StageEvent.WATCH_BREACH:
        assert touched == PENDING | {DeviceStatus.DEPLOYED}  # the watch policy decided, not the stage's
    elif policy == FailurePolicy.DO_NOTHING:
        assert groups == []
    else:
        assert touched == PENDING | {DeviceStatus.DEPLOYED}
    for _, change in groups:
        assert change.status in (DeviceStatus.STOPPED, DeviceStatus.STOPPING)
        assert (change.rollback == Rollback.REQUESTED) == (change.status == DeviceStatus.STOPPING)


@given(st.sampled_from(sorted(REACHABLE)), policies, st.booleans())
def test_a_watch_breach_rolls_deployed_devices_back_and_their_rollback_finishes(
    row: tuple[DeviceStatus, Rollback], policy: FailurePolicy, gated: bool
) -> None:
    status, rollback = row
    change = transition(status, rollback, StageEvent.WATCH_BREACH, policy=policy, gated=gated)
    if status == DeviceStatus.DEPLOYED:
        assert change is not None and change.status == DeviceStatus.STOPPING
        assert change.rollback == Rollback.REQUESTED and change.message is not None
        assert "watch period breached" in change.message
        # the device's rollback report then finishes the row through the ordinary rollback path
        for report, done in (
            (Result.FAILED_ROLLED_BACK, (DeviceStatus.STOPPED, Rollback.DONE)),
            (Result.FAILED_ROLLBACK_FAILED, (DeviceStatus.FAILED, Rollback.FAILED)),
        ):
            after = _after(status, rollback, change)
            assert _after(*after, transition(*after, report, policy=policy, gated=gated)) == done
    elif status in (DeviceStatus.FAILED, DeviceStatus.STOPPED, DeviceStatus.STOPPING):
        assert change is None  # finished or already rolling back: left alone


@given(statuses, rollbacks, events, policies, st.booleans(), st.text(), st.none() | st.text())
def test_messages_render_whatever_the_device_wrote(
    status: DeviceStatus,
    rollback: Rollback,
    event: Report | StageEvent,
    policy: FailurePolicy,
    gated: bool,
    reported: str,
    previous: str | None,
) -> None:
    change = transition(status, rollback, event, policy=policy, gated=gated)
    if change is not None and change.message is not None:
        text = change.render(reported, previous)
        assert text is not None
        if "{reported}" in change.message:
            assert reported in text
