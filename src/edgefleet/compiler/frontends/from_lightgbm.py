"""LightGBM front-end: a saved Booster (``.txt``) or a pickled sklearn-API model -> ONNX via
onnxmltools, without ZipMap (classifiers give ``label`` and ``probabilities`` tensors)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightgbm
import onnxmltools  # type: ignore[import-untyped, unused-ignore]

from edgefleet.compiler.frontends import FrontendResult
from edgefleet.compiler.frontends._trees import load_booster_or_pickle, onnxmltools_convert
from edgefleet.compiler.frontends.from_onnx import finish
from edgefleet.compiler.signature import InputSpec
from edgefleet.compiler.types import LogFn
from edgefleet.core.errors import InvalidArgument

BOOSTER_SUFFIXES = (".txt", ".model", ".lgb")


def convert(model_path: Path, declared: Sequence[InputSpec], work_dir: Path, log: LogFn) -> FrontendResult:
    """Convert a LightGBM model to ONNX."""
    model = load_booster_or_pickle(
        model_path,
        BOOSTER_SUFFIXES,
        lambda path: lightgbm.Booster(model_file=path),
        (lightgbm.basic.LightGBMError,),
        "LightGBM",
    )
    booster = model if isinstance(model, lightgbm.Booster) else getattr(model, "booster_", None)
    if not isinstance(booster, lightgbm.Booster):
        raise InvalidArgument(
            f"model file {model_path.name} holds a {type(model).__name__}, not a LightGBM model"
        )
    onnx_model = onnxmltools_convert(
        onnxmltools.convert_lightgbm, model, declared, booster.num_feature(), "LightGBM", log, zipmap=False
    )
    return finish(
        onnx_model,
        [],
        work_dir,
        {"lightgbm": str(lightgbm.__version__), "onnxmltools": str(onnxmltools.__version__)},
        ("converted LightGBM model with onnxmltools (zipmap off)",),
    )
