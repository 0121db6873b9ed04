"""Value types shared by the compiler's job, its candidate builders and the TVM builder.

The seam between the compile job and a backend-specific builder is one function per backend::

    build_xxx(onnx_path: Path, target: TargetSpec, options: BuildOptions, log: LogFn) -> CandidateArtifact

``onnx_path`` is the model after front-end conversion and simplification; its input shapes are
those the user declared (``options.input_shapes`` gives concrete ones, dynamic dimensions set to
1). For ``options.quantize == INT8`` it is the already-quantised QDQ graph (calibrated once by the
job and shared by every int8 candidate); for ``NONE`` and ``FP16`` it is the fp32 graph and a
builder that offers fp16 converts it itself. A builder writes everything it produces under ``options.work_dir`` (a fresh, empty
directory owned by that one build) and returns a :class:`CandidateArtifact` describing the files.
A builder that cannot serve the request (engine not installed, cross tool-chain missing, operator
unsupported) raises :class:`CandidateUnavailable` (FAILED_PRECONDITION) with a message naming
what is missing; the job then drops that candidate and records the reason in the report. The TVM
builder lives in ``edgefleet.compiler.backends.tvm.build_tvm``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.core.errors import Code, EdgefleetError, FailedPrecondition
from edgefleet.core.targets import TargetSpec as TargetSpec  # the catalogue's record lives in core

#: Progress sink: one human-readable line per call (the job appends it to its log).
LogFn = Callable[[str], None]


class Quantization(enum.StrEnum):
    """Numeric precision of a candidate's weights and compute."""

    NONE = "none"
    INT8 = "int8"
    FP16 = "fp16"


@dataclass(frozen=True)
class BuildOptions:
    """What a candidate builder needs besides the model and the target.

    ``work_dir``: fresh empty directory for this build's files.
    ``input_shapes``: concrete shape of every model input (dynamic dims resolved, batch 1).
    ``tune_trials``/``tune_minutes``: tuning budget for builders that tune (0 = no tuning); a
    builder stops at whichever limit comes first.
    ``threads``: threads the artifact should use at run time (0 = the engine's default).
    """

    work_dir: Path
    input_shapes: Mapping[str, tuple[int, ...]]
    quantize: Quantization = Quantization.NONE
    tune_trials: int = 0
    tune_minutes: float = 0.0
    threads: int = 0
    seed: int = 0


@dataclass(frozen=True)
class CandidateArtifact:
    """One built artifact: files under ``directory``, served by the runtime ``runtime``.

    ``model_file`` and ``extra_files`` are paths relative to ``directory`` (forward slashes);
    ``extra_files`` are other files the runtime needs next to the model file (weights, params).
    ``optimised``: False for a build that must not be presented as optimised (an untuned TVM
    build); ``auto`` never selects such a candidate.
    ``runs_on_host``: False for cross-compiled artifacts that this machine cannot execute.
    ``tool_versions``: tool name -> version used for the build (goes into the report).
    ``notes``: short remarks for the report (tuning trials done, fallbacks taken...).
    ``warnings``: passes skipped because they broke this model (they go to the report's warnings).
    """

    name: str
    runtime: str
    runtime_min_version: str
    directory: Path
    model_file: str
    extra_files: tuple[str, ...] = ()
    quantization: Quantization = Quantization.NONE
    optimised: bool = True
    runs_on_host: bool = True
    tool_versions: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def files(self) -> list[str]:
        """The model file followed by the extra files (relative paths)."""
        return [self.model_file, *self.extra_files]


class CandidateUnavailable(FailedPrecondition):
    """A builder cannot produce its candidate here; the message names what is missing."""


class UnsupportedModel(EdgefleetError):
    """The model uses something (an operator, a layer type, a tensor type) no converter or runtime supports."""

    code = Code.UNIMPLEMENTED


#: Signature every candidate builder follows.
BuildFn = Callable[[Path, TargetSpec, BuildOptions, LogFn], CandidateArtifact]
