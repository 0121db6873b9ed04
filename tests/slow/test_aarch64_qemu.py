"""Slow tier: a TVM artifact cross-compiled for linux-aarch64 runs under qemu-user and matches x86_64.

The aarch64 library is loaded by TVM's own aarch64 runtime (``libtvm_runtime.so`` and
``libtvm_ffi.so`` from the aarch64 wheels of the installed TVM release) through a small C++ runner,
``tvm_vm_harness.cc``, cross-compiled here: no arm64 Python is needed. Its outputs are compared with
the x86_64 build of the same model run by the agent's TVM backend, and with ONNX Runtime.

Needs (skipped with the reason otherwise):

* Debian packages ``g++-aarch64-linux-gnu`` (pulls ``gcc-aarch64-linux-gnu``, whose
  ``aarch64-linux-gnu-gcc`` links the TVM library, and the aarch64 C/C++ runtime under
  /usr/aarch64-linux-gnu; ``aarch64-linux-gnu-g++`` builds the harness) and ``qemu-user``;
* the aarch64 wheels of the installed ``apache-tvm`` and ``apache-tvm-ffi`` in a directory
  (``EDGEFLEET_AARCH64_WHEELS``, default ``~/.cache/edgefleet/aarch64-wheels``), fetched once with
  the command docs/tvm.md gives (``pip download ... --platform manylinux_2_28_aarch64``).

``scripts/slow-deps`` installs all of it once; README says the same.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compiler.evaluate import candidate_manifest
from edgefleet.compiler.targets import get_target, matches_host
from edgefleet.compiler.types import BuildOptions, CandidateArtifact
from edgefleet.runtimes.base import RuntimeOptions, get_backend
from edgefleet.runtimes.tvm import TVMArtifactInfo, library_arch, metadata_path

pytestmark = pytest.mark.slow

tvm = pytest.importorskip("tvm", reason="TVM is not installed: pip install 'edgefleet[tvm]'")
tvm_ffi = pytest.importorskip("tvm_ffi", reason="TVM is not installed: pip install 'edgefleet[tvm]'")

HARNESS = Path(__file__).with_name("tvm_vm_harness.cc")
SYSROOT = Path("/usr/aarch64-linux-gnu")
SHAPE = (1, 3, 12, 12)
# The one line every skip ends with (README and scripts/slow-deps name the same packages).
SETUP = (
    "the slow tier's aarch64 check needs Debian's g++-aarch64-linux-gnu (pulls gcc-aarch64-linux-gnu) "
    "and qemu-user, and the aarch64 TVM wheels: scripts/slow-deps installs them once"
)


def _wheel_dir() -> Path:
    configured = os.environ.get("EDGEFLEET_AARCH64_WHEELS")
    return Path(configured) if configured else Path.home() / ".cache" / "edgefleet" / "aarch64-wheels"


def _wheel(directory: Path, distribution: str, version: str) -> Path | None:
    matches = sorted(directory.glob(f"{distribution}-{version}-*aarch64*.whl"))
    return matches[0] if matches else None


@pytest.fixture(scope="module")
def tools() -> dict[str, Path]:
    """The cross tool-chain, qemu and the aarch64 TVM runtime wheels, or a skip saying what is missing."""
    found: dict[str, Path] = {}
    for name, package in (
        ("aarch64-linux-gnu-gcc", "g++-aarch64-linux-gnu"),  # TVM links the aarch64 library with it
        ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"),  # builds the harness
        ("qemu-aarch64", "qemu-user"),
    ):
        path = shutil.which(name)
        if path is None:
            pytest.skip(f"{name} not found (apt-get install {package}); {SETUP}")
        found[name] = Path(path)
    if not (SYSROOT / "lib" / "libstdc++.so.6").exists():
        pytest.skip(
            f"no aarch64 C++ runtime under {SYSROOT} (apt-get install g++-aarch64-linux-gnu); {SETUP}"
        )
    directory = _wheel_dir()
    versions = {"apache_tvm": tvm.__version__, "apache_tvm_ffi": tvm_ffi.__version__}
    for distribution, version in versions.items():
        wheel = _wheel(directory, distribution, version)
        if wheel is None:
            pytest.skip(
                f"no aarch64 wheel of {distribution.replace('_', '-')}=={version} in {directory}: "
                f"pip download --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 "
                f"--python-version 3.11 -d {directory} apache-tvm=={versions['apache_tvm']} "
                f"apache-tvm-ffi=={versions['apache_tvm_ffi']}; {SETUP}"
            )
        found[distribution] = wheel
    return found


def make_model(path: Path) -> Path:
    """Conv -> Relu -> MaxPool -> Flatten -> Gemm -> Softmax, plus the arg-max class (int64)."""
    rng = np.random.default_rng(11)
    weights = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.5, "W"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "B"),
        numpy_helper.from_array(rng.standard_normal((10, 8 * 5 * 5)).astype(np.float32) * 0.1, "G"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "G"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 10]),
            helper.make_tensor_value_info("label", TensorProto.INT64, [1]),
        ],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build(onnx_path: Path, work_dir: Path, target: str) -> CandidateArtifact:
    from edgefleet.compiler.backends.tvm import build_tvm

    work_dir.mkdir()
    return build_tvm(onnx_path, get_target(target), BuildOptions(work_dir, {"x": SHAPE}), lambda line: None)


def cross_compile_harness(tools: dict[str, Path], directory: Path) -> Path:
    """The harness for aarch64, linked against the aarch64 TVM runtime libraries unpacked in ``directory``."""
    libraries = {"tvm/lib/libtvm_runtime.so": "apache_tvm", "tvm_ffi/lib/libtvm_ffi.so": "apache_tvm_ffi"}
    for member, wheel in libraries.items():
        with zipfile.ZipFile(tools[wheel]) as archive:
            archive.extract(member, directory)
    include = Path(tvm_ffi.__file__).parent / "include"
    harness = directory / "tvm_vm_harness"
    lib_dirs = [directory / "tvm" / "lib", directory / "tvm_ffi" / "lib"]
    command = [
        str(tools["aarch64-linux-gnu-g++"]),
        "-std=c++17",
        "-O1",
        f"-I{include}",
        "-o",
        str(harness),
        str(HARNESS),
        *[f"-L{d}" for d in lib_dirs],
        "-Wl,--no-as-needed",
        "-ltvm_ffi",
        "-ltvm_runtime",
        f"-Wl,-rpath,{':'.join(str(d) for d in lib_dirs)}",
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    return harness


def run_under_qemu(
    tools: dict[str, Path], harness: Path, library: Path, x: np.ndarray, out_dir: Path
) -> list[np.ndarray]:
    out_dir.mkdir()
    x_path = out_dir / "x.bin"
    x.astype("<f4").tofile(x_path)
    spec = f"{x_path}:float32:{'x'.join(str(d) for d in x.shape)}"
    result = subprocess.run(
        [
            str(tools["qemu-aarch64"]),
            "-L",
            str(SYSROOT),
            str(harness),
            str(library.resolve()),
            str(out_dir),
            spec,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"harness failed under qemu: {result.stderr}"
    outputs = []
    for line in result.stdout.splitlines():
        name, dtype, shape = line.split()
        data = np.fromfile(out_dir / f"{name}.bin", dtype=np.dtype(dtype).newbyteorder("<"))
        outputs.append(data.reshape([int(d) for d in shape.split("x")]))
    return outputs


def test_aarch64_artifact_under_qemu_matches_the_x86_64_reference(
    tools: dict[str, Path], tmp_path: Path
) -> None:
    onnx_path = make_model(tmp_path / "cnn.onnx")
    arm = build(onnx_path, tmp_path / "arm", "linux-aarch64")
    assert arm.runs_on_host is False and arm.optimised is False
    assert library_arch(arm.directory / arm.model_file) == "aarch64"
    harness = cross_compile_harness(tools, tmp_path / "runtime")

    x86_model = None
    if matches_host(get_target("linux-x86_64")):
        x86 = build(onnx_path, tmp_path / "x86", "linux-x86_64")
        meta = TVMArtifactInfo.read(x86.directory / metadata_path(x86.model_file))
        manifest = candidate_manifest(x86, get_target("linux-x86_64"), meta.inputs, meta.outputs)
        x86_model = get_backend("tvm").load(x86.directory, manifest, RuntimeOptions(intra_op_threads=1))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    try:
        rng = np.random.default_rng(5)
        for index in range(3):
            x = rng.standard_normal(SHAPE).astype(np.float32)
            got = run_under_qemu(tools, harness, arm.directory / arm.model_file, x, tmp_path / f"out{index}")
            references = [session.run(None, {"x": x})]
            if x86_model is not None:
                references.append(x86_model.run({"x": x}))
            for want in references:
                assert len(got) == len(want) == 2
                np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-6)
                assert got[1].dtype == np.int64 and np.array_equal(got[1], want[1])
    finally:
        if x86_model is not None:
            x86_model.close()
