"""The device daemon: start-up recovery, the heartbeat loop and the reconcile loop.

Start-up needs no server: the agent is started (or waited for), a journal left by a crash is undone
(:meth:`Executor.recover`), and the installed models are loaded again and their handles set, in the
handle map and in the agent (:meth:`Executor.converge`), so a device that reboots while offline
serves its last desired models under their handles.

Two loops then run until stopped:

- **heartbeat** (``timing.heartbeat_interval_seconds``): device, agent and per-model metrics; when the
  server is unreachable the heartbeat is queued (bounded, on disk) and the queue is sent oldest
  first once the server answers again; unsent deployment results go out with it. Every
  ``timing.summary_window_seconds`` the agent's live model summaries are taken and ride on the
  heartbeats until the server has them (:mod:`edgefleet.device.summaries`); the agent's shadow
  pairs' cumulative figures ride on every heartbeat (:mod:`edgefleet.device.shadows`).
- **reconcile** (``timing.poll_interval_seconds``, or the health interval while a health gate
  observes the device): make sure the agent runs (a restarted agent child gets its models and
  handles back at once: handles live in the agent's memory), fetch the deployments, act on each (apply,
  roll back, or wait for the server to take our last result), send results, report health
  figures for observed deployments (rolling back when the server says so), converge the agent.

Inference never goes through the daemon, so nothing the daemon or the server does (or fails to
do) interrupts applications.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from edgefleet import __version__
from edgefleet.client.handles import HANDLES_FILE
from edgefleet.core.deviceplane import Action, Deployment, HealthReport, Heartbeat, Result, Verdict
from edgefleet.core.errors import Code, EdgefleetError, NotFound
from edgefleet.core.logs import bind
from edgefleet.device.agentlink import AgentConnection, AgentSupervisor, wait_ready
from edgefleet.device.captures import CaptureReporter, without_uploads
from edgefleet.device.config import DaemonConfig
from edgefleet.device.executor import Executor, Outcome, deployment_result, serving_models, utcnow
from edgefleet.device.metrics import DeviceMetrics, model_reports
from edgefleet.device.outbox import Outbox
from edgefleet.device.protocol import ControlPlane
from edgefleet.device.renewal import CertificateRenewal, RenewalState
from edgefleet.device.shadows import ShadowReporter
from edgefleet.device.state import HistoryEntry, JournalKind, StateStore, Watch
from edgefleet.device.summaries import SummaryWindows

log = logging.getLogger(__name__)


class DaemonState(enum.Enum):
    """Lifecycle of the daemon (liveness: the process runs; readiness: RUNNING)."""

    STARTING = "STARTING"
    RECOVERING = "RECOVERING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"


class Connectivity(enum.Enum):
    """What the daemon knows about the server's reachability."""

    UNKNOWN = "UNKNOWN"
    ONLINE = "ONLINE"
    OFFLINE = "OFFLINE"


class Daemon:
    """One device's daemon. Parts are injected: the CLI builds real ones (:func:`build_daemon`), the
    simulator and tests build others."""

    def __init__(
        self,
        *,
        config: DaemonConfig,
        store: StateStore,
        outbox: Outbox,
        executor: Executor,
        plane: ControlPlane,
        agent: AgentConnection,
        supervisor: AgentSupervisor | None = None,
        metrics: DeviceMetrics | None = None,
        platform: tuple[str, str, str] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
        renewal: CertificateRenewal | None = None,
        capture: CaptureReporter | None = None,
        shadows: ShadowReporter | None = None,
        device: str | None = None,
        fleet: str | None = None,
    ) -> None:
        self.config = config
        #: the device and fleet (those known) on each of the daemon's log records
        self.log_fields = {k: v for k, v in (("device", device), ("fleet", fleet)) if v}
        #: the daemon's logger: every record carries :attr:`log_fields`
        self.log = bind(log, **self.log_fields)
        #: each heartbeat's shadow pairs and their figures (cumulative, so nothing to keep here)
        self.shadows = shadows if shadows is not None else ShadowReporter(agent)
        #: each heartbeat's capture backlog and uploads, and the upload-log cursor
        self.capture = capture if capture is not None else CaptureReporter(agent, config.state_dir)
        #: renews the device certificate before it expires (None: this daemon's plane has none)
        self.renewal = renewal
        self.store = store
        self.outbox = outbox
        self.executor = executor
        self.plane = plane
        self.agent = agent
        self.supervisor = supervisor
        self.metrics = metrics
        self.platform = platform
        self._monotonic = monotonic
        self._now = now
        self.state = DaemonState.STOPPED
        self.connectivity = Connectivity.UNKNOWN
        #: False once the server said this device is not registered (or revoked its certificate)
        self.registered = True
        self._registration_due = 0.0
        self._agent_version: str | None = None
        self._health_due: dict[str, float] = {}
        self._results_lock = threading.Lock()
        self._reconcile_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        #: the outcomes of every deployment attempt since start (for tests and the simulator)
        self.outcomes: list[Outcome] = []
        #: live model summary windows waiting to ride on a heartbeat (see device/summaries.py)
        self.summaries = SummaryWindows(
            lambda: self.agent.api.model_summaries(reset=True),
            config.timing.summary_window_seconds,
            max_pending=config.queue.max_summary_windows,
            monotonic=monotonic,
            now=now,
        )

    @property
    def ready(self) -> bool:
        """Readiness: recovered and running (liveness is the process itself)."""
        return self.state is DaemonState.RUNNING

    # -- start-up -------------------------------------------------------------------------------
    def start(self) -> None:
        """Bring the agent up, undo an interrupted deployment, restore the installed models."""
        self.state = DaemonState.STARTING
        self._ensure_agent()
        self.state = DaemonState.RECOVERING
        outcome = self.executor.recover()
        if outcome is not None:
            self.outcomes.append(outcome)
        self.executor.converge()
        self.state = DaemonState.RUNNING
        with self.store.locked() as st:
            handles = {h: m.alias for h, m in st.installed.items()}
        self.log.info("device daemon running; serving %s", handles or "no models")

    def _ensure_agent(self) -> bool:
        """Start the agent child if it is not running; True if it was (re)started."""
        try:
            if self.supervisor is not None:
                restarted = self.supervisor.ensure_running(self.agent.api)
                if restarted:
                    self._agent_version = None
                return restarted
            if self.state is DaemonState.STARTING:
                wait_ready(self.agent.api, self.config.agent.ready_timeout_seconds)
        except EdgefleetError as exc:
            self.log.error("the agent is not available: %s", exc)
        return False

    # -- server calls ---------------------------------------------------------------------------
    def _online(self) -> None:
        if self.connectivity is not Connectivity.ONLINE:
            self.log.info("the server is reachable")
        self.connectivity = Connectivity.ONLINE

    def _offline(self, exc: EdgefleetError) -> None:
        if self.connectivity is not Connectivity.OFFLINE:
            self.log.warning("the server is unreachable, working offline: %s", exc)
        self.connectivity = Connectivity.OFFLINE

    def _refused(self, what: str, exc: EdgefleetError) -> None:
        if exc.code is Code.UNAUTHENTICATED:
            if self.registered:
                self.log.error("%s: the server does not accept this device any more: %s", what, exc)
            self.registered = False
        else:
            self.log.error("%s refused: %s", what, exc)

    def check_registration(self) -> None:
        """Ask the server whether the device is registered (at most once per CacheTTL)."""
        if self._monotonic() < self._registration_due:
            return
        try:
            registration = self.plane.get_registration()
        except EdgefleetError as exc:
            if exc.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED):
                self._offline(exc)
            else:
                self._refused("GetDeviceRegistration", exc)
                self._registration_due = self._monotonic() + self.config.timing.poll_interval_seconds
            return
        self._online()
        was = self.registered
        self.registered = registration.status == "REGISTERED"
        if not self.registered:
            self.log.error(
                "the server says this device is %s; keeping the installed models", registration.status
            )
        elif not was:
            self.log.info("the device is registered again")
        self._registration_due = self._monotonic() + max(registration.cache_ttl_seconds, 1.0)

    def renew_certificate(self) -> RenewalState | None:
        """Renew the device certificate if it is due (see :mod:`edgefleet.device.renewal`)."""
        if self.renewal is None:
            return None
        try:
            state = self.renewal.check()
        except EdgefleetError as exc:  # e.g. the disk refused the new files: the current pair stays
            self.log.error("certificate renewal failed: %s", exc)
            return None
        if state is RenewalState.RENEWED:
            self._registration_due = 0.0  # the server just took the new certificate: ask again now
        return state

    # -- heartbeats -----------------------------------------------------------------------------
    def build_heartbeat(self) -> Heartbeat:
        """A heartbeat with the agent's and the models' figures now."""
        try:
            stats = self.agent.api.model_stats()
        except EdgefleetError as exc:
            self.log.debug("no model statistics: %s", exc)
            stats = []
        if self._agent_version is None:
            try:
                self._agent_version = self.agent.api.server_metadata().version
            except EdgefleetError:
                pass
        with self.store.locked() as st:
            installed = dict(st.installed)
        now = self._now()
        agent_metrics = (
            self.metrics.sample(stats, queued=len(self.outbox), dropped=self.outbox.dropped)
            if self.metrics is not None
            else ()
        )
        return Heartbeat(
            agent_version=self._agent_version or __version__,
            taken_at=now,
            agent_metrics=agent_metrics,
            models=model_reports(installed, stats, now),
            platform=self.platform,
            capture=self.capture.report(),
            summaries=self.summaries.for_heartbeat(),
            shadows=self.shadows.report(),
        )

    def heartbeat_once(self) -> bool:
        """Send (or queue) one heartbeat and whatever waited; True if the server took it."""
        heartbeat = self.build_heartbeat()
        try:
            if len(self.outbox):
                self.outbox.flush(self.plane.send_heartbeat)
            self.plane.send_heartbeat(heartbeat)
        except EdgefleetError as exc:
            if exc.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED):
                self._offline(exc)
                # its uploads go with the next one; the windows wait in self.summaries
                self.outbox.add(replace(self.capture.withhold(heartbeat), summaries=()))
            elif exc.code is not Code.UNAUTHENTICATED and heartbeat.capture and heartbeat.capture.uploads:
                return self._heartbeat_without_uploads(heartbeat, exc)
            else:
                self._refused("SendHeartbeat", exc)
                self.summaries.refused(heartbeat.summaries, exc)
            return False
        self.capture.accepted()
        self.summaries.accepted(heartbeat.summaries)
        self._online()
        self.flush_results()
        return True

    def _heartbeat_without_uploads(self, heartbeat: Heartbeat, refusal: EdgefleetError) -> bool:
        """The server refused a heartbeat carrying capture uploads: send it again without them. If
        that is taken, the uploads are what the server refuses, for good: they are skipped (logged),
        or no heartbeat would ever get through again."""
        try:
            self.plane.send_heartbeat(without_uploads(heartbeat))
        except EdgefleetError as exc:
            self._refused("SendHeartbeat", exc)
            self.summaries.refused(heartbeat.summaries, exc)
            return False
        self.capture.skip(refusal)
        self.summaries.accepted(heartbeat.summaries)
        self._online()
        self.flush_results()
        return True

    def flush_results(self) -> int:
        """Send the deployment results the server has not acknowledged, oldest first."""
        sent = 0
        with self._results_lock:
            with self.store.locked() as st:
                pending = [e for e in st.history if not e.sent]
                serving = serving_models(st)
            for entry in pending:
                try:
                    self.plane.report_result(deployment_result(entry, serving))
                except EdgefleetError as exc:
                    if exc.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED):
                        self._offline(exc)
                        break
                    if exc.code is Code.UNAUTHENTICATED:
                        self._refused("ReportDeploymentResult", exc)
                        break
                    # refused for good (e.g. the plan was deleted): do not block the queue on it
                    self.log.warning(
                        "the server refused the result of %s: %s",
                        entry.deployment,
                        exc,
                        extra={"deployment": entry.deployment},
                    )
                with self.store.change() as st:
                    st.history = [replace(e, sent=True) if _same(e, entry) else e for e in st.history]
                sent += 1
        return sent

    # -- reconcile ------------------------------------------------------------------------------
    def reconcile_once(self) -> list[Outcome]:
        """One pass of the reconcile loop; the outcomes of the deployments acted on.

        Passes never overlap: a call while another pass runs returns at once with no outcome.
        """
        if not self._reconcile_lock.acquire(blocking=False):
            return []
        try:
            return self._reconcile()
        finally:
            self._reconcile_lock.release()

    def _reconcile(self) -> list[Outcome]:
        if self._ensure_agent():
            # a new agent has no models and no handles: serve them again before anything else
            self.log.warning("the agent was restarted; restoring the installed models and handles")
            self.executor.converge()
        outcomes: list[Outcome] = []
        listed: dict[str, Deployment] | None = None
        self.renew_certificate()
        self.check_registration()
        if self.registered:
            listed = self._poll()  # also while offline: that is how the daemon notices the server is back
        if listed is not None:
            for deployment in listed.values():
                outcome = self._act(deployment)
                if outcome is not None:
                    outcomes.append(outcome)
                    self.outcomes.append(outcome)
                    self.flush_results()
            self._forget_finished_watches(listed)
        self.flush_results()
        outcomes += self._report_health(listed or {})
        self.executor.converge()
        return outcomes

    def _poll(self) -> dict[str, Deployment] | None:
        try:
            deployments = self.plane.get_deployments()
        except EdgefleetError as exc:
            if exc.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED):
                self._offline(exc)
            else:
                self._refused("GetDeployments", exc)
            return None
        self._online()
        return {d.name: d for d in deployments}

    def _act(self, deployment: Deployment) -> Outcome | None:
        """Apply, roll back or wait, from the server's ask and the device's last record of it."""
        with self.store.locked() as st:
            entry = st.last_entry(deployment.name)
        if deployment.action is Action.DEPLOY:
            if entry is None:
                return self.executor.apply(deployment)
            if not entry.sent:
                return None  # the server has not seen our last result yet
            if entry.kind is JournalKind.APPLY and entry.result is Result.SUCCEEDED:
                return None  # applied; its health gate may still observe it
            return self.executor.apply(deployment)  # retried, or a stopped stage started again
        if entry is not None and not entry.sent:
            return None
        if entry is not None and entry.kind is JournalKind.ROLLBACK:
            # asked again after we answered: say it again rather than undo twice
            with self.store.change() as st:
                st.history = [replace(e, sent=False) if _same(e, entry) else e for e in st.history]
            return None
        return self.executor.rollback(deployment)

    def _forget_finished_watches(self, listed: dict[str, Deployment]) -> None:
        with self.store.locked() as st:
            gone = [
                name
                for name in st.watches
                if name not in listed and (entry := st.last_entry(name)) is not None and entry.sent
            ]
        if gone:
            with self.store.change() as st:
                for name in gone:
                    st.watches.pop(name, None)
                    self._health_due.pop(name, None)

    def health_report(self, watch: Watch) -> HealthReport:
        """The figures of a watched deployment's new versions since they were activated."""
        inferences = errors = 0
        p99: float | None = None
        for alias, (base_requests, base_errors) in watch.baseline.items():
            try:
                stats = self.agent.api.model_stats(alias)
            except NotFound:
                continue
            for s in stats:
                if s.request_count < base_requests:  # the agent restarted: counters began again
                    base_requests, base_errors = 0, 0
                inferences += s.request_count - base_requests
                errors += max(0, s.error_count - base_errors)
                if s.request_count > base_requests:
                    p99 = max(p99 or 0.0, s.p99_ms)
        return HealthReport(watch.deployment, inferences, min(errors, inferences), p99)

    def _report_health(self, listed: dict[str, Deployment]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        with self.store.locked() as st:
            watches = list(st.watches.values())
        now = self._monotonic()
        for watch in watches:
            if now < self._health_due.get(watch.deployment, 0.0):
                continue
            self._health_due[watch.deployment] = now + self.config.timing.health_interval_seconds
            try:
                report = self.health_report(watch)
                verdict = self.plane.report_health(report)
            except EdgefleetError as exc:
                if exc.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED):
                    self._offline(exc)
                    break
                self.log.warning(
                    "health report for %s refused: %s",
                    watch.deployment,
                    exc,
                    extra={"deployment": watch.deployment},
                )
                continue
            if verdict.verdict is Verdict.PENDING and not verdict.rollback:
                continue
            self.log.info(
                "health gate of %s: %s (%s)",
                watch.deployment,
                verdict.verdict.value,
                verdict.reason,
                extra={"deployment": watch.deployment},
            )
            with self.store.change() as st:
                st.watches.pop(watch.deployment, None)
            self._health_due.pop(watch.deployment, None)
            if verdict.rollback:
                deployment = listed.get(watch.deployment) or Deployment(watch.deployment, ())
                outcome = self.executor.rollback(replace(deployment, action=Action.ROLLBACK))
                outcomes.append(outcome)
                self.outcomes.append(outcome)
                self.flush_results()
        return outcomes

    # -- running --------------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None, on_ready: Callable[[], None] | None = None) -> None:
        """Start, then run both loops until :meth:`stop` (or ``stop`` is set); blocks.

        ``on_ready`` is called once start-up (recovery, restoring the models) is done.
        """
        if stop is not None:
            self._stop = stop
        self.start()
        if on_ready is not None:
            on_ready()
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="edgefleet-heartbeat", daemon=True)
        self._threads = [heartbeat]
        heartbeat.start()
        try:
            self._reconcile_loop()
        finally:
            self._wake.set()
            heartbeat.join()
            self._shutdown()

    def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.heartbeat_once()
            except Exception:  # the loop must outlive any one bad heartbeat
                self.log.exception("heartbeat failed")
            self._stop.wait(self.config.timing.heartbeat_interval_seconds)

    def _reconcile_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile_once()
            except Exception:  # the loop must outlive any one bad pass
                self.log.exception("reconcile pass failed")
            interval = self.config.timing.poll_interval_seconds
            if self.store.state.watches:
                interval = min(interval, self.config.timing.health_interval_seconds)
            self._wake.wait(interval)
            self._wake.clear()

    def stop(self) -> None:
        """Ask :meth:`run` to return (the agent child, if any, is stopped)."""
        self.state = DaemonState.STOPPING
        self._stop.set()
        self._wake.set()

    def _shutdown(self) -> None:
        self.state = DaemonState.STOPPING
        if self.supervisor is not None:
            self.supervisor.stop()
        self.agent.close()
        self.plane.close()
        self.state = DaemonState.STOPPED
        self.log.info("device daemon stopped")


def _same(a: HistoryEntry, b: HistoryEntry) -> bool:
    """Whether two history entries record the same event (entries are values, copied on every save)."""
    return (a.deployment, a.kind, a.finished_at) == (b.deployment, b.kind, b.finished_at)


def build_daemon(
    config: DaemonConfig,
    *,
    plane: ControlPlane | None = None,
    now: Callable[[], datetime] = utcnow,
    log_format: str | None = None,
) -> Daemon:
    """A daemon with the real parts: the enrolled identity over HTTPS (renewing its certificate),
    the agent, the package cache. ``now`` is the daemon's clock; ``log_format``, when given, is
    also the spawned agent's (``--log-format``)."""
    from edgefleet.core.platform import host_arch
    from edgefleet.device.agentlink import write_agent_config
    from edgefleet.device.https import HttpsControlPlane
    from edgefleet.device.identity import load_identity
    from edgefleet.device.packages import PackageStore

    state_dir = config.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    identity = load_identity(state_dir)
    renewal = None
    if plane is None:
        https = HttpsControlPlane(
            identity, url=config.server_url or None, timeout=config.timing.request_timeout_seconds
        )
        renewal = CertificateRenewal(
            identity,
            https,
            renew_after_fraction=config.certificate.renew_after_fraction,
            retry_seconds=config.certificate.retry_seconds,
            now=now,
        )
        plane = https
    address = config.agent_address
    agent = AgentConnection.connect(
        address,
        call_timeout=config.agent.call_timeout_seconds,
        smoke_timeout=config.agent.smoke_timeout_seconds,
    )
    supervisor = None
    if config.agent.spawn:
        agent_config = config.agent.config or write_agent_config(
            state_dir / "agent" / "agent.json",
            device_name=identity.device_name,
            fleet_name=identity.fleet_name,
            trust_dir=config.trust_dir,
            data_dir=state_dir / "agent",
        )
        supervisor = AgentSupervisor(
            address,
            Path(agent_config),
            state_dir / "agent" / "agent.log",
            ready_timeout=config.agent.ready_timeout_seconds,
            log_format=log_format,
        )
    store = StateStore(state_dir)
    packages = PackageStore(
        state_dir / "packages", config.trust_dir, chunk_bytes=config.deployment.download_chunk_bytes
    )
    executor = Executor(
        store=store,
        agent=agent,
        packages=packages,
        plane=plane,
        handles_path=state_dir / HANDLES_FILE,
        retry=config.retry,
        settings=config.deployment,
        max_unsent_results=config.queue.max_results,
    )
    return Daemon(
        config=config,
        store=store,
        outbox=Outbox(state_dir, config.queue.max_heartbeats),
        executor=executor,
        plane=plane,
        agent=agent,
        supervisor=supervisor,
        metrics=DeviceMetrics(agent_pid=lambda: supervisor.pid if supervisor is not None else None),
        platform=("linux", host_arch(), config.accelerator),
        now=now,
        renewal=renewal,
        device=identity.device_name,
        fleet=identity.fleet_name,
    )
