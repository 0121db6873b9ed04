"""The agent's own Prometheus ``GET /metrics``, opt-in on a local address (``agent.metrics_address``).

Nothing is counted for it on the Predict path: a collector reads, at scrape time, what the agent
keeps anyway (each model's :class:`~edgefleet.agent.stats.ModelStats`, the registry's memory
accounting, the capture spool's backlog) and the process's own figures (prometheus-client's
process collector: resident memory, CPU, open files). The series are in docs/metrics.md.

prometheus-client is the ``metrics`` extra (it is not in the device install): an address configured
without it fails the agent's start with FAILED_PRECONDITION naming the extra.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from edgefleet import __version__
from edgefleet.agent.config import metrics_host_port
from edgefleet.agent.stats import LATENCY_BUCKETS
from edgefleet.core.errors import FailedPrecondition

if TYPE_CHECKING:
    from edgefleet.agent.models import ModelRegistry
    from edgefleet.capture import CaptureService

log = logging.getLogger(__name__)

#: Every series' prefix.
PREFIX = "edgefleet_agent"
#: The labels of per-model series: the name the model is loaded under, its package's model name
#: and version.
MODEL_LABELS = ("name", "model", "version")


def require_prometheus_client() -> None:
    """FAILED_PRECONDITION naming the ``metrics`` extra when prometheus-client is not installed."""
    try:
        import prometheus_client  # noqa: F401
    except ModuleNotFoundError as exc:
        raise FailedPrecondition(
            "agent.metrics_address (--metrics-address) is set but prometheus-client is not installed: "
            "pip install 'edgefleet[metrics]' (or leave the address empty: metrics off)"
        ) from exc


class AgentCollector:
    """The agent's series, read at scrape time from the registry and the capture service."""

    def __init__(
        self, registry: ModelRegistry, capture: CaptureService, *, budget_bytes: int, device: str, fleet: str
    ) -> None:
        self._registry = registry
        self._capture = capture
        self._budget = budget_bytes
        self._device = device
        self._fleet = fleet

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        info = GaugeMetricFamily(
            f"{PREFIX}_info",
            "The agent: its version, device and fleet (always 1)",
            labels=["version", "device", "fleet"],
        )
        info.add_metric([__version__, self._device, self._fleet], 1)
        yield info

        requests = CounterMetricFamily(
            f"{PREFIX}_predict_requests",
            "Predict calls on the model since it was loaded",
            labels=MODEL_LABELS,
        )
        errors = CounterMetricFamily(
            f"{PREFIX}_predict_errors",
            "Predict calls on the model that failed (or were refused by its queue limit) since load",
            labels=MODEL_LABELS,
        )
        latency = HistogramMetricFamily(
            f"{PREFIX}_predict_latency_seconds",
            "Time the model's runtime took for a successful Predict call, since load",
            labels=MODEL_LABELS,
        )
        memory = GaugeMetricFamily(
            f"{PREFIX}_model_memory_bytes",
            "Memory the model is accounted with against the budget (estimated at load)",
            labels=MODEL_LABELS,
        )
        bounds = [*(repr(b) for b in LATENCY_BUCKETS), "+Inf"]  # repr: what prometheus-client writes
        slots = self._registry.list()
        for slot in slots:
            manifest = slot.verified_manifest
            labels = [slot.alias, manifest.name if manifest else "", manifest.version if manifest else ""]
            stats = slot.stats
            histogram = stats.histogram()
            # one consistent reading: the counters read after the histogram are never below it
            requests.add_metric(labels, stats.request_count)
            errors.add_metric(labels, stats.error_count)
            latency.add_metric(
                labels, list(zip(bounds, accumulate(histogram.counts), strict=True)), histogram.sum
            )
            memory.add_metric(labels, slot.memory_bytes)
        yield requests
        yield errors
        yield latency
        yield memory
        yield GaugeMetricFamily(f"{PREFIX}_models_loaded", "Models loaded and serving", value=len(slots))
        yield GaugeMetricFamily(
            f"{PREFIX}_models_memory_bytes",
            "Memory the model registry accounts for all models (loading ones included)",
            value=self._registry.used_bytes,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_models_memory_budget_bytes",
            "The models' memory budget (agent.memory_budget_mb)",
            value=self._budget,
        )
        yield from self._capture_series(GaugeMetricFamily, CounterMetricFamily)

    def _capture_series(self, gauge: Any, counter: Any) -> Iterator[Any]:
        stats = self._capture.stats()
        yield gauge(
            f"{PREFIX}_capture_backlog_records",
            "Captures in the spool not yet written to the destination",
            value=stats["pending"] or 0,
        )
        yield gauge(
            f"{PREFIX}_capture_backlog_bytes",
            "Payload bytes of the captures in the spool",
            value=stats["pending_bytes"] or 0,
        )
        yield gauge(
            f"{PREFIX}_capture_backlog_oldest_age_seconds",
            "Age of the oldest capture in the spool (0 when it is empty)",
            value=stats["oldest_pending_age_seconds"] or 0.0,
        )
        yield counter(
            f"{PREFIX}_capture_written", "Captures written to the destination", value=stats["written"]
        )
        yield counter(
            f"{PREFIX}_capture_failed", "Captures given up (dropped ones included)", value=stats["failed"]
        )
        yield counter(
            f"{PREFIX}_capture_dropped",
            "Captures dropped by the full-buffer policy drop-oldest",
            value=stats["dropped"],
        )
        if stats.get("periodic_upload"):
            yield gauge(
                f"{PREFIX}_capture_upload_backlog_records",
                "Objects on Disk not yet confirmed by the cloud store (periodic upload)",
                value=stats["transfer_pending"] or 0,
            )
            yield gauge(
                f"{PREFIX}_capture_upload_backlog_bytes",
                "Bytes of those objects and their raw-data files",
                value=stats["transfer_pending_bytes"] or 0,
            )
            yield gauge(
                f"{PREFIX}_capture_upload_backlog_oldest_age_seconds",
                "Time since Disk confirmed the oldest object not yet uploaded (0 when none)",
                value=stats["transfer_oldest_age_seconds"] or 0.0,
            )


@dataclass
class MetricsEndpoint:
    """The running ``/metrics`` HTTP server; :meth:`stop` closes it."""

    host: str
    port: int
    _server: Any
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def start_metrics(address: str, collector: AgentCollector) -> MetricsEndpoint:
    """Serve ``collector`` (and the process's figures) at ``http://address/metrics`` on a thread.

    FAILED_PRECONDITION when prometheus-client is missing or the address cannot be listened on.
    """
    require_prometheus_client()
    from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

    host, port = metrics_host_port(address)
    registry = CollectorRegistry()  # the agent's series only, not the process-global default registry
    registry.register(collector)
    ProcessCollector(namespace=PREFIX, registry=registry)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise FailedPrecondition(f"cannot serve metrics on {address}: {exc.strerror or exc}") from exc
    endpoint = MetricsEndpoint(host, server.server_address[1], server, thread)
    log.info("metrics on %s", endpoint.url)
    return endpoint
