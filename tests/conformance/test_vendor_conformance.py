"""Wire conformance: an independently written vendor client (vendor_client.py) against a real agent.

The client's ``.proto`` (vendor_agent.proto) was written from /work/shared/spec/agent-api.md alone
and is compiled here, at test time, into a temporary directory. The client runs in a subprocess
that never imports edgefleet, so its ``AWS.SageMaker.Edge`` descriptors never meet edgefleet's in
one protobuf pool. This side (which may use edgefleet) prepares the packages and the agent, runs
the client once per module and asserts each of its checks.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from support import AgentProcess, build, build_null, make_linear_onnx, running_agent, unpack

from edgefleet.core.manifest import Target
from edgefleet.core.tensors import DataType, TensorSpec

HERE = Path(__file__).resolve().parent
PROTO = HERE / "vendor_agent.proto"
CLIENT = HERE / "vendor_client.py"

MEMORY_BUDGET_MB = 160
# A "half" model fits next to the small ONNX model but two of them do not (the ONNX model's
# estimate is 32-48 MiB); a "huge" one exceeds any budget by orders of magnitude.
HALF_MODEL_BYTES = 80 * 1024 * 1024
HUGE_MODEL_BYTES = 1 << 42
CAPTURE_BUFFER_SIZE = 4
CAPTURE_BATCH_SIZE = 1

# Every check the client reports, in the order it runs them.
CHECKS = [
    "vendor_stubs",
    # LoadModel / ListModels / DescribeModel
    "load_model",
    "load_second_model",
    "list_models",
    "describe_model",
    "describe_unknown_alias",
    "load_alias_underscore",
    "load_alias_leading_dash",
    "load_alias_trailing_dash",
    "load_alias_empty",
    "load_alias_64_chars",
    "load_alias_slash",
    "load_alias_63_chars",
    "load_missing_url",
    "load_alias_taken",
    "alias_taken_keeps_first_model",
    "load_memory_budget_exceeded",
    "load_tampered_file",
    "load_bad_signature",
    "load_untrusted_signer",
    "load_wrong_architecture",
    "load_runtime_not_installed",
    "failed_loads_leave_nothing",
    # Predict
    "predict_inline",
    "predict_without_metadata",
    "predict_inline_above_4mib",
    "predict_sysv_shm",
    "predict_sysv_shm_offset_size",
    "predict_sysv_shm_rewritten_segment",
    "predict_shm_removed_segment",
    "predict_shm_bogus_id",
    "predict_shm_offset_past_end",
    "predict_shm_size_past_end",
    "predict_shm_offset_plus_size_overflow",
    "predict_shm_segment_too_small",
    "predict_wrong_tensor_count",
    "predict_no_tensors",
    "predict_wrong_dtype",
    "predict_wrong_shape",
    "predict_wrong_byte_length",
    "predict_tensor_without_data",
    "predict_unknown_model",
    "predict_concurrent_threads",
    "predict_after_bad_requests",
    # CaptureData / GetCaptureDataStatus
    "capture_data",
    "capture_data_shared_memory",
    "capture_status_success",
    "capture_status_success_shared_memory",
    "capture_duplicate_id",
    "capture_duplicate_keeps_original",
    "capture_future_timestamp",
    "capture_malformed_id",
    "capture_empty_id",
    "capture_shm_removed_segment",
    "capture_model_not_loaded",
    "capture_status_unknown_id",
    "capture_rejected_ids_unknown",
    "capture_record_on_disk",
    "capture_buffer_full",
    "capture_buffer_full_pending_not_success",
    # UnLoadModel
    "unload_model",
    "describe_after_unload",
    "predict_after_unload",
    "unload_unknown_alias",
    "alias_reused_after_unload",
    "unload_frees_memory_budget",
    "unload_last_model",
    # whole run
    "errors_carry_messages",
    "edgefleet_never_imported",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("conformance")


@pytest.fixture(scope="module")
def stubs_dir(workdir: Path) -> Path:
    """vendor_agent.proto compiled with grpc_tools.protoc into a directory of its own."""
    out = workdir / "stubs"
    out.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{HERE}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"protoc failed:\n{result.stderr}"
    return out


def _flip_byte(path: Path, at: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def packages(workdir: Path, keys: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Unpacked package directories, good and bad, for the vendor client to load."""
    pkgs, unpacked = workdir / "pkgs", workdir / "unpacked"
    linear = build(make_linear_onnx(workdir / "linear.onnx"), keys, pkgs, name="linear", version="1.0")
    static_model = make_linear_onnx(workdir / "static.onnx", dynamic_batch=False, seed=5)
    out = {
        "linear": unpack(linear, unpacked / "linear"),
        "static": unpack(build(static_model, keys, pkgs, name="static", version="1.0"), unpacked / "static"),
        "huge": unpack(build_null(keys, pkgs, name="huge", memory_bytes=HUGE_MODEL_BYTES), unpacked / "huge"),
        "half": unpack(build_null(keys, pkgs, name="half", memory_bytes=HALF_MODEL_BYTES), unpacked / "half"),
    }
    tampered = unpack(linear, unpacked / "tampered")
    _flip_byte(tampered / "linear.onnx", at=-1)
    out["tampered"] = tampered
    bad_sig = unpack(linear, unpacked / "bad-signature")
    _flip_byte(bad_sig / "manifest.sig", at=7)
    out["bad_signature"] = bad_sig

    from edgefleet.core.signing import init_keys

    stranger = tmp_path_factory.mktemp("stranger-keys")
    init_keys(stranger)
    out["untrusted"] = unpack(
        build(workdir / "linear.onnx", stranger, pkgs / "stranger", name="linear", version="1.0"),
        unpacked / "untrusted",
    )
    other_arch = "aarch64" if platform.machine() == "x86_64" else "x86_64"
    wrong_arch = build(
        workdir / "linear.onnx",
        keys,
        pkgs,
        name="linear-arm",
        version="1.0",
        target=Target(os="linux", arch=other_arch),
    )
    out["wrong_arch"] = unpack(wrong_arch, unpacked / "wrong-arch")
    spec_in = (TensorSpec("x", DataType.FLOAT32, (-1, 4)),)
    spec_out = (TensorSpec("y", DataType.FLOAT32, (-1, 3)),)
    no_runtime = build(
        workdir / "linear.onnx",
        keys,
        pkgs,
        name="vendor-rt",
        version="1.0",
        runtime="vendorruntime",
        inputs=spec_in,
        outputs=spec_out,
    )
    out["unknown_runtime"] = unpack(no_runtime, unpacked / "unknown-runtime")
    return out


@pytest.fixture(scope="module")
def reference(workdir: Path, packages: dict[str, Path]) -> Path:
    """Inputs and the outputs in-process ONNX Runtime computes for them, as a .npz."""
    rng = np.random.default_rng(42)
    linear = ort.InferenceSession(str(packages["linear"] / "linear.onnx"))
    static = ort.InferenceSession(str(packages["static"] / "static.onnx"))
    arrays: dict[str, np.ndarray] = {
        "x_small": rng.standard_normal((5, 4)).astype(np.float32),
        # 512 KiB: above the vendor's 256 KB guidance for shared memory
        "x_large": rng.standard_normal((32768, 4)).astype(np.float32),
        "x_large2": rng.standard_normal((32768, 4)).astype(np.float32),
        "x_static": rng.standard_normal((1, 4)).astype(np.float32),
        # 6 MiB inline
        "x_huge": rng.standard_normal((393216, 4)).astype(np.float32),
    }
    for key in ("small", "large", "large2", "huge"):
        arrays[f"y_{key}"] = linear.run(None, {"x": arrays[f"x_{key}"]})[0]
    arrays["y_static"] = static.run(None, {"x": arrays["x_static"]})[0]
    path = workdir / "reference.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy stubs: **kwargs could hit allow_pickle
    return path


@pytest.fixture(scope="module")
def agent(workdir: Path, trust: Path) -> Iterator[AgentProcess]:
    with running_agent(
        workdir,
        trust,
        agent={"memory_budget_mb": MEMORY_BUDGET_MB},
        capture={
            "buffer_size": CAPTURE_BUFFER_SIZE,
            "batch_size": CAPTURE_BATCH_SIZE,
            "push_period_seconds": 0.2,
        },
    ) as proc:
        yield proc


@pytest.fixture(scope="module")
def report(
    workdir: Path, stubs_dir: Path, packages: dict[str, Path], reference: Path, agent: AgentProcess
) -> dict[str, Any]:
    """Run the vendor client once; its JSON report."""
    config = {
        "address": agent.address,
        "stubs_dir": str(stubs_dir),
        "packages": {name: str(path) for name, path in packages.items()},
        "missing_dir": str(workdir / "no-such-package"),
        "reference": str(reference),
        "capture_dir": str(agent.capture_dir),
        "device": "test-device",
        "fleet": "test-fleet",
        "package_name": "linear",
        "package_version": "1.0",
        "capture_buffer_size": CAPTURE_BUFFER_SIZE,
        "capture_batch_size": CAPTURE_BATCH_SIZE,
    }
    config_path = workdir / "vendor-client.json"
    config_path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, str(CLIENT), str(config_path)],
        capture_output=True,
        text=True,
        cwd=workdir,
        env=env,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, f"vendor client failed:\n{result.stderr}\n{result.stdout}"
    parsed: dict[str, Any] = json.loads(result.stdout)
    (workdir / "vendor-report.json").write_text(result.stdout)  # kept for reading after a failure
    assert agent.proc.poll() is None, f"the agent died during the vendor run; log:\n{agent.log()}"
    return parsed


@pytest.mark.parametrize("check", CHECKS)
def test_vendor_check(report: dict[str, Any], check: str) -> None:
    result = report["checks"].get(check)
    assert result is not None, f"the vendor client did not report {check}"
    assert result["ok"], (
        f"{check}: expected {result['expected']!r}, got {result['got']!r}\n{result['detail']}"
    )


def test_report_lists_exactly_the_known_checks(report: dict[str, Any]) -> None:
    unknown = {name: result for name, result in report["checks"].items() if name not in CHECKS}
    assert not unknown, f"unexpected checks (a crashed phase?): {json.dumps(unknown, indent=1)}"
    assert sorted(report["checks"]) == sorted(CHECKS)
