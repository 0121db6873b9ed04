"""Live summaries of each loaded model's inputs and outputs, for drift monitoring.

Predict hands each answered call (a sample of them, ``sample`` being the fraction) to
:meth:`Summariser.offer`, which appends it to a list the request path does not wait on: inputs
that live in the request's own bytes (inline tensors) are kept as they are, inputs in a client's
shared memory (reused once the call returns) are cut to the rows the sketches will see and
copied. A background thread wakes every :data:`BATCH_SECONDS`, takes what arrived and folds it into
one :class:`~edgefleet.monitoring.ModelSummary` per loaded model, so the request path pays neither
for the sketches nor for waking that thread. The device daemon takes the summaries per heartbeat
window (:meth:`Summariser.take` with ``reset``). Beyond :data:`QUEUE_LIMIT` waiting calls a call
is skipped and counted, never blocking Predict.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgefleet.agent.priority import lower_priority
from edgefleet.core.errors import InvalidArgument
from edgefleet.monitoring import ModelSummary
from edgefleet.monitoring.summary import MAX_FEATURES, MAX_ROWS, as_rows
from edgefleet.protocol.agent.codec import bytes_backed

log = logging.getLogger(__name__)

#: Calls waiting to be summarised; beyond this a call is skipped (counted).
QUEUE_LIMIT = 1024
#: How often the summariser takes the calls that arrived and folds them into the sketches together.
BATCH_SECONDS = 0.05

#: (alias, package model name, version): one summary per loaded model.
Key = tuple[str, str, str]
_Call = tuple[Key, dict[str, np.ndarray], Sequence[str], Sequence[np.ndarray]]


@dataclass
class Window:
    """One model's summary since ``start`` (Unix seconds)."""

    key: Key
    start: float
    summary: ModelSummary


def _kept(array: np.ndarray) -> np.ndarray:
    """``array`` itself when its memory is immutable bytes (an inline tensor of the request),
    otherwise the rows the sketches will see, copied (shared memory is the client's to reuse)."""
    return array if bytes_backed(array) else as_rows(array).copy()


class Summariser:
    """Folds sampled Predict calls into per-model summaries off the request path."""

    def __init__(
        self,
        sample: float = 1.0,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < sample <= 1:
            raise InvalidArgument("model summary sample must be above 0 and at most 1")
        self.sample = sample
        self._rng = rng or random.Random()
        self._clock = clock
        self._windows: dict[Key, Window] = {}
        self._lock = threading.Lock()
        # appended by request threads, taken by the summariser (a deque's ends are thread-safe)
        self._pending: collections.deque[_Call] = collections.deque()
        self._stop = threading.Event()
        self.skipped = 0
        self._thread = threading.Thread(target=self._run, name="edgefleet-summaries", daemon=True)
        self._thread.start()

    def offer(
        self,
        key: Key,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        outputs: Sequence[np.ndarray],
    ) -> None:
        """Queue one answered call (sampled); never blocks. ``outputs`` are the runtime's own arrays."""
        if self.sample < 1 and self._rng.random() >= self.sample:
            return
        if len(self._pending) >= QUEUE_LIMIT:
            with self._lock:
                self.skipped += 1
            return
        self._pending.append((key, {n: _kept(a) for n, a in inputs.items()}, output_names, outputs))

    def _run(self) -> None:
        # Waking a few times a second and folding what arrived in one go: the sketches' cost is per
        # update, not per value, and neither a request thread nor this one waits on the other; at
        # the lowest scheduling priority, the fold takes no CPU a Predict wants.
        lower_priority("model summaries thread")
        while not self._stop.wait(BATCH_SECONDS):
            items: list[_Call] = []
            while self._pending and len(items) < QUEUE_LIMIT:
                items.append(self._pending.popleft())
            if items:
                try:
                    self._fold(items)
                except Exception:  # a bug: the calls are lost to the summary, Predict goes on
                    log.exception("model summaries: %d calls could not be summarised", len(items))

    def _fold(self, items: list[_Call]) -> None:
        groups: dict[Key, list[_Call]] = {}
        for item in items:
            groups.setdefault(item[0], []).append(item)
        for key, calls in groups.items():
            with self._lock:
                window = self._windows.get(key)
                if window is None:
                    window = self._windows[key] = Window(key, self._clock(), ModelSummary.empty())
                _update(window.summary, calls)

    def take(self, *, reset: bool = False) -> list[Window]:
        """Every model's window so far; with ``reset``, later calls start new windows."""
        with self._lock:
            windows = list(self._windows.values())
            if reset:
                self._windows = {}
            else:  # a snapshot the caller may serialize while calls keep arriving
                windows = [Window(w.key, w.start, _copy(w.summary)) for w in windows]
        return windows

    def forget(self, alias: str) -> None:
        """Drop the summaries of an unloaded alias."""
        with self._lock:
            for key in [k for k in self._windows if k[0] == alias]:
                del self._windows[key]

    def close(self) -> None:
        """Stop the background thread and drop the sketches."""
        self._stop.set()
        self._thread.join()
        self._pending.clear()
        with self._lock:
            self._windows = {}


def _rows(array: np.ndarray) -> np.ndarray:
    """``array`` as the rows the sketches see; an array that is rows already (batch x features, the
    usual small model) as it is, since :func:`as_rows` costs more than the sketches for one row."""
    if array.ndim == 2 and 0 < array.shape[1] <= MAX_FEATURES:
        return array
    return as_rows(array)


def _update(summary: ModelSummary, calls: list[_Call]) -> None:
    """Fold ``calls`` (of one model) into ``summary``: stacked along the batch axis (the usual
    case: the calls' tensors differ only in batch size) and handed to the sketches in slices of at
    most :data:`MAX_ROWS` rows, so the sketches see every row (a summary samples the rows of a
    larger update) and the per-call cost is a few array references, not a sketch update; calls
    that do not stack (other shapes, other tensors) one by one."""
    first_inputs, names, first_outputs = calls[0][1], calls[0][2], calls[0][3]
    try:
        inputs = {n: np.concatenate([_rows(c[1][n]) for c in calls]) for n in first_inputs}
        outputs = [np.concatenate([c[3][i] for c in calls]) for i in range(len(first_outputs))]
        if any(len(c[1]) != len(first_inputs) or len(c[3]) != len(first_outputs) for c in calls):
            raise ValueError("the calls have other tensors")
    except (ValueError, KeyError, IndexError):  # shapes differ
        for _key, one_inputs, one_names, one_outputs in calls:
            summary.update({n: _rows(a) for n, a in one_inputs.items()}, list(one_names), list(one_outputs))
        return
    rows = max((len(a) for a in (*inputs.values(), *outputs)), default=0)
    for start in range(0, max(rows, 1), MAX_ROWS):
        part = slice(start, start + MAX_ROWS)
        part_inputs = {n: a[part] for n, a in inputs.items() if len(a[part])}
        kept = [(n, a[part]) for n, a in zip(names, outputs, strict=True) if len(a[part])]
        summary.update(
            part_inputs, [n for n, _ in kept], [a for _, a in kept], calls=len(calls) if start == 0 else 0
        )


def _copy(summary: ModelSummary) -> ModelSummary:
    copy = ModelSummary.empty()
    copy.merge(summary)
    return copy
