"""XGBoost front-end: a saved Booster (``.json``/``.ubj``/``.model``) or a pickled sklearn-API model
-> ONNX via onnxmltools. Classifiers give ``label`` and ``probabilities`` tensors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnxmltools  # type: ignore[import-untyped, unused-ignore]
import xgboost

from edgefleet.compiler.frontends import FrontendResult
from edgefleet.compiler.frontends._trees import load_booster_or_pickle, onnxmltools_convert
from edgefleet.compiler.frontends.from_onnx import finish
from edgefleet.compiler.signature import InputSpec
from edgefleet.compiler.types import LogFn
from edgefleet.core.errors import InvalidArgument

BOOSTER_SUFFIXES = (".json", ".ubj", ".model", ".bin", ".xgb")


def convert(model_path: Path, declared: Sequence[InputSpec], work_dir: Path, log: LogFn) -> FrontendResult:
    """Convert an XGBoost model to ONNX."""
    model = load_booster_or_pickle(
        model_path,
        BOOSTER_SUFFIXES,
        lambda path: xgboost.Booster(model_file=path),
        (xgboost.core.XGBoostError,),
        "XGBoost",
    )
    booster = model if isinstance(model, xgboost.Booster) else getattr(model, "get_booster", lambda: None)()
    if not isinstance(booster, xgboost.Booster):
        raise InvalidArgument(
            f"model file {model_path.name} holds a {type(model).__name__}, not an XGBoost model"
        )
    # onnxmltools only understands the default feature names f0, f1, ...
    booster.feature_names = None
    onnx_model = onnxmltools_convert(
        onnxmltools.convert_xgboost, model, declared, booster.num_features(), "XGBoost", log
    )
    return finish(
        onnx_model,
        [],
        work_dir,
        {"xgboost": str(xgboost.__version__), "onnxmltools": str(onnxmltools.__version__)},
        ("converted XGBoost model with onnxmltools",),
    )
