"""The classes of model that public packages ship and that broke the compiler (issue 10 section 2):
scalar inputs, inputs batched on another axis than the first, control flow, older opsets, int8 that
only keeps accuracy with some nodes in float, and third-party noise. Each model is built here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compiler.job import CompileJob, CompileRequest, CompileResult
from edgefleet.compiler.report import CandidateStatus
from edgefleet.compiler.signature import InputSpec, parse_input_spec
from edgefleet.core.errors import Code, EdgefleetError

H, F = 8, 4


def _save(graph: onnx.GraphProto, path: Path, opset: int = 17) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _lstm_weights(tag: str, rng: np.random.Generator) -> list[onnx.TensorProto]:
    return [
        numpy_helper.from_array((rng.standard_normal((1, 4 * H, F)) * 0.3).astype(np.float32), f"W{tag}"),
        numpy_helper.from_array((rng.standard_normal((1, 4 * H, H)) * 0.3).astype(np.float32), f"R{tag}"),
    ]


def make_scalar_rate_model(path: Path) -> Path:
    """``y = (x @ W) * float(rate) / 16000``: a float batch input and an int64 scalar input."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Cast", ["rate"], ["rate_f"], to=TensorProto.FLOAT),
            helper.make_node("Div", ["rate_f", "k"], ["scale"]),
            helper.make_node("Mul", ["h", "scale"], ["y"]),
        ],
        "scalar_rate",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", F]),
            helper.make_tensor_value_info("rate", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [
            numpy_helper.from_array(rng.standard_normal((F, 3)).astype(np.float32), "W"),
            numpy_helper.from_array(np.array(16000.0, np.float32), "k"),
        ],
    )
    return _save(graph, path)


def make_rnn_state_model(path: Path) -> Path:
    """An LSTM step: sequence ``x`` [T, N, F] and initial state ``h0`` [1, N, H] (batch on axis 1),
    output the final hidden state ``y`` [1, N, H]."""
    rng = np.random.default_rng(1)
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["x", "Wa", "Ra", "", "", "h0"], ["Y", "y"], hidden_size=H)],
        "rnn_state",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "N", F]),
            helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, "N", H]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "N", H])],
        _lstm_weights("a", rng),
    )
    return _save(graph, path)


def make_if_lstm_model(path: Path, squeeze_branch: bool) -> Path:
    """An ``If`` on the int64 scalar ``sr`` choosing between two LSTM branches over ``x`` [T, N, F].

    With ``squeeze_branch`` the else-branch squeezes ``x`` first (as models do for a batch of one):
    with N dynamic ONNX shape inference cannot know the rank, with N pinned to 1 it infers rank 2 and
    the LSTM's check fails ("First input tensor must have rank 3"), although that branch is fine
    whenever it runs."""
    rng = np.random.default_rng(2)

    def branch(tag: str, squeeze: bool) -> onnx.GraphProto:
        nodes = []
        source = "x"
        if squeeze:
            nodes.append(helper.make_node("Squeeze", ["x"], [f"xs{tag}"]))
            source = f"xs{tag}"
        nodes.append(helper.make_node("LSTM", [source, f"W{tag}", f"R{tag}"], [f"Y{tag}"], hidden_size=H))
        nodes.append(helper.make_node("Squeeze", [f"Y{tag}", "axis1"], [f"out{tag}"]))
        return helper.make_graph(
            nodes,
            f"branch_{tag}",
            [],
            [helper.make_tensor_value_info(f"out{tag}", TensorProto.FLOAT, ["T", "N", H])],
            [*_lstm_weights(tag, rng), numpy_helper.from_array(np.array([1], np.int64), "axis1")],
        )

    graph = helper.make_graph(
        [
            helper.make_node("Equal", ["sr", "k16"], ["is16"]),
            helper.make_node(
                "If", ["is16"], ["y"], then_branch=branch("a", False), else_branch=branch("b", squeeze_branch)
            ),
        ],
        "if_lstm",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "N", F]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", "N", H])],
        [numpy_helper.from_array(np.array(16000, np.int64), "k16")],
    )
    return _save(graph, path)


def make_outlier_mlp(path: Path, opset: int = 17) -> Path:
    """Three Gemms where full int8 cannot keep the output: every output channel of the last layer has
    one weight 1,000x larger than the others (its per-channel int8 scale then rounds the others to
    zero), and that weight reads an activation that is always zero. Kept in float, the last layer is
    exact again; the other two quantise well."""
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((16, 16)).astype(np.float32)
    w2 = rng.standard_normal((16, 16)).astype(np.float32)
    w2[:, 0] = 0.0  # channel 0 of h2 is always zero...
    w3 = rng.standard_normal((16, 4)).astype(np.float32)
    w3[0, :] = 1000.0  # ...and sets the int8 scale of every output channel of the head
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "W1"], ["h1"], name="first"),
            helper.make_node("Relu", ["h1"], ["r1"], name="relu"),
            helper.make_node("Gemm", ["r1", "W2"], ["h2"], name="middle"),
            helper.make_node("Gemm", ["h2", "W3"], ["y"], name="head"),
        ],
        "outlier_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w, n) for w, n in ((w1, "W1"), (w2, "W2"), (w3, "W3"))],
    )
    return _save(graph, path, opset)


def compile_model(model: Path, out: Path, **options: object) -> tuple[CompileResult, CompileJob]:
    options.setdefault("target", "linux-x86_64")
    options.setdefault("benchmark_seconds", 0.05)
    job = CompileJob(CompileRequest(model=model, framework="onnx", output_dir=out, **options))  # type: ignore[arg-type]
    return job.run(), job


def _runs_in_onnxruntime(out: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    meta = json.loads((out / "edgefleet-package.json").read_text())
    assert meta["runtime"]["name"] == "onnxruntime"
    session = ort.InferenceSession(str(out / meta["model_file"]), providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in session.run(None, feeds)]


# -- rank-0 inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["rate:[]:int64", "rate:scalar:int64", "rate:():int64"])
def test_a_scalar_input_is_declared_with_an_empty_shape(text: str) -> None:
    assert parse_input_spec(text) == InputSpec("rate", (), parse_input_spec("r:1:int64").dtype)


def test_a_model_with_a_scalar_input_compiles(tmp_path: Path) -> None:
    model = make_scalar_rate_model(tmp_path / "rate.onnx")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, F)).astype(np.float32)
    rate = np.full(30, 16000, np.int64)  # one value per sample: the input has no batch axis
    np.savez(tmp_path / "val.npz", x=x, rate=rate)
    result, job = compile_model(
        model,
        tmp_path / "out",
        inputs=(parse_input_spec("x:-1x4:float32"), parse_input_spec("rate:[]:int64")),
        backend="onnxruntime",
        quantize="none",
        validation=tmp_path / "val.npz",
    )
    meta = result.metadata
    assert {t["name"]: t["shape"] for t in meta["inputs"]} == {"x": [-1, F], "rate": []}
    assert any("batch axes: rate none" in line.message for line in job.log)
    baseline = result.report.candidate("onnxruntime-original")
    assert result.report.candidate(result.report.selected).agreement == 100.0 and baseline.agreement == 100.0
    (y,) = _runs_in_onnxruntime(tmp_path / "out", {"x": x[:2], "rate": np.array(8000, np.int64)})
    np.testing.assert_allclose(
        y, (x[:2] @ onnx.numpy_helper.to_array(onnx.load(str(model)).graph.initializer[0])) * 0.5, rtol=1e-5
    )


# -- inputs batched on another axis -----------------------------------------------------------------


def test_an_rnn_state_is_batched_on_the_axis_the_graph_says(tmp_path: Path) -> None:
    """x [T, N, F] and h0 [1, N, H] feed an LSTM: both are batched on axis 1, inferred from the graph;
    the data holds samples first with that axis left out."""
    model = make_rnn_state_model(tmp_path / "rnn.onnx")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 5, F)).astype(np.float32)  # (N, T, F)
    h0 = rng.standard_normal((24, 1, H)).astype(np.float32)  # (N, layers, H)
    np.savez(tmp_path / "val.npz", x=x, h0=h0)
    result, job = compile_model(
        model, tmp_path / "out", backend="onnxruntime", quantize="none", validation=tmp_path / "val.npz"
    )
    assert any(line.message.startswith("batch axes: x 1, h0 1") for line in job.log)
    assert result.report.validation["batch_axes"] == {"x": 1, "h0": 1}
    for cand in result.report.candidates:
        assert cand.status is not CandidateStatus.UNAVAILABLE, cand.reason
        assert cand.agreement == 100.0
    # sample 3 of the data, fed as the model takes it, gives what the shipped model computes
    (y,) = _runs_in_onnxruntime(tmp_path / "out", {"x": x[3][:, None, :], "h0": h0[3][:, None, :]})
    assert y.shape == (1, 1, H)


def test_a_declared_batch_axis_wins_and_data_in_the_wrong_layout_is_refused(tmp_path: Path) -> None:
    spec = parse_input_spec("h0:1x-1x8:float32:batch=1")
    assert (spec.batch_axis, spec.batch_declared) == (1, True)
    none = parse_input_spec("rate:[]:int64:batch=none")
    assert (none.batch_axis, none.batch_declared) == (None, True)
    with pytest.raises(EdgefleetError, match=r"batch=3 is outside the shape's 3 axes"):
        parse_input_spec("h0:1x-1x8:batch=3")
    model = make_rnn_state_model(tmp_path / "rnn.onnx")
    rng = np.random.default_rng(0)
    # in the model's own layout (N on axis 1) instead of samples first: refused, saying what is expected
    np.savez(
        tmp_path / "bad.npz",
        x=rng.standard_normal((24, 5, F)).astype(np.float32),
        h0=rng.standard_normal((1, 24, H)).astype(np.float32),
    )
    with pytest.raises(
        EdgefleetError, match=r"input 'h0' has shape \(1, 24, 8\) but the model expects \(N, 1, 8\)"
    ) as info:
        compile_model(model, tmp_path / "out", backend="onnxruntime", validation=tmp_path / "bad.npz")
    assert info.value.code is Code.INVALID_ARGUMENT and "batch axis 1 is left out" in info.value.message
    assert not (tmp_path / "out").exists()


# -- control flow ----------------------------------------------------------------------------------


def test_a_pass_that_breaks_a_control_flow_model_is_skipped_with_a_warning(tmp_path: Path) -> None:
    """Pinning x to 5x1x4 makes shape inference through the If's squeeze branch fail: the job keeps
    the graph's own dimensions, says so, and ships a model that runs."""
    model = make_if_lstm_model(tmp_path / "if_lstm.onnx", squeeze_branch=True)
    rng = np.random.default_rng(0)
    # x is batched on axis 1 (it feeds an LSTM), sr has no batch axis: one value per sample
    np.savez(
        tmp_path / "val.npz",
        x=rng.standard_normal((20, 5, F)).astype(np.float32),
        sr=np.full(20, 16000, np.int64),
    )
    result, _ = compile_model(
        model,
        tmp_path / "out",
        inputs=(parse_input_spec("x:5x1x4"),),
        backend="onnxruntime",
        quantize="none",
        validation=tmp_path / "val.npz",
    )
    assert any("--input shapes were not written into the graph" in w for w in result.report.warnings)
    assert "First input tensor must have rank 3" in " ".join(result.report.warnings)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["warnings"] == result.report.warnings
    for sr, batch in ((16000, 1), (8000, 2)):  # the squeeze branch runs whenever N > 1
        x = np.ones((5, batch, F), np.float32)
        (y,) = _runs_in_onnxruntime(tmp_path / "out", {"x": x, "sr": np.array(sr, np.int64)})
        assert y.shape == (5, batch, H)


def test_auto_never_fails_when_the_original_model_runs(tmp_path: Path) -> None:
    """Every backend `auto` tries on a model with a scalar input and control flow: whatever fails is
    unavailable with its reason; the job succeeds with a candidate that ran here."""
    model = make_if_lstm_model(tmp_path / "if_lstm.onnx", squeeze_branch=False)
    result, _ = compile_model(model, tmp_path / "out", backend="auto")
    report = result.report
    selected = report.candidate(report.selected)
    assert selected.latency is not None and selected.agreement == 100.0
    for cand in report.candidates:
        if cand.status is CandidateStatus.UNAVAILABLE:
            assert cand.reason and "\n" not in cand.reason


# -- int8 on older opsets; never ship what cannot load ------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "onnxruntime"])
def test_int8_of_an_opset_12_model_loads_or_is_not_shipped(tmp_path: Path, backend: str) -> None:
    """Per-channel DequantizeLinear needs opset 13: the opset-12 graph is upgraded first, and what is
    shipped loads; it never ships "without a full check" a graph that cannot be loaded here."""
    rng = np.random.default_rng(0)
    model = make_outlier_mlp(tmp_path / "mlp12.onnx", opset=12)
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((64, 16)).astype(np.float32))
    result, job = compile_model(
        model,
        tmp_path / "out",
        backend=backend,
        quantize="int8",
        calibration=tmp_path / "cal.npz",
        max_accuracy_drop=100.0,
    )
    assert not any("without a full check" in line.message for line in job.log)
    selected = result.report.candidate(result.report.selected)
    assert selected.status is CandidateStatus.SELECTED and selected.agreement is not None
    assert any("opset 12 upgraded to 13" in n for n in selected.notes), selected.notes
    if result.metadata["runtime"]["name"] == "onnxruntime":
        (y,) = _runs_in_onnxruntime(tmp_path / "out", {"x": rng.standard_normal((2, 16)).astype(np.float32)})
        assert y.shape == (2, 4)


# -- accuracy-aware int8 ----------------------------------------------------------------------------


def test_int8_keeps_the_most_sensitive_nodes_in_float_to_stay_within_the_tolerance(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    model = make_outlier_mlp(tmp_path / "mlp.onnx")
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((64, 16)).astype(np.float32))
    np.savez(tmp_path / "val.npz", x=rng.standard_normal((100, 16)).astype(np.float32))
    result, _ = compile_model(
        model,
        tmp_path / "out",
        backend="onnxruntime",
        quantize="int8",
        calibration=tmp_path / "cal.npz",
        validation=tmp_path / "val.npz",
    )
    report = result.report
    full = report.candidate("onnxruntime-int8")
    mixed = report.candidate("onnxruntime-int8-mixed")
    assert full.reason.startswith("loses "), "full int8 must fail the tolerance for this model"
    assert (
        report.selected == "onnxruntime-int8-mixed"
        and mixed.agreement is not None
        and mixed.agreement >= 99.0
    )
    kept = next(n for n in mixed.notes if n.startswith("kept in float: "))
    assert "head" in kept and "of 3 quantisable nodes" in kept and "full int8 lost" in kept
    assert any(n.startswith("cost of the float nodes: p50 ") for n in mixed.notes)
    shipped = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert any(n.op_type == "DequantizeLinear" for n in shipped.graph.node), "the rest is still int8"


# -- third-party noise ------------------------------------------------------------------------------


def _compile_cli(
    model: Path, out: Path, *extra: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-m", "edgefleet", "compile", str(model), *extra, "--target", "linux-x86_64",
         "--bench-seconds", "0.05", "-o", str(out)],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads((out / "report.json").read_text())


def _assert_quiet(proc: subprocess.CompletedProcess[str], report: dict[str, Any]) -> None:
    """Progress lines only on stderr; on stdout the table has one line per candidate."""
    for line in proc.stderr.splitlines():
        assert re.match(r"\[ *\d+\.\ds\] ", line), f"noise on stderr: {line!r}"
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("candidate "))
    rows = lines[header + 1 : header + 1 + len(report["candidates"])]
    assert [r.split()[0] for r in rows] == [c["name"] for c in report["candidates"]]
    after = lines[header + 1 + len(report["candidates"]) :]
    assert all(line.startswith(("note: ", "warning: ", "wrote ")) or not line for line in after), after
    for line in lines:
        assert not line.startswith(("FrontEnd", "Model wasn't", "Summary", "WARNING", "INFO")), line


def test_third_party_noise_stays_out_of_the_cli_output(tmp_path: Path) -> None:
    """A tree ensemble: onnxsim cannot handle it and OpenVINO refuses it with a many-line C++ error.
    The user sees progress lines and the table with one line per candidate; the full error is in
    report.json."""
    import pickle

    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 6)).astype(np.float32)
    tree = DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, (x[:, 0] > 0).astype(int))
    (tmp_path / "tree.pkl").write_bytes(pickle.dumps(tree))
    proc, report = _compile_cli(
        tmp_path / "tree.pkl", tmp_path / "out", "--framework", "sklearn", "--input", "X:-1x6:float32"
    )
    _assert_quiet(proc, report)
    openvino = next(c for c in report["candidates"] if c["name"] == "openvino")
    assert openvino["status"] == "unavailable" and "\n" not in openvino["reason"]
    assert "TreeEnsembleClassifier" in openvino["detail"] and "\n" in openvino["detail"]


def test_litert_native_output_stays_out_of_the_cli_output(tmp_path: Path) -> None:
    """LiteRT's C++ side prints "INFO: Created TensorFlow Lite XNNPACK delegate" when it loads a model."""
    pytest.importorskip("ai_edge_litert", reason="pip install 'edgefleet[litert]'")
    from compiler_support import make_tflite_fc

    rng = np.random.default_rng(0)
    model = make_tflite_fc(
        tmp_path / "fc.tflite", rng.standard_normal((3, 4)).astype(np.float32), np.zeros(3, np.float32)
    )
    proc, report = _compile_cli(model, tmp_path / "out", "--framework", "tflite")
    _assert_quiet(proc, report)
    assert "XNNPACK" not in proc.stderr + proc.stdout


def test_output_written_below_python_is_captured_into_the_job_log(capfd: pytest.CaptureFixture[str]) -> None:
    """What native code writes straight to fds 1/2 (and C stdio's buffer) goes to the detail sink."""
    import ctypes

    from edgefleet.compiler.noise import captured_output, detail_sink, short_reason

    seen: list[str] = []
    with detail_sink(seen.append), captured_output("tool"):
        os.write(2, b'WARNING: failed to run "Concat" op\n')
        ctypes.CDLL(None).printf(b"INFO: from C stdio\n")
        print("from python")
    assert capfd.readouterr() == ("", "")
    (text,) = seen
    assert text.startswith("tool output:\n")
    assert 'failed to run "Concat"' in text and "INFO: from C stdio" in text and "from python" in text
    assert short_reason("Check 'x' failed at a.cpp:1:\nmore\nlines") == "Check 'x' failed at a.cpp:1: …"
    assert len(short_reason("y" * 500)) == 160
