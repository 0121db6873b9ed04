"""The ONNX type tables in core.tensors: one copy, shared by the ORT runtime, the packager and the compiler."""

from __future__ import annotations

import pytest

from edgefleet.core.tensors import ONNX_ELEM_TYPES, ORT_TYPES, DataType


def test_every_wire_type_has_one_onnx_and_one_ort_name() -> None:
    assert sorted(ONNX_ELEM_TYPES.values()) == list(DataType)
    assert sorted(ORT_TYPES.values()) == list(DataType)


def test_elem_type_numbers_are_onnx_s() -> None:
    onnx = pytest.importorskip("onnx", reason="the onnx package (extra 'compiler') is not installed")
    proto = onnx.TensorProto
    names = {
        DataType.UINT8: "UINT8",
        DataType.INT16: "INT16",
        DataType.INT32: "INT32",
        DataType.INT64: "INT64",
        DataType.FLOAT16: "FLOAT16",
        DataType.FLOAT32: "FLOAT",
        DataType.FLOAT64: "DOUBLE",
    }
    assert {getattr(proto, names[t]): t for t in DataType} == ONNX_ELEM_TYPES


def test_ort_names_are_what_onnxruntime_reports() -> None:
    pytest.importorskip("onnx", reason="the onnx package (extra 'compiler') is not installed")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from onnx import helper

    by_elem = dict(ONNX_ELEM_TYPES)
    inputs = [helper.make_tensor_value_info(f"x{e}", e, [1]) for e in by_elem]
    outputs = [helper.make_tensor_value_info(f"y{e}", e, [1]) for e in by_elem]
    nodes = [helper.make_node("Identity", [f"x{e}"], [f"y{e}"]) for e in by_elem]
    model = helper.make_model(
        helper.make_graph(nodes, "types", inputs, outputs), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    seen = {arg.name: ORT_TYPES[arg.type] for arg in session.get_inputs()}
    assert seen == {f"x{e}": wire for e, wire in by_elem.items()}
