"""A vendor application written against the Edge Manager agent API (/work/shared/spec/agent-api.md).

It plays the outside party: it uses only stubs generated from ``vendor_agent.proto`` (which was
written from the spec), grpcio, numpy and sysv_ipc, and never imports edgefleet, so the protobuf
descriptor pool only ever holds the vendor's definitions. Usage::

    python vendor_client.py CONFIG.json

CONFIG names the agent's address, the directory holding the generated ``vendor_agent_pb2*``
modules, the unpacked packages to load, a ``.npz`` of inputs with reference outputs and the capture
layout. The script runs every check, never stops at a failed one, and prints one JSON object:
``{"checks": {name: {"ok", "expected", "got", "detail"}}, "observations": {...}}``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import sysv_ipc

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 1 << 30), ("grpc.max_send_message_length", 1 << 30)]
CAPTURE_WAIT_SECONDS = 60.0

pb: Any = None  # vendor_agent_pb2, imported from the config's stubs_dir
pb_grpc: Any = None


class Report:
    """Named checks with what was expected and what the agent did."""

    def __init__(self) -> None:
        self.checks: dict[str, dict[str, Any]] = {}
        self.observations: dict[str, Any] = {}
        self.error_messages: list[tuple[str, str]] = []

    def record(self, name: str, ok: bool, expected: Any, got: Any, detail: str = "") -> bool:
        if name in self.checks:
            raise AssertionError(f"check {name} recorded twice")
        self.checks[name] = {"ok": bool(ok), "expected": expected, "got": got, "detail": detail}
        return bool(ok)

    def run(self, name: str, expected: Any, body: Callable[[], tuple[bool, Any, str]]) -> bool:
        """Run ``body`` -> (ok, got, detail); an exception is a failed check with its traceback."""
        try:
            ok, got, detail = body()
        except grpc.RpcError as exc:
            return self.record(name, False, expected, _code_name(exc), f"{exc.details()}")
        except Exception as exc:
            return self.record(name, False, expected, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        return self.record(name, ok, expected, got, detail)

    def expect_code(self, name: str, code: grpc.StatusCode, call: Callable[[], object]) -> bool:
        """``call`` must fail with ``code`` and a non-empty message."""
        try:
            call()
        except grpc.RpcError as exc:
            got = _code_name(exc)
            details = exc.details() or ""
            self.error_messages.append((name, details))
            return self.record(name, got == code.name, code.name, got, details)
        except Exception as exc:
            return self.record(name, False, code.name, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        return self.record(name, False, code.name, "OK", "the call succeeded")


def _code_name(exc: grpc.RpcError) -> str:
    code = exc.code()
    return code.name if code is not None else "UNKNOWN"


# -- tensors ----------------------------------------------------------------------------------------
DTYPES: dict[np.dtype[Any], int] = {
    np.dtype(np.uint8): 0,
    np.dtype(np.int16): 1,
    np.dtype(np.int32): 2,
    np.dtype(np.int64): 3,
    np.dtype(np.float16): 4,
    np.dtype(np.float32): 5,
    np.dtype(np.float64): 6,
}
NUMPY = {number: dtype for dtype, number in DTYPES.items()}


def metadata(name: str, array: np.ndarray) -> Any:
    return pb.TensorMetadata(name=name, data_type=DTYPES[array.dtype], shape=list(array.shape))


def inline(name: str, array: np.ndarray) -> Any:
    array = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<")))
    return pb.Tensor(tensor_metadata=metadata(name, array), byte_data=array.tobytes())


def decode(tensor: Any) -> np.ndarray:
    md = tensor.tensor_metadata
    dtype = NUMPY[md.data_type].newbyteorder("<")
    return np.frombuffer(tensor.byte_data, dtype=dtype).reshape(tuple(md.shape))


@contextmanager
def segment(data: bytes, *, offset: int = 0, size: int | None = None) -> Iterator[Any]:
    """A System V segment the vendor way: shmget, write, make read-only; removed afterwards."""
    size = size or offset + len(data)
    shm = sysv_ipc.SharedMemory(sysv_ipc.IPC_PRIVATE, sysv_ipc.IPC_CREX, mode=0o600, size=size)
    try:
        shm.write(data[: max(0, size - offset)], offset)
        shm.mode = 0o444  # read-only for the agent
        yield shm
    finally:
        shm.detach()
        shm.remove()


def shm_tensor(name: str, array: np.ndarray, shm: Any, *, offset: int = 0, size: int = 0) -> Any:
    handle = pb.SharedMemoryHandle(segment_id=shm.id, offset=offset, size=size)
    return pb.Tensor(tensor_metadata=metadata(name, array), shared_memory_handle=handle)


def close_to(got: np.ndarray, want: np.ndarray) -> tuple[bool, str]:
    if got.shape != want.shape:
        return False, f"shape {got.shape} != {want.shape}"
    if not np.allclose(got, want, rtol=1e-5, atol=1e-5):
        return False, f"max abs difference {float(np.max(np.abs(got - want)))}"
    return True, ""


# -- the vendor application ---------------------------------------------------------------------------
class VendorApp:
    def __init__(self, config: dict[str, Any], report: Report) -> None:
        self.config = config
        self.report = report
        self.channel = grpc.insecure_channel(config["address"], options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.AgentStub(self.channel)
        self.packages: dict[str, str] = config["packages"]
        self.ref = dict(np.load(config["reference"]))

    def load(self, alias: str, package: str) -> Any:
        return self.stub.LoadModel(pb.LoadModelRequest(url=self.packages[package], name=alias)).model

    def aliases(self) -> list[str]:
        return sorted(m.name for m in self.stub.ListModels(pb.ListModelsRequest()).models)

    def predict(self, alias: str, *tensors: Any) -> list[Any]:
        return list(self.stub.Predict(pb.PredictRequest(name=alias, tensors=list(tensors))).tensors)

    def predict_check(self, alias: str, tensor: Any, want: np.ndarray) -> tuple[bool, Any, str]:
        outputs = self.predict(alias, tensor)
        if len(outputs) != 1:
            return False, f"{len(outputs)} outputs", ""
        (out,) = outputs
        if out.WhichOneof("data") != "byte_data":
            return False, f"output sent as {out.WhichOneof('data')}", ""
        ok, detail = close_to(decode(out), want)
        return ok, "outputs match the reference" if ok else "wrong outputs", detail

    # -- LoadModel / ListModels / DescribeModel --------------------------------------------------------
    def models(self) -> None:
        r = self.report

        def load_ok() -> tuple[bool, Any, str]:
            model = self.load("lin", "linear")
            got = describe_model(model)
            want_in = [("x", "FLOAT32")]
            want_out = [("y", "FLOAT32")]
            ok = model.name == "lin" and _meta_matches(model, want_in, want_out)
            return ok, got, "name 'lin'; tensor metadata x/y FLOAT32 (or empty lists)"

        r.run("load_model", "OK with the model described", load_ok)
        r.run(
            "load_second_model",
            "OK (several models loaded at once)",
            lambda: (self.load("lin-static", "static").name == "lin-static", "OK", ""),
        )

        def listed() -> tuple[bool, Any, str]:
            got = self.aliases()
            return got == ["lin", "lin-static"], got, ""

        r.run("list_models", ["lin", "lin-static"], listed)

        def described() -> tuple[bool, Any, str]:
            model = self.stub.DescribeModel(pb.DescribeModelRequest(name="lin")).model
            ok = model.name == "lin" and _meta_matches(model, [("x", "FLOAT32")], [("y", "FLOAT32")])
            return ok, describe_model(model), ""

        r.run("describe_model", "model 'lin' with its metadata", described)
        r.expect_code(
            "describe_unknown_alias",
            grpc.StatusCode.NOT_FOUND,
            lambda: self.stub.DescribeModel(pb.DescribeModelRequest(name="nosuchmodel")),
        )

        for check, alias in [
            ("load_alias_underscore", "bad_alias"),
            ("load_alias_leading_dash", "-lead"),
            ("load_alias_trailing_dash", "trail-"),
            ("load_alias_empty", ""),
            ("load_alias_64_chars", "a" * 64),
            ("load_alias_slash", "../lin"),
        ]:
            r.expect_code(check, grpc.StatusCode.INVALID_ARGUMENT, partial(self.load, alias, "linear"))

        def alias_63() -> tuple[bool, Any, str]:
            alias = "a-" + "b" * 61
            ok = self.load(alias, "linear").name == alias
            self.stub.UnLoadModel(pb.UnLoadModelRequest(name=alias))
            return ok, "OK", "a 63-character alias with inner dashes is valid"

        r.run("load_alias_63_chars", "OK", alias_63)
        r.expect_code(
            "load_missing_url",
            grpc.StatusCode.NOT_FOUND,
            lambda: self.stub.LoadModel(pb.LoadModelRequest(url=self.config["missing_dir"], name="missing")),
        )
        r.expect_code("load_alias_taken", grpc.StatusCode.ALREADY_EXISTS, lambda: self.load("lin", "static"))

        def file_url() -> str:
            url = Path(self.packages["static"]).as_uri()
            try:
                self.stub.LoadModel(pb.LoadModelRequest(url=url, name="file-url"))
            except grpc.RpcError as exc:
                return f"{_code_name(exc)}: {exc.details()}"
            self.stub.UnLoadModel(pb.UnLoadModelRequest(name="file-url"))
            return "OK"

        self.report.observations["load_file_url"] = file_url()

        def still_first() -> tuple[bool, Any, str]:
            model = self.stub.DescribeModel(pb.DescribeModelRequest(name="lin")).model
            x, y = self.ref["x_small"], self.ref["y_small"]
            ok, got, detail = self.predict_check("lin", inline("x", x), y)
            return ok and model.url == self.packages["linear"], f"{got}; url {model.url}", detail

        r.run("alias_taken_keeps_first_model", "first model still served", still_first)
        r.expect_code(
            "load_memory_budget_exceeded",
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            lambda: self.load("huge", "huge"),
        )
        for check, package in [
            ("load_tampered_file", "tampered"),
            ("load_bad_signature", "bad_signature"),
            ("load_untrusted_signer", "untrusted"),
            ("load_wrong_architecture", "wrong_arch"),
            ("load_runtime_not_installed", "unknown_runtime"),
        ]:
            alias = package.replace("_", "-")
            r.expect_code(check, grpc.StatusCode.FAILED_PRECONDITION, partial(self.load, alias, package))

        def nothing_loaded() -> tuple[bool, Any, str]:
            got = self.aliases()
            return got == ["lin", "lin-static"], got, "failed loads must leave nothing loaded"

        r.run("failed_loads_leave_nothing", ["lin", "lin-static"], nothing_loaded)

    # -- Predict ------------------------------------------------------------------------------------------
    def predicts(self) -> None:
        r = self.report
        x, y = self.ref["x_small"], self.ref["y_small"]

        def small() -> tuple[bool, Any, str]:
            (out,) = self.predict("lin", inline("x", x))
            md = out.tensor_metadata
            got = {"name": md.name, "data_type": md.data_type, "shape": list(md.shape)}
            want = {"name": "y", "data_type": 5, "shape": list(y.shape)}
            if got != want or out.WhichOneof("data") != "byte_data":
                return False, {**got, "data": out.WhichOneof("data")}, f"want {want} inline"
            ok, detail = close_to(decode(out), y)
            return ok, "outputs match the reference with full metadata", detail

        r.run("predict_inline", "outputs inline with full metadata, equal to the reference", small)

        def no_metadata() -> tuple[bool, Any, str]:
            xs, ys = self.ref["x_static"], self.ref["y_static"]
            tensor = pb.Tensor(byte_data=np.ascontiguousarray(xs).tobytes())
            return self.predict_check("lin-static", tensor, ys)

        r.run("predict_without_metadata", "reference outputs (metadata is optional)", no_metadata)
        r.run(
            "predict_inline_above_4mib",
            "reference outputs (inline tensor larger than gRPC's default 4 MiB limit)",
            lambda: self.predict_check("lin", inline("x", self.ref["x_huge"]), self.ref["y_huge"]),
        )

        def shm_size0() -> tuple[bool, Any, str]:
            xl, yl = self.ref["x_large"], self.ref["y_large"]
            with segment(xl.tobytes()) as shm:
                return self.predict_check("lin", shm_tensor("x", xl, shm), yl)

        r.run("predict_sysv_shm", "reference outputs (segment_id, size 0, offset 0)", shm_size0)

        def shm_offset() -> tuple[bool, Any, str]:
            xl, yl = self.ref["x_large"], self.ref["y_large"]
            data = xl.tobytes()
            with segment(data, offset=4096, size=4096 + len(data) + 512) as shm:
                return self.predict_check("lin", shm_tensor("x", xl, shm, offset=4096, size=len(data)), yl)

        r.run("predict_sysv_shm_offset_size", "reference outputs (offset 4096, explicit size)", shm_offset)

        def size0_larger_segment() -> str:
            # The spec reads size 0 as "rest of the segment"; here the rest is larger than the tensor.
            with segment(x.tobytes(), size=x.nbytes + 4096) as shm:
                try:
                    _, got, _ = self.predict_check("lin", shm_tensor("x", x, shm), y)
                except grpc.RpcError as exc:
                    return f"{_code_name(exc)}: {exc.details()}"
                return f"OK ({got})"

        self.report.observations["predict_shm_size0_segment_larger_than_tensor"] = size0_larger_segment()

        def shm_reused() -> tuple[bool, Any, str]:
            # Video-style clients keep one segment and rewrite it for every frame.
            xl, yl = self.ref["x_large"], self.ref["y_large"]
            x2, y2 = self.ref["x_large2"], self.ref["y_large2"]
            shm = sysv_ipc.SharedMemory(sysv_ipc.IPC_PRIVATE, sysv_ipc.IPC_CREX, mode=0o600, size=xl.nbytes)
            try:
                shm.write(xl.tobytes())
                shm.mode = 0o444  # our read-write attachment keeps writing; the agent only reads
                ok1, _, d1 = self.predict_check("lin", shm_tensor("x", xl, shm), yl)
                shm.write(x2.tobytes())
                ok2, _, d2 = self.predict_check("lin", shm_tensor("x", x2, shm), y2)
            finally:
                shm.detach()
                shm.remove()
            got = f"first frame {'ok' if ok1 else 'wrong'}, rewritten frame {'ok' if ok2 else 'wrong'}"
            return ok1 and ok2, got, f"{d1} {d2}".strip()

        r.run("predict_sysv_shm_rewritten_segment", "each call sees the segment's current bytes", shm_reused)

        def removed_id() -> Any:
            xl = self.ref["x_large"]
            shm = sysv_ipc.SharedMemory(sysv_ipc.IPC_PRIVATE, sysv_ipc.IPC_CREX, mode=0o444, size=xl.nbytes)
            shm.detach()
            shm.remove()
            return self.predict("lin", shm_tensor("x", xl, shm))

        r.expect_code("predict_shm_removed_segment", grpc.StatusCode.INVALID_ARGUMENT, removed_id)

        def bogus_id() -> Any:
            handle = pb.SharedMemoryHandle(segment_id=(1 << 63) + 12345, offset=0, size=0)
            tensor = pb.Tensor(tensor_metadata=metadata("x", x), shared_memory_handle=handle)
            return self.predict("lin", tensor)

        r.expect_code("predict_shm_bogus_id", grpc.StatusCode.INVALID_ARGUMENT, bogus_id)

        def out_of_range(offset: int, size: int, segment_bytes: int) -> Callable[[], Any]:
            def call() -> Any:
                with segment(x.tobytes(), size=segment_bytes) as shm:
                    return self.predict("lin", shm_tensor("x", x, shm, offset=offset, size=size))

            return call

        r.expect_code(
            "predict_shm_offset_past_end",
            grpc.StatusCode.INVALID_ARGUMENT,
            out_of_range(1 << 20, 0, x.nbytes),
        )
        r.expect_code(
            "predict_shm_size_past_end",
            grpc.StatusCode.INVALID_ARGUMENT,
            out_of_range(0, x.nbytes * 2, x.nbytes),
        )
        r.expect_code(
            "predict_shm_offset_plus_size_overflow",
            grpc.StatusCode.INVALID_ARGUMENT,
            out_of_range((1 << 64) - 8, x.nbytes, x.nbytes),
        )
        r.expect_code(
            "predict_shm_segment_too_small",
            grpc.StatusCode.INVALID_ARGUMENT,
            out_of_range(0, 0, x.nbytes - 4),
        )
        r.expect_code(
            "predict_wrong_tensor_count",
            grpc.StatusCode.INVALID_ARGUMENT,
            lambda: self.predict("lin", inline("x", x), inline("x2", x)),
        )
        r.expect_code("predict_no_tensors", grpc.StatusCode.INVALID_ARGUMENT, lambda: self.predict("lin"))
        r.expect_code(
            "predict_wrong_dtype",
            grpc.StatusCode.INVALID_ARGUMENT,
            lambda: self.predict("lin", inline("x", x.astype(np.float64))),
        )
        r.expect_code(
            "predict_wrong_shape",
            grpc.StatusCode.INVALID_ARGUMENT,
            lambda: self.predict("lin", inline("x", np.zeros((x.shape[0], 5), np.float32))),
        )

        def short_bytes() -> Any:
            tensor = inline("x", x)
            tensor.byte_data = tensor.byte_data[:-4]
            return self.predict("lin", tensor)

        r.expect_code("predict_wrong_byte_length", grpc.StatusCode.INVALID_ARGUMENT, short_bytes)

        def no_data() -> Any:
            return self.predict("lin", pb.Tensor(tensor_metadata=metadata("x", x)))

        r.expect_code("predict_tensor_without_data", grpc.StatusCode.INVALID_ARGUMENT, no_data)
        r.expect_code(
            "predict_unknown_model",
            grpc.StatusCode.NOT_FOUND,
            lambda: self.predict("nosuchmodel", inline("x", x)),
        )

        def concurrent() -> tuple[bool, Any, str]:
            # Many application threads on one channel; every caller must get its own answer.
            xl, yl = self.ref["x_large"], self.ref["y_large"]
            x2, y2 = self.ref["x_large2"], self.ref["y_large2"]
            jobs = [(x, y, False), (xl, yl, True), (x2, y2, True), (x2, y2, False)] * 6

            def one(job: tuple[np.ndarray, np.ndarray, bool]) -> bool:
                xi, yi, use_shm = job
                if use_shm:
                    with segment(xi.tobytes()) as shm:
                        return self.predict_check("lin", shm_tensor("x", xi, shm), yi)[0]
                return self.predict_check("lin", inline("x", xi), yi)[0]

            with ThreadPoolExecutor(max_workers=8) as pool:
                results = list(pool.map(one, jobs))
            wrong = results.count(False)
            return wrong == 0, f"{wrong} of {len(results)} answers wrong", ""

        r.run("predict_concurrent_threads", "every concurrent caller gets its own outputs", concurrent)
        r.run(
            "predict_after_bad_requests",
            "the agent still serves (bad input never crashes it)",
            lambda: self.predict_check("lin", inline("x", x), y),
        )

    # -- CaptureData / GetCaptureDataStatus -------------------------------------------------------------
    def status(self, capture_id: str) -> str:
        response = self.stub.GetCaptureDataStatus(pb.GetCaptureDataStatusRequest(capture_id=capture_id))
        return str(pb.CaptureDataStatus.Name(response.status))

    def wait_terminal(self, capture_id: str) -> tuple[str, list[str]]:
        """Poll until the status leaves IN_PROGRESS (the API has no notification to wait on)."""
        seen: list[str] = []
        deadline = time.monotonic() + CAPTURE_WAIT_SECONDS
        while True:
            status = self.status(capture_id)
            if not seen or seen[-1] != status:
                seen.append(status)
            if status != "IN_PROGRESS" or time.monotonic() > deadline:
                return status, seen
            time.sleep(0.02)

    def captures(self) -> None:
        r = self.report
        x, y = self.ref["x_small"], self.ref["y_small"]
        now = int(time.time()) - 1
        aux_in = [
            pb.AuxilaryData(name="meta", encoding=pb.JSON, byte_data=b'{"camera": 3, "site": "north"}'),
            pb.AuxilaryData(name="table", encoding=pb.CSV, byte_data=b"a,b\n1,2\n"),
            pb.AuxilaryData(name="blob", encoding=pb.BASE64, byte_data=base64.b64encode(b"\x00\x01\xfe\xff")),
        ]
        aux_out = [pb.AuxilaryData(name="scores", encoding=pb.JSON, byte_data=b"[0.25, 0.75]")]
        first = str(uuid.uuid4())

        def request(capture_id: str, model: str = "lin", seconds: int = now) -> Any:
            return pb.CaptureDataRequest(
                model_name=model,
                capture_id=capture_id,
                inference_timestamp=pb.Timestamp(seconds=seconds, nanos=250_000_000),
                input_tensors=[inline("x", x)],
                output_tensors=[inline("y", y)],
                inputs=aux_in,
                outputs=aux_out,
            )

        def capture_ok() -> tuple[bool, Any, str]:
            self.stub.CaptureData(request(first))
            return True, "OK", ""

        r.run("capture_data", "OK", capture_ok)
        shm_id = str(uuid.uuid4())
        shm_x = np.arange(16, dtype=np.float32).reshape(4, 4) / 7

        def capture_shm() -> tuple[bool, Any, str]:
            aux_bytes = b'{"from": "shared memory"}'
            with segment(shm_x.tobytes()) as t_shm, segment(aux_bytes) as a_shm:
                self.stub.CaptureData(
                    pb.CaptureDataRequest(
                        model_name="lin",
                        capture_id=shm_id,
                        inference_timestamp=pb.Timestamp(seconds=now),
                        input_tensors=[shm_tensor("x", shm_x, t_shm)],
                        inputs=[
                            pb.AuxilaryData(
                                name="shmaux",
                                encoding=pb.JSON,
                                shared_memory_handle=pb.SharedMemoryHandle(segment_id=a_shm.id),
                            )
                        ],
                    )
                )
                # The agent copies before returning: scribbling over the segments must not matter.
                t_shm.mode = 0o600
                t_shm.write(b"\xff" * shm_x.nbytes)
                a_shm.mode = 0o600
                a_shm.write(b"\x00" * len(aux_bytes))
            return True, "OK", ""

        r.run("capture_data_shared_memory", "OK", capture_shm)

        def success(capture_id: str) -> Callable[[], tuple[bool, Any, str]]:
            def body() -> tuple[bool, Any, str]:
                status, seen = self.wait_terminal(capture_id)
                return status == "SUCCESS", status, f"statuses seen: {seen}"

            return body

        r.run("capture_status_success", "SUCCESS", success(first))
        r.run("capture_status_success_shared_memory", "SUCCESS", success(shm_id))
        r.expect_code(
            "capture_duplicate_id",
            grpc.StatusCode.ALREADY_EXISTS,
            lambda: self.stub.CaptureData(request(first)),
        )
        r.run(
            "capture_duplicate_keeps_original",
            "SUCCESS",
            lambda: (self.status(first) == "SUCCESS", self.status(first), ""),
        )
        r.expect_code(
            "capture_future_timestamp",
            grpc.StatusCode.OUT_OF_RANGE,
            lambda: self.stub.CaptureData(request(str(uuid.uuid4()), seconds=int(time.time()) + 3600)),
        )
        for check, bad_id in [("capture_malformed_id", "not-a-uuid"), ("capture_empty_id", "")]:
            r.expect_code(
                check, grpc.StatusCode.INVALID_ARGUMENT, partial(self.stub.CaptureData, request(bad_id))
            )

        def capture_removed_segment() -> Any:
            shm = sysv_ipc.SharedMemory(sysv_ipc.IPC_PRIVATE, sysv_ipc.IPC_CREX, mode=0o444, size=x.nbytes)
            shm.detach()
            shm.remove()
            req = request(str(uuid.uuid4()))
            req.input_tensors[0].shared_memory_handle.segment_id = shm.id
            return self.stub.CaptureData(req)

        r.expect_code(
            "capture_shm_removed_segment", grpc.StatusCode.INVALID_ARGUMENT, capture_removed_segment
        )

        def slightly_future() -> str:
            capture_id = str(uuid.uuid4())
            try:
                self.stub.CaptureData(request(capture_id, seconds=int(time.time()) + 3))
            except grpc.RpcError as exc:
                return f"{_code_name(exc)}: {exc.details()}"
            return f"OK, then {self.wait_terminal(capture_id)[0]}"

        self.report.observations["capture_timestamp_3s_in_future"] = slightly_future()
        r.expect_code(
            "capture_model_not_loaded",
            grpc.StatusCode.NOT_FOUND,
            lambda: self.stub.CaptureData(request(str(uuid.uuid4()), model="nosuchmodel")),
        )

        def unknown_status() -> tuple[bool, Any, str]:
            # The spec's "NOT_FOUND for an unknown id": the CaptureDataStatus value NOT_FOUND (the
            # enum has one for this) or the gRPC status code; both are accepted, the report says which.
            try:
                status = self.status(str(uuid.uuid4()))
            except grpc.RpcError as exc:
                got = f"gRPC {_code_name(exc)}"
                return exc.code() == grpc.StatusCode.NOT_FOUND, got, exc.details() or ""
            return status == "NOT_FOUND", f"status {status}", ""

        r.run("capture_status_unknown_id", "NOT_FOUND", unknown_status)
        r.run(
            "capture_rejected_ids_unknown",
            "NOT_FOUND for ids whose CaptureData failed",
            lambda: self._rejected_unknown(request),
        )
        r.run(
            "capture_record_on_disk",
            "records as in capture-format.md",
            lambda: self._check_records(first, shm_id, x, y, shm_x, now),
        )

    def _rejected_unknown(self, request: Callable[..., Any]) -> tuple[bool, Any, str]:
        rejected = str(uuid.uuid4())
        try:
            self.stub.CaptureData(request(rejected, model="nosuchmodel"))
        except grpc.RpcError:
            pass
        status = self.status(rejected)
        return status == "NOT_FOUND", status, ""

    def _check_records(
        self, first: str, shm_id: str, x: np.ndarray, y: np.ndarray, shm_x: np.ndarray, seconds: int
    ) -> tuple[bool, Any, str]:
        root = Path(self.config["capture_dir"])
        found: dict[str, tuple[Path, dict[str, Any]]] = {}
        for path in root.rglob("*.jsonl"):
            for line in path.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    found[rec.get("eventMetadata", {}).get("eventId", "")] = (path, rec)
        problems: list[str] = []
        for capture_id in (first, shm_id):
            if capture_id not in found:
                problems.append(f"no record for {capture_id} under {root}")
        if problems:
            return False, "missing records", "; ".join(problems)
        fleet, model, version = (
            self.config["fleet"],
            self.config["package_name"],
            self.config["package_version"],
        )
        path, rec = found[first]
        parts = path.relative_to(root).parts
        layout_ok = (
            len(parts) == 7
            and parts[:2] == (fleet, model)
            and all(
                re.fullmatch(p, s)
                for p, s in zip([r"\d{4}", r"\d{2}", r"\d{2}", r"\d{2}"], parts[2:6], strict=True)
            )
            and re.fullmatch(r"[0-9a-f]{32}\.jsonl", parts[6]) is not None
        )
        if not layout_ok:
            problems.append(f"key {'/'.join(parts)} is not <fleet>/<model>/YYYY/MM/DD/HH/<32-hex>.jsonl")
        meta = rec.get("eventMetadata", {})
        want_meta = {
            "eventId": first,
            "deviceId": self.config["device"],
            "deviceFleetName": fleet,
            "modelName": model,
            "modelVersion": version,
            "inferenceTime": datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        }
        for key, value in want_meta.items():
            if meta.get(key) != value:
                problems.append(f"eventMetadata.{key} = {meta.get(key)!r}, want {value!r}")
        if rec.get("eventVersion") != "0":
            problems.append(f"eventVersion = {rec.get('eventVersion')!r}")

        def entry(section: str, rec: dict[str, Any], name: str) -> dict[str, Any]:
            for item in rec.get(section, []):
                if item.get("name") == name:
                    return dict(item)
            problems.append(f"{section} has no entry {name!r}")
            return {}

        def tensor_entry(section: str, rec: dict[str, Any], name: str, array: np.ndarray, mode: str) -> None:
            item = entry(section, rec, name)
            if not item:
                return
            shape = ", ".join(str(d) for d in array.shape)
            if item.get("observedContentType") != f"Tensor[FLOAT32; {shape}]":
                problems.append(f"{section}.{name} observedContentType {item.get('observedContentType')!r}")
            if item.get("mode") != mode:
                problems.append(f"{section}.{name} mode {item.get('mode')!r}")
            if item.get("data") != base64.b64encode(array.tobytes()).decode():
                problems.append(f"{section}.{name} data differs from the captured bytes")

        def aux_entry(section: str, rec: dict[str, Any], name: str, enc: str, raw: bytes, mode: str) -> None:
            item = entry(section, rec, name)
            if not item:
                return
            if item.get("encoding") != enc or item.get("mode") != mode:
                problems.append(
                    f"{section}.{name} encoding/mode {item.get('encoding')!r}/{item.get('mode')!r}"
                )
            if item.get("data") != base64.b64encode(raw).decode():
                problems.append(f"{section}.{name} data differs from the captured bytes")

        tensor_entry("deviceFleetInputs", rec, "x", x, "Input")
        tensor_entry("deviceFleetOutputs", rec, "y", y, "Output")
        aux_entry(
            "deviceFleetAuxiliaryInputs", rec, "meta", "JSON", b'{"camera": 3, "site": "north"}', "Input"
        )
        aux_entry("deviceFleetAuxiliaryInputs", rec, "table", "CSV", b"a,b\n1,2\n", "Input")
        aux_entry(
            "deviceFleetAuxiliaryInputs",
            rec,
            "blob",
            "BASE64",
            base64.b64encode(b"\x00\x01\xfe\xff"),
            "Input",
        )
        aux_entry("deviceFleetAuxiliaryOutputs", rec, "scores", "JSON", b"[0.25, 0.75]", "Output")
        _, shm_rec = found[shm_id]
        tensor_entry("deviceFleetInputs", shm_rec, "x", shm_x, "Input")
        aux_entry(
            "deviceFleetAuxiliaryInputs", shm_rec, "shmaux", "JSON", b'{"from": "shared memory"}', "Input"
        )
        return not problems, "records as sent" if not problems else "record differs", "; ".join(problems)

    def capture_buffer_full(self) -> None:
        """Make the Disk destination unwritable, then capture until the bounded buffer refuses."""
        r = self.report
        root = Path(self.config["capture_dir"])
        limit = int(self.config["capture_buffer_size"]) + int(self.config["capture_batch_size"]) + 2
        codes: list[str] = []
        accepted: list[str] = []
        x = self.ref["x_small"]
        moved = root.with_name(root.name + ".moved")
        root.rename(moved)  # atomic: a write the agent has in flight lands in the moved directory
        root.write_text("a file where the capture directory was: every write fails\n")
        try:
            for _ in range(limit):
                capture_id = str(uuid.uuid4())
                try:
                    self.stub.CaptureData(
                        pb.CaptureDataRequest(
                            model_name="lin",
                            capture_id=capture_id,
                            inference_timestamp=pb.Timestamp(seconds=int(time.time()) - 1),
                            input_tensors=[inline("x", x)],
                        )
                    )
                except grpc.RpcError as exc:
                    codes.append(_code_name(exc))
                    self.report.error_messages.append(("capture_buffer_full", exc.details() or ""))
                    break
                codes.append("OK")
                accepted.append(capture_id)
            statuses = sorted({self.status(c) for c in accepted})
        finally:
            root.unlink()
            moved.rename(root)
        r.record(
            "capture_buffer_full",
            codes[-1:] == ["RESOURCE_EXHAUSTED"],
            "RESOURCE_EXHAUSTED once the buffer holds buffer_size unwritten captures",
            codes,
            f"buffer_size {self.config['capture_buffer_size']}; statuses of the accepted captures: {statuses}",
        )
        r.record(
            "capture_buffer_full_pending_not_success",
            "SUCCESS" not in statuses,
            "accepted captures not SUCCESS while the destination is unwritable",
            statuses,
        )

    # -- UnLoadModel -----------------------------------------------------------------------------------------
    def unloads(self) -> None:
        r = self.report
        x = self.ref["x_static"]

        def unload() -> tuple[bool, Any, str]:
            self.stub.UnLoadModel(pb.UnLoadModelRequest(name="lin-static"))
            got = self.aliases()
            return got == ["lin"], got, "ListModels after UnLoadModel('lin-static')"

        r.run("unload_model", ["lin"], unload)
        r.expect_code(
            "describe_after_unload",
            grpc.StatusCode.NOT_FOUND,
            lambda: self.stub.DescribeModel(pb.DescribeModelRequest(name="lin-static")),
        )
        r.expect_code(
            "predict_after_unload",
            grpc.StatusCode.NOT_FOUND,
            lambda: self.predict("lin-static", inline("x", x)),
        )
        r.expect_code(
            "unload_unknown_alias",
            grpc.StatusCode.NOT_FOUND,
            lambda: self.stub.UnLoadModel(pb.UnLoadModelRequest(name="lin-static")),
        )

        def reuse() -> tuple[bool, Any, str]:
            model = self.load("lin-static", "static")
            ok, got, detail = self.predict_check("lin-static", inline("x", x), self.ref["y_static"])
            self.stub.UnLoadModel(pb.UnLoadModelRequest(name="lin-static"))
            return ok and model.name == "lin-static", got, detail

        r.run("alias_reused_after_unload", "loads and predicts again", reuse)

        def budget_freed() -> tuple[bool, Any, str]:
            # Two "half" models do not fit the memory budget together; unloading one makes room.
            steps: list[str] = []
            self.load("half-a", "half")
            steps.append("half-a OK")
            try:
                self.load("half-b", "half")
                steps.append("half-b OK")
            except grpc.RpcError as exc:
                steps.append(f"half-b {_code_name(exc)}")
            self.stub.UnLoadModel(pb.UnLoadModelRequest(name="half-a"))
            steps.append("unload half-a OK")
            try:
                self.load("half-b", "half")
                steps.append("half-b OK")
                self.stub.UnLoadModel(pb.UnLoadModelRequest(name="half-b"))
            except grpc.RpcError as exc:
                steps.append(f"half-b {_code_name(exc)}: {exc.details()}")
            want = ["half-a OK", "half-b RESOURCE_EXHAUSTED", "unload half-a OK", "half-b OK"]
            return steps == want, steps, f"want {want}"

        r.run("unload_frees_memory_budget", "the budget is given back on unload", budget_freed)

        def last() -> tuple[bool, Any, str]:
            self.stub.UnLoadModel(pb.UnLoadModelRequest(name="lin"))
            got = self.aliases()
            return got == [], got, ""

        r.run("unload_last_model", [], last)

    def close(self) -> None:
        self.channel.close()


def _meta(items: Any) -> list[tuple[str, str]]:
    return [(m.name, pb.DataType.Name(m.data_type)) for m in items]


def _meta_matches(model: Any, want_in: list[tuple[str, str]], want_out: list[tuple[str, str]]) -> bool:
    got_in, got_out = _meta(model.input_tensor_metadatas), _meta(model.output_tensor_metadatas)
    return got_in in ([], want_in) and got_out in ([], want_out)


def describe_model(model: Any) -> dict[str, Any]:
    return {
        "name": model.name,
        "url": model.url,
        "inputs": [
            (m.name, pb.DataType.Name(m.data_type), list(m.shape)) for m in model.input_tensor_metadatas
        ],
        "outputs": [
            (m.name, pb.DataType.Name(m.data_type), list(m.shape)) for m in model.output_tensor_metadatas
        ],
    }


def own_segments() -> list[dict[str, int]]:
    """System V segments this process created that still exist (attached by someone else)."""
    lines = Path("/proc/sysvipc/shm").read_text().splitlines()
    header = lines[0].split()
    rows = [dict(zip(header, line.split(), strict=True)) for line in lines[1:]]
    pid = str(os.getpid())
    return [
        {
            "shmid": int(r["shmid"]),
            "size": int(r["size"]),
            "nattch": int(r["nattch"]),
            "perms": int(r["perms"], 8),
        }
        for r in rows
        if r["cpid"] == pid
    ]


def main(argv: list[str]) -> int:
    global pb, pb_grpc
    config = json.loads(Path(argv[1]).read_text())
    sys.path.insert(0, config["stubs_dir"])
    import vendor_agent_pb2  # type: ignore[import-not-found]
    import vendor_agent_pb2_grpc  # type: ignore[import-not-found]

    pb, pb_grpc = vendor_agent_pb2, vendor_agent_pb2_grpc
    report = Report()
    report.record(
        "vendor_stubs",
        pb.DESCRIPTOR.package == "AWS.SageMaker.Edge"
        and pb.DESCRIPTOR.services_by_name["Agent"].full_name == "AWS.SageMaker.Edge.Agent",
        "package AWS.SageMaker.Edge, service Agent",
        pb.DESCRIPTOR.package,
    )
    app = VendorApp(config, report)
    try:
        for phase in (app.models, app.predicts, app.captures, app.capture_buffer_full, app.unloads):
            try:
                phase()
            except Exception:
                report.record(
                    f"phase_{phase.__name__}_crashed", False, "no crash", "crash", traceback.format_exc()
                )
    finally:
        app.close()
    empty = [name for name, message in report.error_messages if not message.strip()]
    report.record("errors_carry_messages", not empty, "every error has a message", empty or "all have one")
    report.record(
        "edgefleet_never_imported",
        not any(m == "edgefleet" or m.startswith("edgefleet.") for m in sys.modules),
        "the vendor client never imports edgefleet",
        sorted(m for m in sys.modules if m.startswith("edgefleet")),
    )
    report.observations["error_messages"] = dict(report.error_messages)
    report.observations["own_segments_left"] = own_segments()
    json.dump({"checks": report.checks, "observations": report.observations}, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
