"""Per-model request statistics: counts, errors, latency percentiles over a recent window."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

WINDOW = 2048


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
            self._filled = min(self._filled + 1, WINDOW)
            self.last_inference_time = now

    def record_capture(self) -> None:
        with self._lock:
            self.last_capture_time = self._clock()

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            window = self._latencies[: self._filled].copy()
            counts = (self.request_count, self.error_count, self.last_inference_time, self.last_capture_time)
        if window.size:
            p50, p95, p99 = (float(v) * 1000.0 for v in np.percentile(window, [50, 95, 99]))
        else:
            p50 = p95 = p99 = 0.0
        return StatsSnapshot(counts[0], counts[1], p50, p95, p99, counts[2], counts[3])
