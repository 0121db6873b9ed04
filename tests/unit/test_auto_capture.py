"""Auto capture: per-model policies pick Predict calls (every N-th, by chance, low confidence)."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime

import numpy as np
import pytest

from edgefleet.capture import CaptureRequest
from edgefleet.capture.auto import QUEUE_LIMIT, AutoCapture, AutoCapturePolicy, confidence
from edgefleet.core.errors import InvalidArgument, ResourceExhausted

X = {"x": np.arange(4, dtype=np.float32).reshape(1, 4)}
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class Collector:
    def __init__(self) -> None:
        self.requests: list[CaptureRequest] = []
        self.arrived = threading.Condition()

    def __call__(self, request: CaptureRequest) -> None:
        with self.arrived:
            self.requests.append(request)
            self.arrived.notify_all()


def make(policies: dict[str, AutoCapturePolicy], submit: object = None, seed: int = 1) -> AutoCapture:
    return AutoCapture(policies, submit or Collector(), rng=random.Random(seed), clock=lambda: WHEN)  # type: ignore[arg-type]


def probs(*rows: list[float]) -> list[np.ndarray]:
    return [np.array(rows, dtype=np.float32)]


def test_every_nth_call_is_captured_with_its_tensors() -> None:
    sink = Collector()
    auto = make({"digits": AutoCapturePolicy(every_n=3)}, sink)
    try:
        picked = [auto.offer("digits", "2.0", X, ["p"], probs([0.1, 0.9])) for _ in range(9)]
        assert picked == [False, False, True] * 3
        assert not auto.offer("other-model", "1", X, ["p"], probs([0.1, 0.9]))  # no policy for it
        assert auto.drain(60)
    finally:
        auto.close()
    assert len(sink.requests) == 3
    first = sink.requests[0]
    assert (first.model_name, first.model_version, first.inference_time) == ("digits", "2.0", WHEN)
    ((name, dtype, shape, data),) = [(t.name, t.dtype, t.shape, t.data) for t in first.inputs]
    assert (name, dtype.name, shape, data) == ("x", "FLOAT32", (1, 4), X["x"].tobytes())
    assert [t.name for t in first.outputs] == ["p"]
    assert len({r.capture_id for r in sink.requests}) == 3
    assert auto.stats() == {"picked": 3, "captured": 3, "skipped": 0, "refused": 0}


def test_probability_picks_by_the_injected_random_source() -> None:
    auto = make({"*": AutoCapturePolicy(probability=0.25)}, seed=42)
    try:
        picked = [auto.offer("any", "1", X, ["p"], probs([0.5, 0.5])) for _ in range(400)]
    finally:
        auto.close()
    reference = random.Random(42)
    assert picked == [reference.random() < 0.25 for _ in range(400)]
    assert 0 < sum(picked) < 400


def test_low_confidence_calls_are_captured() -> None:
    auto = make({"m": AutoCapturePolicy(below_confidence=0.6)})
    try:
        assert not auto.offer("m", "1", X, ["p"], probs([0.1, 0.9]))
        assert auto.offer("m", "1", X, ["p"], probs([0.45, 0.55]))
        assert auto.offer("m", "1", X, ["p"], probs([0.05, 0.95], [0.5, 0.5]))  # any row of the batch
        # the first floating-point output is read: an int label output before it is passed over
        assert auto.offer("m", "1", X, ["label", "p"], [np.array([1]), np.array([[0.5, 0.5]])])
    finally:
        auto.close()


def test_confidence_output_and_softmax() -> None:
    auto = make({"m": AutoCapturePolicy(below_confidence=0.6, confidence_output="logits", softmax=True)})
    try:
        outputs = [np.array([[0.1, 0.9]], dtype=np.float32), np.array([[0.0, 5.0]], dtype=np.float32)]
        assert not auto.offer("m", "1", X, ["probs", "logits"], outputs)  # softmax([0, 5]) is sure
        outputs[1] = np.array([[1.0, 1.2]], dtype=np.float32)
        assert auto.offer("m", "1", X, ["probs", "logits"], outputs)
    finally:
        auto.close()
    assert confidence(np.array([[2.0, 2.0]]), softmax=True) == pytest.approx(0.5)
    assert confidence(np.array(3.0), softmax=False) == 1.0


def test_a_full_queue_skips_and_counts_instead_of_waiting() -> None:
    release = threading.Event()
    entered = threading.Event()

    def blocked(request: CaptureRequest) -> None:
        entered.set()
        assert release.wait(120)

    auto = make({"m": AutoCapturePolicy(every_n=1)}, blocked)
    try:
        assert auto.offer("m", "1", X, ["p"], probs([1.0]))
        assert entered.wait(60)  # the worker holds that one; the queue fills behind it
        results = [auto.offer("m", "1", X, ["p"], probs([1.0])) for _ in range(QUEUE_LIMIT + 10)]
        assert results.count(False) == 10
        assert auto.stats()["skipped"] == 10
    finally:
        release.set()
        auto.close()
    assert auto.stats()["captured"] == QUEUE_LIMIT + 1


def test_refusals_by_the_pipeline_are_counted() -> None:
    def full(request: CaptureRequest) -> None:
        raise ResourceExhausted("capture buffer is full")

    auto = make({"m": AutoCapturePolicy(every_n=1)}, full)
    try:
        for _ in range(3):
            auto.offer("m", "1", X, ["p"], probs([1.0]))
        assert auto.drain(60)
    finally:
        auto.close()
    assert auto.stats() == {"picked": 3, "captured": 0, "skipped": 0, "refused": 3}


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({}, "needs every_n, probability or below_confidence"),
        ({"every_n": -1}, "every_n must be >= 0"),
        ({"probability": 1.5}, "probability must be between 0 and 1"),
        ({"below_confidence": 2}, "below_confidence must be between 0 and 1"),
        ({"every_n": 2.5}, r"capture.auto.m.every_n: expected int, got 2.5"),
        ({"softmax": "yes", "every_n": 1}, r"capture.auto.m.softmax: expected bool"),
        ({"every": 3}, r"capture.auto.m: unknown key 'every' \(known: below_confidence, confidence_output"),
    ],
)
def test_bad_policies_are_refused(raw: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        AutoCapturePolicy.from_mapping("m", raw)
