"""scikit-learn front-end: a pickled/joblib estimator or pipeline -> ONNX via skl2onnx.

Classifiers are converted without ZipMap, so their outputs are plain tensors: ``label`` (int64)
and ``probabilities`` (float32, rows x classes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import skl2onnx
from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

from edgefleet.compiler.frontends import FrontendResult
from edgefleet.compiler.frontends._trees import load_pickle, tabular_input
from edgefleet.compiler.frontends.from_onnx import finish
from edgefleet.compiler.signature import InputSpec
from edgefleet.compiler.types import LogFn, UnsupportedModel
from edgefleet.core.errors import InvalidArgument
from edgefleet.core.tensors import DataType

# ai.onnx 17 keeps artifacts loadable by ONNX Runtime >= 1.13; ai.onnx.ml 3 covers the tree ensembles.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


def convert(model_path: Path, declared: Sequence[InputSpec], work_dir: Path, log: LogFn) -> FrontendResult:
    """Convert a pickled scikit-learn estimator to ONNX."""
    import sklearn
    import sklearn.base

    estimator = load_pickle(model_path)
    if not hasattr(estimator, "predict") and not hasattr(estimator, "transform"):
        raise InvalidArgument(
            f"model file {model_path.name} holds a {type(estimator).__name__}, not a scikit-learn estimator"
        )
    features = getattr(estimator, "n_features_in_", None)
    name, count, dtype = tabular_input(declared, int(features) if features is not None else None)
    tensor_type = FloatTensorType if dtype == DataType.FLOAT32 else DoubleTensorType
    log(f"converting {type(estimator).__name__} ({count} features) with skl2onnx")
    try:
        model = skl2onnx.convert_sklearn(
            estimator,
            initial_types=[(name, tensor_type([None, count]))],
            options={"zipmap": False} if sklearn.base.is_classifier(estimator) else None,
            target_opset=TARGET_OPSET,
        )
    except RuntimeError as exc:  # MissingShapeCalculator / MissingConverter derive from RuntimeError
        raise UnsupportedModel(f"skl2onnx cannot convert {type(estimator).__name__}: {exc}") from exc
    return finish(
        model,
        [],
        work_dir,
        {"scikit-learn": str(sklearn.__version__), "skl2onnx": str(skl2onnx.__version__)},
        (f"converted {type(estimator).__name__} with skl2onnx (zipmap off)",),
    )
