"""Per-model request statistics: counts, errors, latency percentiles over a recent window, and a
latency histogram since load (what the agent's Prometheus ``/metrics`` shows, agent/metrics.py)."""

from __future__ import annotations

import threading
import time
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
_BOUNDS = np.array(LATENCY_BUCKETS)


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
        # The histogram is folded from the ring, not counted per call: the latencies from
        # ``_fold_start`` to ``_next`` are not in it yet. They are folded when the ring wraps
        # (before any is overwritten: one vectorised pass per WINDOW calls) and when it is read,
        # so the Predict path pays one comparison for it.
        self._buckets = np.zeros(len(LATENCY_BUCKETS) + 1, dtype=np.int64)
        self._latency_sum = 0.0
        self._fold_start = 0

    def record(self, latency_s: float, ok: bool) -> None:
        """Record one finished Predict."""
        now = self._clock()
        with self._lock:
            self.request_count += 1
            if not ok:
                self.error_count += 1
                return
            self._latencies[self._next] = latency_s
            self._next = (self._next + 1) % WINDOW
            if not self._next:  # wrapped: the oldest latencies are overwritten next
                self._fold(WINDOW)
            self._filled = min(self._filled + 1, WINDOW)
            self.last_inference_time = now

    def _fold(self, end: int) -> None:
        """Add the ring's latencies from ``_fold_start`` to ``end`` to the histogram (lock held)."""
        segment = self._latencies[self._fold_start : end]
        if segment.size:
            # side="left": a latency equal to a bound counts in that bound's bucket (le)
            index = np.searchsorted(_BOUNDS, segment, side="left")
            self._buckets += np.bincount(index, minlength=len(_BOUNDS) + 1)
            self._latency_sum += float(segment.sum())
        self._fold_start = end % WINDOW

    def record_capture(self) -> None:
        with self._lock:
            self.last_capture_time = self._clock()

    def histogram(self) -> LatencyHistogram:
        """The latency histogram of the successful calls since load."""
        with self._lock:
            self._fold(self._next)
            return LatencyHistogram(tuple(int(c) for c in self._buckets), self._latency_sum)

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            window = self._latencies[: self._filled].copy()
            counts = (self.request_count, self.error_count, self.last_inference_time, self.last_capture_time)
        if window.size:
            p50, p95, p99 = (float(v) * 1000.0 for v in np.percentile(window, [50, 95, 99]))
        else:
            p50 = p95 = p99 = 0.0
        return StatsSnapshot(counts[0], counts[1], p50, p95, p99, counts[2], counts[3])
