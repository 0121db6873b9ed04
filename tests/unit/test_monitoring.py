"""Model summaries (KLL and frequent-items sketches) and drift scores against a baseline."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from edgefleet.core.errors import InvalidArgument
from edgefleet.monitoring import ModelSummary, TensorSummary, compare, jensen_shannon
from edgefleet.monitoring.summary import MAX_FEATURES, MAX_ROWS, as_rows, class_counts, predicted_classes

RNG = np.random.default_rng(12345)


@pytest.mark.parametrize(
    ("shape", "rows", "features"),
    [
        ((8, 64), 8, 64),  # a table: one feature per column
        ((2, 3, 10, 10), 200, 3),  # images: one feature per channel
        ((5,), 5, 1),  # no feature axis: one feature
        ((), 1, 1),
        ((1, MAX_FEATURES + 1), MAX_FEATURES + 1, 1),  # too many features: one of all values
        ((1, 3, 224, 224), MAX_ROWS, 3),  # rows evenly strided down to the cap
    ],
)
def test_tensors_are_read_as_rows_of_features(shape: tuple[int, ...], rows: int, features: int) -> None:
    got = as_rows(np.zeros(shape, dtype=np.float64))
    assert got.shape[1] == features and got.dtype == np.float32
    assert got.shape[0] == rows if rows <= MAX_ROWS else got.shape[0] <= MAX_ROWS


def test_an_image_channel_keeps_its_own_values() -> None:
    image = np.stack([np.full((4, 4), c, dtype=np.float32) for c in (1.0, 2.0, 3.0)])[None]
    summary = TensorSummary.of(image)
    summary.update(image)
    assert [summary.feature(i).get_quantile(0.5) for i in range(3)] == [1.0, 2.0, 3.0]


def test_predicted_classes() -> None:
    assert predicted_classes(np.array([[0.1, 0.9], [0.8, 0.2]])) == ["1", "0"]
    assert predicted_classes(np.array([3, 3, 7])) == ["3", "3", "7"]
    assert predicted_classes(np.array([0.5])) is None  # one float: a score, not classes


def test_class_counts_agree_with_the_predicted_classes() -> None:
    rng = np.random.default_rng(3)
    for array in (rng.random((300, 7)), rng.integers(0, 5, 40), np.array([True, False, True])):
        assert class_counts(array) == dict(Counter(predicted_classes(array)))
    assert class_counts(np.array([0.5])) is None


def test_sketches_merged_from_devices_agree_with_one_sketch_of_all_data() -> None:
    data = RNG.normal(size=(20_000, 4)).astype(np.float32)
    devices = []
    for part in np.array_split(data, 5):
        summary = ModelSummary.empty()
        for chunk in np.array_split(part, 40):
            summary.update({"x": chunk}, [], [])
        devices.append(summary)
    merged = ModelSummary.empty()
    for summary in devices:
        merged.merge(ModelSummary.from_wire(json.loads(json.dumps(summary.to_wire()))))
    assert merged.calls == 200
    x = merged.inputs["x"]
    assert x.count == 20_000
    for feature in range(4):
        sketch = x.feature(feature)
        bound = 2 * sketch.normalized_rank_error(False)
        column = np.sort(data[:, feature])
        for rank in (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99):
            value = sketch.get_quantile(rank)
            exact_rank = np.searchsorted(column, value, side="right") / column.size
            assert abs(exact_rank - rank) <= bound, (feature, rank, exact_rank)


def reference(shift: float = 0.0, n: int = 20_000, seed: int = 1) -> ModelSummary:
    rng = np.random.default_rng(seed)
    summary = ModelSummary.empty()
    for _ in range(n // 100):
        x = rng.normal(size=(100, 3)).astype(np.float32)
        x[:, 1] += shift  # only feature 1 moves
        probs = np.stack([1 / (1 + np.exp(x[:, 1])), 1 - 1 / (1 + np.exp(x[:, 1]))], axis=1)
        summary.update({"x": x}, ["probs"], [probs.astype(np.float32)])
    return summary


def test_a_shifted_stream_drifts_and_an_unshifted_one_does_not() -> None:
    baseline = reference(seed=1)
    same = compare(baseline, reference(seed=2))
    shifted = compare(baseline, reference(shift=1.0, seed=3))
    assert same.max_psi < 0.1 and same.max_ks < 0.1 and same.max_js < 0.05
    inputs = [f for f in shifted.features if f.kind == "input"]  # worst first
    worst = inputs[0]
    assert (worst.tensor, worst.feature) == ("x", 1)
    assert worst.psi > 0.25 and worst.ks > 0.3
    assert all(f.psi < 0.1 for f in inputs[1:])
    assert shifted.features[0].psi >= worst.psi  # the output that follows feature 1 moved too
    assert shifted.classes[0].output == "probs" and shifted.max_js > 0.05
    report = shifted.to_dict()
    assert report["max_psi"] == shifted.features[0].psi
    assert next(f["feature"] for f in report["features"] if f["kind"] == "input") == 1


def test_jensen_shannon_bounds() -> None:
    assert jensen_shannon({"a": 5, "b": 5}, {"a": 50, "b": 50}) == pytest.approx(0.0)
    assert jensen_shannon({"a": 5}, {"b": 5}) == pytest.approx(1.0)


def test_mismatched_summaries_are_reported_not_scored() -> None:
    baseline = ModelSummary.empty()
    baseline.update({"x": np.zeros((2, 3), np.float32), "old": np.zeros(2, np.float32)}, [], [])
    live = ModelSummary.empty()
    live.update({"x": np.zeros((2, 4), np.float32)}, [], [])
    report = compare(baseline, live)
    assert report.features == ()
    assert report.mismatches == (
        "input 'old' is only in the baseline",
        "input 'x' has 3 features in the baseline, 4 live",
    )


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        ([], "must be an object with version 1"),
        ({"version": 2}, "must be an object with version 1"),
        ({"version": 1, "inputs": {"x": "AAAA"}}, r"inputs.x must be a non-empty list"),
        ({"version": 1, "inputs": {"x": ["!!"]}}, r"inputs.x: not base64"),
        ({"version": 1, "inputs": {"x": ["AAAA"]}}, "damaged tensor summary"),
        ({"version": 1, "classes": {"p": "AAAA"}}, "damaged class counts"),
        ({"version": 1, "calls": -1}, "calls must be a non-negative integer"),
    ],
)
def test_bad_wire_summaries_are_refused(wire: object, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        ModelSummary.from_wire(wire)  # type: ignore[arg-type]


def test_read_only_tensors_are_summarised() -> None:
    # a tensor decoded from a response buffer is read-only; the sketches' bindings need a writable one
    x = np.frombuffer(np.arange(12, dtype=np.float32).tobytes(), dtype=np.float32).reshape(3, 4)
    assert not x.flags.writeable
    summary = ModelSummary.empty()
    summary.update({"x": x}, ["y"], [x[:, :3]])
    assert summary.inputs["x"].count == 3 and summary.outputs["y"].feature(2).get_quantile(1.0) == 10.0
