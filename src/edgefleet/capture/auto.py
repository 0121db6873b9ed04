"""Capture without changing the application: per-model policies that capture Predict traffic.

A policy picks Predict calls by count (every N-th), by chance (a probability) or by the model's
doubt (the largest class probability of an output below a threshold). The agent offers each
answered Predict to :meth:`AutoCapture.offer`, which only decides and, when a call is picked,
copies its tensors into a bounded queue; a background thread turns them into captures. The
request path never waits for the spool; when the queue is full a pick is skipped and counted.
"""

from __future__ import annotations

import itertools
import logging
import queue
import random
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import numpy as np

from edgefleet.capture.records import CaptureRequest, CaptureTensor
from edgefleet.core.errors import EdgefleetError, InvalidArgument
from edgefleet.core.tensors import DataType

log = logging.getLogger(__name__)

#: Picked calls waiting to be captured; beyond this a pick is skipped (counted), never waited for.
QUEUE_LIMIT = 256


@dataclass(frozen=True)
class AutoCapturePolicy:
    """Which Predict calls of a model are captured (any rule that fires picks the call)."""

    #: Capture every N-th call (0: off).
    every_n: int = 0
    #: Capture each call with this probability (0: off).
    probability: float = 0.0
    #: Capture calls whose largest class probability is below this (0: off).
    below_confidence: float = 0.0
    #: Output the confidence is read from (empty: the model's first floating-point output).
    confidence_output: str = ""
    #: Apply softmax to that output first (for models that return logits).
    softmax: bool = False

    def __post_init__(self) -> None:
        if self.every_n < 0:
            raise InvalidArgument("auto capture every_n must be >= 0 (0: off)")
        if not 0 <= self.probability <= 1:
            raise InvalidArgument("auto capture probability must be between 0 and 1")
        if not 0 <= self.below_confidence <= 1:
            raise InvalidArgument("auto capture below_confidence must be between 0 and 1")
        if not (self.every_n or self.probability or self.below_confidence):
            raise InvalidArgument("auto capture policy needs every_n, probability or below_confidence")

    @classmethod
    def from_mapping(cls, model: str, raw: Mapping[str, Any]) -> AutoCapturePolicy:
        """A policy from a config table; unknown keys and wrong types are INVALID_ARGUMENT."""
        known = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in known:
                raise InvalidArgument(
                    f"capture.auto.{model}: unknown key {key!r} (known: {', '.join(sorted(known))})"
                )
            kind = str(known[key])
            ok = (
                isinstance(value, bool)
                if kind == "bool"
                else isinstance(value, str)
                if kind == "str"
                else isinstance(value, int | float) and not isinstance(value, bool)
            )
            if not ok or (kind == "int" and not float(value).is_integer()):
                raise InvalidArgument(f"capture.auto.{model}.{key}: expected {kind}, got {value!r}")
            values[key] = int(value) if kind == "int" else float(value) if kind == "float" else value
        return cls(**values)


def confidence(values: np.ndarray, *, softmax: bool) -> float:
    """The smallest, over the batch, of the largest class probability along the last axis."""
    scores = np.asarray(values, dtype=np.float64)
    if scores.ndim == 0 or scores.size == 0:
        return 1.0
    scores = scores.reshape(-1, scores.shape[-1])
    if softmax:
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        scores = shifted / shifted.sum(axis=1, keepdims=True)
    return float(scores.max(axis=1).min())


@dataclass
class _Pick:
    model_name: str
    model_version: str
    when: datetime
    inputs: tuple[CaptureTensor, ...]
    outputs: tuple[CaptureTensor, ...]


def _tensors(items: Sequence[tuple[str, np.ndarray]]) -> tuple[CaptureTensor, ...]:
    return tuple(
        CaptureTensor(name, DataType.from_numpy(a.dtype), tuple(a.shape), np.ascontiguousarray(a).tobytes())
        for name, a in items
    )


class AutoCapture:
    """Applies the policies (by the package's model name; ``*`` for every model) to Predict calls.

    ``submit`` is the capture pipeline's entry (``CaptureService.submit``); ``rng`` is injected by
    tests. :meth:`stats` counts picks, captures, skips (queue full) and refusals (from ``submit``).
    """

    def __init__(
        self,
        policies: Mapping[str, AutoCapturePolicy],
        submit: Callable[[CaptureRequest], None],
        *,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.policies = dict(policies)
        self._submit = submit
        self._rng = rng or random.Random()
        self._clock = clock
        self._calls: dict[str, itertools.count[int]] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Pick | None] = queue.Queue(QUEUE_LIMIT)
        self._counts = {"picked": 0, "captured": 0, "skipped": 0, "refused": 0}
        self._thread: threading.Thread | None = None
        if self.policies:
            self._thread = threading.Thread(target=self._run, name="edgefleet-auto-capture", daemon=True)
            self._thread.start()

    def policy(self, model_name: str) -> AutoCapturePolicy | None:
        """The policy for a package's model name, else the ``*`` policy, else None."""
        return self.policies.get(model_name) or self.policies.get("*")

    def offer(
        self,
        model_name: str,
        model_version: str,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        outputs: Sequence[np.ndarray],
    ) -> bool:
        """Decide whether this answered Predict is captured; True when it was queued."""
        policy = self.policy(model_name)
        if policy is None:
            return False
        if not self._picks(policy, model_name, output_names, outputs):
            return False
        pick = _Pick(
            model_name,
            model_version,
            self._clock(),
            _tensors(list(inputs.items())),  # copies: shared-memory inputs go back to the client
            _tensors(list(zip(output_names, outputs, strict=True))),
        )
        with self._lock:
            self._counts["picked"] += 1
        try:
            self._queue.put_nowait(pick)
        except queue.Full:
            with self._lock:
                self._counts["skipped"] += 1
            return False
        return True

    def _picks(
        self, policy: AutoCapturePolicy, model: str, names: Sequence[str], outputs: Sequence[np.ndarray]
    ) -> bool:
        if policy.every_n:
            with self._lock:
                counter = self._calls.setdefault(model, itertools.count(1))
                if next(counter) % policy.every_n == 0:
                    return True
        if policy.probability and self._rng.random() < policy.probability:
            return True
        if policy.below_confidence:
            values = self._confidence_output(policy, names, outputs)
            if values is not None and confidence(values, softmax=policy.softmax) < policy.below_confidence:
                return True
        return False

    @staticmethod
    def _confidence_output(
        policy: AutoCapturePolicy, names: Sequence[str], outputs: Sequence[np.ndarray]
    ) -> np.ndarray | None:
        for name, values in zip(names, outputs, strict=True):
            if (policy.confidence_output and name == policy.confidence_output) or (
                not policy.confidence_output and np.issubdtype(values.dtype, np.floating)
            ):
                return values
        return None

    def _run(self) -> None:
        while (pick := self._queue.get()) is not None:
            request = CaptureRequest(
                capture_id=str(uuid.uuid4()),
                model_name=pick.model_name,
                model_version=pick.model_version,
                inference_time=pick.when,
                inputs=pick.inputs,
                outputs=pick.outputs,
            )
            try:
                self._submit(request)
            except EdgefleetError as exc:
                with self._lock:
                    self._counts["refused"] += 1
                log.warning("auto capture of a %s call refused: %s", pick.model_name, exc)
            else:
                with self._lock:
                    self._counts["captured"] += 1
            finally:
                self._queue.task_done()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued pick was handed to the pipeline (for shutdown and tests)."""
        done = threading.Event()

        def wait() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        return done.wait(timeout)

    def stats(self) -> dict[str, int]:
        """picked, captured, skipped (queue full), refused (by the capture pipeline)."""
        with self._lock:
            return dict(self._counts)

    def close(self) -> None:
        """Stop the background thread after what is queued."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
