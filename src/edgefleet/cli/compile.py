"""``edgefleet compile``: a trained model -> an artifact optimised for a device class (see docs/compiler.md)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from edgefleet.core.errors import InvalidArgument

_FRAMEWORKS = ("onnx", "pytorch", "sklearn", "xgboost", "lightgbm", "tflite")
_BACKENDS = ("auto", "onnxruntime", "openvino", "tvm", "litert", "tflite")


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "compile",
        help="compile a trained model for a target device class",
        description=(
            "Convert a trained model to an artifact optimised for a target (ONNX Runtime, OpenVINO, TVM or "
            "LiteRT), check it against the original on validation data, and write it with the metadata "
            "'edgefleet package build' needs and a report."
        ),
    )
    parser.add_argument("model", nargs="?", type=Path, help="the trained model file")
    parser.add_argument("--framework", help=f"the model's framework: {', '.join(_FRAMEWORKS)}")
    parser.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME:SHAPE[:DTYPE][:batch=AXIS|none]",
        help=(
            "declare an input, e.g. x:1x3x224x224:float32 (-1 = dynamic), rate:[]:int64 (a scalar), "
            "h0:2x-1x64:float32:batch=1 (the batch axis, or batch=none; inferred from the graph otherwise); "
            "repeat for each input"
        ),
    )
    parser.add_argument("--target", help="target device class (see --list-targets)")
    parser.add_argument("--backend", default="auto", help=f"{' | '.join(_BACKENDS)} (default: auto)")
    parser.add_argument("--quantize", default="auto", help="auto | none | int8 | fp16 (default: auto)")
    parser.add_argument(
        "--calibration", type=Path, help="int8 calibration data: .npz, .npy or an image folder"
    )
    parser.add_argument(
        "--validation", type=Path, help="validation data (.npz with 'labels' for top-1 accuracy)"
    )
    parser.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=1.0,
        help="points of top-1 accuracy (or output agreement without labels) a candidate may lose (default 1)",
    )
    parser.add_argument("--tune-trials", type=int, default=0, help="TVM tuning trials (0 = no tuning)")
    parser.add_argument("--tune-minutes", type=float, default=0.0, help="TVM tuning time limit in minutes")
    parser.add_argument(
        "--threads", type=int, default=0, help="threads per inference when measuring (0 = all)"
    )
    parser.add_argument(
        "--bench-seconds", type=float, default=2.0, help="seconds of latency measurement per candidate"
    )
    parser.add_argument("-o", "--output", type=Path, help="output directory (must not exist or be empty)")
    parser.add_argument("--json", action="store_true", help="print report.json instead of the table")
    parser.add_argument("--list-targets", action="store_true", help="print the target catalogue and exit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgefleet.compiler.job import CompileJob, CompileRequest
    from edgefleet.compiler.signature import parse_input_spec

    if args.list_targets:
        _print_targets()
        return 0
    missing = [
        flag
        for flag, value in (("MODEL", args.model), ("--framework", args.framework), ("--target", args.target))
        if value is None
    ]
    if args.output is None:
        missing.append("-o OUTDIR")
    if missing:
        raise InvalidArgument(f"edgefleet compile needs {', '.join(missing)} (see edgefleet compile --help)")
    request = CompileRequest(
        model=args.model,
        framework=args.framework,
        target=args.target,
        output_dir=args.output,
        inputs=tuple(parse_input_spec(text) for text in args.input),
        backend=args.backend,
        quantize=args.quantize,
        calibration=args.calibration,
        validation=args.validation,
        max_accuracy_drop=args.max_accuracy_drop,
        tune_trials=args.tune_trials,
        tune_minutes=args.tune_minutes,
        threads=args.threads,
        benchmark_seconds=args.bench_seconds,
    )
    if not args.verbose:
        # The job's progress is printed below; its log records would repeat it.
        logging.getLogger("edgefleet.compiler").setLevel(logging.WARNING)
    from edgefleet.cli.output import StepStatus

    # each step as a line on stderr; on a terminal a spinner shows the step in progress
    with StepStatus() as progress:
        result = CompileJob(request, on_log=progress).run()
    if args.json:
        import json

        print(json.dumps(result.report.to_dict(), indent=2))
    else:
        print(result.report.render_table())
        print(
            f"\nwrote {result.output_dir} ({result.metadata['model_file']}, runtime {result.metadata['runtime']['name']})"
        )
    return 0


def _print_targets() -> None:
    from edgefleet.compiler.targets import TARGETS, matches_host

    for target in TARGETS.values():
        host = " (this host)" if matches_host(target) else ""
        print(f"{target.name}{host}")
        print(f"  {target.description}")
        print(f"  arch {target.arch}, backends {', '.join(target.backends)}")
        print(f"  assumes CPU features: {', '.join(target.cpu_features)}")
        print(
            f"  native code: {target.llvm_triple} -mcpu={target.llvm_mcpu} {' '.join(target.llvm_mattr)}".rstrip()
        )
        print(f"  fp16 compute: {'yes' if target.fp16_compute else 'no'}")
