"""The agent's summariser: calls folded off the request path, inline inputs kept without a copy,
shared-memory inputs copied before the client reuses them, sampling, the queue bound."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from support import wait_for

from edgefleet.agent import summaries
from edgefleet.agent.summaries import Summariser, _kept

KEY = ("alias", "digits", "1")


def folded(summariser: Summariser, calls: int) -> summaries.Window:
    def ready() -> summaries.Window | None:
        windows = summariser.take()
        return windows[0] if windows and windows[0].summary.calls >= calls else None

    window: summaries.Window = wait_for(ready, f"{calls} calls folded into the summary")
    return window


def test_inline_inputs_are_kept_as_they_are_and_shared_memory_is_copied() -> None:
    inline = np.frombuffer(np.arange(64, dtype=np.float32).tobytes(), np.float32).reshape(1, 64)
    assert _kept(inline) is inline  # immutable request bytes: nothing to copy on the request path
    shared = bytearray(np.arange(64, dtype=np.float32).tobytes())  # stands for a client's segment
    view = np.frombuffer(shared, np.float32).reshape(1, 64)
    kept = _kept(view)
    assert kept is not view and not np.shares_memory(kept, view)
    np.testing.assert_array_equal(kept, view)


def test_a_decoded_tensor_viewing_request_bytes_through_a_memoryview_is_not_copied() -> None:
    # The agent decodes a tensor as a view of the request's bytes through a memoryview.
    data = np.arange(64, dtype=np.float32).tobytes()
    decoded = np.frombuffer(memoryview(data), np.float32).reshape(1, 64)
    assert _kept(decoded) is decoded
    segment = memoryview(bytearray(data))  # a mutable buffer behind the memoryview: copied
    view = np.frombuffer(segment, np.float32).reshape(1, 64)
    kept = _kept(view)
    assert kept is not view and not np.shares_memory(kept, view)


def test_a_segment_reused_after_the_call_does_not_reach_the_summary() -> None:
    summariser = Summariser()
    try:
        segment = bytearray(np.full((1, 4), 1.0, np.float32).tobytes())
        summariser.offer(
            KEY, {"x": np.frombuffer(segment, np.float32).reshape(1, 4)}, ("y",), [np.ones((1, 2))]
        )
        segment[:] = np.full((1, 4), 1e9, np.float32).tobytes()  # the client writes its next request
        window = folded(summariser, 1)
        sketch = window.summary.inputs["x"].feature(0)
        assert sketch.get_max_value() == 1.0
    finally:
        summariser.close()


def test_every_call_of_a_burst_is_folded_and_counted() -> None:
    summariser = Summariser()
    try:
        x = np.frombuffer(np.zeros((1, 8), np.float32).tobytes(), np.float32).reshape(1, 8)
        for _ in range(500):
            summariser.offer(KEY, {"x": x}, ("y",), [np.eye(1, 3)])
        window = folded(summariser, 500)
        assert window.summary.inputs["x"].count == 500
        assert window.summary.classes["y"].counts() == {"0": 500}
        assert window.summary.outputs["y"].count == 500
        assert summariser.skipped == 0
    finally:
        summariser.close()


def test_a_fold_sees_every_row_of_calls_of_any_batch_size_and_of_other_shapes() -> None:
    """Calls of batch 1..7 (more rows in all than a sketch update takes) reach the sketches row for
    row; a call whose tensors do not stack with the others' (another feature count) is folded on
    its own, and a tensor of another feature count is left out of the summary, not the others."""
    summariser = Summariser()
    summariser.close()  # no background thread: fold by hand
    rng = np.random.default_rng(5)
    calls: list[summaries._Call] = []
    rows = 0
    for i in range(120):
        batch = 1 + i % 7
        rows += batch
        probs = rng.random((batch, 4)).astype(np.float32)
        calls.append((KEY, {"x": rng.random((batch, 8)).astype(np.float32)}, ("y",), [probs]))
    assert rows > summaries.MAX_ROWS
    summariser._fold(calls)
    [window] = summariser.take()
    summary = window.summary
    assert summary.calls == 120
    assert summary.inputs["x"].count == rows and summary.outputs["y"].count == rows
    expected = Counter(str(int(c)) for _k, _i, _n, (p,) in calls for c in p.argmax(axis=1))
    assert summary.classes["y"].counts() == dict(expected)
    odd = (KEY, {"x": np.ones((2, 3), np.float32)}, ("y",), [np.ones((2, 4), np.float32)])
    summariser._fold([calls[0], odd])
    [window] = summariser.take()
    assert window.summary.calls == 122
    assert window.summary.inputs["x"].count == rows + 1  # the 3-feature tensor is left out
    assert window.summary.outputs["y"].count == rows + 1 + 2


def test_sampling_keeps_the_fraction_the_random_source_picks() -> None:
    picks = random.Random(7)
    expected = sum(picks.random() < 0.25 for _ in range(400))
    summariser = Summariser(0.25, rng=random.Random(7))
    try:
        for _ in range(400):
            summariser.offer(KEY, {"x": np.zeros((1, 2), np.float32)}, ("y",), [np.zeros((1, 2))])
        assert folded(summariser, expected).summary.calls == expected
    finally:
        summariser.close()


def test_a_full_queue_skips_and_counts_instead_of_blocking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(summaries, "QUEUE_LIMIT", 0)
    summariser = Summariser()
    try:
        for _ in range(25):
            summariser.offer(KEY, {"x": np.zeros((1, 2), np.float32)}, ("y",), [np.zeros((1, 2))])
        assert summariser.skipped == 25
        assert summariser.take() == []
    finally:
        summariser.close()


def test_bad_sample_fraction_is_refused() -> None:
    with pytest.raises(Exception, match="above 0 and at most 1"):
        Summariser(0)
