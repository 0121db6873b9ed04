"""Heartbeat metrics: the device's (CPU, memory, uptime, through psutil) and each model's (from the
agent's GetModelStatistics: requests, errors, latency p50/p99, last inference, last sample).

Metric names (``Dimension`` / ``MetricName``), documented in docs/device-daemon.md:

- ``device``: ``cpu_percent``, ``memory_used_bytes``, ``memory_percent``, ``uptime_seconds``;
- ``agent``: ``cpu_percent``, ``memory_rss_bytes``, ``uptime_seconds`` (when the daemon knows the
  agent's process), ``loaded_models``, ``model_memory_bytes``;
- ``daemon``: ``uptime_seconds``, ``queued_heartbeats``, ``dropped_heartbeats``;
- per model: ``requests``, ``errors``, ``latency_p50_ms``, ``latency_p99_ms``, ``in_flight``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime

import psutil

from edgefleet.client import ModelStatistics
from edgefleet.core.deviceplane import (
    MODEL_ERRORS,
    MODEL_LATENCY_P99_MS,
    MODEL_REQUESTS,
    EdgeMetric,
    ModelReport,
)
from edgefleet.device.state import InstalledModel

log = logging.getLogger(__name__)


class DeviceMetrics:
    """Samples device, agent-process and daemon metrics."""

    def __init__(
        self,
        *,
        agent_pid: Callable[[], int | None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._agent_pid = agent_pid
        self._clock = clock
        self._started = clock()
        self._agent_proc: psutil.Process | None = None
        psutil.cpu_percent(interval=None)  # primes the counter: the first real sample covers an interval

    def _agent_process(self) -> psutil.Process | None:
        pid = self._agent_pid()
        if pid is None:
            self._agent_proc = None
            return None
        if self._agent_proc is None or self._agent_proc.pid != pid:
            try:
                self._agent_proc = psutil.Process(pid)
                self._agent_proc.cpu_percent(interval=None)
            except psutil.Error:
                self._agent_proc = None
        return self._agent_proc

    def sample(
        self, stats: Sequence[ModelStatistics], *, queued: int = 0, dropped: int = 0
    ) -> tuple[EdgeMetric, ...]:
        """Device, agent and daemon metrics now."""
        now_s = self._clock()
        at = datetime.fromtimestamp(now_s, UTC)
        memory = psutil.virtual_memory()
        metrics = [
            EdgeMetric("device", "cpu_percent", float(psutil.cpu_percent(interval=None)), at),
            EdgeMetric("device", "memory_used_bytes", float(memory.total - memory.available), at),
            EdgeMetric("device", "memory_percent", float(memory.percent), at),
            EdgeMetric("device", "uptime_seconds", max(0.0, now_s - psutil.boot_time()), at),
            EdgeMetric("agent", "loaded_models", float(len(stats)), at),
            EdgeMetric("agent", "model_memory_bytes", float(sum(s.memory_bytes for s in stats)), at),
            EdgeMetric("daemon", "uptime_seconds", max(0.0, now_s - self._started), at),
            EdgeMetric("daemon", "queued_heartbeats", float(queued), at),
            EdgeMetric("daemon", "dropped_heartbeats", float(dropped), at),
        ]
        proc = self._agent_process()
        if proc is not None:
            try:
                with proc.oneshot():
                    metrics += [
                        EdgeMetric("agent", "cpu_percent", float(proc.cpu_percent(interval=None)), at),
                        EdgeMetric("agent", "memory_rss_bytes", float(proc.memory_info().rss), at),
                        EdgeMetric("agent", "uptime_seconds", max(0.0, now_s - proc.create_time()), at),
                    ]
            except psutil.Error as exc:
                log.debug("cannot sample the agent process: %s", exc)
        return tuple(metrics)


def _when(seconds: float | None) -> datetime | None:
    return None if not seconds else datetime.fromtimestamp(seconds, UTC)


def model_reports(
    installed: Mapping[str, InstalledModel], stats: Iterable[ModelStatistics], now: datetime
) -> tuple[ModelReport, ...]:
    """One report per installed handle, with the figures of the alias serving it."""
    by_alias = {s.name: s for s in stats}
    reports = []
    for handle, model in sorted(installed.items()):
        s = by_alias.get(model.alias)
        metrics: tuple[EdgeMetric, ...] = ()
        if s is not None:
            metrics = (
                EdgeMetric(handle, MODEL_REQUESTS, float(s.request_count), now),
                EdgeMetric(handle, MODEL_ERRORS, float(s.error_count), now),
                EdgeMetric(handle, "latency_p50_ms", float(s.p50_ms), now),
                EdgeMetric(handle, MODEL_LATENCY_P99_MS, float(s.p99_ms), now),
                EdgeMetric(handle, "in_flight", float(s.in_flight), now),
            )
        reports.append(
            ModelReport(
                model_name=model.model_name,
                model_version=model.model_version,
                handle=handle,
                latest_inference=_when(s.last_inference_time) if s else None,
                latest_sample=_when(s.last_capture_time) if s else None,
                metrics=metrics,
            )
        )
    return tuple(reports)
