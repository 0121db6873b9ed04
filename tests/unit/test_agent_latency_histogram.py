"""The latency histogram behind the agent's /metrics: folded from the statistics' ring of latencies
at wrap-around and at read time, it must count every successful call exactly once, in its bucket."""

from __future__ import annotations

import bisect

import numpy as np
import pytest

from edgefleet.agent.stats import LATENCY_BUCKETS, WINDOW, ModelStats


@pytest.mark.parametrize("reads_every", [1, 7, WINDOW - 1, WINDOW, 3 * WINDOW + 5, 0])
def test_every_success_is_in_its_bucket_once(reads_every: int) -> None:
    rng = np.random.default_rng(reads_every)
    values = [*rng.lognormal(-7, 2, size=3 * WINDOW + 100).tolist(), *LATENCY_BUCKETS, 0.0, 100.0]
    stats = ModelStats()
    expected = [0] * (len(LATENCY_BUCKETS) + 1)
    for i, value in enumerate(values):
        stats.record(value, ok=True)
        expected[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1  # le: a value on a bound is in it
        if i % 3 == 0:
            stats.record(0.5, ok=False)  # failures are counted, not timed
        if reads_every and i % reads_every == 0:
            assert stats.histogram().count == i + 1
    histogram = stats.histogram()
    assert list(histogram.counts) == expected
    assert histogram.count == len(values)
    assert histogram.sum == pytest.approx(sum(values))
    assert stats.request_count - stats.error_count == len(values)


def test_an_unused_model_has_an_empty_histogram() -> None:
    histogram = ModelStats().histogram()
    assert histogram.counts == (0,) * (len(LATENCY_BUCKETS) + 1)
    assert (histogram.count, histogram.sum) == (0, 0.0)
