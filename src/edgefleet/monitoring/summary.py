"""Compact, mergeable summaries of a model's inputs and outputs (Apache DataSketches).

A :class:`ModelSummary` holds, per input and output tensor, one KLL quantile sketch per feature
(the tensor's axis 1: a column of a table, a channel of an image; a tensor with no such axis, or
with more than :data:`MAX_FEATURES` of them, is one feature of all its values), and, per output,
the frequencies of the predicted classes (the arg-max of a floating-point output's last axis, or
an integer output's values) in a frequent-items sketch. Summaries from many devices merge into one
with the sketches' error bounds, serialize to bytes and to a JSON-safe wire form, and are what
baselines and live drift reports are made of (:mod:`edgefleet.monitoring.drift`).
"""

from __future__ import annotations

import base64
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.core.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)

#: KLL accuracy parameter: normalized rank error about 1.3 % at k = 200 (the library's default).
KLL_K = 200
#: More features than this are summarised as one (the sketches would cost more than they say).
MAX_FEATURES = 256
#: Rows (values per feature) taken from one tensor, evenly strided beyond this.
MAX_ROWS = 256
#: Frequent-items sketch size (log2 of its map): exact for up to ~190 classes, bounded beyond.
CLASS_LG_K = 8
#: Wire format version of :meth:`ModelSummary.to_wire`.
WIRE_VERSION = 1


def _sketches() -> Any:
    try:
        import datasketches
    except ImportError as exc:  # a base dependency; a broken install should say so
        raise FailedPrecondition(
            "model summaries need the 'datasketches' package: pip install datasketches"
        ) from exc
    return datasketches


def as_rows(array: np.ndarray) -> np.ndarray:
    """``array`` as float32 rows x features (see the module doc), at most :data:`MAX_ROWS` rows."""
    a = np.asarray(array)
    if a.ndim < 2 or a.shape[1] > MAX_FEATURES or a.shape[1] == 0:
        flat = a.reshape(-1)
        rows = flat[:: -(-flat.size // MAX_ROWS)] if flat.size > MAX_ROWS else flat
        return _writable(rows.reshape(-1, 1))
    # [batch, features, rest...]: stride over batch x rest before moving the feature axis last, so
    # an image is sampled, not copied whole
    grid = a.reshape(a.shape[0], a.shape[1], -1)
    positions = grid.shape[0] * grid.shape[2]
    if positions > MAX_ROWS:
        step = -(-positions // MAX_ROWS)
        if grid.shape[2] >= step:
            grid = grid[:, :, ::step]
        else:
            grid = grid[:: -(-grid.shape[0] * grid.shape[2] // MAX_ROWS)]
    rows = np.moveaxis(grid, 1, -1).reshape(-1, a.shape[1])
    return _writable(rows[:MAX_ROWS] if rows.shape[0] > MAX_ROWS else rows)


def _writable(rows: np.ndarray) -> np.ndarray:
    # The sketches' bindings take only writable float32 C arrays; a read-only one (a tensor decoded
    # from a response buffer) is copied.
    return np.require(rows, dtype=np.float32, requirements=["C", "W"])


def is_class_scores(array: np.ndarray) -> bool:
    """True for an output of class scores: floating point, 2 or more dims, a last axis over 1
    (its arg-max over the last axis is the predicted class)."""
    return bool(np.issubdtype(array.dtype, np.floating) and array.ndim >= 2 and array.shape[-1] > 1)


def predicted_classes(array: np.ndarray) -> list[str] | None:
    """The classes an output predicts (arg-max of the last axis of floats, or integer labels)."""
    a = np.asarray(array)
    if is_class_scores(a):
        return [str(int(i)) for i in a.reshape(-1, a.shape[-1]).argmax(axis=1)]
    if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        return [str(int(v)) for v in a.reshape(-1)]
    return None


def class_counts(array: np.ndarray) -> dict[str, int] | None:
    """How often each class is predicted in ``array`` (the classes of :func:`predicted_classes`,
    counted in one vectorised pass), or None when it predicts none."""
    a = np.asarray(array)
    if is_class_scores(a):
        ids = a.reshape(-1, a.shape[-1]).argmax(axis=1)
    elif np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        ids = a.reshape(-1).astype(np.int64, copy=False)
    else:
        return None
    values, counts = np.unique(ids, return_counts=True)
    return {str(v): int(c) for v, c in zip(values.tolist(), counts.tolist(), strict=True)}


class TensorSummary:
    """KLL sketches of one tensor's features; the first update fixes the number of features."""

    def __init__(self, features: int, k: int = KLL_K) -> None:
        if features < 1:
            raise InvalidArgument("a tensor summary needs at least one feature")
        self.features, self.k = features, k
        self._vector = _sketches().vector_of_kll_floats_sketches(k, features)
        self._warned = False  # a tensor of another feature count was left out (said once)

    @classmethod
    def of(cls, array: np.ndarray) -> TensorSummary:
        """An empty summary shaped for ``array``."""
        return cls(as_rows(array).shape[1])

    def update(self, array: np.ndarray) -> None:
        """Add a tensor's values (NaN values are ignored by the sketches)."""
        rows = as_rows(array)
        if rows.shape[1] != self.features:
            if self._warned:
                return
            self._warned = True
            log.warning(
                "a tensor of %d features is left out of a summary of %d features (said once)",
                rows.shape[1],
                self.features,
            )
            return
        self._vector.update(rows)

    def merge(self, other: TensorSummary) -> None:
        """Fold ``other`` (same number of features) into this summary."""
        if other.features != self.features:
            raise InvalidArgument(f"cannot merge summaries of {other.features} and {self.features} features")
        self._vector.merge(other._vector)

    @property
    def count(self) -> int:
        """Values seen by the first feature's sketch."""
        return int(self._vector.get_n()[0])

    def feature(self, index: int) -> Any:
        """Feature ``index`` as a standalone ``kll_floats_sketch`` (for drift statistics)."""
        return _sketches().kll_floats_sketch.deserialize(self._vector.serialize(index)[0])

    def serialize(self) -> list[bytes]:
        """One serialized KLL sketch per feature."""
        return [bytes(b) for b in self._vector.serialize()]

    @classmethod
    def deserialize(cls, blobs: Sequence[bytes], k: int = KLL_K) -> TensorSummary:
        """The summary :meth:`serialize` gave; INVALID_ARGUMENT if the bytes are not KLL sketches."""
        summary = cls(len(blobs), k)
        try:
            for index, blob in enumerate(blobs):
                summary._vector.deserialize(bytes(blob), index)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise InvalidArgument(f"damaged tensor summary: {exc}") from exc
        return summary


class ClassCounts:
    """How often each class was predicted (a frequent-items sketch)."""

    def __init__(self, lg_k: int = CLASS_LG_K) -> None:
        self._sketch = _sketches().frequent_strings_sketch(lg_k)

    def update(self, classes: Sequence[str]) -> None:
        self.add(Counter(classes))

    def add(self, counts: Mapping[str, int]) -> None:
        """Count each class ``counts`` times more."""
        for label, count in counts.items():
            self._sketch.update(label, count)

    def merge(self, other: ClassCounts) -> None:
        self._sketch.merge(other._sketch)

    def counts(self) -> dict[str, int]:
        """Estimated count per class (exact while the sketch holds every class)."""
        error = _sketches().frequent_items_error_type.NO_FALSE_NEGATIVES
        return {
            str(item): int(estimate) for item, estimate, _lo, _hi in self._sketch.get_frequent_items(error)
        }

    def serialize(self) -> bytes:
        return bytes(self._sketch.serialize())

    @classmethod
    def deserialize(cls, blob: bytes) -> ClassCounts:
        counts = cls()
        try:
            counts._sketch = _sketches().frequent_strings_sketch.deserialize(bytes(blob))
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise InvalidArgument(f"damaged class counts: {exc}") from exc
        return counts


@dataclass
class ModelSummary:
    """Summaries of a model version's inputs, outputs and predicted classes."""

    inputs: dict[str, TensorSummary]
    outputs: dict[str, TensorSummary]
    classes: dict[str, ClassCounts]
    #: Predict calls (or reference samples) summarised.
    calls: int = 0

    @classmethod
    def empty(cls) -> ModelSummary:
        return cls({}, {}, {})

    def update(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        outputs: Sequence[np.ndarray],
        *,
        calls: int = 1,
    ) -> None:
        """Add one call (or ``calls`` calls stacked along the batch axis, or a batch of reference data)."""
        for name, array in inputs.items():
            self._tensor(self.inputs, name, array)
        for name, array in zip(output_names, outputs, strict=True):
            self._tensor(self.outputs, name, array)
            counts = class_counts(array)
            if counts is not None:
                self.classes.setdefault(name, ClassCounts()).add(counts)
        self.calls += calls

    @staticmethod
    def _tensor(table: dict[str, TensorSummary], name: str, array: np.ndarray) -> None:
        summary = table.get(name)
        if summary is None:
            summary = table[name] = TensorSummary.of(array)
        summary.update(array)

    def merge(self, other: ModelSummary) -> None:
        """Fold ``other`` in (another device, window or batch of the same model version)."""
        for mine, theirs in ((self.inputs, other.inputs), (self.outputs, other.outputs)):
            for name, summary in theirs.items():
                if name in mine:
                    mine[name].merge(summary)
                else:
                    mine[name] = TensorSummary.deserialize(summary.serialize(), summary.k)
        for name, counts in other.classes.items():
            if name in self.classes:
                self.classes[name].merge(counts)
            else:
                self.classes[name] = ClassCounts.deserialize(counts.serialize())
        self.calls += other.calls

    def to_wire(self) -> dict[str, Any]:
        """A JSON-safe form (base64 sketches) for heartbeats, the API and files."""

        def enc(blob: bytes) -> str:
            return base64.b64encode(blob).decode("ascii")

        return {
            "version": WIRE_VERSION,
            "calls": self.calls,
            "inputs": {n: [enc(b) for b in s.serialize()] for n, s in self.inputs.items()},
            "outputs": {n: [enc(b) for b in s.serialize()] for n, s in self.outputs.items()},
            "classes": {n: enc(c.serialize()) for n, c in self.classes.items()},
        }

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> ModelSummary:
        """Read :meth:`to_wire`'s form; INVALID_ARGUMENT naming what is wrong."""
        if not isinstance(wire, Mapping) or wire.get("version") != WIRE_VERSION:
            raise InvalidArgument(f"model summary must be an object with version {WIRE_VERSION}")

        def dec(text: Any, what: str) -> bytes:
            if not isinstance(text, str):
                raise InvalidArgument(f"model summary {what}: expected base64 text")
            try:
                return base64.b64decode(text, validate=True)
            except ValueError as exc:
                raise InvalidArgument(f"model summary {what}: not base64") from exc

        def tensors(section: str) -> dict[str, TensorSummary]:
            table = wire.get(section, {})
            if not isinstance(table, Mapping):
                raise InvalidArgument(f"model summary {section} must be an object")
            out = {}
            for name, blobs in table.items():
                if not isinstance(blobs, list) or not blobs:
                    raise InvalidArgument(f"model summary {section}.{name} must be a non-empty list")
                out[str(name)] = TensorSummary.deserialize([dec(b, f"{section}.{name}") for b in blobs])
            return out

        classes = wire.get("classes", {})
        if not isinstance(classes, Mapping):
            raise InvalidArgument("model summary classes must be an object")
        calls = wire.get("calls", 0)
        if not isinstance(calls, int) or isinstance(calls, bool) or calls < 0:
            raise InvalidArgument("model summary calls must be a non-negative integer")
        return cls(
            tensors("inputs"),
            tensors("outputs"),
            {str(n): ClassCounts.deserialize(dec(b, f"classes.{n}")) for n, b in classes.items()},
            calls,
        )
