"""The ``pipeline`` job: advances one pipeline run (server/pipelines/runs.py) step by step.

Steps, in order, each recorded in ``pipeline_steps`` as it goes:

``compile``
    one ``compile`` job per device class (``compile.targets``, or every device class present in
    the production and twin fleets: a device's ``edgefleet.io/device-class`` tag, else
    ``linux-<arch>`` from its heartbeat). The jobs are ordinary jobs on the queue; this worker
    claims and runs each itself when no other worker took it first, so a single-slot worker
    never waits on itself. Their reports stay in the jobs' results; the step keeps the job ids.
``package``
    each compile output (or, without ``[compile]``, the source model as it is) is packaged and
    signed with the worker's signing key directory (``edgefleet worker --signing-keys``, default
    ``DATA_DIR/signing``: the signer key and certificate ``edgefleet keys init`` writes; its root
    must be in the server's trust store, against which the package is verified on registration)
    and registered as version ``MODEL_VERSION`` of the model, pending approval.
``twin``
    a deployment plan of one stage puts the version on every twin of ``twin.fleet`` (the version
    is marked Approved for that, and pending again afterwards while a gate follows); then each
    twin's agent (found through ``twin.workdir/twins.json``) answers a smoke Predict and every row
    of the validation set, one call each: accuracy against the labels, agreement against the
    reference answers, p99 of the calls against ``twin.max_p99_ms``; and an optional load test.
``shadow``
    after ``shadow.duration_seconds``, the candidate's shadow figures on the production fleet,
    summed by the server from heartbeats since the step began (server/shadows.py): agreement
    against ``shadow.min_agreement``, the median over devices of the shadow/champion p99 ratio
    against ``shadow.max_latency_ratio``, no shadow errors. The step does not load the shadow on
    the devices (no device-side deployment of shadows exists yet: ``edgefleet agent shadow`` on
    each device); no figures fail the step ("shadow figures not available"), never pass it.
``approval``
    ``auto``: approved at once; ``manual``: the run waits (WAITING_APPROVAL, the job ends) until
    ``edgefleet pipeline approve|reject RUN``; approval queues a new job that continues here.
``rollout``
    per production fleet a deployment plan with the ``[rollout]`` stages and health gate; each
    stage is started once the one before is DEPLOYED and its watch period over; a FAILED stage
    (rolled back by the plan's own rules) fails the step.

A failed step fails the run with its reason, marks the version Rejected in the registry (so no
one deploys it by hand) and creates no production plan. Each step journals its artifacts before
it waits on anything, so a job attempt re-run after a worker died continues the run.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from edgefleet.core.errors import (
    Aborted,
    DeadlineExceeded,
    EdgefleetError,
    FailedPrecondition,
    NotFound,
)
from edgefleet.server import registry, tasks
from edgefleet.server.db.engine import Database
from edgefleet.server.db.schema import Device, DeviceTag, Fleet, JobRow
from edgefleet.server.deployments import plans, stages
from edgefleet.server.deployments.records import StageStatus
from edgefleet.server.pipelines import runs
from edgefleet.server.pipelines.config import PipelineConfig
from edgefleet.server.pipelines.plans import plan_spec
from edgefleet.server.pipelines.runs import RunState, StepState
from edgefleet.server.queue import JobQueue
from edgefleet.server.shadows import ShadowPairFigures, shadow_report
from edgefleet.worker import validation
from edgefleet.worker.runner import Executor, JobContext, run_claimed

log = logging.getLogger(__name__)

DEVICE_CLASS_TAG = "edgefleet.io/device-class"
#: seconds between two looks at a job, a stage or a decision the run waits on
POLL = 0.5


@dataclass(frozen=True)
class PipelineSettings:
    """What a worker needs beyond the job engine to run pipeline steps."""

    #: the signing key directory (signer key and certificate) packages are signed with
    signing_dir: Path
    #: the server's trust store (packages are verified against it when registered)
    trust_dir: Path
    #: the task queue URL (compile jobs are queued on it)
    queue_url: str
    #: seconds a compile job may take before the step gives up on it
    compile_timeout: float = 3600.0


class _Wait(Exception):
    """The run waits for a decision: the job ends, the run stays WAITING_APPROVAL."""


def shadow_figures(
    db: Database, fleet: str, model: str, candidate: str, since: datetime
) -> ShadowPairFigures | None:
    """The figures of version ``candidate`` of ``model`` mirrored as the shadow of another version
    of ``model`` on ``fleet``'s devices, summed by the server from heartbeats since ``since``
    (server/shadows.py); None while no device reported such a pair."""
    with db.session() as session:
        pairs = [
            p
            for p in shadow_report(session, fleet, champion_model=model, shadow_model=model, since=since)
            if p.shadow_version == candidate and p.champion_version != candidate
        ]
    if not pairs:
        return None
    return max(pairs, key=lambda p: p.completed)


def make_executor(settings: PipelineSettings, executors: dict[str, Executor]) -> Executor:
    """The ``pipeline`` kind's executor; ``executors`` runs the compile jobs it claims itself."""

    def run_pipeline(ctx: JobContext) -> dict[str, Any]:
        return RunExecutor(ctx, settings, executors).run()

    return run_pipeline


class RunExecutor:
    """Advances one run as far as it goes in this job."""

    def __init__(self, ctx: JobContext, settings: PipelineSettings, executors: dict[str, Executor]) -> None:
        self.ctx = ctx
        self.db = ctx.db
        self.settings = settings
        self.executors = executors
        self.run_id = str(ctx.params["RunId"])
        with self.db.session() as session:
            run = runs.get_run(session, self.run_id)
            self.config: PipelineConfig = runs.config_of(run)
            self.version = run.model_version
            self.number = run.number
        self.model = self.config.name
        self.actor = f"pipeline {self.model} run {self.number}"

    # -- the loop ----------------------------------------------------------------------------

    def say(self, step: str | None, line: str) -> None:
        self.ctx.log(line)
        runs.log_lines(self.db, self.run_id, step, [line])

    def run(self) -> dict[str, Any]:
        with self.db.session() as session:
            run = runs.get_run(session, self.run_id)
            state = run.state
            steps = [(s.name, s.state, dict(s.artifacts)) for s in runs.steps_of(session, self.run_id)]
        if state in runs.RUN_TERMINAL or state == RunState.WAITING_APPROVAL:
            return {"RunId": self.run_id, "State": state}
        runs.set_run_state(self.db, self.run_id, RunState.RUNNING)
        handlers: dict[str, Callable[[dict[str, Any]], str]] = {
            "compile": self.compile,
            "package": self.package,
            "twin": self.twin,
            "shadow": self.shadow,
            "approval": self.approval,
            "rollout": self.rollout,
        }
        for i, (name, step_state, artifacts) in enumerate(steps):
            if step_state in runs.STEP_DONE:
                continue
            self.ctx.check()
            self.ctx.progress(i / len(steps), f"step {name}")
            runs.update_step(self.db, self.run_id, name, state=StepState.RUNNING)
            try:
                message = handlers[name](artifacts)
            except _Wait as wait:
                runs.update_step(self.db, self.run_id, name, state=StepState.WAITING, message=str(wait))
                runs.set_run_state(self.db, self.run_id, RunState.WAITING_APPROVAL, reason=str(wait))
                return {"RunId": self.run_id, "State": RunState.WAITING_APPROVAL}
            except Aborted:
                raise  # this worker lost the job: the next attempt continues the step
            except EdgefleetError as exc:
                self._fail(name, exc.message)
                return {"RunId": self.run_id, "State": RunState.FAILED, "Reason": exc.message}
            except Exception as exc:  # a bug or an untranslated library error: the run says so and ends
                log.exception("pipeline run %s: step %s failed unexpectedly", self.run_id, name)
                reason = f"unexpected {type(exc).__name__}: {exc}"[:500]
                self._fail(name, reason)
                return {"RunId": self.run_id, "State": RunState.FAILED, "Reason": reason}
            runs.update_step(self.db, self.run_id, name, state=StepState.SUCCEEDED, message=message)
        self._set_approval(registry.Approval.APPROVED, "pipeline run succeeded", quiet=True)
        runs.set_run_state(self.db, self.run_id, RunState.SUCCEEDED)
        return {"RunId": self.run_id, "State": RunState.SUCCEEDED}

    def _fail(self, step: str, reason: str) -> None:
        runs.update_step(self.db, self.run_id, step, state=StepState.FAILED, message=reason)
        self._set_approval(registry.Approval.REJECTED, f"step {step} failed", quiet=True)
        runs.set_run_state(self.db, self.run_id, RunState.FAILED, reason=f"step {step} failed: {reason}")

    def _set_approval(self, status: str, why: str, *, quiet: bool = False) -> None:
        try:
            with self.db.session() as session:
                version = registry.get_version(session, self.model, self.version)
                if version.approval_status == status:
                    return
                registry.set_approval(
                    session, self.model, self.version, status, self.actor, self.db.now(), reason=why[:200]
                )
        except EdgefleetError as exc:
            if not quiet:
                raise
            log.info(
                "run %s: approval of %s %s not set to %s: %s",
                self.run_id,
                self.model,
                self.version,
                status,
                exc,
            )

    def _journal(self, step: str, **artifacts: Any) -> None:
        runs.update_step(self.db, self.run_id, step, artifacts=artifacts)

    # -- compile -----------------------------------------------------------------------------

    def device_classes(self) -> list[str]:
        """The device classes of the devices in the production and twin fleets."""
        fleets = list(self.config.fleets) + ([self.config.twin.fleet] if self.config.twin else [])
        found: set[str] = set()
        with self.db.session() as session:
            rows = session.execute(
                select(Device.id, Device.name, Device.platform_os, Device.platform_arch)
                .join(Fleet, Device.fleet_id == Fleet.id)
                .where(Fleet.name.in_(fleets), Device.deregistered_at.is_(None))
            ).all()
            tags = dict(
                session.execute(
                    select(DeviceTag.device_id, DeviceTag.value).where(
                        DeviceTag.key == DEVICE_CLASS_TAG, DeviceTag.device_id.in_([r[0] for r in rows])
                    )
                ).all()
            )
        for device_id, _name, os_name, arch in rows:
            if device_id in tags:
                found.add(tags[device_id])
            elif arch and (os_name or "linux") == "linux":
                found.add(f"linux-{arch}")
        if not found:
            raise FailedPrecondition(
                f"no device in fleet(s) {', '.join(fleets) or '(none configured)'} has a device class "
                f"(tag {DEVICE_CLASS_TAG} or a heartbeat with its platform): set compile.targets"
            )
        return sorted(found)

    def compile(self, artifacts: dict[str, Any]) -> str:
        assert self.config.compile is not None
        cc, src = self.config.compile, self.config.source
        targets = list(artifacts.get("Targets") or cc.targets or self.device_classes())
        jobs: dict[str, str] = dict(artifacts.get("Jobs", {}))
        self._journal("compile", Targets=targets)
        queue = JobQueue(self.settings.queue_url)
        try:
            for target in targets:
                if target not in jobs:
                    params = {
                        "Model": src.model,
                        "Framework": src.framework,
                        "Target": target,
                        "Inputs": list(src.inputs),
                        "Backend": cc.backend,
                        "Quantize": cc.quantize,
                        "Calibration": src.calibration,
                        "Validation": src.validation,
                        "MaxAccuracyDrop": cc.max_accuracy_drop,
                        "Threads": cc.threads,
                        "BenchmarkSeconds": cc.benchmark_seconds,
                    }
                    job = tasks.submit(self.db, queue, tasks.COMPILE, params, self.actor, self.ctx.policy)
                    jobs[target] = job.id
                    self._journal("compile", Jobs=jobs)
                    self.say("compile", f"compile job {job.id} for {target} queued")
        finally:
            queue.close()
        reports: dict[str, Any] = {}
        for target, job_id in jobs.items():
            row = self._run_or_wait(job_id)
            if row.state != tasks.JobState.SUCCEEDED:
                raise FailedPrecondition(
                    f"compile for {target} {row.state.lower()}: {row.error_code}: {row.error_message} (job {job_id})"
                )
            report = (row.result or {}).get("Report", {})
            reports[target] = {
                "JobId": job_id,
                "ArtifactPrefix": (row.result or {}).get("ArtifactPrefix"),
                "Backend": report.get("backend") or report.get("chosen_backend"),
            }
            self.say("compile", f"compiled for {target} (job {job_id})")
        self._journal("compile", Reports=reports)
        return f"compiled for {', '.join(targets)}"

    def _run_or_wait(self, job_id: str) -> JobRow:
        """Run the compile job here when it is still queued, else wait for the worker that has it."""
        started = time.monotonic()
        while True:
            self.ctx.check()
            with self.db.session() as session:
                row = tasks.get_job(session, job_id)
                session.expunge(row)
            if row.state in tasks.TERMINAL:
                return row
            if row.state == tasks.JobState.QUEUED:
                claimed = tasks.claim(self.db, job_id, row.attempt, self.ctx.worker_id, self.ctx.policy.lease)
                if claimed is not None:
                    self.say("compile", f"running compile job {job_id} on this worker")
                    run_claimed(
                        self.db,
                        self.ctx.artifacts,
                        self.ctx.policy,
                        self.executors,
                        claimed,
                        self.ctx.worker_id,
                    )
                    continue
            if time.monotonic() - started > self.settings.compile_timeout:
                raise DeadlineExceeded(
                    f"compile job {job_id} did not end within {self.settings.compile_timeout:g} s"
                )
            self.ctx.wait(POLL)

    # -- package -----------------------------------------------------------------------------

    def package(self, artifacts: dict[str, Any]) -> str:
        from edgefleet.packager.build import build_package

        packages: dict[str, int] = {k: int(v) for k, v in artifacts.get("Packages", {}).items()}
        with self.db.session() as session:
            try:
                registry.get_version(session, self.model, self.version)
                exists = True
            except NotFound:
                exists = False
        if exists and not artifacts.get("Started"):
            raise FailedPrecondition(
                f"version {self.version!r} of model {self.model!r} exists already in the registry: "
                "run again with another --version"
            )
        self._journal("package", Started=True)
        if not (self.settings.signing_dir / "signer.key").is_file() and not any(
            self.settings.signing_dir.glob("*.key")
        ):
            raise FailedPrecondition(
                f"no signing key in {self.settings.signing_dir} (create one with `edgefleet keys init "
                f"{self.settings.signing_dir}` and add its root to the server's trust store)"
            )
        scratch = Path(tempfile.mkdtemp(prefix="edgefleet-pipeline-"))
        try:
            sources: list[tuple[str, Path | None]] = []
            if self.config.compile is not None:
                with self.db.session() as session:
                    step = next(s for s in runs.steps_of(session, self.run_id) if s.name == "compile")
                    reports = dict(step.artifacts.get("Reports", {}))
                for target, report in reports.items():
                    sources.append((target, self._fetch(str(report["ArtifactPrefix"]), scratch / target)))
            else:
                sources.append(("source", None))
            for target, directory in sources:
                if target in packages:
                    continue
                out = scratch / "out" / target
                if directory is not None:
                    from edgefleet.compiler.output import build_package_from_output

                    archive = build_package_from_output(
                        directory,
                        name=self.model,
                        version=self.version,
                        key_dir=self.settings.signing_dir,
                        out_dir=out,
                    )
                else:
                    if self.config.source.framework not in ("onnx", "tflite"):
                        raise FailedPrecondition(
                            f"a {self.config.source.framework} model is packaged after compiling: add [compile]"
                        )
                    archive = build_package(
                        Path(self.config.source.model),
                        name=self.model,
                        version=self.version,
                        key_dir=self.settings.signing_dir,
                        out_dir=out,
                    )
                artifacts_store = self.ctx.artifacts
                package_id = registry.add_package(
                    self.db,
                    archive,
                    artifacts_store,
                    self.settings.trust_dir,
                    self.actor,
                    expect_model=self.model,
                    expect_version=self.version,
                )
                packages[target] = package_id
                self._journal("package", Packages=packages)
                self.say(
                    "package",
                    f"package {package_id} ({target}) signed and registered as {self.model} {self.version}",
                )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return f"{len(packages)} package(s) of {self.model} {self.version}: ids {', '.join(map(str, packages.values()))}"

    def _fetch(self, prefix: str, into: Path) -> Path:
        store = self.ctx.artifacts
        keys = store.list(prefix + "/")
        if not keys:
            raise NotFound(f"the compile output under {prefix}/ is gone from the artifact store")
        for key in keys:
            path = into / key[len(prefix) + 1 :]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(store.get_bytes(key))
        return into

    # -- deployments -------------------------------------------------------------------------

    def _plan_name(self, fleet: str) -> str:
        return f"pl-{self.model}-{self.number}-{fleet}"[:63].rstrip("-")

    def _ensure_plan(self, step: str, fleet: str, artifacts: dict[str, Any], rollout: Any) -> str:
        name = self._plan_name(fleet)
        plans_done: dict[str, str] = dict(artifacts.get("Plans", {}))
        if fleet not in plans_done:
            spec = plan_spec(name, fleet, self.model, self.version, rollout)
            with self.db.session() as session:
                try:
                    plans.get_plan(session, name)
                except NotFound:
                    plans.create_plan(session, spec, self.actor, self.db.now())
            plans_done[fleet] = name
            artifacts["Plans"] = plans_done
            self._journal(step, Plans=plans_done)
            self.say(step, f"deployment plan {name} created on fleet {fleet}")
        return name

    def _deploy_stage(self, step: str, plan_name: str, stage_name: str, timeout: float) -> str:
        """Start the stage (when ready) and wait until it is DEPLOYED with its watch period over;
        FAILED_PRECONDITION with the stage's message when it fails or stops."""
        started = time.monotonic()
        while True:
            self.ctx.check()
            with self.db.session() as session:
                plan = plans.get_plan(session, plan_name)
                stage = plans.get_stage(plan, stage_name)
                status, message, watch_until = stage.status, stage.status_message, stage.watch_until
                if status == StageStatus.READYTODEPLOY:
                    stages.start_stage(session, plan_name, stage_name, self.db.now())
            if status == StageStatus.READYTODEPLOY:  # logged once the start is committed
                self.say(step, f"stage {stage_name} of {plan_name} started")
                continue
            if status == StageStatus.DEPLOYED:
                if watch_until is None or watch_until <= self.db.now():
                    return message or "DEPLOYED"
            elif status in (StageStatus.FAILED, StageStatus.STOPPED, StageStatus.STOPPING):
                raise FailedPrecondition(f"stage {stage_name} of plan {plan_name} is {status}: {message}")
            if time.monotonic() - started > timeout:
                raise DeadlineExceeded(
                    f"stage {stage_name} of plan {plan_name} is still {status} after {timeout:g} s: {message}"
                )
            self.ctx.wait(POLL)

    # -- twin --------------------------------------------------------------------------------

    def twin(self, artifacts: dict[str, Any]) -> str:
        from edgefleet.client import AgentClient
        from edgefleet.core.tensors import TensorSpec
        from edgefleet.twin import TwinFleet

        twin = self.config.twin
        assert twin is not None
        fleet = TwinFleet.attach(Path(twin.workdir))
        if fleet.fleet != twin.fleet:
            raise FailedPrecondition(
                f"the twin fleet in {twin.workdir} is {fleet.fleet!r}, not twin.fleet {twin.fleet!r}"
            )
        alive = [t for t in fleet.twins if t.alive()]
        if not alive:
            raise FailedPrecondition(
                f"no twin of fleet {twin.fleet} runs (start them with `edgefleet twin up`)"
            )
        self._set_approval(registry.Approval.APPROVED, f"pipeline run {self.number}: for the twin fleet")
        plan_name = self._ensure_plan("twin", twin.fleet, artifacts, None)
        self._deploy_stage("twin", plan_name, "all", twin.deploy_timeout_seconds)
        if self.config.shadow is not None or self.config.approval == "manual":
            # the gate decides production: until then the version is not Approved
            self._set_approval(registry.Approval.PENDING, f"pipeline run {self.number}: awaiting its gates")
        self.say("twin", f"deployed to {len(alive)} twin(s) of {twin.fleet}")

        with self.db.session() as session:
            version = registry.get_version(session, self.model, self.version)
            manifest = dict(version.packages[0].manifest)
        specs = [TensorSpec.from_dict(t) for t in manifest.get("inputs", [])]
        names = [s.name for s in specs]
        data = None
        if self.config.source.validation is not None:
            data = validation.load_validation(
                Path(self.config.source.validation), names, twin.labels, twin.reference
            )
        smoke = (
            data.row(0)
            if data is not None
            else {s.name: np.zeros([d if d > 0 else 1 for d in s.shape], dtype=s.dtype.numpy) for s in specs}
        )
        figures: dict[str, Any] = {"Twins": len(alive)}
        latencies: list[float] = []
        per_twin: dict[str, Any] = {}
        clients = [AgentClient(t.agent_address, timeout=30) for t in alive]
        try:
            for t, client in zip(alive, clients, strict=True):
                self._wait_handle(client, t.name)
                try:
                    client.predict(self.model, smoke)
                except EdgefleetError as exc:
                    raise FailedPrecondition(f"smoke Predict on twin {t.name} failed: {exc.message}") from exc
                if data is not None:
                    answers = validation.ask(
                        validation.predictor(client, self.model), data, twin.output, self.ctx.check
                    )
                    latencies.extend(answers.latencies)
                    entry: dict[str, Any] = {"Rows": len(answers.predicted)}
                    if data.labels is not None:
                        entry["Accuracy"] = validation.agreement(answers.predicted, data.labels)
                    if data.reference is not None:
                        entry["Agreement"] = validation.agreement(answers.predicted, data.reference)
                    per_twin[t.name] = entry
            figures["SmokePredict"] = "ok"
            if per_twin:
                figures["PerTwin"] = per_twin
                for key in ("Accuracy", "Agreement"):
                    values = [e[key] for e in per_twin.values() if key in e]
                    if values:
                        figures[key] = min(values)
                figures["P50Ms"] = validation.percentile_ms(latencies, 50)
                figures["P99Ms"] = validation.percentile_ms(latencies, 99)
            if twin.load_seconds > 0:
                rows = [data.row(i) for i in range(min(data.rows, 256))] if data is not None else [smoke]
                predicts = [validation.predictor(c, self.model) for c in clients]
                load = validation.load_test(predicts, rows, twin.load_seconds, twin.load_concurrency)
                figures["Load"] = load.to_dict()
        finally:
            for client in clients:
                client.close()
        runs.update_step(self.db, self.run_id, "twin", figures=figures)
        self.say("twin", f"twin figures: {figures}")
        problems: list[str] = []
        if twin.min_accuracy is not None:
            if "Accuracy" not in figures:
                problems.append(f"the validation set has no {twin.labels!r} array to judge twin.min_accuracy")
            elif figures["Accuracy"] < twin.min_accuracy:
                problems.append(
                    f"accuracy {figures['Accuracy']:.4f} is below twin.min_accuracy {twin.min_accuracy:g}"
                )
        if twin.min_agreement is not None:
            if "Agreement" not in figures:
                problems.append(
                    f"the validation set has no {twin.reference!r} array to judge twin.min_agreement"
                )
            elif figures["Agreement"] < twin.min_agreement:
                problems.append(
                    f"agreement {figures['Agreement']:.4f} is below twin.min_agreement {twin.min_agreement:g}"
                )
        if twin.max_p99_ms is not None:
            p99 = figures.get("P99Ms")
            load_p99 = (figures.get("Load") or {}).get("P99Ms")
            worst = max([v for v in (p99, load_p99) if v is not None], default=None)
            if worst is None:
                problems.append("twin.max_p99_ms needs a validation set or a load test to time")
            elif worst > twin.max_p99_ms:
                problems.append(f"p99 latency {worst:.2f} ms is above twin.max_p99_ms {twin.max_p99_ms:g}")
        if (figures.get("Load") or {}).get("Errors"):
            problems.append(
                f"the load test saw {figures['Load']['Errors']} failed calls: {figures['Load']['FirstError']}"
            )
        if problems:
            raise FailedPrecondition("twin validation failed: " + "; ".join(problems))
        summary = ", ".join(f"{k} {figures[k]}" for k in ("Accuracy", "Agreement", "P99Ms") if k in figures)
        return f"validated on {len(alive)} twin(s)" + (f": {summary}" if summary else "")

    def _wait_handle(self, client: Any, twin_name: str, timeout: float = 60.0) -> None:
        """Until the twin's handle serves this version (the daemon switches it after DEPLOYED is reported)."""
        started = time.monotonic()
        while True:
            handles = client.handles()
            if self.model in handles:
                return
            if time.monotonic() - started > timeout:
                raise FailedPrecondition(
                    f"twin {twin_name} has no handle {self.model!r} after the deployment"
                )
            self.ctx.wait(POLL)

    # -- shadow, approval, rollout -------------------------------------------------------------

    def shadow(self, artifacts: dict[str, Any]) -> str:
        shadow = self.config.shadow
        assert shadow is not None
        if "Since" not in artifacts:
            artifacts["Since"] = self.db.now().isoformat()
            self._journal("shadow", Since=artifacts["Since"])
        since = datetime.fromisoformat(str(artifacts["Since"]))
        self.say(
            "shadow",
            f"judging {self.model} {self.version} as shadow on fleet {shadow.fleet} after "
            f"{shadow.duration_seconds:g} s (load it as the shadow of handle {self.model} on the devices)",
        )
        end = since + timedelta(seconds=shadow.duration_seconds)
        while self.db.now() < end:
            self.ctx.check()
            self.ctx.wait(min(POLL * 4, max(0.05, (end - self.db.now()).total_seconds())))
        pair = shadow_figures(self.db, shadow.fleet, self.model, self.version, since)
        if pair is None or pair.completed == 0:
            raise FailedPrecondition(
                f"shadow figures not available: no device of fleet {shadow.fleet} reported {self.model} "
                f"{self.version} as a shadow with compared calls within {shadow.duration_seconds:g} s"
            )
        figures = {
            "Devices": pair.devices,
            "ChampionVersion": pair.champion_version,
            "Mirrored": pair.mirrored,
            "Completed": pair.completed,
            "Agreement": pair.agreement_rate,
            "ShadowErrorRate": pair.shadow_error_rate,
            "LatencyRatio": pair.p99_ratio_median,
            "LatencyRatioWorst": pair.p99_ratio_worst,
        }
        runs.update_step(self.db, self.run_id, "shadow", figures=figures)
        agreement, ratio = pair.agreement_rate, pair.p99_ratio_median
        problems = []
        if agreement is None or agreement < shadow.min_agreement:
            problems.append(f"agreement {agreement} is below shadow.min_agreement {shadow.min_agreement:g}")
        if ratio is not None and ratio > shadow.max_latency_ratio:
            problems.append(
                f"p99 latency ratio {ratio:.3f} is above shadow.max_latency_ratio {shadow.max_latency_ratio:g}"
            )
        if pair.shadow_errors:
            problems.append(f"the shadow failed {pair.shadow_errors} mirrored call(s)")
        if problems:
            raise FailedPrecondition("shadow test failed: " + "; ".join(problems))
        return f"shadow agreement {agreement:.4f} over {pair.completed} calls on {pair.devices} device(s)" + (
            f", p99 latency ratio {ratio:.3f}" if ratio is not None else ""
        )

    def approval(self, artifacts: dict[str, Any]) -> str:
        if self.config.approval == "auto":
            with self.db.session() as session:
                run = runs.get_run(session, self.run_id)
                run.decision, run.decided_by, run.decided_at = "Approved", "auto", self.db.now()
            self._set_approval(
                registry.Approval.APPROVED, f"pipeline run {self.number}: approved automatically"
            )
            return "approved automatically (approval.mode = auto)"
        raise _Wait(f"waiting for approval: `edgefleet pipeline approve {self.run_id}` or `reject`")

    def rollout(self, artifacts: dict[str, Any]) -> str:
        rollout = self.config.rollout
        assert rollout is not None
        self._set_approval(registry.Approval.APPROVED, f"pipeline run {self.number}: approved for production")
        done: list[str] = []
        for fleet in self.config.fleets:
            plan_name = self._ensure_plan("rollout", fleet, artifacts, rollout)
            for stage in rollout.stages:
                stage_name = str(stage["StageName"])
                message = self._deploy_stage("rollout", plan_name, stage_name, rollout.stage_timeout_seconds)
                self.say("rollout", f"stage {stage_name} of {plan_name} DEPLOYED: {message}")
            done.append(plan_name)
        return f"rolled out through plan(s) {', '.join(done)}"
