"""Baselines: the summary of a model version's reference data that live traffic is scored against.

A baseline is made from reference samples the user passes (:func:`summarise_reference`), either
with ``edgefleet baseline create`` for a registered version, or at packaging
(``edgefleet package build --baseline-inputs``), where it travels in the signed package as
:data:`BASELINE_FILE` and the control plane attaches it to the version when the package is
uploaded (unless the version has one already).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edgefleet.core.errors import InvalidArgument
from edgefleet.monitoring.summary import MAX_ROWS, ModelSummary

#: The package member holding a baseline (the JSON wire form of a :class:`ModelSummary`).
BASELINE_FILE = "baseline.json"
#: Largest baseline file the control plane reads from a package.
MAX_BASELINE_BYTES = 16 << 20


def summarise_reference(inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> ModelSummary:
    """A summary of reference samples (first axis: the sample), fed in chunks small enough that
    the sketches see every row (see :data:`~edgefleet.monitoring.summary.MAX_ROWS`)."""
    tensors = {**inputs, **outputs}
    if not inputs:
        raise InvalidArgument("a baseline needs at least one reference input")
    for name, array in tensors.items():
        if array.ndim == 0 or array.shape[0] == 0:
            raise InvalidArgument(f"tensor {name!r} has no samples (shape {array.shape})")
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise InvalidArgument(f"tensor {name!r} is not numeric ({array.dtype})")
    samples = {array.shape[0] for array in tensors.values()}
    if len(samples) != 1:
        shapes = ", ".join(f"{n} {a.shape}" for n, a in tensors.items())
        raise InvalidArgument(f"every tensor needs the same number of samples (first axis): {shapes}")
    (count,) = samples
    positions = max(int(np.prod(a.shape[2:], dtype=np.int64)) for a in tensors.values())
    chunk = max(1, MAX_ROWS // max(positions, 1))
    summary = ModelSummary.empty()
    names = list(outputs)
    for begin in range(0, count, chunk):
        end = min(begin + chunk, count)
        summary.update(
            {n: a[begin:end] for n, a in inputs.items()},
            names,
            [outputs[n][begin:end] for n in names],
            calls=end - begin,
        )
    return summary
