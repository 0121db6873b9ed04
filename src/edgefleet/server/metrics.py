"""The control plane's Prometheus metrics (``GET /metrics`` on the operator port, docs/metrics.md).

Two kinds of series:

- **Request series** (``edgefleet_http_*``, ``edgefleet_heartbeats_received_total``), counted where
  the requests are served. With several worker processes (``edgefleet server --workers``) they use
  prometheus-client's *multiprocess mode*: each worker writes its counts to memory-mapped files in a
  directory the supervisor creates, and whichever worker answers a scrape sums every worker's files.
  The workers share one listening socket, so a scrape reaches one worker at random; per-process
  series with a ``worker`` label would come and go from scrape to scrape (and look stale to
  Prometheus), which is why the files are shared instead.
- **Fleet series** (``edgefleet_devices_*``, ``edgefleet_stage_devices``, ``edgefleet_model_*``),
  computed from the database at scrape time by :class:`FleetCollector` and kept for
  ``cache_seconds`` so frequent scrapes of a 10,000-device fleet cost a few grouped queries every
  few seconds. They are the same in every worker (the database is shared), so they never go through
  the multiprocess files.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from edgefleet.core.deviceplane import MODEL_ERRORS, MODEL_LATENCY_P99_MS, MODEL_REQUESTS
from edgefleet.server.db.engine import Database
from edgefleet.server.db.schema import Device, DeviceModel, DriftScoreRow, Fleet, StageDevice

#: environment variable through which prometheus-client's multiprocess mode finds its directory
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: per-model heartbeat metric with the median latency (``device/metrics.py`` reports it)
MODEL_LATENCY_P50_MS = "latency_p50_ms"
#: the route label of requests that matched no route (404s, refusals before routing)
UNMATCHED_ROUTE = "unmatched"
#: request latency histogram buckets, seconds (a heartbeat takes milliseconds, a package upload minutes)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
#: how long fleet series computed from the database are reused, seconds
DEFAULT_CACHE_SECONDS = 10.0


class ServerMetrics:
    """One replica's metrics: request counters it updates, and the fleet collector for scrapes.

    ``multiprocess_dir`` is the directory of prometheus-client's multiprocess mode (set when the
    server runs several workers; the environment variable must name it before prometheus-client is
    imported, which :func:`edgefleet.server.runner` arranges for its workers).
    """

    def __init__(
        self,
        db: Database,
        connected_window: timedelta,
        *,
        multiprocess_dir: Path | None = None,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.multiprocess_dir = multiprocess_dir
        # in multiprocess mode the values live in the shared files; the scrape reads them from there
        self._own = None if multiprocess_dir is not None else CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "edgefleet_http_requests",
            "HTTP requests answered, by listener, method, route template and status class.",
            ("listener", "method", "route", "status"),
            registry=self._own,
        )
        self.latency = Histogram(
            "edgefleet_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by listener, method and route template.",
            ("listener", "method", "route"),
            buckets=LATENCY_BUCKETS,
            registry=self._own,
        )
        self.heartbeats = Counter(
            "edgefleet_heartbeats_received",
            "SendHeartbeat calls accepted (committed), through the fast path or the application.",
            registry=self._own,
        )
        self.fleet = FleetCollector(db, connected_window, cache_seconds=cache_seconds, clock=clock)

    def observe(self, listener: str, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(listener, method, route, f"{status // 100}xx").inc()
        self.latency.labels(listener, method, route).observe(seconds)

    def registry(self) -> CollectorRegistry:
        """What a scrape exposes: the request series (this process's, or all workers') and the fleet's."""
        registry = CollectorRegistry()
        if self._own is not None:
            registry.register(_Forward(self._own))
        else:
            MultiProcessCollector(registry, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        registry.register(self.fleet)
        return registry

    def render(self) -> bytes:
        """The text exposition of :meth:`registry` (blocking: may query the database)."""
        return generate_latest(self.registry())


#: the ``Content-Type`` of :meth:`ServerMetrics.render`
CONTENT_TYPE = CONTENT_TYPE_LATEST


class _Forward:
    """A collector that yields another registry's metrics (so the per-replica one is never mutated)."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        return self._source.collect()


@dataclass
class ModelFigures:
    """One model version's figures in one fleet, from its connected devices' latest heartbeats."""

    devices: int = 0
    #: Predict calls since load, summed
    requests: float = 0.0
    #: failed Predict calls since load, summed
    errors: float = 0.0
    #: each device's reported p50 / p99 latency, milliseconds
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)

    @property
    def p50_ms(self) -> float | None:
        """The median of the devices' p50 latencies (None when no device reported one)."""
        return _median(self.p50) if self.p50 else None

    @property
    def p99_ms(self) -> float | None:
        """The highest of the devices' p99 latencies: the worst device (None when none reported one)."""
        return max(self.p99) if self.p99 else None

    @property
    def error_rate(self) -> float | None:
        """Errors per request (None before the first request)."""
        return self.errors / self.requests if self.requests else None


def model_figures(
    session: Session, cutoff: datetime, fleet_id: int | None = None
) -> dict[tuple[str, str, str], ModelFigures]:
    """(fleet, model, version) -> figures of the devices whose latest heartbeat is at ``cutoff`` or
    later (the connected ones), of every fleet or of fleet ``fleet_id``."""
    stmt = (
        select(Fleet.name, DeviceModel.model_name, DeviceModel.model_version, DeviceModel.metrics)
        .join(Device, Device.id == DeviceModel.device_id)
        .join(Fleet, Fleet.id == Device.fleet_id)
        .where(Device.last_heartbeat_at >= cutoff)
    )
    if fleet_id is not None:
        stmt = stmt.where(Device.fleet_id == fleet_id)
    figures: dict[tuple[str, str, str], ModelFigures] = defaultdict(ModelFigures)
    for fleet, model, version, metrics in session.execute(stmt):
        _add(figures[(str(fleet), str(model), str(version))], metrics)
    return dict(figures)


class FleetCollector:
    """Fleet series computed from the database at scrape time, cached for ``cache_seconds``."""

    def __init__(
        self,
        db: Database,
        connected_window: timedelta,
        *,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._window = connected_window
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def describe(self) -> Iterable[Metric]:
        # no database query when the collector is registered
        return []

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # concurrent scrapes share one computation
            now = self._clock()
            if self._cached is None or now - self._cached[0] >= self._cache_seconds:
                self._cached = (now, self._compute())
            families = self._cached[1]
        yield from families

    def _compute(self) -> list[Metric]:
        registered = GaugeMetricFamily(
            "edgefleet_devices_registered", "Devices registered, per fleet.", labels=["fleet"]
        )
        connected = GaugeMetricFamily(
            "edgefleet_devices_connected",
            "Devices whose latest heartbeat is within the connected window, per fleet.",
            labels=["fleet"],
        )
        stage = GaugeMetricFamily(
            "edgefleet_stage_devices",
            "Devices of started deployment stages, by their per-device state.",
            labels=["state"],
        )
        labels = ["fleet", "model", "version"]
        m_devices = GaugeMetricFamily(
            "edgefleet_model_devices", "Connected devices reporting the model version.", labels=labels
        )
        m_requests = GaugeMetricFamily(
            "edgefleet_model_requests",
            "Predict calls since load, summed over connected devices' latest heartbeats.",
            labels=labels,
        )
        m_errors = GaugeMetricFamily(
            "edgefleet_model_errors",
            "Failed Predict calls since load, summed over connected devices' latest heartbeats.",
            labels=labels,
        )
        m_p50 = GaugeMetricFamily(
            "edgefleet_model_latency_p50_seconds",
            "Median of the connected devices' reported p50 latencies.",
            labels=labels,
        )
        m_p99 = GaugeMetricFamily(
            "edgefleet_model_latency_p99_seconds",
            "Highest of the connected devices' reported p99 latencies (the worst device).",
            labels=labels,
        )
        drift = GaugeMetricFamily(
            "edgefleet_model_drift_score",
            "Highest score over features of the latest scored drift bucket, by score kind (PSI, KS, JS).",
            labels=[*labels, "kind"],
        )
        with self._db.session() as session:
            cutoff = self._db.now() - self._window
            for name, count in session.execute(
                select(Fleet.name, func.count(Device.id))
                .outerjoin(Device, Device.fleet_id == Fleet.id)
                .group_by(Fleet.name)
                .order_by(Fleet.name)
            ):
                registered.add_metric([name], float(count))
            online: dict[str, int] = {}
            for name, count in session.execute(
                select(Fleet.name, func.count(Device.id))
                .join(Device, Device.fleet_id == Fleet.id)
                .where(Device.last_heartbeat_at >= cutoff)
                .group_by(Fleet.name)
            ):
                online[name] = int(count)
            for name in (s.labels["fleet"] for s in registered.samples):
                connected.add_metric([name], float(online.get(name, 0)))
            for state, count in session.execute(
                select(StageDevice.status, func.count())
                .group_by(StageDevice.status)
                .order_by(StageDevice.status)
            ):
                stage.add_metric([state], float(count))
            figures = model_figures(session, cutoff)
            for key in sorted(figures):
                f = figures[key]
                values = list(key)
                m_devices.add_metric(values, float(f.devices))
                m_requests.add_metric(values, f.requests)
                m_errors.add_metric(values, f.errors)
                if f.p50_ms is not None:
                    m_p50.add_metric(values, f.p50_ms / 1000.0)
                if f.p99_ms is not None:
                    m_p99.add_metric(values, f.p99_ms / 1000.0)
            latest = (
                select(
                    DriftScoreRow.fleet_id,
                    DriftScoreRow.model_name,
                    DriftScoreRow.model_version,
                    func.max(DriftScoreRow.bucket_start).label("start"),
                )
                .group_by(DriftScoreRow.fleet_id, DriftScoreRow.model_name, DriftScoreRow.model_version)
                .subquery()
            )
            for fleet, model, version, kind, score in session.execute(
                select(
                    Fleet.name,
                    DriftScoreRow.model_name,
                    DriftScoreRow.model_version,
                    DriftScoreRow.kind,
                    func.max(DriftScoreRow.score),
                )
                .join(
                    latest,
                    and_(
                        latest.c.fleet_id == DriftScoreRow.fleet_id,
                        latest.c.model_name == DriftScoreRow.model_name,
                        latest.c.model_version == DriftScoreRow.model_version,
                        latest.c.start == DriftScoreRow.bucket_start,
                    ),
                )
                .join(Fleet, Fleet.id == DriftScoreRow.fleet_id)
                .group_by(
                    Fleet.name, DriftScoreRow.model_name, DriftScoreRow.model_version, DriftScoreRow.kind
                )
                .order_by(
                    Fleet.name, DriftScoreRow.model_name, DriftScoreRow.model_version, DriftScoreRow.kind
                )
            ):
                drift.add_metric([fleet, model, version, kind], float(score))
        return [registered, connected, stage, m_devices, m_requests, m_errors, m_p50, m_p99, drift]


def _add(figures: ModelFigures, metrics: Any) -> None:
    """Fold one device's stored model metrics (``DeviceModel.metrics``) into ``figures``."""
    figures.devices += 1
    for metric in metrics or ():
        if not isinstance(metric, dict):
            continue
        value = metric.get("Value")
        if not isinstance(value, int | float):
            continue
        name = metric.get("MetricName")
        if name == MODEL_REQUESTS:
            figures.requests += value
        elif name == MODEL_ERRORS:
            figures.errors += value
        elif name == MODEL_LATENCY_P50_MS:
            figures.p50.append(float(value))
        elif name == MODEL_LATENCY_P99_MS:
            figures.p99.append(float(value))


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
