"""A drift baseline built with a package (``edgefleet package build --baseline-inputs``).

The reference inputs are summarised with :mod:`edgefleet.monitoring`; the model's outputs on them
come from the user (``--baseline-outputs``) or, for an ONNX model, from running it here with ONNX
Runtime, so that the baseline covers outputs and predicted classes too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgefleet.core.errors import EdgefleetError, InvalidArgument
from edgefleet.core.files import write_bytes_atomic
from edgefleet.monitoring.baseline import BASELINE_FILE, summarise_reference

#: Reference samples run through the model at once when its batch dimension is free.
_CHUNK = 64


def model_outputs(model: Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The ONNX model's outputs on the reference inputs (first axis: the sample)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise InvalidArgument(f"ONNX Runtime cannot load {model}: {exc}") from exc
    declared = session.get_inputs()
    names = [i.name for i in declared]
    if set(names) != set(inputs):
        raise InvalidArgument(f"the reference inputs are {sorted(inputs)}, the model takes {sorted(names)}")
    first = declared[0].shape[0] if declared[0].shape else None
    fixed = first if isinstance(first, int) and first > 0 else None
    step = fixed or _CHUNK
    count = next(iter(inputs.values())).shape[0]
    if fixed and count % step:
        raise InvalidArgument(
            f"{count} reference samples do not fill batches of {step}, the model's fixed batch size"
        )
    parts: list[list[np.ndarray]] = []
    for begin in range(0, count, step):
        feeds = {n: inputs[n][begin : begin + step] for n in names}
        try:
            parts.append(session.run(None, feeds))
        except Exception as exc:
            raise InvalidArgument(f"the model does not run on the reference inputs: {exc}") from exc
    return {out.name: np.concatenate([p[i] for p in parts]) for i, out in enumerate(session.get_outputs())}


def write_baseline(
    model: Path,
    inputs: Mapping[str, np.ndarray],
    outputs: Mapping[str, np.ndarray] | None,
    directory: Path,
) -> Path:
    """Summarise the reference data into ``directory / baseline.json`` (outputs run through an
    ONNX model when not given) and return its path."""
    if outputs is None and model.suffix == ".onnx":
        outputs = model_outputs(model, inputs)
    try:
        summary = summarise_reference(inputs, outputs or {})
    except EdgefleetError as exc:
        raise type(exc)(f"baseline: {exc.message}") from exc
    path = directory / BASELINE_FILE
    write_bytes_atomic(path, json.dumps(summary.to_wire(), separators=(",", ":")).encode())
    return path
