"""The compiler's output directory: the artifact files, ``edgefleet-package.json`` and ``report.json``.

``edgefleet-package.json`` is what ``edgefleet package build`` reads to write the package manifest:
``model_file``, ``runtime`` (``name``, ``min_version``), ``target`` (``os``, ``arch``,
``accelerator``), ``inputs``/``outputs`` (``name``, ``dtype`` as in
:class:`edgefleet.core.tensors.DataType`, ``shape`` with -1 for dynamic dimensions),
``source_sha256`` (of the model file given to the compiler) and ``extra_files`` (relative paths of
the artifact's other files). The directory appears complete or not at all: it is assembled next to
its final place and renamed into it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgefleet.compiler.report import REPORT_FILE, CompileReport
from edgefleet.compiler.types import CandidateArtifact, TargetSpec
from edgefleet.core.errors import AlreadyExists, InvalidArgument
from edgefleet.core.tensors import TensorSpec

PACKAGE_METADATA_FILE = "edgefleet-package.json"


def check_output_dir(path: Path) -> None:
    """ALREADY_EXISTS if ``path`` holds anything; INVALID_ARGUMENT if it is a file."""
    if path.exists() and not path.is_dir():
        raise InvalidArgument(f"output {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        raise AlreadyExists(f"output directory {path} is not empty; choose another -o or remove it")


def package_metadata(
    candidate: CandidateArtifact,
    target: TargetSpec,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    source_sha256: str,
) -> dict[str, Any]:
    """The ``edgefleet-package.json`` document for ``candidate``."""
    return {
        "model_file": candidate.model_file,
        "runtime": {"name": candidate.runtime, "min_version": candidate.runtime_min_version},
        "target": {"os": target.os, "arch": target.arch, "accelerator": target.accelerator},
        "inputs": [t.to_dict() for t in inputs],
        "outputs": [t.to_dict() for t in outputs],
        "source_sha256": source_sha256,
        "extra_files": list(candidate.extra_files),
    }


def write_output_dir(
    destination: Path,
    candidate: CandidateArtifact,
    metadata: dict[str, Any],
    report: CompileReport,
    job_id: str,
) -> None:
    """Copy the artifact and write both JSON files into ``destination``, atomically."""
    check_output_dir(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.parent / f".{destination.name}.partial-{job_id}"
    try:
        staging.mkdir()
        for rel in candidate.files():
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(candidate.directory / rel, target)
        (staging / PACKAGE_METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        (staging / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        if destination.is_dir():
            destination.rmdir()  # empty (checked above); rename needs it gone
        os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def read_package_metadata(directory: Path) -> dict[str, Any]:
    """Read ``edgefleet-package.json`` from a compiler output directory."""
    path = directory / PACKAGE_METADATA_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"{path} is missing or not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidArgument(f"{path} must hold a JSON object")
    return data


def build_package_from_output(
    directory: Path,
    *,
    name: str,
    version: str,
    key_dir: Path,
    out_dir: Path,
    extra_files: Sequence[Path] = (),
) -> Path:
    """Sign a package of a compiler output directory with :func:`edgefleet.packager.build.build_package`
    (``extra_files`` go at the package's top level beside the compiler's).

    Runtime, target and tensor metadata come from ``edgefleet-package.json``; the provenance records
    the SHA-256 of the model given to the compiler and the target it was compiled for.
    """
    from edgefleet.core.manifest import Runtime, Target
    from edgefleet.packager.build import build_package

    meta = read_package_metadata(directory)
    try:
        runtime = Runtime(str(meta["runtime"]["name"]), str(meta["runtime"]["min_version"]))
        target = Target(
            str(meta["target"]["os"]), str(meta["target"]["arch"]), str(meta["target"]["accelerator"])
        )
        inputs = tuple(TensorSpec.from_dict(t) for t in meta["inputs"])
        outputs = tuple(TensorSpec.from_dict(t) for t in meta["outputs"])
        model_file = str(meta["model_file"])
        extra = [(directory / rel, str(rel)) for rel in meta["extra_files"]]
        extra += [(path, path.name) for path in extra_files]
        source = str(meta["source_sha256"])
    except (KeyError, TypeError) as exc:
        raise InvalidArgument(f"{directory / PACKAGE_METADATA_FILE} is incomplete: {exc}") from exc
    report = directory / REPORT_FILE
    provenance = {"source_sha256": source, "compiler": "edgefleet compile"}
    if report.is_file():
        try:
            provenance["compile_target"] = str(json.loads(report.read_text(encoding="utf-8"))["target"])
        except (ValueError, KeyError) as exc:
            raise InvalidArgument(f"{report} is not a compile report: {exc}") from exc
    return build_package(
        directory / model_file,
        name=name,
        version=version,
        key_dir=key_dir,
        out_dir=out_dir,
        runtime=runtime,
        target=target,
        inputs=inputs,
        outputs=outputs,
        extra_files=extra,
        provenance=provenance,
    )
