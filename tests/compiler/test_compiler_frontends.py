"""Every input framework -> ONNX (or a validated .tflite), compared with the framework's own outputs."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from compiler_support import make_custom_op_onnx, make_mlp_onnx, make_tflite_fc

from edgefleet.compiler.frontends import canonical_framework, get_frontend, known_frameworks
from edgefleet.compiler.signature import InputSpec
from edgefleet.core.errors import Code, EdgefleetError
from edgefleet.core.tensors import DataType, TensorSpec


def _log(message: str) -> None:
    """Front-ends report progress here; the tests only check results."""


def _ort_run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    result: list[np.ndarray] = session.run(None, feeds)
    return result


def _work(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir(parents=True)
    return work


@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    return x.astype(np.float32), y.astype(np.int64)


def test_known_and_unknown_frameworks() -> None:
    assert known_frameworks() == ["lightgbm", "onnx", "pytorch", "sklearn", "tflite", "xgboost"]
    assert canonical_framework("torch") == "pytorch"
    with pytest.raises(
        EdgefleetError, match=r"unknown framework 'caffe2': supported frameworks are lightgbm, onnx"
    ) as info:
        canonical_framework("caffe2")
    assert info.value.code is Code.INVALID_ARGUMENT
    with pytest.raises(
        EdgefleetError, match=r"framework 'tensorflow' is not supported directly: convert it to TFLite"
    ):
        canonical_framework("tensorflow")


def test_onnx_frontend_pins_declared_shapes(tmp_path: Path) -> None:
    model = make_mlp_onnx(tmp_path / "mlp.onnx")
    result = get_frontend("onnx")(model, [InputSpec("x", (8, 4))], _work(tmp_path), _log)
    assert result.format == "onnx"
    assert result.inputs == (TensorSpec("x", DataType.FLOAT32, (8, 4)),)
    assert result.outputs == (TensorSpec("y", DataType.FLOAT32, (-1, 3)),)
    x = np.ones((8, 4), np.float32)
    np.testing.assert_allclose(_ort_run(result.path, {"x": x})[0], _ort_run(model, {"x": x})[0], rtol=1e-6)


def test_corrupt_onnx_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(EdgefleetError, match=r"model file bad.onnx is not a valid ONNX model") as info:
        get_frontend("onnx")(bad, [], _work(tmp_path), _log)
    assert info.value.code is Code.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("op_type", "domain", "message"),
    [
        ("FancyOp", "com.example", r"unsupported operator\(s\): FancyOp \(domain com.example\)"),
        ("NoSuchOp", "", r"unsupported operator\(s\): NoSuchOp \(domain ai.onnx, opset 17\)"),
    ],
)
def test_unsupported_operator(tmp_path: Path, op_type: str, domain: str, message: str) -> None:
    model = make_custom_op_onnx(tmp_path / "custom.onnx", op_type, domain)
    with pytest.raises(EdgefleetError, match=message) as info:
        get_frontend("onnx")(model, [], _work(tmp_path), _log)
    assert info.value.code is Code.UNIMPLEMENTED


@pytest.fixture(scope="module")
def net() -> object:
    torch = pytest.importorskip("torch", reason="pip install torch==2.13.0")
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5)
    ).eval()


class TestPyTorch:
    def _check(self, tmp_path: Path, path: Path, net: object, specs: list[InputSpec]) -> None:
        import torch

        result = get_frontend("pytorch")(path, specs, _work(tmp_path), _log)
        assert result.inputs[0].name == "x" and result.outputs[0].name == "output"
        x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
        with torch.no_grad():
            expected = net(torch.from_numpy(x)).numpy()  # type: ignore[operator]
        np.testing.assert_allclose(_ort_run(result.path, {"x": x})[0], expected, rtol=1e-4, atol=1e-5)

    def test_whole_module(self, tmp_path: Path, net: object) -> None:
        import torch

        torch.save(net, tmp_path / "whole.pt")
        self._check(tmp_path, tmp_path / "whole.pt", net, [InputSpec("x", (-1, 1, 8, 8))])

    def test_torchscript(self, tmp_path: Path, net: object) -> None:
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated upstream
            scripted = torch.jit.trace(net, torch.zeros(1, 1, 8, 8))  # type: ignore[arg-type]
        scripted.save(str(tmp_path / "ts.pt"))  # type: ignore[no-untyped-call]
        self._check(tmp_path, tmp_path / "ts.pt", net, [InputSpec("x", (-1, 1, 8, 8))])

    def test_torch_export_program(self, tmp_path: Path, net: object) -> None:
        import torch

        program = torch.export.export(net, (torch.zeros(1, 1, 8, 8),))  # type: ignore[arg-type]
        torch.export.save(program, str(tmp_path / "m.pt2"))
        result = get_frontend("pytorch")(
            tmp_path / "m.pt2", [InputSpec("x", (1, 1, 8, 8))], _work(tmp_path), _log
        )
        x = np.ones((1, 1, 8, 8), np.float32)
        with torch.no_grad():
            expected = net(torch.from_numpy(x)).numpy()  # type: ignore[operator]
        np.testing.assert_allclose(_ort_run(result.path, {"x": x})[0], expected, rtol=1e-4, atol=1e-5)

    def test_errors(self, tmp_path: Path, net: object) -> None:
        import torch

        frontend = get_frontend("pytorch")
        torch.save(net.state_dict(), tmp_path / "sd.pt")  # type: ignore[attr-defined]
        with pytest.raises(EdgefleetError, match=r"holds a state_dict \(weights only, no architecture\)"):
            frontend(tmp_path / "sd.pt", [InputSpec("x", (1, 1, 8, 8))], _work(tmp_path), _log)
        with pytest.raises(EdgefleetError, match=r"needs --input NAME:SHAPE\[:DTYPE\] for every model input"):
            frontend(tmp_path / "sd.pt", [], tmp_path, _log)
        (tmp_path / "bad.pt").write_bytes(b"definitely not torch")
        with pytest.raises(EdgefleetError, match=r"bad.pt is not a readable PyTorch model") as info:
            frontend(tmp_path / "bad.pt", [InputSpec("x", (1, 1, 8, 8))], tmp_path, _log)
        assert info.value.code is Code.INVALID_ARGUMENT
        torch.save(net, tmp_path / "whole.pt")
        with pytest.raises(EdgefleetError, match=r"the model does not run on inputs \['x:\[1, 3, 8, 8\]'\]"):
            frontend(tmp_path / "whole.pt", [InputSpec("x", (1, 3, 8, 8))], tmp_path, _log)


def test_sklearn_classifier_without_zipmap(tmp_path: Path, iris: tuple[np.ndarray, np.ndarray]) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = iris
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    (tmp_path / "clf.pkl").write_bytes(pickle.dumps(clf))
    result = get_frontend("sklearn")(tmp_path / "clf.pkl", [], _work(tmp_path), _log)
    assert result.inputs == (TensorSpec("input", DataType.FLOAT32, (-1, 4)),)
    assert [(o.name, o.dtype) for o in result.outputs] == [
        ("label", DataType.INT64),
        ("probabilities", DataType.FLOAT32),
    ]
    label, proba = _ort_run(result.path, {"input": x})
    np.testing.assert_array_equal(label, clf.predict(x))
    np.testing.assert_allclose(proba, clf.predict_proba(x), rtol=1e-4, atol=1e-5)


def test_sklearn_regressor_and_errors(tmp_path: Path, iris: tuple[np.ndarray, np.ndarray]) -> None:
    from sklearn.ensemble import RandomForestRegressor

    x, y = iris
    reg = RandomForestRegressor(n_estimators=5, max_depth=3, random_state=0).fit(x, y.astype(np.float32))
    (tmp_path / "reg.pkl").write_bytes(pickle.dumps(reg))
    result = get_frontend("sklearn")(
        tmp_path / "reg.pkl", [InputSpec("features", (-1, 4))], _work(tmp_path), _log
    )
    (pred,) = _ort_run(result.path, {"features": x})
    np.testing.assert_allclose(pred.reshape(-1), reg.predict(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(EdgefleetError, match=r"5 features declared but the model was trained on 4"):
        get_frontend("sklearn")(tmp_path / "reg.pkl", [InputSpec("features", (-1, 5))], tmp_path, _log)
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x04junk")
    with pytest.raises(EdgefleetError, match=r"junk.pkl is not a readable pickle/joblib file"):
        get_frontend("sklearn")(tmp_path / "junk.pkl", [], tmp_path, _log)
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(EdgefleetError, match=r"holds a list, not a scikit-learn estimator"):
        get_frontend("sklearn")(tmp_path / "list.pkl", [], tmp_path, _log)


def test_xgboost_booster_file_and_pickled_classifier(
    tmp_path: Path, iris: tuple[np.ndarray, np.ndarray]
) -> None:
    xgboost = pytest.importorskip("xgboost")
    x, y = iris
    clf = xgboost.XGBClassifier(n_estimators=8, max_depth=3).fit(x, y)
    clf.save_model(tmp_path / "model.json")
    (tmp_path / "clf.pkl").write_bytes(pickle.dumps(clf))
    for path in (tmp_path / "model.json", tmp_path / "clf.pkl"):
        result = get_frontend("xgboost")(path, [], _work(tmp_path / path.stem), _log)
        label, proba = _ort_run(result.path, {"input": x})
        np.testing.assert_allclose(proba, clf.predict_proba(x), rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(label, clf.predict(x))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(EdgefleetError, match=r"bad.json is not a readable XGBoost model"):
        get_frontend("xgboost")(tmp_path / "bad.json", [], tmp_path, _log)


def test_lightgbm_booster_file_and_pickled_classifier(
    tmp_path: Path, iris: tuple[np.ndarray, np.ndarray]
) -> None:
    lightgbm = pytest.importorskip("lightgbm")
    x, y = iris
    clf = lightgbm.LGBMClassifier(n_estimators=8, verbose=-1).fit(x, y)
    clf.booster_.save_model(str(tmp_path / "model.txt"))
    (tmp_path / "clf.pkl").write_bytes(pickle.dumps(clf))
    for path in (tmp_path / "model.txt", tmp_path / "clf.pkl"):
        result = get_frontend("lightgbm")(path, [], _work(tmp_path / path.stem), _log)
        assert result.outputs[0].shape == (-1,), "the converter's fixed label shape is made dynamic"
        label, proba = _ort_run(result.path, {"input": x})
        np.testing.assert_allclose(proba, clf.predict_proba(x), rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(label, clf.predict(x))
    (tmp_path / "bad.txt").write_text("tree\nnonsense=1\n")
    with pytest.raises(EdgefleetError, match=r"bad.txt is not a readable LightGBM model"):
        get_frontend("lightgbm")(tmp_path / "bad.txt", [], tmp_path, _log)


def test_tflite_is_validated_and_described(tmp_path: Path) -> None:
    weights = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    model = make_tflite_fc(tmp_path / "fc.tflite", weights, np.ones(3, np.float32))
    result = get_frontend("tflite")(model, [InputSpec("x", (1, 4))], _work(tmp_path), _log)
    assert result.format == "tflite" and result.path.read_bytes() == model.read_bytes()
    assert result.inputs == (TensorSpec("x", DataType.FLOAT32, (1, 4)),)
    assert result.outputs == (TensorSpec("y", DataType.FLOAT32, (1, 3)),)
    assert "description: tiny fc" in result.notes
    assert "minimum TFLite runtime version: 2.3.0" in result.notes
    with pytest.raises(EdgefleetError, match=r"conflicts with the model's fixed shape"):
        get_frontend("tflite")(model, [InputSpec("x", (1, 5))], tmp_path, _log)


def test_corrupt_tflite(tmp_path: Path) -> None:
    (tmp_path / "bad.tflite").write_bytes(b"\x00" * 64)
    with pytest.raises(EdgefleetError, match=r"bad.tflite is not a TFLite model \(no TFL3 header\)") as info:
        get_frontend("tflite")(tmp_path / "bad.tflite", [], tmp_path, _log)
    assert info.value.code is Code.INVALID_ARGUMENT
    weights = np.ones((3, 4), np.float32)
    good = make_tflite_fc(tmp_path / "good.tflite", weights, np.zeros(3, np.float32)).read_bytes()
    (tmp_path / "truncated.tflite").write_bytes(good[: len(good) // 2])
    with pytest.raises(EdgefleetError, match=r"truncated.tflite|TFLite flatbuffer is malformed"):
        get_frontend("tflite")(tmp_path / "truncated.tflite", [], tmp_path, _log)
