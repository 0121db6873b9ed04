"""A compilation as a job: request in, artifact directory + report out, with an id, a status and a log.

``CompileJob(request).run()`` does the whole thing in the calling thread; the CLI runs it directly
and the control plane can run it in a worker and read ``status``/``log`` meanwhile. Steps:

1. front-end: the framework's model -> ONNX (or a validated ``.tflite``);
2. data: calibration and validation sets, checked against the model's inputs before any long step;
3. candidates: the plain ONNX Runtime baseline, then every (backend, precision) the request and the
   target allow -- simplified graph, ORT offline optimisation, int8 QDQ (calibrated once, shared),
   fp16, OpenVINO IR, TVM (``edgefleet.compiler.backends.tvm``), LiteRT;
4. verification: every candidate this host can run is loaded with the device runtime backend and
   compared with the baseline on the validation data (top-1 accuracy with labels, otherwise output
   agreement); when every int8 candidate misses the tolerance, accuracy-aware int8 keeps the most
   sensitive nodes in float (``-int8-mixed`` candidates); then all are benchmarked in interleaved
   rounds. A candidate that fails to build, load or run is unavailable, never selected;
5. selection: the fastest candidate within ``max_accuracy_drop`` (the baseline always qualifies,
   so ``auto`` is never slower than plain ONNX Runtime in the same measurement);
6. output: artifact + ``edgefleet-package.json`` + ``report.json``, renamed into place atomically.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet import __version__
from edgefleet.compiler import output as output_dir
from edgefleet.compiler.dataset import Dataset, load_dataset, synthetic_dataset
from edgefleet.compiler.evaluate import (
    Latency,
    agreement,
    benchmark,
    load_candidate,
    predict,
    top1_accuracy,
)
from edgefleet.compiler.frontends import FrontendResult, canonical_framework, get_frontend
from edgefleet.compiler.noise import captured_output, detail_sink, short_reason
from edgefleet.compiler.report import CandidateReport, CandidateStatus, CompileReport
from edgefleet.compiler.signature import InputSpec, concrete_shape
from edgefleet.compiler.targets import get_target, matches_host
from edgefleet.compiler.types import (
    BuildFn,
    BuildOptions,
    CandidateArtifact,
    CandidateUnavailable,
    Quantization,
    TargetSpec,
)
from edgefleet.core.errors import Code, EdgefleetError, FailedPrecondition, InvalidArgument, NotFound
from edgefleet.core.files import sha256_file
from edgefleet.core.platform import host_arch
from edgefleet.core.tensors import TensorSpec
from edgefleet.runtimes.base import RUNTIMES, LoadedModel, canonical_runtime

_log = logging.getLogger(__name__)

#: backend name -> (module, builder function), from the runtime records; imported when a candidate needs it.
BUILDERS: dict[str, str] = {r.name: r.builder for r in RUNTIMES.values() if r.builder is not None}
QUANTIZE_CHOICES = ("auto", "none", "int8", "fp16")


class JobStatus(enum.StrEnum):
    """Lifecycle of a compile job."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class CompileRequest:
    """What to compile, for which target, how, and where to put the result.

    ``backend``: ``auto`` or a runtime name; ``quantize``: ``auto`` (every precision the target and
    data allow), ``none``, ``int8`` or ``fp16``. ``max_accuracy_drop``: points of top-1 accuracy
    (with labelled validation data) or of output agreement (without) a candidate may lose against
    the original. ``tune_trials``/``tune_minutes``: TVM's tuning budget (TVM is left out of
    ``auto`` without one: untuned TVM code is far slower than ONNX Runtime). ``threads``: threads
    per inference when measuring (0 = the engine's default). ``benchmark_seconds``: measuring time
    per candidate. ``max_validation_samples``/``max_calibration_samples``: caps on the data used.
    """

    model: Path
    framework: str
    target: str
    output_dir: Path
    inputs: tuple[InputSpec, ...] = ()
    backend: str = "auto"
    quantize: str = "auto"
    calibration: Path | None = None
    validation: Path | None = None
    max_accuracy_drop: float = 1.0
    tune_trials: int = 0
    tune_minutes: float = 0.0
    threads: int = 0
    benchmark_seconds: float = 2.0
    max_validation_samples: int = 1000
    max_calibration_samples: int = 200
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for the report and the control plane)."""
        return {
            "model": str(self.model),
            "framework": self.framework,
            "target": self.target,
            "output_dir": str(self.output_dir),
            "inputs": [
                {
                    "name": i.name,
                    "shape": list(i.shape),
                    "dtype": i.dtype.name if i.dtype else None,
                    **({"batch_axis": i.batch_axis} if i.batch_declared else {}),
                }
                for i in self.inputs
            ],
            "backend": self.backend,
            "quantize": self.quantize,
            "calibration": str(self.calibration) if self.calibration else None,
            "validation": str(self.validation) if self.validation else None,
            "max_accuracy_drop": self.max_accuracy_drop,
            "tune_trials": self.tune_trials,
            "tune_minutes": self.tune_minutes,
            "threads": self.threads,
            "benchmark_seconds": self.benchmark_seconds,
        }


@dataclass(frozen=True)
class LogLine:
    """One progress line of a job (``time`` from the job's clock, seconds since the epoch)."""

    time: float
    message: str


@dataclass(frozen=True)
class CompileResult:
    """A finished compilation: where the output is, what it holds, and the report."""

    output_dir: Path
    metadata: dict[str, Any]
    report: CompileReport


@dataclass
class _Candidate:
    """A candidate during the job: its artifact (once built), figures, and loaded model."""

    report: CandidateReport
    artifact: CandidateArtifact | None = None
    model: LoadedModel | None = None
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    within_tolerance: bool | None = None
    drop: float | None = None
    graph: Path | None = None  # the ONNX graph it was built from (int8: the QDQ graph)
    shippable: bool = True  # False once it failed to build, load or run here
    excluded: tuple[str, ...] = ()  # int8: nodes kept in float


class CompileJob:
    """One compilation. Create it with a request, call :meth:`run` (in any thread)."""

    def __init__(
        self,
        request: CompileRequest,
        *,
        job_id: str | None = None,
        on_log: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        work_root: Path | None = None,
    ) -> None:
        self.id = job_id or uuid.uuid4().hex[:12]
        self.request = request
        self.status = JobStatus.PENDING
        self.result: CompileResult | None = None
        self.error: EdgefleetError | None = None
        self._lines: list[LogLine] = []
        self._lines_lock = threading.Lock()
        self._on_log = on_log
        self._clock = clock
        self._work_root = work_root
        self._cancel = threading.Event()
        self._tool_versions: dict[str, str] = {}
        self._warnings: list[str] = []
        # set by the steps, read by later ones
        self._reference: tuple[list[np.ndarray], int, float | None] | None = None
        self._fp32_graph: Path | None = None
        self._int8_notes: tuple[str, ...] = ()
        self._reduce_range = False

    # -- public -----------------------------------------------------------------------------

    @property
    def log(self) -> list[LogLine]:
        """The progress lines so far (a copy)."""
        with self._lines_lock:
            return list(self._lines)

    def cancel(self) -> None:
        """Ask the job to stop at the next step boundary; it ends CANCELLED with nothing written."""
        self._cancel.set()

    def to_dict(self) -> dict[str, Any]:
        """Status snapshot for APIs: id, status, request, log, error, and output when done."""
        return {
            "id": self.id,
            "status": self.status.value,
            "request": self.request.to_dict(),
            "log": [{"time": line.time, "message": line.message} for line in self.log],
            "error": {"code": self.error.code.value, "message": self.error.message} if self.error else None,
            "output_dir": str(self.result.output_dir) if self.result else None,
        }

    def run(self) -> CompileResult:
        """Compile; returns the result or raises an :class:`EdgefleetError` (status FAILED/CANCELLED)."""
        if self.status is not JobStatus.PENDING:
            raise FailedPrecondition(f"compile job {self.id} has already run (status {self.status.value})")
        self.status = JobStatus.RUNNING
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f"edgefleet-compile-{self.id}-", dir=self._work_root))
        candidates: list[_Candidate] = []
        try:
            with detail_sink(self._detail):
                self.result = self._run(work, candidates, started)
        except EdgefleetError as exc:
            self.error = exc
            self.status = JobStatus.CANCELLED if exc.code is Code.ABORTED else JobStatus.FAILED
            self._emit(f"{self.status.value}: {exc}")
            raise
        except Exception as exc:  # a bug or an untranslated library error: report it as INTERNAL
            self.error = EdgefleetError(f"compile job failed unexpectedly: {type(exc).__name__}: {exc}")
            self.status = JobStatus.FAILED
            self._emit(f"failed: {self.error}")
            raise self.error from exc
        finally:
            for cand in candidates:
                if cand.model is not None:
                    cand.model.close()
            shutil.rmtree(work, ignore_errors=True)
        self.status = JobStatus.SUCCEEDED
        self._emit(f"succeeded: {self.result.output_dir}")
        return self.result

    # -- steps ------------------------------------------------------------------------------

    def _emit(self, message: str) -> None:
        with self._lines_lock:
            self._lines.append(LogLine(self._clock(), message))
        _log.info("compile %s: %s", self.id, message)
        if self._on_log is not None:
            self._on_log(message)

    def _detail(self, text: str) -> None:
        """Full text for the job log only (tools' output, whole error messages), not the progress."""
        with self._lines_lock:
            self._lines.append(LogLine(self._clock(), text))
        _log.debug("compile %s: %s", self.id, text)

    def _warn(self, message: str) -> None:
        """A pass skipped or a fallback taken: in the report's warnings and the progress output."""
        if message not in self._warnings:
            self._warnings.append(message)
            self._emit(f"warning: {message}")

    def _checkpoint(self) -> None:
        if self._cancel.is_set():
            raise EdgefleetError(f"compile job {self.id} was cancelled", Code.ABORTED)

    def _run(self, work: Path, candidates: list[_Candidate], started: float) -> CompileResult:
        req = self.request
        target = get_target(req.target)
        framework = canonical_framework(req.framework)
        backend = _check_backend(req.backend, target)
        quantize = _check_quantize(req.quantize)
        _check_numbers(req)
        if not req.model.exists():
            raise NotFound(f"model file {req.model} does not exist")
        output_dir.check_output_dir(req.output_dir)
        on_host = matches_host(target)
        self._emit(
            f"compiling {req.model.name} ({framework}) for {target.name}; host {'matches' if on_host else 'differs'}"
        )

        # 1. front-end
        front_dir = work / "frontend"
        front_dir.mkdir()
        frontend = get_frontend(framework)(req.model, req.inputs, front_dir, self._emit)
        _check_format(frontend, backend, quantize)
        for warning in frontend.warnings:
            self._warn(warning)
        axes = _batch_axes(frontend, req.inputs)
        unbatched = [n for n, a in axes.items() if a != 0]
        if unbatched:
            self._emit(
                "batch axes: "
                + ", ".join(f"{n} {'none' if axes[n] is None else axes[n]}" for n in unbatched)
                + " (others 0)"
            )
        source_sha = sha256_file(req.model)
        self._checkpoint()

        # 2. data, checked before anything slow
        calibration = self._load_data(
            req.calibration, frontend, axes, "calibration", req.max_calibration_samples
        )
        validation = self._load_data(req.validation, frontend, axes, "validation", req.max_validation_samples)
        notes: list[str] = list(frontend.notes)
        if validation is None and calibration is not None:
            validation = calibration
            notes.append("no --validation data: candidates were checked on the calibration data")
        if validation is None:
            validation = synthetic_dataset(frontend.inputs, 64, req.seed, axes)
            notes.append("no validation data: candidates were checked for output agreement on random inputs")
        if quantize is Quantization.INT8 and calibration is None:
            raise InvalidArgument(
                "--quantize int8 needs --calibration DATA (.npz, .npy or a folder of images)"
            )

        # 3. candidates
        baseline = self._build_baseline(frontend, target, work)
        candidates.append(baseline)
        planned, plan_notes = self._plan(frontend, target, backend, quantize, calibration is not None)
        notes += plan_notes
        graphs = self._prepare_graphs(frontend, work, planned, calibration, target)
        for backend_name, precision in planned:
            self._checkpoint()
            candidates.append(self._build(backend_name, precision, graphs, frontend, target, work))

        # 4. verification on the host
        self._verify(candidates, validation, target, frontend)
        self._checkpoint()
        if calibration is not None:
            candidates += self._mixed_precision(candidates, calibration, validation, frontend, target, work)
            self._checkpoint()
        latency_note = self._benchmark(candidates, validation, on_host, target)
        if not on_host:
            notes.append(latency_note)
        _note_mixed_cost(candidates)

        # 5. selection
        # Labels give top-1 accuracy only when the outputs are class scores or labels.
        metric = "top1_accuracy" if baseline.report.accuracy is not None else "agreement"
        metric_name = "top-1 accuracy" if metric == "top1_accuracy" else "output agreement"
        selected = self._select(candidates, baseline, backend, quantize, metric_name)
        self._checkpoint()

        # 6. output
        artifact = selected.artifact
        if artifact is None:  # _select only picks built candidates
            raise EdgefleetError(
                f"compile job {self.id}: selected candidate {selected.report.name} has no artifact"
            )
        inputs = selected.inputs or frontend.inputs
        outputs = selected.outputs or frontend.outputs
        metadata = output_dir.package_metadata(artifact, target, inputs, outputs, source_sha)
        tool_versions = {
            "edgefleet": __version__,
            "numpy": np.__version__,
            **frontend.tool_versions,
            **self._tool_versions,
        }
        for cand in candidates:
            if cand.artifact is not None:
                tool_versions.update(cand.artifact.tool_versions)
        report = CompileReport(
            job_id=self.id,
            model={
                "name": req.model.name,
                "framework": framework,
                "source_sha256": source_sha,
                "size_bytes": req.model.stat().st_size,
            },
            target=target.name,
            request=req.to_dict(),
            validation={
                "source": validation.source,
                "samples": validation.size,
                "metric": metric,
                "max_accuracy_drop": req.max_accuracy_drop,
                # inputs whose samples are not on axis 0 (None: no batch axis), see docs/compiler.md
                "batch_axes": {name: axis for name, axis in axes.items() if axis != 0},
            },
            latency_measured_on=(
                f"this host ({host_arch()})"
                if on_host
                else f"this host ({host_arch()}), as a proxy for {target.name}"
            ),
            baseline=baseline.report.name,
            selected=selected.report.name,
            candidates=[c.report for c in candidates],
            compile_seconds=round(time.monotonic() - started, 2),
            tool_versions=tool_versions,
            notes=notes,
            warnings=list(self._warnings),
        )
        output_dir.write_output_dir(req.output_dir, artifact, metadata, report, self.id)
        return CompileResult(output_dir=req.output_dir, metadata=metadata, report=report)

    def _load_data(
        self,
        path: Path | None,
        frontend: FrontendResult,
        axes: dict[str, int | None],
        what: str,
        cap: int,
    ) -> Dataset | None:
        if path is None:
            return None
        data = load_dataset(path, frontend.inputs, what, axes)
        if data.size > cap:
            data = data.head(cap)
        self._emit(
            f"{what} data: {data.size} samples from {path.name}"
            + (" with labels" if data.labels is not None else "")
        )
        return data

    def _build_baseline(self, frontend: FrontendResult, target: TargetSpec, work: Path) -> _Candidate:
        directory = work / "candidates" / "original"
        directory.mkdir(parents=True)
        if frontend.format == "tflite":
            builder = _builder("litert")
            artifact = builder(frontend.path, target, BuildOptions(directory, _shapes(frontend)), self._emit)
        else:
            from edgefleet.compiler.backends.onnxruntime import original_candidate

            artifact = original_candidate(frontend.path, directory)
        cand = _Candidate(CandidateReport(artifact.name, artifact.runtime, artifact.quantization), artifact)
        cand.report.size_bytes = _size(artifact)
        cand.report.notes = list(artifact.notes)
        return cand

    def _plan(
        self,
        frontend: FrontendResult,
        target: TargetSpec,
        backend: str,
        quantize: Quantization | None,
        has_cal: bool,
    ) -> tuple[list[tuple[str, Quantization]], list[str]]:
        """(backend, precision) pairs to build besides the baseline, and notes on what was left out."""
        notes: list[str] = []
        if frontend.format == "tflite":
            return [], notes  # the baseline is the LiteRT artifact itself
        backends = [b for b in target.backends if b != "litert"] if backend == "auto" else [backend]
        if quantize is None:
            precisions = [Quantization.NONE]
            if has_cal:
                precisions.append(Quantization.INT8)
            else:
                notes.append("int8 candidates skipped: no --calibration data")
            if target.fp16_compute:
                precisions.append(Quantization.FP16)
        else:
            precisions = [quantize]
        tuned = self.request.tune_trials > 0 or self.request.tune_minutes > 0
        planned = []
        for name in backends:
            if name == "tvm" and backend == "auto" and not tuned:
                notes.append(
                    "TVM skipped: untuned TVM code is far slower than ONNX Runtime; give --tune-trials or "
                    "--tune-minutes to include a tuned TVM candidate"
                )
                continue
            for precision in precisions:
                if (
                    backend == "auto"
                    and quantize is None
                    and name == "openvino"
                    and precision is Quantization.FP16
                ):
                    continue  # fp16 IR only halves the size on CPUs; asked for explicitly it is built
                planned.append((name, precision))
        return planned, notes

    def _prepare_graphs(
        self,
        frontend: FrontendResult,
        work: Path,
        planned: Sequence[tuple[str, Quantization]],
        calibration: Dataset | None,
        target: TargetSpec,
    ) -> dict[Quantization, Path | CandidateUnavailable]:
        """The input graph for each precision: simplified fp32, and (once) the calibrated int8 QDQ."""
        graphs: dict[Quantization, Path | CandidateUnavailable] = {}
        if frontend.format != "onnx" or not planned:
            return graphs
        from edgefleet.compiler import graph_passes

        passes = work / "graphs"
        passes.mkdir()
        try:
            simplified = graph_passes.simplify(frontend.path, passes / "simplified.onnx", self._emit)
        except graph_passes.PassSkipped as exc:
            self._warn(exc.warning)
            self._detail(exc.message)
            simplified = frontend.path
        # named nodes, so that accuracy-aware int8 can keep some of them in float by name
        simplified = graph_passes.name_nodes(simplified, passes / "named.onnx")
        self._tool_versions.update(graph_passes.tool_versions())
        self._fp32_graph = simplified
        graphs[Quantization.NONE] = simplified
        graphs[Quantization.FP16] = simplified
        if any(q is Quantization.INT8 for _, q in planned) and calibration is not None:
            self._checkpoint()
            self._reduce_range = target.arch == "x86_64" and not {"avx512_vnni", "avx_vnni"} & set(
                target.cpu_features
            )
            try:
                int8 = graph_passes.quantize_int8(
                    simplified, passes / "int8.onnx", calibration, self._reduce_range, self._emit
                )
                graphs[Quantization.INT8] = int8.path
                self._int8_notes = int8.notes
            except InvalidArgument:
                raise  # the calibration data does not fit: the user's to fix
            except EdgefleetError as exc:
                # the quantiser cannot serve this graph: with --quantize int8 that is the job's failure;
                # otherwise only the int8 candidates are unavailable and the others go on
                if self.request.quantize == "int8":
                    raise
                self._detail(f"int8 quantisation: {exc.message}")
                graphs[Quantization.INT8] = CandidateUnavailable(exc.message)
        return graphs

    def _build(
        self,
        backend: str,
        precision: Quantization,
        graphs: dict[Quantization, Path | CandidateUnavailable],
        frontend: FrontendResult,
        target: TargetSpec,
        work: Path,
        variant: str = "",
    ) -> _Candidate:
        suffix = "" if precision is Quantization.NONE else f"-{precision.value}"
        cand = _Candidate(CandidateReport(f"{backend}{suffix}{variant}", backend, precision))
        directory = work / "candidates" / cand.report.name
        directory.mkdir(parents=True)
        options = BuildOptions(
            work_dir=directory,
            input_shapes=_shapes(frontend),
            quantize=precision,
            tune_trials=self.request.tune_trials,
            tune_minutes=self.request.tune_minutes,
            threads=self.request.threads,
            seed=self.request.seed,
        )
        explicit = self.request.backend != "auto" and self.request.quantize != "auto"
        self._emit(f"building candidate {cand.report.name}")
        t0 = time.monotonic()
        try:
            graph = graphs.get(precision)
            if isinstance(graph, CandidateUnavailable):
                raise graph
            if graph is None:
                raise CandidateUnavailable(f"no {precision.value} graph was prepared")
            cand.graph = graph
            artifact = _builder(backend)(graph, target, options, self._emit)
        except Exception as exc:  # a builder's failure is its candidate's, unless it was asked for alone
            if isinstance(exc, EdgefleetError) and (explicit or exc.code is Code.ABORTED):
                raise
            if explicit:
                raise EdgefleetError(
                    f"building {cand.report.name} failed: {type(exc).__name__}: {exc}"
                ) from exc
            message = exc.message if isinstance(exc, EdgefleetError) else f"{type(exc).__name__}: {exc}"
            self._unavailable(cand, message)
            return cand
        if variant:
            artifact = dataclasses.replace(artifact, name=cand.report.name)
        cand.artifact = artifact
        cand.report.name = artifact.name
        cand.report.build_seconds = round(time.monotonic() - t0, 2)
        cand.report.size_bytes = _size(artifact)
        cand.report.optimised = artifact.optimised
        cand.report.notes = list(artifact.notes)
        if precision is Quantization.INT8:
            cand.report.notes += [n for n in self._int8_notes if n not in cand.report.notes]
        for warning in artifact.warnings:
            self._warn(f"{artifact.name}: {warning}")
        return cand

    def _unavailable(self, cand: _Candidate, message: str, prefix: str = "") -> None:
        """Mark ``cand`` unavailable: one line in the table and the progress, all of it in the log."""
        cand.report.status = CandidateStatus.UNAVAILABLE
        cand.report.reason = prefix + short_reason(message)
        cand.report.detail = prefix + message
        cand.shippable = False
        self._emit(f"candidate {cand.report.name} unavailable: {cand.report.reason}")
        if cand.report.detail != cand.report.reason:
            self._detail(f"candidate {cand.report.name} unavailable: {cand.report.detail}")

    def _verify(
        self, candidates: list[_Candidate], validation: Dataset, target: TargetSpec, frontend: FrontendResult
    ) -> None:
        """Load every runnable candidate; compute accuracy and agreement with the baseline (the
        first candidate of the first call)."""
        for cand in candidates:
            artifact = cand.artifact
            if artifact is None:
                continue
            if not artifact.runs_on_host:
                cand.report.status = CandidateStatus.UNVERIFIED
                cand.report.reason = "this host cannot run it (cross-compiled)"
                continue
            self._checkpoint()
            self._emit(f"checking {cand.report.name} on {validation.size} validation samples")
            try:
                with captured_output(artifact.runtime):
                    model = load_candidate(
                        artifact, target, frontend.inputs, frontend.outputs, self.request.threads
                    )
            except EdgefleetError as exc:
                if self._reference is None:
                    raise FailedPrecondition(f"the original model does not load: {exc.message}") from exc
                self._unavailable(cand, exc.message, "cannot be loaded here: ")
                continue
            cand.model = model
            cand.inputs, cand.outputs = model.inputs, model.outputs
            try:
                with captured_output(artifact.runtime):
                    outputs, count = predict(model, validation)
            except Exception as exc:  # engines' own errors may reach here untranslated
                message = exc.message if isinstance(exc, EdgefleetError) else f"{type(exc).__name__}: {exc}"
                if self._reference is None:
                    raise InvalidArgument(
                        f"the original model fails on the validation data: {message}"
                    ) from exc
                self._unavailable(cand, message, "failed on the validation data: ")
                continue
            labels = validation.labels[:count] if validation.labels is not None else None
            if self._reference is None:  # the baseline comes first
                base_accuracy = top1_accuracy(outputs, labels) if labels is not None else None
                self._reference = (outputs, count, base_accuracy)
            reference, used, base_accuracy = self._reference
            n = min(used, count)
            cand.report.accuracy = (
                top1_accuracy([o[:n] for o in outputs], labels[:n]) if labels is not None else None
            )
            cand.report.agreement, cand.report.max_abs_diff = agreement(
                [r[:n] for r in reference], [o[:n] for o in outputs], n
            )
            if base_accuracy is not None and cand.report.accuracy is not None:
                cand.drop = base_accuracy - cand.report.accuracy
            else:
                cand.drop = 100.0 - cand.report.agreement
            cand.within_tolerance = cand.drop <= self.request.max_accuracy_drop + 1e-9

    def _mixed_precision(
        self,
        candidates: list[_Candidate],
        calibration: Dataset,
        validation: Dataset,
        frontend: FrontendResult,
        target: TargetSpec,
        work: Path,
    ) -> list[_Candidate]:
        """Accuracy-aware int8: when every int8 candidate loses more than the tolerance, keep the most
        sensitive nodes in float and quantise the rest, searched against the tolerance.

        Nodes are ranked by the error int8 adds at their own output (the error at the output minus
        the largest error at its inputs, on a few validation samples); the k most sensitive stay in
        float for k = 1, 2, 4, ... until a graph is within the tolerance (each try is quantised,
        loaded with the device runtime and checked like a candidate). The candidates built from the
        result are named ``<backend>-int8-mixed``; their notes say what was kept in float.
        """
        from edgefleet.compiler import graph_passes
        from edgefleet.compiler.backends.onnxruntime import original_candidate

        int8 = [
            c for c in candidates if c.artifact is not None and c.artifact.quantization is Quantization.INT8
        ]
        verified = [c for c in int8 if c.within_tolerance is not None]
        if not verified or any(c.within_tolerance for c in verified) or self._fp32_graph is None:
            return []
        full = next((c for c in verified if c.artifact and c.artifact.runtime == "onnxruntime"), verified[0])
        if full.graph is None:
            return []
        nodes = graph_passes.quantizable_nodes(self._fp32_graph)
        if len(nodes) < 2:
            return []
        self._emit(
            f"int8 loses {full.drop:.2f} points: searching which of {len(nodes)} quantisable nodes to keep in float"
        )
        try:
            size, _ = validation.batch_size(frontend.inputs, 8)
            probe = validation.feeds(slice(0, min(size, validation.size)))
            order = graph_passes.node_sensitivity(self._fp32_graph, full.graph, probe)
        except Exception as exc:  # ranking is a heuristic: fall back to the last layers first
            self._detail(f"int8 sensitivity ranking failed ({type(exc).__name__}: {exc}); last layers first")
            order = list(reversed(nodes))
        search = work / "graphs" / "mixed"
        search.mkdir(parents=True, exist_ok=True)
        found: tuple[Path, tuple[str, ...], float] | None = None
        k = 1
        while k < len(order):
            self._checkpoint()
            keep = tuple(order[:k])
            trial_dir = search / f"k{k}"
            (trial_dir / "artifact").mkdir(parents=True)
            try:
                graph = graph_passes.quantize_int8(
                    self._fp32_graph,
                    trial_dir / "int8.onnx",
                    calibration,
                    self._reduce_range,
                    self._detail,
                    keep,
                )
                trial = _Candidate(
                    CandidateReport(f"int8 keeping {k} in float", "onnxruntime", Quantization.INT8),
                    original_candidate(graph.path, trial_dir / "artifact"),
                )
                self._verify([trial], validation, target, frontend)
            except EdgefleetError as exc:
                if exc.code is Code.ABORTED:
                    raise
                self._detail(f"int8 with {k} node(s) in float failed: {exc.message}")
                break
            if trial.model is not None:
                trial.model.close()
            if trial.drop is None:  # did not load or run: the search cannot go on
                break
            self._emit(f"int8 with {k} node(s) in float: loses {trial.drop:.2f} points")
            if trial.within_tolerance:
                found = (graph.path, keep, trial.drop or 0.0)
                break
            k *= 2
        if found is None:
            self._emit("accuracy-aware int8: no partial int8 graph is within the tolerance")
            return []
        path, keep, drop = found
        note = (
            f"kept in float: {', '.join(keep)} ({len(keep)} of {len(nodes)} quantisable nodes, chosen by "
            f"int8 sensitivity); full int8 lost {full.drop:.2f} points, this loses {drop:.2f}"
        )
        self._int8_notes = (*self._int8_notes, note)
        graphs: dict[Quantization, Path | CandidateUnavailable] = {Quantization.INT8: path}
        built = []
        for cand in int8:
            assert cand.artifact is not None
            mixed = self._build(
                cand.artifact.runtime, Quantization.INT8, graphs, frontend, target, work, "-mixed"
            )
            mixed.excluded = keep
            built.append(mixed)
        self._verify(built, validation, target, frontend)
        return built

    def _benchmark(
        self, candidates: list[_Candidate], validation: Dataset, on_host: bool, target: TargetSpec
    ) -> str:
        models: dict[str, LoadedModel] = {c.report.name: c.model for c in candidates if c.model is not None}
        if not models:
            return "no candidate could run on this host: latency not measured"
        first = next(iter(models.values()))  # the baseline: its batch dimension sets the feed
        batch, _ = validation.batch_size(first.inputs, 1)
        feeds = validation.feeds(slice(0, batch))
        shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())
        for cand in candidates:  # one candidate failing on the benchmark feed must not stop the others
            if cand.model is None or cand is candidates[0]:
                continue
            try:
                with captured_output(cand.report.runtime):
                    cand.model.run(feeds)
            except Exception as exc:  # engines' own errors may reach here untranslated
                message = exc.message if isinstance(exc, EdgefleetError) else f"{type(exc).__name__}: {exc}"
                self._unavailable(cand, message, f"failed on a batch of {shapes}: ")
                models.pop(cand.report.name, None)
                cand.model.close()
                cand.model = None
        self._emit(
            f"benchmarking {len(models)} candidate(s) for ~{self.request.benchmark_seconds:g} s each at {shapes}"
        )
        measured = benchmark(models, feeds, self.request.benchmark_seconds)
        for cand in candidates:
            latency: Latency | None = measured.get(cand.report.name)
            if latency is not None:
                cand.report.latency = latency
                self._emit(f"{cand.report.name}: p50 {latency.p50_ms:.3f} ms, p99 {latency.p99_ms:.3f} ms")
        return (
            f"target {target.name} is not this host ({host_arch()}): latencies were measured here as a proxy "
            "and may rank differently on the device"
        )

    def _select(
        self,
        candidates: list[_Candidate],
        baseline: _Candidate,
        backend: str,
        quantize: Quantization | None,
        metric: str,
    ) -> _Candidate:
        def requested(c: _Candidate) -> bool:
            if c.artifact is None or not c.shippable:
                return False
            if c is baseline and self._is_tflite(c):
                return True
            backend_ok = backend == "auto" or c.artifact.runtime == backend
            quant_ok = quantize is None or c.artifact.quantization is quantize
            return backend_ok and quant_ok

        eligible = [c for c in candidates if requested(c)]
        limit = self.request.max_accuracy_drop
        for c in candidates:
            if c.within_tolerance is False:
                c.report.reason = f"loses {c.drop:.2f} points of {metric} (limit {limit:g})"
            elif c.artifact is not None and not c.artifact.optimised:
                c.report.reason = "not optimised (e.g. untuned): never chosen automatically"
        if not eligible:
            reasons = "; ".join(f"{c.report.name}: {c.report.reason}" for c in candidates if c.report.reason)
            raise FailedPrecondition(
                f"no candidate matching --backend {backend} --quantize {self.request.quantize} could be built "
                f"and loaded ({reasons})"
            )
        passing = [
            c
            for c in eligible
            if c.within_tolerance and c.report.latency is not None and c.artifact and c.artifact.optimised
        ]
        if passing:
            chosen = min(passing, key=lambda c: c.report.latency.p50_ms if c.report.latency else float("inf"))
            for c in passing:
                if c is not chosen and not c.report.reason:
                    c.report.reason = "slower than the selected candidate"
        else:
            # Without a measured, optimised candidate within the tolerance: an unoptimised one that was
            # checked, or -- asked for by --backend -- one built for another machine that this host
            # cannot run. Never one that failed to load or run here.
            fallback = [c for c in eligible if c.within_tolerance is True] + [
                c for c in eligible if c.report.status is CandidateStatus.UNVERIFIED and backend != "auto"
            ]
            if not fallback:
                if any(c.within_tolerance is False for c in eligible):
                    worst = ", ".join(
                        f"{c.report.name} loses {c.drop:.2f} points" for c in eligible if c.drop is not None
                    )
                    raise FailedPrecondition(
                        f"every requested candidate exceeds --max-accuracy-drop {limit:g} on {metric} ({worst}); "
                        "raise the tolerance, give more representative --calibration data, or choose another "
                        "--quantize/--backend"
                    )
                reasons = "; ".join(
                    f"{c.report.name}: {c.report.reason}" for c in eligible if c.report.reason
                )
                raise FailedPrecondition(
                    "no requested candidate could be checked on this host"
                    + (f" ({reasons})" if reasons else "")
                    + "; a candidate this host cannot run is shipped only when --backend names its runtime"
                )
            chosen = fallback[0]
            if chosen.artifact is not None and not chosen.artifact.optimised:
                chosen.report.reason = (
                    f"not optimised (e.g. untuned): shipped only because --backend {backend} asked for it"
                )
                self._emit(f"warning: {chosen.report.name} is {chosen.report.reason}")
            else:
                self._emit(
                    f"warning: shipping {chosen.report.name} without a full check: "
                    f"{chosen.report.reason or 'it was not measured on this host'}"
                )
        chosen.report.status = CandidateStatus.SELECTED
        chosen.report.reason = "" if chosen in passing else chosen.report.reason
        for c in candidates:
            if c is not chosen and c.report.status is CandidateStatus.REJECTED and not c.report.reason:
                c.report.reason = (
                    "not requested" if not requested(c) else "slower than the selected candidate"
                )
        self._emit(f"selected {chosen.report.name}")
        return chosen

    @staticmethod
    def _is_tflite(c: _Candidate) -> bool:
        return c.artifact is not None and c.artifact.runtime == "litert"


def _note_mixed_cost(candidates: Sequence[_Candidate]) -> None:
    """On each ``-int8-mixed`` candidate: what keeping nodes in float cost against full int8."""
    full = {c.report.name: c for c in candidates}
    for cand in candidates:
        if not cand.excluded:
            continue
        base = full.get(cand.report.name.removesuffix("-mixed"))
        if base is None or base.report.latency is None or cand.report.latency is None:
            continue
        cand.report.notes.append(
            f"cost of the float nodes: p50 {cand.report.latency.p50_ms:.3f} ms against {base.report.latency.p50_ms:.3f} ms "
            f"for full int8, {_size_text(cand.report.size_bytes)} against {_size_text(base.report.size_bytes)}"
        )


def _size_text(size: int | None) -> str:
    return "?" if size is None else f"{size / 1024:.1f} KiB"


def _builder(backend: str) -> BuildFn:
    module_name, func_name = BUILDERS[backend].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CandidateUnavailable(f"the {backend} builder is not available here ({exc})") from exc
    func: BuildFn = getattr(module, func_name)
    return func


def _batch_axes(frontend: FrontendResult, declared: Sequence[InputSpec]) -> dict[str, int | None]:
    """Each input's batch axis: as declared (``batch=``), as the front-end inferred from the graph,
    else none for a rank-0 input and axis 0 for the others."""
    given = {d.name: d.batch_axis for d in declared if d.batch_declared}
    axes: dict[str, int | None] = {}
    for spec in frontend.inputs:
        if spec.name in given:
            axes[spec.name] = given[spec.name]
        elif spec.name in frontend.batch_axes:
            axes[spec.name] = frontend.batch_axes[spec.name]
        else:
            axes[spec.name] = 0 if spec.shape else None
    return axes


def _shapes(frontend: FrontendResult) -> dict[str, tuple[int, ...]]:
    return {s.name: concrete_shape(s.shape) for s in frontend.inputs}


def _size(artifact: CandidateArtifact) -> int:
    return sum((artifact.directory / p).stat().st_size for p in artifact.files())


def _check_backend(name: str, target: TargetSpec) -> str:
    key = canonical_runtime(name)
    if key == "auto":
        return key
    if key not in BUILDERS:
        raise InvalidArgument(
            f"unknown backend {name!r}: known backends are auto, {', '.join(sorted(BUILDERS))}"
        )
    if key not in target.backends:
        raise InvalidArgument(
            f"backend {key} does not serve target {target.name} (it is served by {', '.join(target.backends)})"
        )
    return key


def _check_quantize(value: str) -> Quantization | None:
    """None for ``auto``; INVALID_ARGUMENT for an unknown value."""
    if value == "auto":
        return None
    try:
        return Quantization(value)
    except ValueError:
        raise InvalidArgument(
            f"unknown --quantize {value!r}: choose one of {', '.join(QUANTIZE_CHOICES)}"
        ) from None


def _check_numbers(req: CompileRequest) -> None:
    limits = (
        ("--max-accuracy-drop", req.max_accuracy_drop, 0.0),
        ("--tune-trials", req.tune_trials, 0),
        ("--tune-minutes", req.tune_minutes, 0.0),
        ("--threads", req.threads, 0),
    )
    for flag, value, least in limits:
        if value < least:
            raise InvalidArgument(f"{flag} must be >= {least:g}, got {value:g}")
    for flag, count in (
        ("--bench-seconds", req.benchmark_seconds),
        ("max_validation_samples", req.max_validation_samples),
        ("max_calibration_samples", req.max_calibration_samples),
    ):
        if count <= 0:
            raise InvalidArgument(f"{flag} must be > 0, got {count:g}")


def _check_format(frontend: FrontendResult, backend: str, quantize: Quantization | None) -> None:
    if frontend.format == "tflite":
        if backend not in ("auto", "litert"):
            raise InvalidArgument(
                f"TFLite models are served by LiteRT: use --backend litert or auto, not {backend}"
            )
        if quantize not in (None, Quantization.NONE):
            raise InvalidArgument(
                "TFLite models are served as converted: quantise with the TFLite converter, then compile with "
                "--quantize none"
            )
    elif backend == "litert":
        raise InvalidArgument("--backend litert serves .tflite models (--framework tflite) only")
