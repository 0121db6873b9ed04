"""LightGBM front-end: a saved Booster (``.txt``) or a pickled sklearn-API model -> ONNX via
onnxmltools, without ZipMap (classifiers give ``label`` and ``probabilities`` tensors)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightgbm
import onnxmltools  # type: ignore[import-untyped, unused-ignore]
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

TARGET_OPSET = 15
BOOSTER_SUFFIXES = (".txt", ".model", ".lgb")


def convert(model_path: Path, declared: Sequence[InputSpec], work_dir: Path, log: LogFn) -> FrontendResult:
    """Convert a LightGBM model to ONNX."""
    model: object
    if model_path.suffix.lower() in BOOSTER_SUFFIXES:
        if not model_path.is_file():
            raise InvalidArgument(f"model file {model_path} does not exist or is not a file")
        try:
            model = lightgbm.Booster(model_file=str(model_path))
        except lightgbm.basic.LightGBMError as exc:
            raise InvalidArgument(
                f"model file {model_path.name} is not a readable LightGBM model: {exc}"
            ) from exc
    else:
        model = load_pickle(model_path)
    booster = model if isinstance(model, lightgbm.Booster) else getattr(model, "booster_", None)
    if not isinstance(booster, lightgbm.Booster):
        raise InvalidArgument(
            f"model file {model_path.name} holds a {type(model).__name__}, not a LightGBM model"
        )
    name, count, dtype = tabular_input(declared, booster.num_feature())
    tensor_type = FloatTensorType if dtype == DataType.FLOAT32 else DoubleTensorType
    log(f"converting LightGBM {type(model).__name__} ({count} features) with onnxmltools")
    try:
        onnx_model = onnxmltools.convert_lightgbm(
            model, initial_types=[(name, tensor_type([None, count]))], target_opset=TARGET_OPSET, zipmap=False
        )
    except (RuntimeError, ValueError, NotImplementedError) as exc:
        raise UnsupportedModel(f"onnxmltools cannot convert this LightGBM model: {exc}") from exc
    fix_batch_dims(onnx_model)
    return finish(
        onnx_model,
        [],
        work_dir,
        {"lightgbm": str(lightgbm.__version__), "onnxmltools": str(onnxmltools.__version__)},
        ("converted LightGBM model with onnxmltools (zipmap off)",),
    )
