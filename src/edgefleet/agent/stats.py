"""Per-model request statistics: counts, errors, latency percentiles over a recent window, and a
latency histogram since load (what the agent's Prometheus ``/metrics`` shows, agent/metrics.py)."""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

WINDOW = 2048
#: Upper bounds (seconds) of the latency histogram's buckets, from a small model's ~20 us to a
#: large one's seconds; a last bucket (+Inf) takes the rest.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


@dataclass(frozen=True)
class LatencyHistogram:
    """Successful Predict calls since load by latency: ``counts[i]`` calls took at most
    ``LATENCY_BUCKETS[i]`` seconds and more than the bound before (the last: more than every bound);
    not cumulative. ``sum`` is their total latency in seconds."""

    counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class StatsSnapshot:
    """A consistent view of one model's statistics."""

    request_count: int
    error_count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    last_inference_time: float
    last_capture_time: float


class ModelStats:
    """Thread-safe counters plus a ring buffer of the last ``WINDOW`` latencies."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._latencies = np.zeros(WINDOW, dtype=np.float64)
        self._filled = 0
        self._next = 0
        self.request_count = 0
        self.error_count = 0
        self.last_inference_time = 0.0
        self.last_capture_time = 0.0
        # one bisect and two adds under the lock record() takes anyway: the histogram costs the
        # Predict path well under a microsecond
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0

    def record(self, latency_s: float, ok: bool) -> None:
        """Record one finished Predict."""
        now = self._clock()
        with self._lock:
            self.request_count += 1
            if not ok:
                self.error_count += 1
                return
            self._latencies[self._next] = latency_s
            self._buckets[bisect_left(LATENCY_BUCKETS, latency_s)] += 1
            self._latency_sum += latency_s
            self._next = (self._next + 1) % WINDOW
            self._filled = min(self._filled + 1, WINDOW)
            self.last_inference_time = now

    def record_capture(self) -> None:
        with self._lock:
            self.last_capture_time = self._clock()

    def histogram(self) -> LatencyHistogram:
        """The latency histogram of the successful calls since load."""
        with self._lock:
            return LatencyHistogram(tuple(self._buckets), self._latency_sum)

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            window = self._latencies[: self._filled].copy()
            counts = (self.request_count, self.error_count, self.last_inference_time, self.last_capture_time)
        if window.size:
            p50, p95, p99 = (float(v) * 1000.0 for v in np.percentile(window, [50, 95, 99]))
        else:
            p50 = p95 = p99 = 0.0
        return StatsSnapshot(counts[0], counts[1], p50, p95, p99, counts[2], counts[3])
