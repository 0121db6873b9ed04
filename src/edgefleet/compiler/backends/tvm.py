"""TVM candidates: ONNX -> Relax -> MetaSchedule-tuned kernels -> one shared library for the target CPU.

The artifact is ``model.so`` (Relax VM bytecode, kernels and weights, native code for the target's
architecture) and ``model.tvm.json`` (:class:`edgefleet.runtimes.tvm.TVMArtifactInfo`), served on
the device by :mod:`edgefleet.runtimes.tvm`.

Honesty rules (docs/tvm.md):

* TVM code that MetaSchedule has not tuned is 28-147x slower than ONNX Runtime here. A build is
  marked optimised only when every kernel of the model got a valid tuned schedule; otherwise it is
  named ``tvm-untuned``, its metadata says ``tuned: false``, and ``auto`` never selects it.
* Tuning measures candidate kernels, so it needs the target CPU. A target this host cannot execute
  (another architecture, or CPU features this host lacks) is compiled untuned, marked
  ``runs_on_host=False`` and reported as such: it cannot be tuned, benchmarked or verified here.
* The LLVM target is always explicit (triple, CPU, features from the catalogue): TVM silently
  compiles for a generic CPU when given names it does not know, so those are checked first.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgefleet.compiler.targets import host_cpu_features, matches_host
from edgefleet.compiler.types import (
    BuildOptions,
    CandidateArtifact,
    CandidateUnavailable,
    LogFn,
    Quantization,
    TargetSpec,
)
from edgefleet.core.errors import InvalidArgument
from edgefleet.core.platform import host_arch, normalize_arch
from edgefleet.core.tensors import DataType, TensorSpec

_log = logging.getLogger(__name__)

RUNTIME = "tvm"
MODEL_FILE = "model.so"
#: Architectures TVM builds libraries for here (LLVM triples' first component).
SUPPORTED_ARCHES = ("x86_64", "aarch64")
# Errors TVM's Python and C++ layers raise for a model or target they cannot handle.
_TVM_ERRORS = (RuntimeError, ValueError, TypeError, AttributeError, KeyError, IndexError, NotImplementedError)


def build_tvm(onnx_path: Path, target: TargetSpec, options: BuildOptions, log: LogFn) -> CandidateArtifact:
    """Compile ``onnx_path`` with TVM for ``target`` under ``options.work_dir``, tuning within budget.

    INVALID_ARGUMENT for a target TVM cannot compile for as described (unknown CPU or feature,
    triple of another architecture) or a negative budget; CandidateUnavailable
    (FAILED_PRECONDITION) when TVM, a C compiler for the target or xgboost is missing, or the model
    uses an operator or precision this builder does not handle.
    """
    from edgefleet.compiler.backends.tvm_tuning import TuningBudget

    budget = TuningBudget(options.tune_trials, options.tune_minutes)
    if RUNTIME not in target.backends:
        raise InvalidArgument(
            f"target {target.name!r} is not served by TVM (its backends: {', '.join(target.backends)})"
        )
    if options.quantize is not Quantization.NONE:
        raise CandidateUnavailable(
            f"TVM candidates are fp32 only: the {options.quantize.value} build is left to ONNX Runtime "
            "and OpenVINO (TVM's ONNX importer turns QDQ int8 back into float arithmetic)"
        )
    if target.arch not in SUPPORTED_ARCHES:
        raise CandidateUnavailable(f"TVM builds here for {', '.join(SUPPORTED_ARCHES)}, not {target.arch}")
    tvm = _import_tvm()
    on_host, why_not = _runs_on_host(target)
    llvm = llvm_target(target, options.threads)
    linker = _linker(target)

    model = _load_onnx(onnx_path)
    inputs = _input_specs(model, options.input_shapes)
    log(f"importing the ONNX graph into TVM Relax ({len(model.graph.node)} nodes)")
    mod = _to_relax(model, inputs)
    outputs = _output_specs(model, mod)
    tvm_target = tvm.target.Target(llvm)

    notes: list[str] = []
    tuning: dict[str, Any] = {"budget": budget.to_dict()}
    tuned = False
    database = None
    if budget.requested and on_host:
        from edgefleet.compiler.backends.tvm_tuning import tune

        _require_xgboost()
        try:
            database, outcome = tune(
                mod, tvm_target, budget, options.work_dir / "tuning", log, seed=options.seed
            )
        except _TVM_ERRORS as exc:
            raise CandidateUnavailable(f"TVM tuning failed: {_short(exc)}") from exc
        tuning.update(outcome.to_dict())
        tuned = outcome.complete
        stopped = {"trials": "trial budget spent", "time": "time budget spent"}.get(
            outcome.stopped_by, "search spaces exhausted"
        )
        notes.append(
            f"MetaSchedule: {outcome.trials} trials, {outcome.tasks_tuned}/{outcome.tasks} kernels tuned "
            f"in {outcome.seconds:.0f} s ({stopped})"
        )
        if outcome.failed:
            notes.append(
                f"{outcome.failed} tuning trials failed to build or run; first: {outcome.first_error}"
            )
        if not tuned:
            notes.append(
                f"tuned: false — {outcome.tasks - outcome.tasks_tuned} kernels got no tuned schedule within "
                "the budget; raise --tune-trials/--tune-minutes"
            )
    elif budget.requested:
        notes.append(f"tuned: false — MetaSchedule must run candidate kernels on the target CPU: {why_not}")
    else:
        notes.append(
            "tuned: false — no tuning budget (--tune-trials/--tune-minutes); untuned TVM code is slow"
        )
    if not on_host:
        notes.append(f"not benchmarked or verified on this host: {why_not}")

    log(
        f"compiling with TVM for {llvm['mtriple']} ({llvm['mcpu']}{' ' if llvm.get('mattr') else ''}"
        f"{','.join(llvm.get('mattr', []))}){' with tuned kernels' if database is not None else ''}"
    )
    try:
        if database is not None:
            from edgefleet.compiler.backends.tvm_tuning import compile_tuned

            executable = compile_tuned(mod, tvm_target, database)
        else:
            executable = tvm.compile(mod, target=tvm_target)
    except _TVM_ERRORS as exc:
        raise CandidateUnavailable(f"TVM cannot compile the model: {_short(exc)}") from exc
    library = options.work_dir / MODEL_FILE
    log(f"linking {MODEL_FILE} with {linker or 'the host C compiler'}")
    try:
        if linker is None:
            executable.export_library(str(library))
        else:
            from tvm.support import cc  # type: ignore[import-untyped, unused-ignore]

            executable.export_library(str(library), fcompile=cc.cross_compiler(linker))
    except _TVM_ERRORS as exc:
        raise CandidateUnavailable(f"linking the TVM library failed: {_short(exc)}") from exc

    from edgefleet.runtimes.tvm import TVMArtifactInfo, metadata_path, tvm_version

    version = tvm_version()
    sidecar = metadata_path(MODEL_FILE)
    TVMArtifactInfo(
        tvm_version=version,
        arch=target.arch,
        target=llvm,
        tuned=tuned,
        inputs=inputs,
        outputs=outputs,
        tuning=tuning,
    ).write(options.work_dir / sidecar)
    return CandidateArtifact(
        name=RUNTIME if tuned else f"{RUNTIME}-untuned",
        runtime=RUNTIME,
        # Libraries are built against this release's runtime ABI; older runtimes may lack symbols.
        runtime_min_version=".".join(version.split(".")[:2]),
        directory=options.work_dir,
        model_file=MODEL_FILE,
        extra_files=(sidecar,),
        quantization=Quantization.NONE,
        optimised=tuned,
        runs_on_host=on_host,
        tool_versions={"tvm": version, **({"cross-linker": linker} if linker else {})},
        notes=(f"TVM {target.arch} library ({llvm['mcpu']}), fp32", *notes),
    )


def llvm_target(target: TargetSpec, threads: int = 0) -> dict[str, Any]:
    """The TVM/LLVM target dict for ``target``; INVALID_ARGUMENT if LLVM does not know its names.

    ``num-cores`` (used when tuning parallel loops) is ``threads`` when given, else this host's
    core count.
    """
    tvm = _import_tvm()
    from tvm.target import codegen  # type: ignore[import-untyped, unused-ignore]

    triple_arch = normalize_arch(target.llvm_triple.split("-")[0])
    if triple_arch not in SUPPORTED_ARCHES or triple_arch != target.arch:
        raise InvalidArgument(
            f"target {target.name!r}: LLVM triple {target.llvm_triple!r} does not build {target.arch} code"
        )
    if not codegen.llvm_is_valid_cpu(target.llvm_mcpu, target.llvm_triple):
        known = codegen.llvm_get_cpu_archlist(
            tvm.target.Target({"kind": "llvm", "mtriple": target.llvm_triple})
        )
        sample = ", ".join(sorted(str(c) for c in known)[:12])
        raise InvalidArgument(
            f"target {target.name!r}: LLVM does not know the CPU {target.llvm_mcpu!r} for "
            f"{target.llvm_triple} (known ones include {sample}...)"
        )
    result: dict[str, Any] = {
        "kind": "llvm",
        "mtriple": target.llvm_triple,
        "mcpu": target.llvm_mcpu,
        "num-cores": threads if threads > 0 else (os.cpu_count() or 1),
    }
    if target.llvm_mattr:
        bad = [m for m in target.llvm_mattr if len(m) < 2 or m[0] not in "+-"]
        if bad:
            raise InvalidArgument(
                f"target {target.name!r}: LLVM features must read +name or -name, got {bad}"
            )
        result["mattr"] = list(target.llvm_mattr)
        enabled = {str(f) for f in codegen.llvm_get_cpu_features(tvm.target.Target(result))}
        unknown = [m for m in target.llvm_mattr if m[0] == "+" and m[1:] not in enabled]
        if unknown:
            raise InvalidArgument(
                f"target {target.name!r}: LLVM does not know the CPU feature(s) {', '.join(unknown)} "
                f"for {target.llvm_triple}"
            )
    return result


def _import_tvm() -> Any:
    try:
        import tvm  # type: ignore[import-untyped, unused-ignore]
        from tvm import relax  # type: ignore[import-untyped, unused-ignore]  # noqa: F401

        from edgefleet.compiler.backends.tvm_tuning import speed_up_tvmscript_imports
    except ImportError as exc:
        raise CandidateUnavailable(
            f"TVM is not installed here ({exc}): pip install 'edgefleet[tvm]'"
        ) from exc
    speed_up_tvmscript_imports()
    return tvm


def _require_xgboost() -> None:
    try:
        import xgboost  # noqa: F401
    except ImportError as exc:
        raise CandidateUnavailable(
            f"TVM tuning needs xgboost for its cost model ({exc}): pip install 'edgefleet[tvm]'"
        ) from exc


def _runs_on_host(target: TargetSpec) -> tuple[bool, str]:
    """Whether this host executes code for ``target``, and if not, why."""
    here = host_arch()
    if here != target.arch:
        return False, f"the target is {target.arch} and this host is {here}"
    if not matches_host(target):
        missing = sorted(set(target.cpu_features) - host_cpu_features())
        return False, f"this host's CPU lacks {', '.join(missing)}"
    return True, ""


def _linker(target: TargetSpec) -> str | None:
    """The cross C compiler that links the library, or None for the host's; CandidateUnavailable if absent."""
    if target.arch == host_arch():
        from tvm.support import cc  # type: ignore[import-untyped, unused-ignore]

        if cc.get_cc() is None:
            raise CandidateUnavailable("TVM needs a C compiler to link its library: apt-get install gcc")
        return None
    if not target.cross_compiler:
        raise CandidateUnavailable(f"target {target.name!r} names no cross compiler for {target.arch}")
    if shutil.which(target.cross_compiler) is None:
        package = target.cross_compiler.removesuffix("-gcc").replace("_", "-")
        raise CandidateUnavailable(
            f"cross-compiling for {target.arch} needs {target.cross_compiler}: apt-get install gcc-{package}"
        )
    return target.cross_compiler


def _load_onnx(path: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ValueError...
        raise InvalidArgument(f"cannot read the ONNX model {path.name}: {exc}") from exc


def _input_specs(model: Any, shapes: Mapping[str, tuple[int, ...]]) -> tuple[TensorSpec, ...]:
    """The graph's real inputs (initialisers excluded), in order, with concrete shapes."""
    import numpy as np
    from onnx import helper

    initialisers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initialisers:
            continue
        tensor = value.type.tensor_type
        try:
            dtype = DataType.from_numpy(np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)))
        except (InvalidArgument, KeyError, TypeError) as exc:
            raise CandidateUnavailable(
                f"TVM candidate: input {value.name!r} has an unsupported type ({exc})"
            ) from exc
        if value.name in shapes:
            shape = tuple(int(d) for d in shapes[value.name])
        else:
            # Static dims as declared; dynamic ones (named or unknown) are compiled as 1.
            shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in tensor.shape.dim)
        if any(d <= 0 for d in shape):
            raise InvalidArgument(f"TVM needs a concrete shape for input {value.name!r}, got {list(shape)}")
        specs.append(TensorSpec(value.name, dtype, shape))
    return tuple(specs)


def _to_relax(model: Any, inputs: tuple[TensorSpec, ...]) -> Any:
    from tvm.relax.frontend.onnx import from_onnx  # type: ignore[import-untyped, unused-ignore]

    try:
        return from_onnx(
            model,
            shape_dict={s.name: list(s.shape) for s in inputs},
            dtype_dict={s.name: str(s.dtype.numpy) for s in inputs},
            keep_params_in_input=False,
        )
    except _TVM_ERRORS as exc:
        raise CandidateUnavailable(f"TVM cannot import the model: {_short(exc)}") from exc


def _output_specs(model: Any, mod: Any) -> tuple[TensorSpec, ...]:
    """The graph's outputs (names from ONNX; dtype and shape as TVM infers them)."""
    import numpy as np
    from tvm import relax  # type: ignore[import-untyped, unused-ignore]

    returned = mod["main"].ret_ty
    fields = list(returned.fields) if isinstance(returned, relax.TupleType) else [returned]
    names = [o.name for o in model.graph.output]
    if len(fields) != len(names):
        raise CandidateUnavailable(
            f"TVM's import returns {len(fields)} outputs where the ONNX graph has {len(names)}"
        )
    specs = []
    for name, field in zip(names, fields, strict=True):
        if not isinstance(field, relax.TensorType):
            raise CandidateUnavailable(f"TVM candidate: output {name!r} is not a tensor ({field})")
        try:
            dtype = DataType.from_numpy(np.dtype(str(field.dtype)))
        except InvalidArgument as exc:
            raise CandidateUnavailable(f"TVM candidate: output {name!r}: {exc.message}") from exc
        values = getattr(field.shape, "values", None)
        shape = tuple(int(v) if hasattr(v, "value") else -1 for v in values) if values is not None else ()
        specs.append(TensorSpec(name, dtype, shape))
    return tuple(specs)


def _short(exc: BaseException, limit: int = 600) -> str:
    """A one-paragraph form of a TVM error (they carry long stack traces)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."
