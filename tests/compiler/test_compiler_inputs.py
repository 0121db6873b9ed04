"""``--input`` parsing, the target catalogue and calibration/validation data loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.compiler.dataset import load_dataset, synthetic_dataset
from edgefleet.compiler.signature import InputSpec, parse_input_spec, parse_shape, reconcile_inputs
from edgefleet.compiler.targets import (
    TARGETS,
    get_target,
    host_cpu_features,
    known_targets,
    matches_host,
)
from edgefleet.core.errors import Code, EdgefleetError
from edgefleet.core.tensors import DataType, TensorSpec

IMAGE = TensorSpec("x", DataType.FLOAT32, (-1, 1, 8, 8))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x:1x3x224x224", InputSpec("x", (1, 3, 224, 224))),
        ("x:1,3,224,224:float32", InputSpec("x", (1, 3, 224, 224), DataType.FLOAT32)),
        ("ids:[N,128]:int64", InputSpec("ids", (-1, 128), DataType.INT64)),
        ("x:-1x4:FLOAT", InputSpec("x", (-1, 4), DataType.FLOAT32)),
        ("img:?x224x224x3:uint8", InputSpec("img", (-1, 224, 224, 3), DataType.UINT8)),
    ],
)
def test_parse_input_spec(text: str, expected: InputSpec) -> None:
    assert parse_input_spec(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x", r"malformed: expected NAME:SHAPE\[:DTYPE\]"),
        ("x:", r"malformed: expected NAME:SHAPE"),
        (":1x4", r"malformed"),
        ("x:1x0", r"dimension 0 must be positive"),
        ("x:1x2.5", r"dimension '2.5' is not a positive integer"),
        ("x:1x4:complex64", r"unknown data type 'complex64' \(known: UINT8"),
        ("x:1x4:float32:extra", r"malformed"),
        ("x:[ ]", r"shape '\[ \]' is empty"),
    ],
)
def test_bad_input_spec_is_invalid_argument(text: str, message: str) -> None:
    with pytest.raises(EdgefleetError, match=message) as info:
        parse_input_spec(text)
    assert info.value.code is Code.INVALID_ARGUMENT


def test_parse_shape_symbolic_names_with_commas() -> None:
    assert parse_shape("batch,3,seq") == (-1, 3, -1)


def test_reconcile_pins_dynamic_dims_and_rejects_conflicts() -> None:
    model = [TensorSpec("x", DataType.FLOAT32, (-1, 1, 8, 8))]
    assert reconcile_inputs(model, [InputSpec("x", (4, 1, 8, 8))]) == [
        TensorSpec("x", DataType.FLOAT32, (4, 1, 8, 8))
    ]
    with pytest.raises(EdgefleetError, match=r"has rank 2 but the model's input has rank 4"):
        reconcile_inputs(model, [InputSpec("x", (1, 64))])
    with pytest.raises(EdgefleetError, match=r"conflicts with the model's fixed shape \[-1, 1, 8, 8\]"):
        reconcile_inputs(model, [InputSpec("x", (1, 3, 8, 8))])
    with pytest.raises(EdgefleetError, match=r"data type INT64 differs from the model's FLOAT32"):
        reconcile_inputs(model, [InputSpec("x", (1, 1, 8, 8), DataType.INT64)])
    with pytest.raises(EdgefleetError, match=r"the model has no such input \(its inputs: x\)"):
        reconcile_inputs(model, [InputSpec("image", (1, 1, 8, 8))])


def test_target_catalogue() -> None:
    assert {"linux-x86_64", "linux-aarch64"} <= set(known_targets())
    for target in TARGETS.values():
        assert target.arch in ("x86_64", "aarch64")
        assert target.backends[0] == "onnxruntime"
        assert target.cpu_features
    assert get_target("linux-aarch64").cross_compiler == "aarch64-linux-gnu-gcc"
    assert "openvino" not in get_target("linux-aarch64").backends


def test_unknown_target_names_the_known_ones() -> None:
    with pytest.raises(
        EdgefleetError, match=r"unknown target 'linux-riscv64': known targets are .*linux-aarch64"
    ) as info:
        get_target("linux-riscv64")
    assert info.value.code is Code.INVALID_ARGUMENT


def test_host_matching_uses_cpu_features() -> None:
    cpuinfo = "processor\t: 0\nflags\t\t: fpu sse4_2 popcnt avx avx2 fma f16c bmi2\n"
    features = host_cpu_features(cpuinfo)
    assert matches_host(get_target("linux-x86_64-avx2"), arch="x86_64", features=features)
    assert not matches_host(get_target("linux-x86_64-avx512"), arch="x86_64", features=features)
    assert not matches_host(get_target("linux-aarch64"), arch="x86_64", features=features)
    arm = host_cpu_features("Features\t: fp asimd evtstrm aes crc32 fphp asimdhp asimddp\n")
    assert matches_host(get_target("linux-aarch64-armv8.2"), arch="aarch64", features=arm)


def test_npz_with_labels(tmp_path: Path) -> None:
    path = tmp_path / "val.npz"
    np.savez(path, x=np.zeros((5, 1, 8, 8), np.float64), labels=np.arange(5))
    data = load_dataset(path, [IMAGE], "validation")
    assert data.size == 5
    assert data.inputs["x"].dtype == np.float32
    assert data.labels is not None and list(data.labels) == [0, 1, 2, 3, 4]


def test_single_input_npz_accepts_any_array_name_and_npy(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", images=np.zeros((3, 1, 8, 8), np.float32))
    assert load_dataset(tmp_path / "a.npz", [IMAGE], "calibration").size == 3
    np.save(tmp_path / "a.npy", np.zeros((2, 1, 8, 8), np.float32))
    assert load_dataset(tmp_path / "a.npy", [IMAGE], "calibration").size == 2


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"x": np.zeros((5, 8, 8), np.float32)},
            r"input 'x' has shape \(5, 8, 8\) but the model expects \(N, 1, 8, 8\)",
        ),
        (
            {"x": np.zeros((5, 1, 9, 9), np.float32)},
            r"has shape \(5, 1, 9, 9\) but the model expects \(N, 1, 8, 8\)",
        ),
        ({"x": np.zeros((5, 1, 8, 8)), "labels": np.arange(4)}, r"4 labels for 5 samples"),
        ({"x": np.zeros((5, 1, 8, 8)), "labels": np.full(5, 0.5)}, r"labels must be integer class indices"),
        ({"x": np.zeros((0, 1, 8, 8))}, r"holds no samples"),
    ],
)
def test_calibration_data_of_the_wrong_shape(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = tmp_path / "cal.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(EdgefleetError, match=message) as info:
        load_dataset(path, [IMAGE], "calibration")
    assert info.value.code is Code.INVALID_ARGUMENT
    assert str(info.value).startswith("INVALID_ARGUMENT: calibration data cal.npz")


def test_multi_input_data_needs_named_arrays(tmp_path: Path) -> None:
    specs = [TensorSpec("a", DataType.FLOAT32, (-1, 2)), TensorSpec("b", DataType.INT64, (-1, 3))]
    np.savez(tmp_path / "d.npz", a=np.zeros((4, 2)), c=np.zeros((4, 3)))
    with pytest.raises(EdgefleetError, match=r"no array for input\(s\) b \(arrays found: a, c"):
        load_dataset(tmp_path / "d.npz", specs, "validation")
    np.save(tmp_path / "d.npy", np.zeros((4, 2)))
    with pytest.raises(EdgefleetError, match=r"a .npy file holds one array but the model has 2 inputs"):
        load_dataset(tmp_path / "d.npy", specs, "validation")
    np.savez(tmp_path / "f.npz", a=np.zeros((4, 2)), b=np.full((4, 3), 0.5))
    with pytest.raises(EdgefleetError, match=r"input 'b' holds float64 values but the model takes INT64"):
        load_dataset(tmp_path / "f.npz", specs, "validation")


def test_missing_and_unreadable_data(tmp_path: Path) -> None:
    with pytest.raises(EdgefleetError, match=r"calibration data .*nope.npz does not exist") as info:
        load_dataset(tmp_path / "nope.npz", [IMAGE], "calibration")
    assert info.value.code is Code.NOT_FOUND
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(EdgefleetError, match=r"bad.npz is not a readable .npz file"):
        load_dataset(tmp_path / "bad.npz", [IMAGE], "calibration")
    (tmp_path / "data.csv").write_text("1,2,3\n")
    with pytest.raises(EdgefleetError, match=r"expected a .npz or .npy file or a folder of images"):
        load_dataset(tmp_path / "data.csv", [IMAGE], "calibration")


def test_image_folder_with_class_subfolders(tmp_path: Path) -> None:
    from PIL import Image

    for label, shade in (("cat", 0), ("dog", 255)):
        (tmp_path / label).mkdir()
        for i in range(2):
            Image.new("RGB", (16, 12), (shade, shade, shade)).save(tmp_path / label / f"{i}.png")
    spec = TensorSpec("img", DataType.FLOAT32, (1, 3, 8, 8))
    data = load_dataset(tmp_path, [spec], "calibration")
    assert data.inputs["img"].shape == (4, 3, 8, 8)
    assert data.labels is not None and list(data.labels) == [0, 0, 1, 1]
    assert data.inputs["img"][0].max() == 0.0 and data.inputs["img"][3].min() == 1.0
    nhwc = TensorSpec("img", DataType.UINT8, (1, 8, 8, 3))
    raw = load_dataset(tmp_path, [nhwc], "calibration")
    assert raw.inputs["img"].shape == (4, 8, 8, 3) and raw.inputs["img"].dtype == np.uint8


def test_image_folder_needs_a_sized_image_input(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(EdgefleetError, match=r"does not say the image size"):
        load_dataset(tmp_path, [TensorSpec("x", DataType.FLOAT32, (1, 3, -1, -1))], "calibration")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EdgefleetError, match=r"the folder holds no images"):
        load_dataset(empty, [IMAGE], "calibration")


def test_synthetic_dataset_follows_the_specs() -> None:
    specs = [IMAGE, TensorSpec("ids", DataType.INT64, (-1, 5))]
    data = synthetic_dataset(specs, 7)
    assert data.inputs["x"].shape == (7, 1, 8, 8) and data.inputs["ids"].dtype == np.int64
    assert data.labels is None
