"""The planner: a deployment (desired) against what is installed (current) -> undoable steps.

Pure functions, no I/O. A plan for a deployment touching handles ``h1..hn`` is, in this order:

1. ``FETCH`` every new package (download, resume, digest check) — undo: nothing (cache);
2. ``STAGE`` every new package (signature + digests against the trust store, unpack) — undo: nothing;
3. ``LOAD`` every new version under a fresh alias — undo: unload it;
4. ``SMOKE`` every new version (Predict with zeros) — undo: nothing;
5. ``SWITCH`` every handle to its new alias in the handle map — undo: switch back;
6. ``UNLOAD`` every version no handle serves any more — undo: load it again from its staged package.

Nothing an application can see changes before step 5, and step 5 runs only once every new version
has loaded and passed its smoke test, so a deployment of several models switches all or none
(a failure in step 5 or 6 is undone step by step). A handle already served by the wanted package is
left alone; an empty plan means the device already runs the deployment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from edgefleet.core.deviceplane import Deployment, DesiredState
from edgefleet.device.state import HistoryEntry, InstalledModel, JournalKind, Step, StepKind

MAX_ALIAS = 63
_NOT_ALNUM = re.compile(r"[^a-zA-Z0-9]+")


def alias_for(handle: str, version: str, generation: int) -> str:
    """A fresh agent alias for ``version`` of the model behind ``handle``: ``<handle>-<version>-g<n>``.

    The generation makes it unique on the device (two loads never share an alias, even of the same
    version); the result is a valid agent model name (<= 63 characters, ``[a-zA-Z0-9]`` runs
    joined by single hyphens).
    """
    suffix = f"g{generation}"
    slug = _NOT_ALNUM.sub("-", version).strip("-")
    head = _NOT_ALNUM.sub("-", handle).strip("-") or "model"
    room = MAX_ALIAS - len(suffix) - 1
    base = f"{head}-{slug}" if slug else head
    base = base[:room].rstrip("-")
    return f"{base}-{suffix}"


@dataclass(frozen=True)
class Plan:
    """Steps to run and what every touched handle serves before and after."""

    deployment: Deployment
    kind: JournalKind
    steps: tuple[Step, ...]
    before: dict[str, InstalledModel | None]
    after: dict[str, InstalledModel | None]
    #: the generation counter once the plan's aliases are taken
    generation: int

    @property
    def empty(self) -> bool:
        """True when the device already is where the deployment wants it."""
        return not self.steps


def _ordered(
    loads: list[InstalledModel], switches: list[Step], unloads: list[InstalledModel]
) -> tuple[Step, ...]:
    steps: list[Step] = []
    steps += [Step(StepKind.FETCH, m.handle, m) for m in loads]
    steps += [Step(StepKind.STAGE, m.handle, m) for m in loads]
    steps += [Step(StepKind.LOAD, m.handle, m) for m in loads]
    steps += [Step(StepKind.SMOKE, m.handle, m) for m in loads]
    steps += switches
    steps += [Step(StepKind.UNLOAD, m.handle, m) for m in unloads]
    return tuple(steps)


def plan_apply(deployment: Deployment, installed: Mapping[str, InstalledModel], generation: int) -> Plan:
    """The plan that makes the device run ``deployment``."""
    loads: list[InstalledModel] = []
    switches: list[Step] = []
    unloads: list[InstalledModel] = []
    before: dict[str, InstalledModel | None] = {}
    after: dict[str, InstalledModel | None] = {}
    for definition in deployment.definitions:
        handle = definition.handle
        current = installed.get(handle)
        before[handle] = current
        if definition.state is DesiredState.UNDEPLOY:
            after[handle] = None
            if current is not None:
                switches.append(Step(StepKind.SWITCH, handle, None, previous=current))
                unloads.append(current)
            continue
        if current is not None and current.package.key == definition.package.key:
            after[handle] = current  # already served by this very package
            continue
        generation += 1
        new = InstalledModel(
            handle=handle,
            model_name=definition.model_name,
            model_version=definition.model_version,
            alias=alias_for(handle, definition.model_version, generation),
            package=definition.package,
            deployment=deployment.name,
        )
        after[handle] = new
        loads.append(new)
        switches.append(Step(StepKind.SWITCH, handle, new, previous=current))
        if current is not None:
            unloads.append(current)
    return Plan(deployment, JournalKind.APPLY, _ordered(loads, switches, unloads), before, after, generation)


def plan_rollback(
    deployment: Deployment,
    installed: Mapping[str, InstalledModel],
    applied: HistoryEntry | None,
    generation: int,
) -> Plan:
    """The plan that undoes ``applied`` (the device's record of applying ``deployment``).

    A handle is restored only if it still serves what the deployment put there (a later deployment
    may have replaced it since); the previous version loads under a fresh alias from its package
    (fetched again if the cache lost it). Empty if there is nothing to undo.
    """
    loads: list[InstalledModel] = []
    switches: list[Step] = []
    unloads: list[InstalledModel] = []
    before: dict[str, InstalledModel | None] = {}
    after: dict[str, InstalledModel | None] = {}
    if applied is None or applied.kind is not JournalKind.APPLY:
        return Plan(deployment, JournalKind.ROLLBACK, (), before, after, generation)
    for handle, put_there in applied.after.items():
        current = installed.get(handle)
        same = (current is None and put_there is None) or (
            current is not None and put_there is not None and current.alias == put_there.alias
        )
        if not same:
            continue
        previous = applied.before.get(handle)
        if previous is not None and current is not None and previous.alias == current.alias:
            continue  # the deployment left this handle alone
        before[handle] = current
        if previous is None:
            after[handle] = None
            if current is not None:
                switches.append(Step(StepKind.SWITCH, handle, None, previous=current))
                unloads.append(current)
            continue
        generation += 1
        restored = replace(
            previous,
            alias=alias_for(handle, previous.model_version, generation),
            deployment=previous.deployment,
        )
        after[handle] = restored
        loads.append(restored)
        switches.append(Step(StepKind.SWITCH, handle, restored, previous=current))
        if current is not None:
            unloads.append(current)
    return Plan(
        deployment, JournalKind.ROLLBACK, _ordered(loads, switches, unloads), before, after, generation
    )
