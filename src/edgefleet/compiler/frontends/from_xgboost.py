"""XGBoost front-end: a saved Booster (``.json``/``.ubj``/``.model``) or a pickled sklearn-API model
-> ONNX via onnxmltools. Classifiers give ``label`` and ``probabilities`` tensors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnxmltools  # type: ignore[import-untyped, unused-ignore]
import xgboost
from onnxmltools.convert.common.data_types import (  # type: ignore[import-untyped, unused-ignore]
    DoubleTensorType,
    FloatTensorType,
)

from edgefleet.compiler.frontends import FrontendResult
from edgefleet.compiler.frontends._trees import fix_batch_dims, load_pickle, tabular_input
from edgefleet.compiler.frontends.from_onnx import finish
from edgefleet.compiler.signature import InputSpec
from edgefleet.compiler.types import LogFn, UnsupportedModel
from edgefleet.core.errors import InvalidArgument
from edgefleet.core.tensors import DataType

# The highest ai.onnx opset onnxmltools' tree converters accept.
TARGET_OPSET = 15
BOOSTER_SUFFIXES = (".json", ".ubj", ".model", ".bin", ".xgb")


def convert(model_path: Path, declared: Sequence[InputSpec], work_dir: Path, log: LogFn) -> FrontendResult:
    """Convert an XGBoost model to ONNX."""
    model: object
    if model_path.suffix.lower() in BOOSTER_SUFFIXES:
        if not model_path.is_file():
            raise InvalidArgument(f"model file {model_path} does not exist or is not a file")
        try:
            model = xgboost.Booster(model_file=str(model_path))
        except xgboost.core.XGBoostError as exc:
            raise InvalidArgument(
                f"model file {model_path.name} is not a readable XGBoost model: {exc}"
            ) from exc
    else:
        model = load_pickle(model_path)
    booster = model if isinstance(model, xgboost.Booster) else getattr(model, "get_booster", lambda: None)()
    if not isinstance(booster, xgboost.Booster):
        raise InvalidArgument(
            f"model file {model_path.name} holds a {type(model).__name__}, not an XGBoost model"
        )
    # onnxmltools only understands the default feature names f0, f1, ...
    booster.feature_names = None
    name, count, dtype = tabular_input(declared, booster.num_features())
    tensor_type = FloatTensorType if dtype == DataType.FLOAT32 else DoubleTensorType
    log(f"converting XGBoost {type(model).__name__} ({count} features) with onnxmltools")
    try:
        onnx_model = onnxmltools.convert_xgboost(
            model, initial_types=[(name, tensor_type([None, count]))], target_opset=TARGET_OPSET
        )
    except (RuntimeError, ValueError, NotImplementedError) as exc:
        raise UnsupportedModel(f"onnxmltools cannot convert this XGBoost model: {exc}") from exc
    fix_batch_dims(onnx_model)
    return finish(
        onnx_model,
        [],
        work_dir,
        {"xgboost": str(xgboost.__version__), "onnxmltools": str(onnxmltools.__version__)},
        ("converted XGBoost model with onnxmltools",),
    )
