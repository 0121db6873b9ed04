"""Helpers shared by the scikit-learn, XGBoost and LightGBM front-ends (tabular models)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnx

from edgefleet.compiler.signature import InputSpec
from edgefleet.compiler.types import UnsupportedModel
from edgefleet.core.errors import InvalidArgument
from edgefleet.core.tensors import DataType

DEFAULT_INPUT = "input"
#: The highest ai.onnx opset onnxmltools' tree converters accept.
ONNXMLTOOLS_OPSET = 15


def load_booster_or_pickle(
    path: Path,
    booster_suffixes: Sequence[str],
    load_booster: Callable[[str], object],
    errors: tuple[type[BaseException], ...],
    framework: str,
) -> object:
    """A gradient-boosting model: the framework's own file format by suffix, else a pickle/joblib file.

    INVALID_ARGUMENT (naming ``framework``) when the file is missing or unreadable.
    """
    if path.suffix.lower() not in booster_suffixes:
        return load_pickle(path)
    if not path.is_file():
        raise InvalidArgument(f"model file {path} does not exist or is not a file")
    try:
        return load_booster(str(path))
    except errors as exc:
        raise InvalidArgument(f"model file {path.name} is not a readable {framework} model: {exc}") from exc


def onnxmltools_convert(
    convert: Callable[..., Any],
    model: object,
    declared: Sequence[InputSpec],
    features: int | None,
    framework: str,
    log: Callable[[str], None],
    **options: Any,
) -> onnx.ModelProto:
    """Convert a tree model with an onnxmltools converter (``convert_xgboost``, ``convert_lightgbm``).

    One 2-D input (declared or ``input``, float32 or float64) of ``features`` columns and a dynamic
    batch; UNSUPPORTED when the converter refuses the model.
    """
    from onnxmltools.convert.common.data_types import (  # type: ignore[import-untyped, unused-ignore]
        DoubleTensorType,
        FloatTensorType,
    )

    name, count, dtype = tabular_input(declared, features)
    tensor_type = FloatTensorType if dtype == DataType.FLOAT32 else DoubleTensorType
    log(f"converting {framework} {type(model).__name__} ({count} features) with onnxmltools")
    try:
        onnx_model: onnx.ModelProto = convert(
            model,
            initial_types=[(name, tensor_type([None, count]))],
            target_opset=ONNXMLTOOLS_OPSET,
            **options,
        )
    except (RuntimeError, ValueError, NotImplementedError) as exc:
        raise UnsupportedModel(f"onnxmltools cannot convert this {framework} model: {exc}") from exc
    fix_batch_dims(onnx_model)
    return onnx_model


def load_pickle(path: Path) -> object:
    """Unpickle ``path`` with joblib (which also reads plain pickles); INVALID_ARGUMENT when unreadable.

    Unpickling runs code from the file: compile only models you trust.
    """
    import joblib  # type: ignore[import-untyped, unused-ignore]

    if not path.is_file():
        raise InvalidArgument(f"model file {path} does not exist or is not a file")
    try:
        return joblib.load(path)
    except (AttributeError, ModuleNotFoundError) as exc:
        raise InvalidArgument(
            f"model file {path.name}: a class it references cannot be imported ({exc})"
        ) from exc
    except Exception as exc:  # a corrupt pickle raises whatever its opcodes trip over (struct.error, ...)
        raise InvalidArgument(f"model file {path.name} is not a readable pickle/joblib file: {exc}") from exc


def tabular_input(declared: Sequence[InputSpec], features: int | None) -> tuple[str, int, DataType]:
    """(name, feature count, dtype) of the single 2-D input of a tabular model."""
    if len(declared) > 1:
        raise InvalidArgument("tabular models take one input; declare at most one --input NAME:-1xFEATURES")
    name, dtype = DEFAULT_INPUT, DataType.FLOAT32
    if declared:
        decl = declared[0]
        name, dtype = decl.name, decl.dtype or DataType.FLOAT32
        if len(decl.shape) != 2:
            raise InvalidArgument(
                f"--input {decl.name!r}: a tabular model's input is 2-D (rows x features), got shape {list(decl.shape)}"
            )
        if decl.shape[1] > 0:
            if features is not None and decl.shape[1] != features:
                raise InvalidArgument(
                    f"--input {decl.name!r}: {decl.shape[1]} features declared but the model was trained on {features}"
                )
            features = decl.shape[1]
    if features is None:
        raise InvalidArgument(
            "the model does not record its feature count; declare it with --input NAME:-1xFEATURES"
        )
    if dtype not in (DataType.FLOAT32, DataType.FLOAT64):
        raise InvalidArgument(f"tabular models take float32 or float64 features, not {dtype.name}")
    return name, features, dtype


def fix_batch_dims(model: onnx.ModelProto) -> None:
    """Make outputs' leading dimension symbolic: some converters write a fixed 1 for the row axis."""
    for value in model.graph.output:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "N"
