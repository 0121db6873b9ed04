"""The shadow pair's judgement of one call (edgefleet.agent.shadow.compare) and its settings."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from edgefleet.agent.priority import lower_priority
from edgefleet.agent.shadow import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_TOLERANCE,
    Comparison,
    ShadowSettings,
    compare,
)
from edgefleet.core.errors import InvalidArgument

AUTO = ShadowSettings()
CLOSE = ShadowSettings(tolerance=0.1, comparison=Comparison.CLOSE)


def test_class_scores_agree_by_argmax() -> None:
    champion = [np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)]
    assert compare(champion, [np.array([[0.4, 0.6], [0.6, 0.4]], np.float32)], AUTO) == (
        True,
        pytest.approx(0.3),
    )
    agreed, diff = compare(champion, [np.array([[0.6, 0.4], [0.6, 0.4]], np.float32)], AUTO)
    assert not agreed and diff == pytest.approx(0.5)
    # the same outputs judged by closeness instead
    assert compare(champion, [np.array([[0.15, 0.85], [0.8, 0.2]], np.float32)], CLOSE)[0]
    assert not compare(champion, [np.array([[0.4, 0.6], [0.6, 0.4]], np.float32)], CLOSE)[0]


def test_labels_exactly_and_other_outputs_within_tolerance() -> None:
    labels = [np.array([3, 1], np.int64)]
    assert compare(labels, [np.array([3, 1], np.int64)], AUTO) == (True, 0.0)
    assert compare(labels, [np.array([3, 2], np.int64)], AUTO) == (False, 1.0)
    score = [np.array([[0.5]], np.float32)]  # one value per row: not class scores
    assert compare(score, [np.array([[0.5 + 1e-6]], np.float32)], AUTO)[0]
    assert not compare(score, [np.array([[0.6]], np.float32)], AUTO)[0]
    # every output must agree
    assert not compare([*labels, *score], [*labels, np.array([[0.6]], np.float32)], AUTO)[0]


def test_other_shapes_or_counts_disagree() -> None:
    one = [np.zeros((1, 3), np.float32)]
    assert compare(one, [np.zeros((1, 4), np.float32)], AUTO) == (False, 0.0)
    assert compare(one, [*one, *one], AUTO)[0] is False
    nan = [np.array([[np.nan, 1.0]], np.float32)]
    assert compare(nan, nan, CLOSE) == (True, 0.0)


def test_settings_defaults_and_bounds() -> None:
    settings = ShadowSettings.checked(0.25, 0.0, 0, Comparison.AUTO)
    assert (settings.tolerance, settings.max_queue) == (DEFAULT_TOLERANCE, DEFAULT_MAX_QUEUE)
    for rate in (-0.1, 1.01, float("nan")):
        with pytest.raises(InvalidArgument, match="sample_rate"):
            ShadowSettings.checked(rate, 0.0, 0, Comparison.AUTO)
    for tolerance in (-1.0, float("inf"), float("nan")):
        with pytest.raises(InvalidArgument, match="tolerance"):
            ShadowSettings.checked(1.0, tolerance, 0, Comparison.AUTO)
    with pytest.raises(InvalidArgument, match="max_queue"):
        ShadowSettings.checked(1.0, 0.0, 5000, Comparison.AUTO)


def test_the_mirror_thread_alone_gets_the_lowest_priority() -> None:
    seen: list[tuple[str, int, int]] = []

    def mirror() -> None:
        tid = threading.get_native_id()
        seen.append(
            (lower_priority("mirror"), os.sched_getscheduler(tid), os.getpriority(os.PRIO_PROCESS, tid))
        )

    thread = threading.Thread(target=mirror)
    thread.start()
    thread.join()
    ((how, policy, nice),) = seen
    assert (how == "SCHED_IDLE" and policy == os.SCHED_IDLE) or (how == "nice 19" and nice == 19)
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the rest of the process is untouched
