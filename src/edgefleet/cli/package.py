"""``edgefleet package``: build, verify and inspect signed model packages."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgefleet.core.errors import InvalidArgument


def add_parser(subparsers: Any) -> None:
    """Register ``package`` and its sub-commands."""
    parser = subparsers.add_parser("package", help="build, verify and inspect signed model packages")
    sub = parser.add_subparsers(dest="package_command", metavar="SUBCOMMAND", required=True)

    build = sub.add_parser(
        "build",
        help="build and sign <name>-<version>.tar.gz from a model",
        description="Read the model's tensor metadata (ONNX or TFLite), write and sign the package, "
        "and print its path on the last line.",
    )
    build.add_argument(
        "model",
        metavar="MODEL",
        type=Path,
        help="model file (.onnx, .tflite) or an output directory of edgefleet compile",
    )
    build.add_argument(
        "--name", required=True, help="model name: 1-63 of [a-zA-Z0-9-], starting and ending alnum"
    )
    build.add_argument("--version", required=True, help="model version: 1-30 of [a-zA-Z0-9 _.]")
    build.add_argument(
        "--key", required=True, type=Path, metavar="DIR", help="key directory (edgefleet keys init)"
    )
    build.add_argument("-o", "--output", required=True, type=Path, metavar="OUTDIR", help="output directory")
    build.add_argument("--runtime", help="runtime name (default: from the model: onnxruntime or litert)")
    build.add_argument(
        "--arch", default="any", help="target architecture: x86_64, aarch64, armv7l, any (default)"
    )
    build.add_argument("--os", default="linux", dest="target_os", help="target OS (default linux)")
    build.add_argument("--accelerator", default="none", help="target accelerator (default none)")
    build.add_argument(
        "--file",
        action="append",
        default=[],
        type=Path,
        dest="extra_files",
        metavar="PATH",
        help="extra file to include at the package's top level (repeatable)",
    )
    build.add_argument(
        "--baseline-inputs",
        type=Path,
        metavar="REF.npz",
        help="reference inputs (tensor name -> array, first axis the sample): their summary travels in "
        "the package as baseline.json and becomes the version's drift baseline when the package is "
        "uploaded (unless the version has one)",
    )
    build.add_argument(
        "--baseline-outputs",
        type=Path,
        metavar="OUT.npz",
        help="the model's outputs on the reference inputs (default for ONNX models: run them here)",
    )
    build.set_defaults(func=_build)

    verify = sub.add_parser("verify", help="verify a package's signature, certificate chain and files")
    verify.add_argument("package", metavar="PKG", type=Path, help="package .tar.gz or unpacked directory")
    verify.add_argument(
        "--trust", required=True, type=Path, metavar="DIR", help="trust directory (root certificates)"
    )
    verify.set_defaults(func=_verify)

    inspect = sub.add_parser("inspect", help="show a package's manifest and signer (does not verify)")
    inspect.add_argument("package", metavar="PKG", type=Path, help="package .tar.gz or unpacked directory")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(func=_inspect)


def _build(args: argparse.Namespace) -> int:
    import tempfile

    if args.baseline_outputs is not None and args.baseline_inputs is None:
        raise InvalidArgument("--baseline-outputs goes with --baseline-inputs")
    if args.baseline_inputs is None:
        return _build_package(args, [])
    from edgefleet.cli.baseline import load_tensors
    from edgefleet.packager.baseline import write_baseline

    inputs = load_tensors(args.baseline_inputs, "baseline inputs")
    outputs = (
        None if args.baseline_outputs is None else load_tensors(args.baseline_outputs, "baseline outputs")
    )
    model = args.model
    if model.is_dir():  # a compile output: its model file
        from edgefleet.compiler.output import read_package_metadata

        model = model / str(read_package_metadata(model)["model_file"])
    with tempfile.TemporaryDirectory(prefix="edgefleet-baseline-") as tmp:
        return _build_package(args, [write_baseline(model, inputs, outputs, Path(tmp))])


def _build_package(args: argparse.Namespace, baseline: list[Path]) -> int:
    from edgefleet.core.manifest import Target
    from edgefleet.packager.build import build_package

    if args.model.is_dir():
        # An `edgefleet compile` output directory: runtime, target and tensors come from its metadata.
        from edgefleet.compiler.output import PACKAGE_METADATA_FILE, build_package_from_output

        if not (args.model / PACKAGE_METADATA_FILE).is_file():
            raise InvalidArgument(
                f"{args.model} is a directory without {PACKAGE_METADATA_FILE}: give a model file, or the "
                "output directory of `edgefleet compile`"
            )
        print(
            build_package_from_output(
                args.model,
                name=args.name,
                version=args.version,
                key_dir=args.key,
                out_dir=args.output,
                extra_files=[*args.extra_files, *baseline],
            )
        )
        return 0
    path = build_package(
        args.model,
        name=args.name,
        version=args.version,
        key_dir=args.key,
        out_dir=args.output,
        runtime=args.runtime,
        target=Target(os=args.target_os, arch=args.arch, accelerator=args.accelerator),
        extra_files=[*args.extra_files, *baseline],
    )
    print(path)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from edgefleet.core.package import verify_package

    verified = verify_package(args.package, args.trust)
    manifest = verified.manifest
    print(
        f"OK {manifest.name} {manifest.version} ({manifest.runtime.name}, {len(manifest.files)} file(s)) "
        f"signed by {verified.signer.subject} [sha256 {verified.signer.fingerprint_sha256[:16]}]"
    )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from edgefleet.cli.output import cell
    from edgefleet.core.package import inspect_package

    info = inspect_package(args.package)
    if args.json:
        print(json.dumps(info.to_dict(), indent=2, sort_keys=True))
        return 0
    m = info.manifest
    lines = [
        f"package:     {info.path}  (not verified; use: edgefleet package verify PKG --trust DIR)",
        f"model:       {m.name} {m.version}",
        f"runtime:     {m.runtime.name} >= {m.runtime.min_version}",
        f"target:      os={m.target.os} arch={m.target.arch} accelerator={m.target.accelerator}",
        f"model file:  {m.model_file}",
        f"created:     {cell(m.created)}",
    ]
    for role, tensors in (("input", m.inputs), ("output", m.outputs)):
        for t in tensors:
            lines.append(f"{role + ':':<12} {t.name} {t.dtype.name} {list(t.shape)}")
    for f in m.files:
        lines.append(f"file:        {f.path} {f.size} bytes sha256={f.sha256}")
    for key, value in sorted(m.provenance.items()):
        lines.append(f"provenance:  {key}={value}")
    s = info.signer
    lines += [
        f"signer:      {s.subject} ({s.key_algorithm})",
        f"issuer:      {s.issuer}",
        f"valid:       {s.not_before:%Y-%m-%dT%H:%M:%SZ} .. {s.not_after:%Y-%m-%dT%H:%M:%SZ}",
        f"fingerprint: sha256 {s.fingerprint_sha256}",
    ]
    print("\n".join(lines))
    return 0
