"""Live summaries of each loaded model's inputs and outputs, for drift monitoring.

Predict hands each answered call (a sample of them, ``sample`` being the fraction) to
:meth:`Summariser.offer`, which copies the inputs (they may live in a client's shared memory) and
queues them; a background thread folds them into one :class:`~edgefleet.monitoring.ModelSummary`
per loaded model, so the request path never pays for the sketches. The device daemon takes the
summaries per heartbeat window (:meth:`Summariser.take` with ``reset``). A full queue skips the
call and counts it, never blocking Predict.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgefleet.core.errors import InvalidArgument
from edgefleet.monitoring import ModelSummary
from edgefleet.monitoring.summary import as_rows

#: Calls waiting to be summarised; beyond this a call is skipped (counted).
QUEUE_LIMIT = 1024
#: How long the summariser gathers calls before folding them into the sketches together.
BATCH_SECONDS = 0.05

#: (alias, package model name, version): one summary per loaded model.
Key = tuple[str, str, str]


@dataclass
class Window:
    """One model's summary since ``start`` (Unix seconds)."""

    key: Key
    start: float
    summary: ModelSummary


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
        self._queue: queue.Queue[tuple[Key, dict[str, np.ndarray], list[str], list[np.ndarray]] | None] = (
            queue.Queue(QUEUE_LIMIT)
        )
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
        """Queue one answered call (sampled); never blocks."""
        if self.sample < 1 and self._rng.random() >= self.sample:
            return
        # Only the sampled rows the sketches will see are kept (copied: inputs may live in a
        # client's shared memory); outputs are the runtime's own arrays.
        item = (
            key,
            {n: as_rows(a).copy() for n, a in inputs.items()},
            list(output_names),
            list(outputs),
        )
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._lock:
                self.skipped += 1

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                self._queue.task_done()
                return
            # Gather what arrives in the next moment and fold it in one go: the sketches' cost is
            # per update, not per value, and this thread then takes the interpreter lock a few
            # times a second instead of once per Predict.
            time.sleep(BATCH_SECONDS)
            items = [first]
            stop = False
            while len(items) < QUEUE_LIMIT:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                items.append(item)
            try:
                self._fold(items)
            finally:
                for _ in range(len(items) + stop):
                    self._queue.task_done()
            if stop:
                return

    def _fold(self, items: list[tuple[Key, dict[str, np.ndarray], list[str], list[np.ndarray]]]) -> None:
        groups: dict[Key, list[tuple[dict[str, np.ndarray], list[str], list[np.ndarray]]]] = {}
        for key, inputs, names, outputs in items:
            groups.setdefault(key, []).append((inputs, names, outputs))
        for key, calls in groups.items():
            with self._lock:
                window = self._windows.get(key)
                if window is None:
                    window = self._windows[key] = Window(key, self._clock(), ModelSummary.empty())
                try:  # calls of one model usually stack along the batch axis into one update
                    inputs = {n: np.concatenate([c[0][n] for c in calls]) for n in calls[0][0]}
                    outputs = [np.concatenate([c[2][i] for c in calls]) for i in range(len(calls[0][2]))]
                    window.summary.update(inputs, calls[0][1], outputs, calls=len(calls))
                except (ValueError, KeyError, IndexError):  # shapes differ: one update per call
                    for one_inputs, names, one_outputs in calls:
                        window.summary.update(one_inputs, names, one_outputs)

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
        self._queue.put(None)
        self._thread.join()
        with self._lock:
            self._windows = {}


def _copy(summary: ModelSummary) -> ModelSummary:
    copy = ModelSummary.empty()
    copy.merge(summary)
    return copy
