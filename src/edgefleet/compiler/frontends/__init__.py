"""Framework front-ends: a trained model file -> an ONNX graph (or a validated ``.tflite``).

Each front-end module exposes ``convert(model_path, declared_inputs, work_dir, log) ->
FrontendResult`` and imports its framework lazily, so a missing framework fails only that
front-end, with the package to install.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.compiler.signature import InputSpec
from edgefleet.compiler.types import LogFn
from edgefleet.core.errors import FailedPrecondition, InvalidArgument
from edgefleet.core.tensors import TensorSpec

#: framework name -> (module under edgefleet.compiler.frontends, function)
FRONTENDS: dict[str, tuple[str, str]] = {
    "onnx": ("from_onnx", "convert"),
    "pytorch": ("from_pytorch", "convert"),
    "sklearn": ("from_sklearn", "convert"),
    "xgboost": ("from_xgboost", "convert"),
    "lightgbm": ("from_lightgbm", "convert"),
    "tflite": ("from_tflite", "convert"),
}
ALIASES = {"torch": "pytorch", "scikit-learn": "sklearn", "litert": "tflite"}
# Frameworks users ask for that have no front-end, with the way to get a supported format.
UNSUPPORTED: dict[str, str] = {
    "tensorflow": "convert it to TFLite (tf.lite.TFLiteConverter) or to ONNX (pip install tf2onnx)",
    "keras": "convert it to TFLite (tf.lite.TFLiteConverter) or to ONNX (pip install tf2onnx)",
    "jax": "convert it to TFLite (jax2tf + tf.lite.TFLiteConverter) or to ONNX",
    "mxnet": "export it to ONNX (mxnet.onnx.export_model)",
    "paddle": "export it to ONNX (pip install paddle2onnx)",
    "caffe": "convert it to ONNX first",
    "coreml": "Core ML models run on Apple devices only; export the source model to ONNX instead",
}
# Which package provides each front-end's framework, for the "missing dependency" message.
REQUIREMENTS: dict[str, str] = {
    "onnx": "pip install 'edgefleet[compiler]'",
    "pytorch": "pip install torch==2.13.0",
    "sklearn": "pip install 'edgefleet[compiler]'",
    "xgboost": "pip install 'edgefleet[compiler]' xgboost-cpu",
    "lightgbm": "pip install 'edgefleet[compiler]' lightgbm",
    "tflite": "pip install 'edgefleet[litert]'",
}


@dataclass(frozen=True)
class FrontendResult:
    """A model ready for the optimisers: ``format`` is ``onnx`` or ``tflite``."""

    format: str
    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    tool_versions: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    #: input name -> its batch axis (None: the input has none); inputs not listed are batched on axis 0
    batch_axes: dict[str, int | None] = field(default_factory=dict)
    #: passes skipped because they broke the model, and similar (they go to the report's warnings)
    warnings: tuple[str, ...] = ()


FrontendFn = Callable[[Path, Sequence[InputSpec], Path, LogFn], FrontendResult]


def known_frameworks() -> list[str]:
    """Names ``--framework`` accepts."""
    return sorted(FRONTENDS)


def canonical_framework(name: str) -> str:
    """The front-end name for ``name`` (aliases resolved); INVALID_ARGUMENT for anything else."""
    key = ALIASES.get(name.lower(), name.lower())
    if key in FRONTENDS:
        return key
    known = ", ".join(known_frameworks())
    if key in UNSUPPORTED:
        raise InvalidArgument(
            f"framework {name!r} is not supported directly: {UNSUPPORTED[key]}, then compile that "
            f"(supported frameworks: {known})"
        )
    raise InvalidArgument(f"unknown framework {name!r}: supported frameworks are {known}")


def get_frontend(name: str) -> FrontendFn:
    """The converter for framework ``name``; FAILED_PRECONDITION naming the install if it is missing."""
    key = canonical_framework(name)
    module_name, func_name = FRONTENDS[key]
    try:
        module = importlib.import_module(f"edgefleet.compiler.frontends.{module_name}")
    except ImportError as exc:
        raise FailedPrecondition(
            f"--framework {key} needs {exc.name or 'a missing package'}: {REQUIREMENTS[key]}"
        ) from exc
    func: FrontendFn = getattr(module, func_name)
    return func
