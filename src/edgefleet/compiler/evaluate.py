"""Running candidates on the host: outputs on validation data, accuracy/agreement, latency.

Candidates are loaded through the device runtime backends (:mod:`edgefleet.runtimes`), so what is
measured is exactly what the agent will run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgefleet.compiler.dataset import Dataset
from edgefleet.compiler.types import CandidateArtifact, TargetSpec
from edgefleet.core.files import sha256_file
from edgefleet.core.manifest import FileEntry, Manifest, Runtime, Target
from edgefleet.core.tensors import TensorSpec
from edgefleet.runtimes.base import LoadedModel, RuntimeOptions, get_backend

# Largest batch sent at once when the model's batch dimension is dynamic.
EVAL_BATCH = 64
# Non-classifier outputs agree when, per sample, ||candidate - reference|| <= REL_L2 * ||reference||
# (+ a tiny floor for all-zero references): int8 typically stays within 1-3 %.
AGREEMENT_REL_L2 = 0.05
_FLOOR = 1e-6


@dataclass(frozen=True)
class Latency:
    """Per-inference latency on the host, in milliseconds."""

    p50_ms: float
    p99_ms: float
    mean_ms: float
    runs: int

    def to_dict(self) -> dict[str, float | int]:
        return {"p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "mean_ms": self.mean_ms, "runs": self.runs}


def candidate_manifest(
    candidate: CandidateArtifact,
    target: TargetSpec,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
) -> Manifest:
    """An in-memory manifest describing ``candidate``'s directory, as a package would."""
    files = tuple(
        FileEntry(
            path=p, size=(candidate.directory / p).stat().st_size, sha256=sha256_file(candidate.directory / p)
        )
        for p in candidate.files()
    )
    return Manifest(
        name="candidate",
        version="0",
        runtime=Runtime(candidate.runtime, candidate.runtime_min_version),
        target=Target(os=target.os, arch=target.arch),
        model_file=candidate.model_file,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        files=files,
    )


def load_candidate(
    candidate: CandidateArtifact,
    target: TargetSpec,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    threads: int,
) -> LoadedModel:
    """Load ``candidate`` with its runtime backend (FAILED_PRECONDITION if the runtime is missing)."""
    backend = get_backend(candidate.runtime)
    manifest = candidate_manifest(candidate, target, inputs, outputs)
    return backend.load(
        candidate.directory, manifest, RuntimeOptions(intra_op_threads=threads, concurrency=1)
    )


def predict(model: LoadedModel, data: Dataset) -> tuple[list[np.ndarray], int]:
    """Outputs for the samples of ``data`` (samples along the first axis) and how many were run.

    A fixed batch dimension larger than 1 drops the trailing samples that do not fill a batch. A
    model run one sample at a time (an input without a batch axis, or batched on another axis) has
    its outputs stacked on a new first axis, so sample ``i``'s outputs are ``outputs[k][i]``.
    """
    size, fixed = data.batch_size(model.inputs, EVAL_BATCH)
    chunks: list[list[np.ndarray]] = []
    used = 0
    for window, feeds in data.batches(size, partial=not fixed):
        chunks.append(model.run(feeds))
        used = window.stop
    if not chunks:
        return [], 0
    if size == 1 and not data.batched_on_first_axis:
        return [np.stack([np.asarray(c[i]) for c in chunks]) for i in range(len(chunks[0]))], used
    outputs = [
        np.concatenate(
            [np.asarray(c[i]).reshape(-1) if np.ndim(c[i]) == 0 else np.asarray(c[i]) for c in chunks]
        )
        for i in range(len(chunks[0]))
    ]
    return outputs, used


def _classes(outputs: Sequence[np.ndarray], count: int) -> np.ndarray | None:
    """Predicted class per sample, if the outputs look like a classifier's (else None).

    An integer output with one value per sample is taken as the label (scikit-learn style);
    otherwise the first 2-D float output (samples x classes) is arg-maxed (scores/logits).
    """
    for out in outputs:
        if out.shape[:1] != (count,):
            continue
        per_sample = out.reshape(count, -1)
        if out.dtype.kind in "iu" and per_sample.shape[1] == 1:
            return per_sample[:, 0].astype(np.int64)
        if out.dtype.kind == "f" and out.ndim == 2 and out.shape[1] > 1:
            classes: np.ndarray = np.argmax(out, axis=1)
            return classes
    return None


def top1_accuracy(outputs: Sequence[np.ndarray], labels: np.ndarray) -> float | None:
    """Top-1 accuracy in percent, or None when the outputs are not class scores/labels."""
    count = labels.shape[0]
    classes = _classes(outputs, count)
    if classes is None:
        return None
    return float(np.mean(classes == labels) * 100.0)


def agreement(
    reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray], count: int
) -> tuple[float, float]:
    """(percent of samples whose result matches the reference, max absolute difference over outputs).

    Classifier outputs match when the predicted class is the same; other outputs when the sample's
    relative L2 error on the first output is at most ``AGREEMENT_REL_L2``.
    """
    max_diff = 0.0
    for ref, out in zip(reference, outputs, strict=True):
        if ref.shape == out.shape and ref.dtype.kind in "fiu" and ref.size:
            max_diff = max(max_diff, float(np.max(np.abs(ref.astype(np.float64) - out.astype(np.float64)))))
    ref_classes = _classes(reference, count)
    out_classes = _classes(outputs, count)
    if ref_classes is not None and out_classes is not None:
        return float(np.mean(ref_classes == out_classes) * 100.0), max_diff
    ref0 = np.asarray(reference[0], dtype=np.float64).reshape(count, -1)
    out0 = np.asarray(outputs[0], dtype=np.float64).reshape(count, -1)
    error = np.linalg.norm(out0 - ref0, axis=1)
    close = error <= AGREEMENT_REL_L2 * np.linalg.norm(ref0, axis=1) + _FLOOR
    return float(np.mean(close) * 100.0), max_diff


def benchmark(
    models: Mapping[str, LoadedModel],
    feeds: Mapping[str, np.ndarray],
    seconds_each: float,
    clock: Callable[[], float] = time.perf_counter,
    min_runs: int = 20,
    max_runs: int = 20000,
    slice_seconds: float = 0.2,
) -> dict[str, Latency]:
    """Latency of each model on ``feeds``, measured in short alternating time slices.

    Models take turns (``seconds_each / slice_seconds`` turns each, at most 25), so drift in the
    machine's speed (other processes, frequency scaling) affects every candidate alike and a ratio
    measured in one call is meaningful even when absolute figures drift between runs. Each turn
    starts with one unrecorded run, so a previous engine's spinning worker threads and cold caches
    do not count against the next one.
    """
    names = list(models)
    samples: dict[str, list[float]] = {n: [] for n in names}
    turns = max(1, min(25, round(seconds_each / slice_seconds)))
    per_turn = seconds_each / turns
    for name in names:  # first runs allocate arenas and pick kernels
        for _ in range(2):
            models[name].run(feeds)
    for _ in range(turns):
        for name in names:
            model, record = models[name], samples[name]
            model.run(feeds)
            end = clock() + per_turn
            taken = 0
            while taken < max_runs // turns and (clock() < end or taken < max(1, -(-min_runs // turns))):
                t0 = clock()
                model.run(feeds)
                record.append(clock() - t0)
                taken += 1
    result = {}
    for name, values in samples.items():
        ms = np.asarray(values) * 1000.0
        result[name] = Latency(
            p50_ms=float(np.percentile(ms, 50)),
            p99_ms=float(np.percentile(ms, 99)),
            mean_ms=float(np.mean(ms)),
            runs=len(values),
        )
    return result
