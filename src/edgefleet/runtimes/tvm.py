"""TVM backend: shared libraries compiled by ``edgefleet compile --backend tvm``, run by the Relax VM.

An artifact is two files: the library (``model.so``: the Relax VM bytecode, the compiled kernels
and the weights, for one CPU architecture) and its sidecar ``model.tvm.json``
(:class:`TVMArtifactInfo`: the TVM release and target it was built for, whether it was tuned, and
the entry function's tensors in call order). The library is native code for ``info.arch``; loading
it on another architecture is FAILED_PRECONDITION before anything is ``dlopen``-ed.

A Relax ``VirtualMachine`` keeps per-call state (registers, frames), so one instance must not run
two inferences at once. :class:`TVMModel` keeps a pool of VMs over the one loaded library (created
on demand, at most ``RuntimeOptions.concurrency``); concurrent ``run`` calls each take one. Calls
into TVM release the GIL (``tvm_ffi`` does so by default), so pooled VMs compute in parallel.

TVM's kernel thread pool is per calling thread: ``intra_op_threads`` is applied to each agent
thread the first time it runs the model. Devices that only serve artifacts can set
``TVM_USE_RUNTIME_LIB=1`` in the agent's environment so ``import tvm`` maps the 3 MB runtime
library instead of the 260 MB compiler (see docs/tvm.md); this backend only uses the runtime.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import tvm  # type: ignore[import-untyped, unused-ignore]
import tvm.runtime.vm  # type: ignore[import-untyped, unused-ignore]
import tvm_ffi

from edgefleet.core.errors import FailedPrecondition, InvalidArgument
from edgefleet.core.manifest import Manifest
from edgefleet.core.platform import host_arch
from edgefleet.core.tensors import TensorSpec
from edgefleet.runtimes.base import Backend, InstancePool, LoadedModel, RuntimeOptions

#: Version of the sidecar format this backend reads and the compiler writes.
ARTIFACT_FORMAT = 1
#: Suffix of the sidecar next to the library: ``model.so`` -> ``model.tvm.json``.
METADATA_SUFFIX = ".tvm.json"
# Working memory on top of the library: VM registers, the pooled allocator's activations, threads.
_OVERHEAD_BYTES = 48 * 1024 * 1024
# Byte alignment of TVM's own tensor allocations (kAllocAlignment), which its kernels may assume.
_ALIGNMENT = 64
# TVM thread-pool affinity mode "big cores" (runtime.config_threadpool's first argument).
_AFFINITY_BIG = 1
# tvm_ffi maps TVM's C++ errors onto these Python built-ins (ICHECK -> RuntimeError/ValueError...).
_TVM_ERRORS = (RuntimeError, ValueError, TypeError, AttributeError, OSError)
# ELF e_machine values of the architectures manifests name.
_ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "armv7l"}


def metadata_path(model_file: str) -> str:
    """The sidecar's relative path for the library ``model_file`` (``a/model.so`` -> ``a/model.tvm.json``)."""
    path = PurePosixPath(model_file)
    return str(path.with_name(path.stem + METADATA_SUFFIX))


def tvm_version() -> str:
    """The installed TVM release (``0.27.0.post1``)."""
    return str(tvm.__version__)


@dataclass(frozen=True)
class TVMArtifactInfo:
    """What the compiler records about a TVM library, written as JSON next to it.

    ``tvm_version``: the TVM release that built it. ``arch``: the CPU architecture of its native
    code. ``target``: the LLVM target (``mtriple``, ``mcpu``, ``mattr``...) as given to TVM.
    ``tuned``: whether MetaSchedule tuned every kernel (an untuned build is far slower than ONNX
    Runtime and is never presented as optimised). ``tuning``: the budget asked for and what was
    done. ``inputs``/``outputs``: the entry function's tensors, inputs in call order.
    """

    tvm_version: str
    arch: str
    target: Mapping[str, Any]
    tuned: bool
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    entry: str = "main"
    tuning: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = ARTIFACT_FORMAT

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "format_version": self.format_version,
            "tvm_version": self.tvm_version,
            "arch": self.arch,
            "target": dict(self.target),
            "tuned": self.tuned,
            "tuning": dict(self.tuning),
            "entry": self.entry,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    def write(self, path: Path) -> None:
        """Write the JSON form to ``path``."""
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, raw: object) -> TVMArtifactInfo:
        """Parse the JSON form; FAILED_PRECONDITION when malformed or of an unknown format."""
        if not isinstance(raw, dict):
            raise FailedPrecondition("TVM artifact metadata must be a JSON object")
        version = raw.get("format_version")
        if version != ARTIFACT_FORMAT:
            raise FailedPrecondition(
                f"TVM artifact metadata format {version!r} is not supported (this edgefleet reads {ARTIFACT_FORMAT})"
            )
        try:
            target = raw["target"]
            tuning = raw.get("tuning", {})
            if not isinstance(target, dict) or not isinstance(tuning, dict):
                raise FailedPrecondition("TVM artifact metadata: 'target' and 'tuning' must be objects")
            return cls(
                tvm_version=str(raw["tvm_version"]),
                arch=str(raw["arch"]),
                target=target,
                tuned=bool(raw["tuned"]),
                tuning=tuning,
                entry=str(raw.get("entry", "main")),
                inputs=tuple(TensorSpec.from_dict(t) for t in raw["inputs"]),
                outputs=tuple(TensorSpec.from_dict(t) for t in raw["outputs"]),
            )
        except KeyError as exc:
            raise FailedPrecondition(f"TVM artifact metadata lacks {exc.args[0]!r}") from exc
        except (TypeError, InvalidArgument) as exc:
            raise FailedPrecondition(f"TVM artifact metadata is malformed: {exc}") from exc

    @classmethod
    def read(cls, path: Path) -> TVMArtifactInfo:
        """Read and parse ``path``; FAILED_PRECONDITION if it is missing or malformed."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FailedPrecondition(f"cannot read TVM artifact metadata {path.name}: {exc}") from exc
        return cls.from_dict(raw)


class TVMModel(LoadedModel):
    """A loaded TVM library with a pool of Relax VMs over it (one per concurrent inference)."""

    def __init__(
        self,
        library: Any,
        info: TVMArtifactInfo,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        options: RuntimeOptions,
    ) -> None:
        self._library: Any = library
        self._entry = info.entry
        self.inputs = inputs
        self.outputs = outputs
        self._threads = options.intra_op_threads
        self._configured = threading.local()
        # Create the first VM now so a library that cannot start fails at load, not at Predict.
        # A Relax VM is not thread-safe: one per concurrent call.
        self._pool: InstancePool[Any] = InstancePool(self._new_vm, options.concurrency, self._new_vm())

    def _new_vm(self) -> Any:
        try:
            vm = tvm.runtime.vm.VirtualMachine(self._library, tvm.cpu(), memory_cfg="pooled")
            function = vm[self._entry]
        except _TVM_ERRORS as exc:
            raise FailedPrecondition(f"TVM cannot start the model's VM: {exc}") from exc
        return function

    def _configure_thread(self) -> None:
        # TVM's kernel thread pool belongs to the calling thread; size it once per thread.
        if self._threads and not getattr(self._configured, "done", False):
            tvm.get_global_func("runtime.config_threadpool")(_AFFINITY_BIG, self._threads)
            self._configured.done = True

    def _arguments(self, inputs: Mapping[str, np.ndarray]) -> list[Any]:
        missing = [s.name for s in self.inputs if s.name not in inputs]
        if missing:
            raise InvalidArgument(f"missing input tensor(s) {', '.join(missing)}")
        arguments = []
        for spec in self.inputs:
            value = np.asarray(inputs[spec.name])
            if not spec.accepts_shape(value.shape):
                raise InvalidArgument(
                    f"input {spec.name!r} has shape {list(value.shape)}; this compiled model takes "
                    f"{list(spec.shape)}"
                )
            # Zero-copy: TVM reads the caller's buffer through DLPack (tvm.runtime.tensor's copy
            # costs ~90 us even for a few bytes).
            arguments.append(tvm_ffi.from_dlpack(_aligned(value, spec.dtype.numpy)))
        return arguments

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if self._library is None:
            raise FailedPrecondition("model was unloaded")
        arguments = self._arguments(inputs)
        self._configure_thread()
        with self._pool.lease() as function:
            try:
                result = function(*arguments)
            except _TVM_ERRORS as exc:
                raise InvalidArgument(f"TVM inference failed: {exc}") from exc
        # The entry returns one tensor, or an array of them for several outputs. Outputs are copied
        # (cheaply, through DLPack): an output may alias a model constant the caller must not edit.
        values = [result] if isinstance(result, tvm_ffi.Tensor) else list(result)
        return [np.from_dlpack(value).copy() for value in values]

    def close(self) -> None:
        self._library = None
        self._pool.clear()


class TVMBackend(Backend):
    """Loads TVM shared libraries (``.so`` + ``.tvm.json``) on the CPU with the Relax VM."""

    name = "tvm"
    extra = "tvm"

    def version(self) -> str:
        return tvm_version()

    def estimate_memory(
        self, package_dir: Path, manifest: Manifest, options: RuntimeOptions | None = None
    ) -> int:
        library = (package_dir / manifest.model_file).stat().st_size
        # The mapped library (weights included) plus the VMs' copies of the constants.
        return 2 * library + _OVERHEAD_BYTES

    def load(self, package_dir: Path, manifest: Manifest, options: RuntimeOptions) -> LoadedModel:
        info = TVMArtifactInfo.read(package_dir / metadata_path(manifest.model_file))
        path = package_dir / manifest.model_file
        here = host_arch()
        arch = library_arch(path)
        if arch != here:
            raise FailedPrecondition(f"{manifest.model_file} is TVM code for {arch}; this device is {here}")
        if info.arch != arch:
            raise FailedPrecondition(
                f"{metadata_path(manifest.model_file)} says {info.arch} but {manifest.model_file} is {arch} code"
            )
        inputs = _matched(info.inputs, manifest.inputs, "input")
        outputs = _matched(info.outputs, manifest.outputs, "output")
        try:
            library = tvm.runtime.load_module(str(path))
        except _TVM_ERRORS as exc:
            raise FailedPrecondition(f"TVM cannot load {manifest.model_file}: {exc}") from exc
        return TVMModel(library, info, inputs, outputs, options)


def _aligned(value: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """``value`` as a C-contiguous ``dtype`` array whose data is aligned as TVM aligns its own tensors.

    Returned as is when it already is one (the common case: numpy's large allocations are
    page-aligned), else copied into a fresh aligned buffer.
    """
    if value.dtype == dtype and value.flags.c_contiguous and value.ctypes.data % _ALIGNMENT == 0:
        return value
    raw = np.empty(value.size * dtype.itemsize + _ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % _ALIGNMENT
    aligned = raw[start : start + value.size * dtype.itemsize].view(dtype).reshape(value.shape)
    aligned[...] = value
    return aligned


def library_arch(path: Path) -> str:
    """The architecture of the ELF shared library at ``path``; FAILED_PRECONDITION unless it is one.

    Besides naming the architecture this checks that the headers and every segment lie inside the
    file: ``dlopen`` of a truncated library can kill the process with SIGBUS instead of failing.
    """
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            header = handle.read(64)
            # 64-bit little-endian shared object: e_ident class 2, data 1; e_type 3 (ET_DYN).
            if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
                raise FailedPrecondition(f"{path.name} is not a 64-bit little-endian ELF library")
            e_type, e_machine = struct.unpack_from("<HH", header, 16)
            e_phoff, e_shoff = struct.unpack_from("<QQ", header, 32)
            e_phentsize, e_phnum, e_shentsize, e_shnum = struct.unpack_from("<HHHH", header, 54)
            if e_type != 3:
                raise FailedPrecondition(f"{path.name} is an ELF file but not a shared library")
            ends = [e_phoff + e_phentsize * e_phnum, e_shoff + e_shentsize * e_shnum]
            if e_phentsize < 56 or ends[0] > size:
                raise FailedPrecondition(f"{path.name} is truncated or corrupt (program headers)")
            handle.seek(e_phoff)
            table = handle.read(e_phentsize * e_phnum)
    except OSError as exc:
        raise FailedPrecondition(f"cannot read {path.name}: {exc}") from exc
    for index in range(e_phnum):
        # Elf64_Phdr: p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, ...
        p_offset, p_filesz = struct.unpack_from("<8xQ16xQ", table, index * e_phentsize)
        ends.append(p_offset + p_filesz)
    if max(ends) > size:
        raise FailedPrecondition(f"{path.name} is truncated or corrupt ({size} bytes, needs {max(ends)})")
    return _ELF_MACHINES.get(e_machine, f"ELF machine {e_machine}")


def _matched(
    compiled: tuple[TensorSpec, ...], declared: tuple[TensorSpec, ...], what: str
) -> tuple[TensorSpec, ...]:
    """The compiled tensors (call order, fixed shapes), checked against the manifest's by name."""
    if not declared:
        return compiled
    names = {t.name for t in compiled}
    unknown = [t.name for t in declared if t.name not in names]
    if unknown or len(declared) != len(compiled):
        raise FailedPrecondition(
            f"the manifest's {what}s {[t.name for t in declared]} do not match the compiled model's "
            f"{[t.name for t in compiled]}"
        )
    return compiled
