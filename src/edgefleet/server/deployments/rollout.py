"""The per-device deployment state machine, as a pure function (no database, no clock).

``READYTODEPLOY`` (selected) -> ``INPROGRESS`` (the device fetched the deployment; after it reports
success it stays here while the health gate observes it) -> ``DEPLOYED`` | ``FAILED``; a stop or a
failed stage under ROLLBACK_ON_FAILURE moves unfinished devices to ``STOPPING`` (the device is told
to roll back) -> ``STOPPED``. A row moves on what its device reports (a
:class:`~edgefleet.core.deviceplane.Result`, or None for ``INPROGRESS``) and on what happens to its
stage (:class:`StageEvent`). ``record_result`` applies :func:`transition` to one row; stage
transitions apply :func:`stage_changes` to every row of a source status with one UPDATE each.
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
    """What happens to every device of a stage at once: an operator stops it, it fails, or the watch
    period of a DEPLOYED stage found a breach of the gate's limits (watch policy ROLLBACK)."""

    STOP = "STOP"
    FAIL = "FAIL"
    WATCH_BREACH = "WATCH_BREACH"


#: a device report: the closed result set, or None while the device says INPROGRESS
Report = Result | None

_FAILED = frozenset({Result.FAILED_NO_CHANGE, Result.FAILED_ROLLED_BACK, Result.FAILED_ROLLBACK_FAILED})
#: results that say the device is as it was before the deployment
_UNDONE = frozenset({Result.FAILED_ROLLED_BACK, Result.FAILED_NO_CHANGE})


@dataclass(frozen=True)
class Change:
    """What a transition changes (None: stays). ``message`` is a template over ``{reported}`` (the
    device's message, or its status) and ``{previous}`` (the row's message before)."""

    status: DeviceStatus
    message: str | None = None
    rollback: Rollback | None = None
    observing: bool | None = None
    #: the device serves the new models from now on (the health gate observes it from here)
    activated: bool = False

    def render(self, reported: str, previous: str | None) -> str | None:
        """The row's new message (None: keep the old one)."""
        return None if self.message is None else self.message.format(reported=reported, previous=previous)


def transition(
    status: DeviceStatus,
    rollback: Rollback,
    event: Report | StageEvent,
    *,
    policy: FailurePolicy,
    gated: bool,
) -> Change | None:
    """The change ``event`` makes to a row (None: none); ``policy`` is the stage's failure policy,
    ``gated`` whether the plan has a health gate."""
    if isinstance(event, StageEvent):
        return _stage_event(status, event, policy)
    if status in (DeviceStatus.READYTODEPLOY, DeviceStatus.INPROGRESS):
        if event == Result.SUCCEEDED and gated:
            return Change(
                DeviceStatus.INPROGRESS, "activated; observing health", observing=True, activated=True
            )
        if event == Result.SUCCEEDED:
            return Change(DeviceStatus.DEPLOYED, "{reported}", activated=True)
        if event in _FAILED:
            done = {Result.FAILED_ROLLED_BACK: Rollback.DONE, Result.FAILED_ROLLBACK_FAILED: Rollback.FAILED}
            return Change(DeviceStatus.FAILED, "{reported}", done.get(event, Rollback.NONE), observing=False)
        return Change(DeviceStatus.INPROGRESS, "{reported}")
    if status == DeviceStatus.STOPPING and event in _UNDONE:
        return Change(DeviceStatus.STOPPED, "rolled back: {reported}", Rollback.DONE)
    if status == DeviceStatus.STOPPING and event == Result.FAILED_ROLLBACK_FAILED:
        return Change(DeviceStatus.FAILED, "rollback failed: {reported}", Rollback.FAILED)
    if status == DeviceStatus.FAILED and rollback == Rollback.REQUESTED and event in _UNDONE:
        return Change(DeviceStatus.FAILED, rollback=Rollback.DONE)
    if (
        status == DeviceStatus.FAILED
        and rollback == Rollback.REQUESTED
        and event == Result.FAILED_ROLLBACK_FAILED
    ):
        return Change(DeviceStatus.FAILED, "{previous}; rollback failed: {reported}", Rollback.FAILED)
    if status == DeviceStatus.DEPLOYED and event in _FAILED:
        return Change(DeviceStatus.FAILED, "{reported}")
    return None


_WHY = {
    StageEvent.STOP: "stage stopped",
    StageEvent.FAIL: "stage failed",
    StageEvent.WATCH_BREACH: "watch period breached",
}


def _stage_event(status: DeviceStatus, event: StageEvent, policy: FailurePolicy) -> Change | None:
    if event == StageEvent.FAIL and policy != FailurePolicy.ROLLBACK_ON_FAILURE:
        return None  # DO_NOTHING: finished devices keep what they run, unfinished ones carry on
    # a watch breach rolls back whatever the failure policy: the plan's watch policy chose it
    why = _WHY[event]
    if status == DeviceStatus.READYTODEPLOY:
        return Change(DeviceStatus.STOPPED, f"{why} before the device started", observing=False)
    # a stop leaves deployed devices alone; a failed stage or a watch breach rolls them back too
    if status == DeviceStatus.INPROGRESS or (status == DeviceStatus.DEPLOYED and event != StageEvent.STOP):
        return Change(DeviceStatus.STOPPING, f"{why}: rolling back", Rollback.REQUESTED, observing=False)
    return None


def stage_changes(event: StageEvent, policy: FailurePolicy) -> list[tuple[list[DeviceStatus], Change]]:
    """(source statuses, change) for each distinct change ``event`` makes: one UPDATE each. A stage
    event depends on neither the rollback sub-state nor the gate, and no change's target is another's
    source, so the UPDATEs may run in any order."""
    groups: dict[Change, list[DeviceStatus]] = {}
    for status in DeviceStatus:
        change = _stage_event(status, event, policy)
        if change is not None:
            groups.setdefault(change, []).append(status)
    return [(sources, change) for change, sources in groups.items()]
