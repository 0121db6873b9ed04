"""The executor: runs a plan step by step with retries, journals every step, undoes on failure.

Every step is marked STARTED in the journal (on disk) before it runs and DONE after, so a crash
at any point leaves a journal that says what may have happened. Undo is idempotent (unloading an
alias that is gone, loading one that is there, making the handle map and the agent's handles name
what the journal says serves each handle), so recovery after a crash simply undoes every STARTED or
DONE step in reverse order: the device is back where it was before the deployment, and the
deployment is applied again when the server still asks for it (downloads resume, staged packages
are reused). A deployment interrupted ``max_interrupted_attempts`` times is given up.

Handles are state, not commands: a SWITCH step (and its undo) writes whatever
:func:`serving_models` says now to ``handles.json`` and, when the agent implements
``model-handles``, to the agent (:func:`~edgefleet.device.agentlink.sync_agent_handles`). Because the
agent refuses to unload a handle's target, every unload here happens after the handle moved away.

Results (the closed set of :class:`~edgefleet.device.protocol.Result`):

- the plan completes: ``SUCCEEDED`` (for a rollback the deployment is then ``FAILED_ROLLED_BACK``);
- it fails before any version was loaded (download, digest, signature): ``FAILED_NO_CHANGE``
  — or no result at all when the server was merely unreachable (the attempt is *deferred*);
- it fails later, under ROLLBACK_ON_FAILURE: every change is undone, ``FAILED_ROLLED_BACK``, or
  ``FAILED_ROLLBACK_FAILED`` if some undo failed (the daemon keeps converging to the previous state);
- it fails later under DO_NOTHING: versions that never got their handle are unloaded (nothing
  serves them), switched handles stay switched, ``FAILED_NO_CHANGE`` (no rollback change made).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Set
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from edgefleet.client.handles import HandleEntry, read_handles, write_handles
from edgefleet.core.deviceplane import (
    Deployment,
    DeploymentResult,
    DesiredState,
    FailurePolicy,
    ModelResult,
    Result,
)
from edgefleet.core.errors import AlreadyExists, Code, EdgefleetError, NotFound
from edgefleet.device.agentlink import (
    AgentConnection,
    agent_resolves_handles,
    smoke_inputs,
    sync_agent_handles,
)
from edgefleet.device.config import DeploymentSettings, RetryPolicy
from edgefleet.device.packages import DigestMismatch, Packages
from edgefleet.device.plan import Plan, plan_apply, plan_rollback
from edgefleet.device.protocol import ControlPlane
from edgefleet.device.state import (
    DeviceState,
    HistoryEntry,
    InstalledModel,
    Journal,
    JournalKind,
    Phase,
    StateStore,
    Step,
    StepKind,
    StepStatus,
    Watch,
)

log = logging.getLogger(__name__)

_RETRYABLE = {Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.ABORTED}
_LIVE = (StepStatus.STARTED, StepStatus.DONE, StepStatus.FAILED)
#: steps after which an application may see a difference (or memory is used)
_CHANGING = (StepKind.LOAD, StepKind.SWITCH, StepKind.UNLOAD)


def utcnow() -> datetime:
    """The current time (UTC)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Outcome:
    """What became of one deployment attempt."""

    deployment: str
    kind: JournalKind
    #: None: deferred (the server was unreachable before anything changed; it is tried again later)
    result: Result | None
    message: str
    entry: HistoryEntry | None = None


def serving_models(state: DeviceState) -> dict[str, InstalledModel]:
    """What each handle serves now: the installed models, overlaid with the journal's switches."""
    serving = dict(state.installed)
    if state.journal is not None:
        for step in state.journal.steps:
            if step.kind is StepKind.SWITCH and step.status in (StepStatus.STARTED, StepStatus.DONE):
                if step.model is None:
                    serving.pop(step.handle, None)
                else:
                    serving[step.handle] = step.model
    return serving


def referenced_packages(state: DeviceState) -> set[str]:
    """Package keys that must stay cached: installed, in flight, or kept for a rollback."""
    keys = {m.package.key for m in state.installed.values()}
    models: list[InstalledModel | None] = []
    if state.journal is not None:
        models += [s.model for s in state.journal.steps] + list(state.journal.before.values())
    for entry in state.history:
        models += list(entry.before.values()) + list(entry.after.values())
    keys.update(m.package.key for m in models if m is not None)
    return keys


def deployment_result(entry: HistoryEntry, serving: dict[str, InstalledModel]) -> DeploymentResult:
    """The DeploymentResult the server gets for a history entry."""
    models = []
    for handle in sorted(set(entry.before) | set(entry.after)):
        if entry.kind is JournalKind.APPLY:
            # the deployment's model: what it put on the handle (None: it undeploys the handle)
            ours = entry.after.get(handle)
            desired = DesiredState.DEPLOY if ours is not None else DesiredState.UNDEPLOY
            reference = ours or entry.before.get(handle)
        else:
            ours = entry.before.get(handle)
            desired = DesiredState.UNDEPLOY
            reference = ours
        now = serving.get(handle)
        serves = now is not None and reference is not None and now.alias == reference.alias
        ok = entry.result is Result.SUCCEEDED
        models.append(
            ModelResult(
                handle=handle,
                model_name=reference.model_name if reference else "",
                model_version=reference.model_version if reference else "",
                desired_state=desired,
                state=DesiredState.DEPLOY if serves else DesiredState.UNDEPLOY,
                success=ok,
                reason="" if ok else entry.message,
                rollback_failure_reason=entry.message
                if entry.result is Result.FAILED_ROLLBACK_FAILED
                else "",
            )
        )
    return DeploymentResult(
        deployment_name=entry.deployment,
        result=entry.result,
        message=entry.message,
        started_at=entry.started_at,
        finished_at=entry.finished_at,
        models=tuple(models),
    )


class Executor:
    """Applies and rolls back deployments on one device, and keeps the agent converged."""

    def __init__(
        self,
        *,
        store: StateStore,
        agent: AgentConnection,
        packages: Packages,
        plane: ControlPlane,
        handles_path: Path | None,
        retry: RetryPolicy,
        settings: DeploymentSettings,
        max_unsent_results: int = 200,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.agent = agent
        self.packages = packages
        self.plane = plane
        self.handles_path = handles_path
        self.retry = retry
        self.settings = settings
        self.max_unsent_results = max_unsent_results
        self._sleep = sleep
        self._now = now

    # -- entry points ---------------------------------------------------------------------------
    def apply(self, deployment: Deployment) -> Outcome:
        """Apply ``deployment`` (plan, run, commit or undo)."""
        with self.store.locked() as st:
            plan = plan_apply(deployment, st.installed, st.generation)
        return self._start(plan)

    def rollback(self, deployment: Deployment) -> Outcome:
        """Undo what applying ``deployment`` changed on this device (asked by the server)."""
        with self.store.locked() as st:
            applied = st.last_entry(deployment.name)
            plan = plan_rollback(deployment, st.installed, applied, st.generation)
        if plan.empty:
            why = "nothing of this deployment is applied on the device"
            return self._finish_without_steps(plan, Result.FAILED_NO_CHANGE, why)
        return self._start(plan)

    def recover(self) -> Outcome | None:
        """Finish what a crash interrupted: undo the journal's steps. None if there is no journal."""
        journal = self.store.state.journal
        if journal is None:
            return None
        name = journal.deployment.name
        # The crash may have come between marking a step and acting on it (a SWITCH marked UNDONE
        # whose handles were not moved back yet): first make the handles say what the journal says,
        # or the agent would refuse to unload an alias a handle still points at.
        for problem in self._try_sync_handles():
            log.info("deployment %s: before the undo: %s", name, problem)
        if journal.phase is Phase.UNDOING:
            log.warning(
                "deployment %s: finishing the undo a crash interrupted", name, extra={"deployment": name}
            )
            return self._undo_and_finish(journal.failure)
        give_up = journal.attempt >= self.settings.max_interrupted_attempts
        reason = f"interrupted (attempt {journal.attempt}: the daemon or device stopped mid-deployment)"
        if journal.phase is Phase.RECOVERING:
            reason = journal.failure
        log.warning("deployment %s: %s; undoing its steps", name, reason, extra={"deployment": name})
        if give_up:
            return self._undo_and_finish(
                f"{reason}; given up after {journal.attempt} interrupted attempts", force_undo=True
            )
        self._set_journal(replace(journal, phase=Phase.RECOVERING, failure=reason))
        errors = self._undo_steps(undo_all=True)
        with self.store.change() as st:
            st.journal = None
            st.interrupted[name] = journal.attempt
        if errors:
            log.error("deployment %s: undo after the interruption failed: %s", name, "; ".join(errors))
        return Outcome(name, journal.kind, None, f"{reason}; rolled back, will be applied again")

    # -- running --------------------------------------------------------------------------------
    def _start(self, plan: Plan) -> Outcome:
        name = plan.deployment.name
        if plan.empty:
            return self._finish_without_steps(
                plan, Result.SUCCEEDED, "the device already runs this deployment"
            )
        with self.store.change() as st:
            attempt = st.interrupted.get(name, 0) + 1
            st.generation = max(st.generation, plan.generation)
            st.journal = Journal(
                deployment=plan.deployment,
                kind=plan.kind,
                steps=plan.steps,
                before=plan.before,
                after=plan.after,
                started_at=self._now(),
                attempt=attempt,
            )
        log.info(
            "deployment %s: %s in %d steps (attempt %d): %s",
            name,
            plan.kind.value.lower(),
            len(plan.steps),
            attempt,
            "; ".join(s.describe() for s in plan.steps),
            extra={"deployment": name},
        )
        return self._execute()

    def _execute(self) -> Outcome:
        journal = self.store.state.journal
        assert journal is not None
        for index, step in enumerate(journal.steps):
            if step.status is StepStatus.DONE:
                continue
            self._mark(index, StepStatus.STARTED)
            try:
                self._attempt(functools.partial(self._do, step), step)
            except EdgefleetError as exc:
                self._mark(index, StepStatus.FAILED, exc.message)
                failure = f"{step.describe()} failed: {exc}"
                log.warning("deployment %s: %s", journal.deployment.name, failure)
                if step.kind is StepKind.SWITCH:
                    # the switch may have reached the map or the agent before failing (DO_NOTHING
                    # undoes no switch): put the handles back where the journal says they are
                    for problem in self._try_sync_handles():
                        log.warning("deployment %s: %s", journal.deployment.name, problem)
                if exc.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED) and not self._changed():
                    return self._defer(failure)
                return self._undo_and_finish(failure)
            self._mark(index, StepStatus.DONE)
        return self._commit()

    def _attempt(self, action: Callable[[], None], step: Step) -> None:
        failures = 0
        while True:
            try:
                action()
                return
            except EdgefleetError as exc:
                retryable = (exc.code in _RETRYABLE or isinstance(exc, DigestMismatch)) and (
                    step.kind is not StepKind.SMOKE
                )
                failures += 1
                if not retryable or failures >= self.retry.max_attempts:
                    raise
                delay = self.retry.delay(failures)
                log.info("%s failed (%s); retry %d in %.1f s", step.describe(), exc, failures, delay)
                self._sleep(delay)

    def _changed(self) -> bool:
        journal = self.store.state.journal
        assert journal is not None
        return any(s.kind in _CHANGING and s.status in _LIVE for s in journal.steps)

    # -- steps ----------------------------------------------------------------------------------
    def _do(self, step: Step) -> None:
        model = step.model
        if step.kind is StepKind.SWITCH:
            for problem in self._sync_handles(strict=step.handle):
                log.warning("%s: %s", step.describe(), problem)
            return
        assert model is not None
        if step.kind is StepKind.FETCH:
            self.packages.fetch(model.package, self.plane)
        elif step.kind is StepKind.STAGE:
            self.packages.stage(model.package)
        elif step.kind is StepKind.LOAD:
            self._load(model)
        elif step.kind is StepKind.SMOKE:
            self._smoke(model)
        elif step.kind is StepKind.UNLOAD:
            self._unload(model.alias)

    def _undo(self, step: Step) -> None:
        if step.kind is StepKind.LOAD and step.model is not None:
            self._unload(step.model.alias)
        elif step.kind is StepKind.SWITCH:
            for problem in self._sync_handles():
                log.warning("undo %s: %s", step.describe(), problem)
        elif step.kind is StepKind.UNLOAD and step.model is not None:
            if not self.packages.is_staged(step.model.package):
                self.packages.fetch(step.model.package, self.plane)
                self.packages.stage(step.model.package)
            self._load(step.model)

    def _load(self, model: InstalledModel) -> None:
        with self.store.change() as st:
            st.managed.add(model.alias)  # before the load: a crash right after must find it
        path = self.packages.staged_path(model.package)
        try:
            self.agent.api.load(str(path), model.alias)
        except AlreadyExists:
            log.info("%s is loaded already", model.alias, extra={"model": model.alias})

    def _unload(self, alias: str) -> None:
        try:
            self.agent.api.unload(alias)
        except NotFound:
            pass
        with self.store.change() as st:
            st.managed.discard(alias)

    def _smoke(self, model: InstalledModel) -> None:
        if not self.settings.smoke_test:
            return
        info = self.agent.api.describe(model.alias)
        if not info.inputs:
            log.info("%s declares no inputs; smoke test skipped", model.alias, extra={"model": model.alias})
            return
        self.agent.smoke.predict(model.alias, smoke_inputs(info))

    def _sync_handles(self, *, strict: str | None = None, leave: Set[str] = frozenset()) -> list[str]:
        """Make the handle map and the agent's handles name what :func:`serving_models` says.

        The map is written first (a local file: an undo must not be held up by the agent). Agent
        handles are set only when the agent implements ``model-handles``. A handle whose target the
        agent does not have (it restarted: converge loads it and sets the handle later) is returned
        as a problem, unless it is ``strict`` (the handle a SWITCH step moves), which raises.
        Agent handles in ``leave`` are not touched.
        """
        with self.store.locked() as st:
            serving = serving_models(st)
            owned = set(st.managed)
        if self.handles_path is not None:  # simulated devices keep no map
            entries = {h: HandleEntry(m.alias, m.model_name, m.model_version) for h, m in serving.items()}
            if read_handles(self.handles_path) != entries:
                write_handles(self.handles_path, entries, self._now())
        api = self.agent.api
        if not agent_resolves_handles(api):
            return []
        return sync_agent_handles(
            api,
            {h: m.alias for h, m in serving.items()},
            owned,
            strict=frozenset() if strict is None else {strict},
            leave=leave,
        )

    def _try_sync_handles(self, leave: Set[str] = frozenset()) -> list[str]:
        """:meth:`_sync_handles` where a failure must not end the caller (converge retries it):
        every failure is returned as a problem."""
        try:
            return self._sync_handles(leave=leave)
        except EdgefleetError as exc:
            return [f"cannot update the handles: {exc}"]

    # -- bookkeeping ----------------------------------------------------------------------------
    def _set_journal(self, journal: Journal) -> None:
        with self.store.change() as st:
            st.journal = journal

    def _mark(self, index: int, status: StepStatus, error: str = "") -> None:
        with self.store.change() as st:
            assert st.journal is not None
            steps = list(st.journal.steps)
            steps[index] = steps[index].with_status(status, error)
            st.journal = replace(st.journal, steps=tuple(steps))

    def _undo_steps(self, *, undo_all: bool) -> list[str]:
        """Undo live steps in reverse; returns what could not be undone.

        With ``undo_all`` False (DO_NOTHING), only loads of versions whose handle was never switched
        are undone.
        """
        journal = self.store.state.journal
        assert journal is not None
        switched = {
            s.handle for s in journal.steps if s.kind is StepKind.SWITCH and s.status is StepStatus.DONE
        }
        errors = []
        for index in reversed(range(len(journal.steps))):
            step = journal.steps[index]
            if step.status not in _LIVE:
                continue
            if not undo_all and not (step.kind is StepKind.LOAD and step.handle not in switched):
                continue
            self._mark(index, StepStatus.UNDONE)  # before the undo: a SWITCH undo rewrites the map without it
            try:
                self._attempt(functools.partial(self._undo, step), step)
            except EdgefleetError as exc:
                errors.append(f"undo {step.describe()}: {exc}")
                self._mark(index, StepStatus.FAILED, f"undo failed: {exc.message}")
        return errors

    def _defer(self, failure: str) -> Outcome:
        journal = self.store.state.journal
        assert journal is not None
        self._undo_steps(undo_all=True)
        with self.store.change() as st:
            st.journal = None
        return Outcome(journal.deployment.name, journal.kind, None, f"deferred: {failure}")

    def _undo_and_finish(self, failure: str, *, force_undo: bool = False) -> Outcome:
        journal = self.store.state.journal
        assert journal is not None
        changed = self._changed()
        partial = (
            journal.kind is JournalKind.APPLY
            and journal.deployment.failure_policy is FailurePolicy.DO_NOTHING
            and not force_undo
            and any(s.kind is StepKind.SWITCH and s.status is StepStatus.DONE for s in journal.steps)
        )
        self._set_journal(replace(journal, phase=Phase.UNDOING, failure=failure))
        errors = self._undo_steps(undo_all=not partial)
        message = failure
        if errors:
            message += "; undo failed: " + "; ".join(errors)
        if journal.kind is JournalKind.ROLLBACK:
            result = Result.FAILED_ROLLBACK_FAILED
        elif not changed:
            result = Result.FAILED_NO_CHANGE
        elif errors:
            result = Result.FAILED_ROLLBACK_FAILED
        elif journal.deployment.failure_policy is FailurePolicy.DO_NOTHING and not force_undo:
            result = Result.FAILED_NO_CHANGE
            if partial:
                message += " (DO_NOTHING: switched handles keep the new version)"
        else:
            result = Result.FAILED_ROLLED_BACK
        return self._record(result, message, keep_serving=partial)

    def _commit(self) -> Outcome:
        journal = self.store.state.journal
        assert journal is not None
        result = Result.SUCCEEDED if journal.kind is JournalKind.APPLY else Result.FAILED_ROLLED_BACK
        message = "deployed" if journal.kind is JournalKind.APPLY else "rolled back at the server's request"
        return self._record(result, message, keep_serving=True)

    def _record(self, result: Result, message: str, *, keep_serving: bool) -> Outcome:
        """Write the outcome: installed models, history entry, watch; clear the journal (one save)."""
        journal = self.store.state.journal
        assert journal is not None
        name = journal.deployment.name
        watch: Watch | None = None
        gate = journal.deployment.health_gate
        if journal.kind is JournalKind.APPLY and result is Result.SUCCEEDED and gate is not None:
            watch = self._baseline(name, [m for m in journal.after.values() if m is not None])
        with self.store.change() as st:
            if keep_serving:
                st.installed = serving_models(st)
            entry = HistoryEntry(
                deployment=name,
                kind=journal.kind,
                result=result,
                message=message,
                before=journal.before,
                after=journal.after,
                started_at=journal.started_at,
                finished_at=self._now(),
            )
            st.history.append(entry)
            self._trim_history(st)
            st.journal = None
            st.interrupted.pop(name, None)
            if watch is not None:
                st.watches[name] = watch
            if journal.kind is JournalKind.ROLLBACK:
                st.watches.pop(name, None)
        for problem in self._try_sync_handles():
            log.warning("deployment %s: %s", name, problem)
        self.collect_garbage()
        log.info("deployment %s: %s (%s)", name, result.value, message, extra={"deployment": name})
        return Outcome(name, journal.kind, result, message, entry)

    def _finish_without_steps(self, plan: Plan, result: Result, message: str) -> Outcome:
        watch: Watch | None = None
        gate = plan.deployment.health_gate
        if plan.kind is JournalKind.APPLY and result is Result.SUCCEEDED and gate is not None:
            watch = self._baseline(plan.deployment.name, [m for m in plan.after.values() if m is not None])
        now = self._now()
        entry = HistoryEntry(
            deployment=plan.deployment.name,
            kind=plan.kind,
            result=result,
            message=message,
            before=plan.before,
            after=plan.after,
            started_at=now,
            finished_at=now,
        )
        with self.store.change() as st:
            st.history.append(entry)
            self._trim_history(st)
            st.interrupted.pop(plan.deployment.name, None)
            if watch is not None:
                st.watches[plan.deployment.name] = watch
            if plan.kind is JournalKind.ROLLBACK:
                st.watches.pop(plan.deployment.name, None)
        log.info(
            "deployment %s: %s (%s)",
            plan.deployment.name,
            result.value,
            message,
            extra={"deployment": plan.deployment.name},
        )
        return Outcome(plan.deployment.name, plan.kind, result, message, entry)

    def _trim_history(self, st: DeviceState) -> None:
        """Keep ``keep_history`` entries, and unsent results up to ``max_unsent_results`` (oldest go first)."""
        unsent = sum(1 for e in st.history if not e.sent)
        keep = max(self.settings.keep_history, min(unsent, self.max_unsent_results))
        dropped = st.history[: max(0, len(st.history) - keep)]
        for entry in dropped:
            if not entry.sent:
                log.warning("result queue full: dropping the unsent result of %s", entry.deployment)
        del st.history[: len(dropped)]

    def _baseline(self, name: str, models: list[InstalledModel]) -> Watch:
        baseline: dict[str, tuple[int, int]] = {}
        for model in models:
            try:
                stats = self.agent.api.model_stats(model.alias)
            except EdgefleetError:
                stats = []
            baseline[model.alias] = (stats[0].request_count, stats[0].error_count) if stats else (0, 0)
        return Watch(deployment=name, baseline=baseline, since=self._now())

    # -- convergence ----------------------------------------------------------------------------
    def converge(self) -> list[str]:
        """Make the agent serve exactly the installed models and the handles name them.

        Loads installed versions the agent lacks (after an agent restart or a reboot; the package
        is fetched again if the cache lost it), points the handle map and the agent's handles at
        them (an agent loses its handles when it restarts), then unloads versions the daemon loaded
        that nothing serves. Returns the problems left (retried on the next pass). Never called
        while a journal is open.
        """
        if self.store.state.journal is not None:
            return ["a deployment is in flight"]
        problems: list[str] = []
        missing: set[str] = set()  # handles whose version could not be loaded
        try:
            loaded = {m.name for m in self.agent.api.list()}
        except EdgefleetError as exc:
            return [f"cannot list the agent's models: {exc}"]
        with self.store.locked() as st:
            installed = dict(st.installed)
            stale = set(st.managed) - {m.alias for m in installed.values()}
        for model in installed.values():
            if model.alias in loaded:
                continue
            try:
                if not self.packages.is_staged(model.package):
                    self.packages.fetch(model.package, self.plane)
                    self.packages.stage(model.package)
                self._load(model)
                log.info(
                    "restored %s (%s %s) for handle %s",
                    model.alias,
                    model.model_name,
                    model.model_version,
                    model.handle,
                    extra={"model": model.model_name, "version": model.model_version},
                )
            except EdgefleetError as exc:
                missing.add(model.handle)
                problems.append(f"cannot restore handle {model.handle} ({model.alias}): {exc}")
        # handles before unloads: the agent refuses to unload an alias a handle points at
        problems += self._try_sync_handles(leave=missing)
        for alias in sorted(stale):
            try:
                if alias in loaded:
                    self._unload(alias)
                else:
                    self._forget(alias)
            except EdgefleetError as exc:
                problems.append(f"cannot unload {alias}: {exc}")
        for problem in problems:
            log.warning("%s", problem)
        return problems

    def _forget(self, alias: str) -> None:
        with self.store.change() as st:
            st.managed.discard(alias)

    def collect_garbage(self) -> None:
        """Delete cached packages nothing refers to."""
        with self.store.locked() as st:
            keep = referenced_packages(st)
        self.packages.collect(keep)
