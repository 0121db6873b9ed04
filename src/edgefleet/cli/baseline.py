"""``edgefleet baseline``: a model version's drift baseline from reference data (a client of the
operator API).

``create`` reads the reference inputs (and optionally the model's outputs on them) from ``.npz``
files whose keys are the tensor names and whose first axis is the sample, summarises them with
:mod:`edgefleet.monitoring` (the same sketches the agent keeps of live traffic) and attaches the
summary to the version; ``show`` prints what is attached.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgefleet.cli.output import add_client_arguments, client_from_args, emit

BASELINE_FIELDS = [
    ("Model", "ModelName"),
    ("Version", "ModelVersion"),
    ("Samples", "Samples"),
    ("Inputs", "Inputs"),
    ("Outputs", "Outputs"),
    ("Classes", "Classes"),
    ("Created", "CreationTime"),
    ("Created by", "CreatedBy"),
]


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("baseline", help="drift baselines of model versions")
    commands = parser.add_subparsers(dest="baseline_command", metavar="COMMAND", required=True)

    create = commands.add_parser("create", help="summarise reference data and attach it to a model version")
    create.add_argument("--model", required=True, help="model name")
    create.add_argument("--version", required=True, help="model version")
    create.add_argument(
        "--inputs",
        required=True,
        type=Path,
        metavar="DATA.npz",
        help="reference inputs: tensor name -> array",
    )
    create.add_argument(
        "--outputs",
        type=Path,
        metavar="OUT.npz",
        help="the model's outputs on them (for output and class drift)",
    )
    create.set_defaults(func=create_baseline)

    show = commands.add_parser("show", help="show a model version's baseline")
    show.add_argument("--model", required=True, help="model name")
    show.add_argument("--version", required=True, help="model version")
    show.set_defaults(func=show_baseline)

    for command in (create, show):
        add_client_arguments(command)


def load_tensors(path: Path, what: str) -> dict[str, Any]:
    """The arrays of an ``.npz`` file by name; NOT_FOUND / INVALID_ARGUMENT naming the file."""
    import zipfile

    import numpy as np

    from edgefleet.core.errors import InvalidArgument, NotFound

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: np.asarray(data[name]) for name in data.files}
    except FileNotFoundError as exc:
        raise NotFound(f"{what} file {path} does not exist") from exc
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InvalidArgument(f"{what} file {path} is not a NumPy .npz archive: {exc}") from exc
    if not isinstance(arrays, dict) or not arrays:
        raise InvalidArgument(f"{what} file {path} holds no arrays")
    return arrays


def _described(baseline: dict[str, Any]) -> dict[str, Any]:
    summary = baseline.get("Summary") or {}
    return {
        **baseline,
        "Inputs": {n: f"{len(v)} features" for n, v in (summary.get("inputs") or {}).items()},
        "Outputs": {n: f"{len(v)} features" for n, v in (summary.get("outputs") or {}).items()},
        "Classes": list(summary.get("classes") or {}),
    }


def create_baseline(args: argparse.Namespace) -> int:
    inputs = load_tensors(args.inputs, "inputs")
    outputs = load_tensors(args.outputs, "outputs") if args.outputs is not None else {}
    clash = set(inputs) & set(outputs)
    if clash:
        from edgefleet.core.errors import InvalidArgument

        raise InvalidArgument(f"tensors named both as input and output: {', '.join(sorted(clash))}")
    from edgefleet.monitoring.baseline import summarise_reference

    summary = summarise_reference(inputs, outputs)
    with client_from_args(args) as client:
        baseline = client.put_baseline(args.model, args.version, summary.to_wire())
    return emit(args, baseline if args.json else _described(baseline), BASELINE_FIELDS)


def show_baseline(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        baseline = client.get_baseline(args.model, args.version)
    return emit(args, baseline if args.json else _described(baseline), BASELINE_FIELDS)
