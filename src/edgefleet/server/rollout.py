"""The per-device deployment state machine, as a pure function.

A device's row in a stage has a status (:class:`DeviceStatus`) and a rollback sub-state
(:class:`Rollback`). It moves on what the device reports (a :class:`~edgefleet.core.deviceplane.Result`,
or ``None`` for ``INPROGRESS``) and on what happens to its stage (:class:`StageEvent`: an operator
stops it, it fails above its threshold). :func:`transition` says what changes; it reads no
database and no clock, so the rules are property-tested on their own (tests/server/test_rollout.py)
and applied by both sides: ``record_result`` to one row, the stage transitions to every row of a
source status with one UPDATE each (:func:`stage_changes`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from edgefleet.core.deviceplane import FailurePolicy, Result


class DeviceStatus(enum.StrEnum):
    """Per-device states (ListStageDevices' DeviceDeploymentStatus)."""

    READYTODEPLOY = "READYTODEPLOY"
    INPROGRESS = "INPROGRESS"
    DEPLOYED = "DEPLOYED"
    FAILED = "FAILED"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"


class Rollback(enum.StrEnum):
    """Whether a device was asked to roll back and how that went."""

    NONE = "NONE"
    REQUESTED = "REQUESTED"
    DONE = "DONE"
    FAILED = "FAILED"


class StageEvent(enum.StrEnum):
    """What happens to every device of a stage at once."""

    #: an operator stopped the stage
    STOP = "STOP"
    #: the stage's failed share exceeded its threshold
    FAIL = "FAIL"


#: a device report: the closed result set, or None while the device says INPROGRESS
Report = Result | None

FAILED_RESULTS = frozenset(
    {Result.FAILED_NO_CHANGE, Result.FAILED_ROLLED_BACK, Result.FAILED_ROLLBACK_FAILED}
)
#: results that say the device's rollback (or failed deployment) left it as it was before
_UNDONE = frozenset({Result.FAILED_ROLLED_BACK, Result.FAILED_NO_CHANGE})


@dataclass(frozen=True)
class Change:
    """What a transition changes; None fields stay as they are.

    ``message`` is a template: ``{reported}`` is the device's message (or its status when it sent
    none), ``{previous}`` the row's message before.
    """

    status: DeviceStatus
    message: str | None = None
    rollback: Rollback | None = None
    observing: bool | None = None
    #: the device serves the new models from now on (the health gate observes it from here)
    activated: bool = False


def transition(
    status: DeviceStatus,
    rollback: Rollback,
    event: Report | StageEvent,
    *,
    policy: FailurePolicy,
    gated: bool,
) -> Change | None:
    """The change ``event`` makes to a row in ``status``/``rollback`` (None: nothing changes).

    ``policy`` is the stage's failure policy, ``gated`` whether the plan has a health gate.
    """
    if isinstance(event, StageEvent):
        return _stage_event(status, event, policy)
    return _report(status, rollback, event, gated)


def _stage_event(status: DeviceStatus, event: StageEvent, policy: FailurePolicy) -> Change | None:
    if event == StageEvent.FAIL and policy != FailurePolicy.ROLLBACK_ON_FAILURE:
        return None  # DO_NOTHING: finished devices keep what they run, unfinished ones carry on
    why = "stage stopped" if event == StageEvent.STOP else "stage failed"
    if status == DeviceStatus.READYTODEPLOY:
        return Change(DeviceStatus.STOPPED, f"{why} before the device started", observing=False)
    # a stop leaves deployed devices alone; a failed stage rolls them back too
    if status == DeviceStatus.INPROGRESS or (status == DeviceStatus.DEPLOYED and event == StageEvent.FAIL):
        return Change(DeviceStatus.STOPPING, f"{why}: rolling back", Rollback.REQUESTED, observing=False)
    return None


def _report(status: DeviceStatus, rollback: Rollback, result: Report, gated: bool) -> Change | None:
    if status in (DeviceStatus.READYTODEPLOY, DeviceStatus.INPROGRESS):
        if result == Result.SUCCEEDED:
            if gated:
                return Change(
                    DeviceStatus.INPROGRESS, "activated; observing health", observing=True, activated=True
                )
            return Change(DeviceStatus.DEPLOYED, "{reported}", activated=True)
        if result in FAILED_RESULTS:
            done = {Result.FAILED_ROLLED_BACK: Rollback.DONE, Result.FAILED_ROLLBACK_FAILED: Rollback.FAILED}
            return Change(DeviceStatus.FAILED, "{reported}", done.get(result, Rollback.NONE), observing=False)
        return Change(DeviceStatus.INPROGRESS, "{reported}")
    if status == DeviceStatus.STOPPING:
        if result in _UNDONE:
            return Change(DeviceStatus.STOPPED, "rolled back: {reported}", Rollback.DONE)
        if result == Result.FAILED_ROLLBACK_FAILED:
            return Change(DeviceStatus.FAILED, "rollback failed: {reported}", Rollback.FAILED)
        return None
    if status == DeviceStatus.FAILED and rollback == Rollback.REQUESTED:
        if result in _UNDONE:
            return Change(DeviceStatus.FAILED, rollback=Rollback.DONE)
        if result == Result.FAILED_ROLLBACK_FAILED:
            return Change(DeviceStatus.FAILED, "{previous}; rollback failed: {reported}", Rollback.FAILED)
        return None
    if status == DeviceStatus.DEPLOYED and result in FAILED_RESULTS:
        return Change(DeviceStatus.FAILED, "{reported}")
    return None


def stage_changes(event: StageEvent, policy: FailurePolicy) -> list[tuple[list[DeviceStatus], Change]]:
    """The rows ``event`` changes, grouped by change: (source statuses, change) for one UPDATE each.

    A stage event does not depend on the rollback sub-state nor on the gate, and no change's
    target is the source of another, so the UPDATEs may run in any order.
    """
    groups: dict[Change, list[DeviceStatus]] = {}
    for status in DeviceStatus:
        change = _stage_event(status, event, policy)
        if change is not None:
            groups.setdefault(change, []).append(status)
    return [(sources, change) for change, sources in groups.items()]


def render(change: Change, reported: str, previous: str | None) -> str | None:
    """The row's new message (None: keep the old one)."""
    if change.message is None:
        return None
    return change.message.format(reported=reported, previous=previous)
