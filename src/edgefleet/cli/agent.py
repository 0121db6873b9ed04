"""``edgefleet agent``: run the device agent on a Unix socket, or operate a running one.

``edgefleet agent run -a ADDRESS -c CONFIG [-f]`` serves; ``list``, ``describe``, ``load``,
``unload``, ``predict``, ``stats`` and ``shadow load|unload|promote|stats`` talk to a running agent
through :class:`AgentClient`. The form
without a subcommand, ``edgefleet agent -a ADDRESS -c CONFIG [-f]``, is the same as ``run`` (scripts
and the device daemon start the agent that way).

Exit codes: 0 on success, 1 when the agent answers with an error (the message starts with the
error's code, e.g. ``NOT_FOUND``) or cannot be reached, 2 for usage errors: bad arguments, an input
file that cannot be read, or inputs whose names, dtypes or shapes the model does not take.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.cli.output import dump_json, fields, table
from edgefleet.core.errors import Unavailable
from edgefleet.core.logs import LOG_FORMATS, configure_logging

if TYPE_CHECKING:
    import numpy as np

    from edgefleet.client import AgentClient, ModelInfo, ModelStatistics, ShadowStatistics
    from edgefleet.core.tensors import TensorSpec

#: Where the agent listens unless -a says otherwise (the socket the docs and the device daemon use).
DEFAULT_ADDRESS = "unix:///run/edgefleet/agent.sock"
#: Seconds an operator call may take by default (loading a large model can take a while).
DEFAULT_TIMEOUT = 300.0
#: Outputs with at most this many elements are printed in full; larger ones are summarised.
SMALL_OUTPUT = 16
#: Exit code of usage errors (what argparse uses).
USAGE = 2

_LEGACY_FLAGS = (
    ("legacy_config", "-c/--config"),
    ("legacy_force", "-f/--force"),
    ("legacy_log_format", "--log-format"),
    ("legacy_metrics_address", "--metrics-address"),
)


class UsageError(Exception):
    """A mistake in what the user gave the CLI (reported with exit code 2, before anything is sent)."""


# ---------------------------------------------------------------------------------------- parser


def add_parser(sub: Any) -> None:
    """Add ``edgefleet agent`` and its subcommands."""
    parser = sub.add_parser(
        "agent",
        help="run the device agent, or list, load, unload, describe and run models on a running one",
        description=(
            "Run the device agent (Edge Manager compatible gRPC on a Unix socket), or operate an agent "
            "that is running: list, describe, load and unload models, run a prediction on an .npy/.npz "
            "file, show statistics."
        ),
        epilog=(
            "Without a subcommand, 'edgefleet agent -a ADDRESS -c CONFIG [-f]' runs the agent, the same as "
            "'edgefleet agent run'. Exit codes: 0 success, 1 error from the agent or agent unreachable "
            "(the message starts with the error code), 2 usage error."
        ),
    )
    parser.add_argument(
        "-a",
        "--address",
        default=None,
        help=f"agent socket: unix:///path/agent.sock or a path (default: {DEFAULT_ADDRESS})",
    )
    legacy = parser.add_argument_group(
        "running the agent without a subcommand (the same as 'agent run'; kept for existing scripts)"
    )
    _run_arguments(legacy, dest_prefix="legacy_", required=False)
    # The agent's log is its output: INFO by default (read by the CLI's logging set-up).
    parser.set_defaults(func=_dispatch, agent_parser=parser, agent_command=None, log_level=logging.INFO)
    actions = parser.add_subparsers(dest="agent_command", metavar="SUBCOMMAND", title="subcommands")

    run_parser = actions.add_parser(
        "run",
        help="run the agent on a Unix socket until SIGTERM/SIGINT",
        description="Run the device agent on a Unix socket until SIGTERM, SIGINT or SIGHUP.",
    )
    _address_argument(run_parser)
    _run_arguments(run_parser, dest_prefix="", required=True)

    _operator(
        actions, "list", "list the loaded models", "List the models the agent has loaded.", "the models"
    )

    describe = _operator(
        actions,
        "describe",
        "show a loaded model's inputs and outputs",
        "Show a loaded model's package and its input and output tensors.",
        "the model",
    )
    describe.add_argument("name", metavar="NAME", help="the model's name (alias) or a handle")

    load = _operator(
        actions,
        "load",
        "load a package under a name",
        "Load a signed package (a .tar.gz or an unpacked package directory) under NAME. A local path is "
        "made absolute here, so it means the same as in your shell.",
        "the loaded model",
    )
    load.add_argument("path", metavar="PATH", help="package file (.tar.gz), package directory or file:// URL")
    load.add_argument("name", metavar="NAME", help="the name to load it under (letters, digits and dashes)")

    unload = _operator(actions, "unload", "unload a model", "Unload the model NAME.", "the answer")
    unload.add_argument("name", metavar="NAME", help="the model's name (alias)")

    predict = _operator(
        actions,
        "predict",
        "run a model on inputs from an .npy or .npz file",
        "Run model NAME on the inputs in INPUT: an .npy file for a model with one input, or an .npz file "
        "with one array per input, named like the model's inputs (see 'agent describe NAME'). Names, "
        "dtypes and shapes are checked before anything is sent. Prints each output's name, dtype and "
        f"shape, with its values (outputs of up to {SMALL_OUTPUT} elements) or min/max/mean, and the "
        "argmax over the last axis.",
        "the outputs (with all their values)",
    )
    predict.add_argument("name", metavar="NAME", help="the model's name (alias) or a handle")
    predict.add_argument(
        "input", metavar="INPUT", type=Path, help="an .npy file (one input) or an .npz file (inputs by name)"
    )
    predict.add_argument(
        "-o",
        "--output",
        metavar="OUT.npz",
        type=Path,
        help="also save every output to this .npz file (by output name)",
    )
    predict.add_argument(
        "--cast",
        action="store_true",
        help="convert inputs to the model's dtypes where numpy calls it safe or same-kind (e.g. float64 to float32)",
    )

    stats = _operator(
        actions,
        "stats",
        "show request counts, latency and memory per model",
        "Show request and error counts, latency percentiles, queue and memory of one or every model.",
        "the statistics",
    )
    stats.add_argument(
        "name", metavar="NAME", nargs="?", help="only this model (default: every loaded model)"
    )
    _shadow_parsers(actions)


def _shadow_parsers(actions: Any) -> None:
    """``agent shadow load|unload|promote|stats``: shadow models paired with handles."""
    shadow = actions.add_parser(
        "shadow",
        help="test a loaded model on a handle's live traffic as its shadow; promote it",
        description=(
            "A shadow gets a sample of a handle's Predict calls mirrored to it off the request path and "
            "compared with the champion's (the handle target's) answers, which the application keeps "
            "getting. Load the candidate first ('agent load PATH NAME'); agent.intra_op_threads = 1 "
            "keeps champion and shadow on a core each."
        ),
    )
    shadow.set_defaults(log_level=logging.WARNING)
    commands = shadow.add_subparsers(dest="shadow_command", metavar="SHADOW_COMMAND", required=True)
    load = _operator(
        commands,
        "load",
        "pair a loaded model with a handle as its shadow",
        "Pair the loaded model SHADOW with HANDLE: a sample of the handle's calls is mirrored to it.",
        "the pair",
    )
    load.add_argument("handle", metavar="HANDLE", help="the handle the application calls")
    load.add_argument("shadow", metavar="SHADOW", help="the loaded model (alias) to test")
    load.add_argument(
        "--rate",
        type=float,
        default=1.0,
        help="fraction of the handle's calls mirrored, 0..1 (deterministic: 0.25 = every 4th; default 1)",
    )
    load.add_argument(
        "--tolerance", type=float, default=0.0, help="absolute tolerance of closeness (default 1e-5)"
    )
    load.add_argument(
        "--max-queue",
        type=int,
        default=0,
        help="mirrored calls waiting for the shadow before calls are dropped (default 64)",
    )
    load.add_argument(
        "--compare",
        choices=["auto", "close"],
        default="auto",
        help="auto: class scores by arg-max, integer labels exactly, other outputs within tolerance; "
        "close: every output within tolerance (default auto)",
    )
    for name, help_text, description in (
        ("unload", "end a handle's shadow pair", "End HANDLE's shadow pair; the shadow model stays loaded."),
        (
            "promote",
            "point a handle at its shadow (no call fails)",
            "Point HANDLE at its shadow atomically and end the pair; the old champion stays loaded.",
        ),
    ):
        parser = _operator(commands, name, help_text, description, "the pair's final figures")
        parser.add_argument("handle", metavar="HANDLE", help="the handle")
    stats = _operator(
        commands,
        "stats",
        "show shadow agreement, latency and error figures",
        "Show each pair's calls mirrored, agreed, disagreed, failed and dropped, and latencies.",
        "the figures",
    )
    stats.add_argument("handle", metavar="HANDLE", nargs="?", help="only this handle (default: every pair)")


def _run_arguments(container: Any, *, dest_prefix: str, required: bool) -> None:
    """The options of running the agent: for 'agent run', and for the legacy form without a subcommand."""
    container.add_argument(
        "-c",
        "--config",
        dest=f"{dest_prefix}config",
        metavar="CONFIG",
        type=Path,
        required=required,
        help="vendor JSON or native TOML config file",
    )
    container.add_argument(
        "-f",
        "--force",
        dest=f"{dest_prefix}force",
        action="store_true",
        help="remove a stale socket file first",
    )
    container.add_argument(
        "--log-format",
        dest=f"{dest_prefix}log_format",
        choices=LOG_FORMATS,
        help="override the config's log format: text, or json (one object per line, docs/logs.md)",
    )
    container.add_argument(
        "--metrics-address",
        dest=f"{dest_prefix}metrics_address",
        metavar="HOST:PORT",
        help="serve Prometheus GET /metrics on this local address (overrides agent.metrics_address; "
        "needs the 'metrics' extra; default: off)",
    )


def _operator(
    actions: Any, name: str, help_text: str, description: str, answer: str
) -> argparse.ArgumentParser:
    """A subcommand that talks to a running agent: -a, --timeout and --json (printing ``answer``)."""
    parser: argparse.ArgumentParser = actions.add_parser(name, help=help_text, description=description)
    _address_argument(parser)
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        metavar="SECONDS",
        default=DEFAULT_TIMEOUT,
        help="seconds the call may take (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help=f"print {answer} as JSON")
    # the answer is the output: logs only from WARNING up (the agent parser's INFO is for 'run')
    parser.set_defaults(log_level=logging.WARNING)
    return parser


def _address_argument(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: when not given here, the value given before the subcommand (or the default) stays.
    parser.add_argument(
        "-a",
        "--address",
        default=argparse.SUPPRESS,
        help=f"agent socket: unix:///path/agent.sock or a path (default: {DEFAULT_ADDRESS})",
    )


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return value


# -------------------------------------------------------------------------------------- dispatch


def _dispatch(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.agent_parser
    command: str | None = args.agent_command
    given = [flag for dest, flag in _LEGACY_FLAGS if getattr(args, dest)]
    if command is None:
        if args.legacy_config is None:
            parser.error(
                "give a subcommand (run, list, describe, load, unload, predict, stats, shadow), "
                "or -c CONFIG to run the agent"
            )
        return run_agent(
            args.address or DEFAULT_ADDRESS,
            args.legacy_config,
            args.legacy_force,
            args.legacy_log_format,
            args.legacy_metrics_address,
        )
    if given:
        parser.error(f"{', '.join(given)} must come after 'agent run', not before '{command}'")
    if command == "run":
        return run_agent(
            args.address or DEFAULT_ADDRESS, args.config, args.force, args.log_format, args.metrics_address
        )
    handler = _OPERATOR_COMMANDS[command]
    try:
        return handler(args)
    except UsageError as exc:
        print(f"edgefleet agent {command}: error: {exc}", file=sys.stderr)
        return USAGE


def run_agent(
    address: str,
    config_path: Path,
    force: bool,
    log_format: str | None,
    metrics_address: str | None = None,
) -> int:
    """Serve on ``address`` with the config at ``config_path`` until a stop signal (``log_format``
    and ``metrics_address``, when given, override the config's)."""
    from dataclasses import replace

    from edgefleet.agent.config import load_config
    from edgefleet.agent.runner import run_until_signal, start_agent

    if log_format is not None:  # the config's own warnings and errors in that format too
        configure_logging(log_format, "agent")
    config = load_config(config_path)
    if metrics_address is not None:
        config = replace(config, metrics_address=metrics_address)  # checked like the config's key
    fmt = log_format or config.log_format
    if config.log_verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    # one agent serves one device: its name and fleet go on every record
    configure_logging(fmt, "agent", fields={"device": config.device_name, "fleet": config.fleet_name})
    agent = start_agent(config, address, force=force)
    if fmt == "text":  # with json only JSON reaches stderr (the runner has logged the same)
        print(f"edgefleet agent serving on unix://{agent.path}", file=sys.stderr, flush=True)
    run_until_signal(agent)
    return 0


@contextmanager
def _connect(args: argparse.Namespace) -> Iterator[AgentClient]:
    """A client of the agent named by ``-a``; an unreachable agent is reported with its socket."""
    from edgefleet.client import AgentClient

    address = args.address or DEFAULT_ADDRESS
    try:
        with AgentClient(address, timeout=args.timeout) as client:
            yield client
    except Unavailable as exc:
        raise Unavailable(_unreachable(address, exc)) from exc


def _unreachable(address: str, exc: Unavailable) -> str:
    """One line saying why the agent at ``address`` cannot be reached, naming its socket."""
    from edgefleet.core.errors import InvalidArgument
    from edgefleet.protocol.agent.framing import socket_path

    try:
        path: Path | None = socket_path(address)
    except InvalidArgument:
        path = None
    detail = exc.message.lower()
    start = f"start one with 'edgefleet agent run -a {address} -c CONFIG', or give its socket with -a"
    if path is not None and not path.exists():
        return f"no agent is running at {address}: socket {path} does not exist; {start}"
    if path is not None and "connection refused" in detail:
        return f"no agent is running at {address}: nothing accepts connections on {path} (a stale socket file); {start}"
    if path is not None and "permission denied" in detail:
        return f"cannot reach the agent at {address}: permission denied on {path} (the agent's socket_mode decides who may connect)"
    return f"cannot reach the agent at {address}: {exc.message}"


# ------------------------------------------------------------------------------------- commands


def _list(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        models = client.list()
    if args.json:
        dump_json([_model_dict(m) for m in models])
        return 0
    rows = [
        {
            "name": m.name,
            "inputs": " ".join(_spec_text(s) for s in m.inputs) or "-",
            "outputs": " ".join(_spec_text(s) for s in m.outputs) or "-",
            "url": m.url,
        }
        for m in models
    ]
    table(rows, [("NAME", "name"), ("INPUTS", "inputs"), ("OUTPUTS", "outputs"), ("PACKAGE", "url")])
    return 0


def _describe(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        model = client.describe(args.name)
    _show_model(model, args.json)
    return 0


def _load(args: argparse.Namespace) -> int:
    url: str = args.path
    if "://" not in url:  # a local path: the agent resolves relative paths against its own directory
        url = os.path.abspath(url)
    with _connect(args) as client:
        model = client.load(url, args.name)
    if not args.json:
        print(f"loaded {model.name} from {url}")
    _show_model(model, args.json)
    return 0


def _unload(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        client.unload(args.name)
    if args.json:
        dump_json({"unloaded": args.name})
    else:
        print(f"unloaded {args.name}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        stats = client.model_stats(args.name)
    rows = [_stats_dict(s) for s in stats]
    if args.json:
        dump_json(rows)
        return 0
    for row in rows:
        row["last_inference"] = _utc(row["last_inference_time"])
        row["loaded"] = _utc(row["loaded_time"])
        row["latency"] = f"{row['p50_ms']:.2f}/{row['p95_ms']:.2f}/{row['p99_ms']:.2f}"
    table(
        rows,
        [
            ("NAME", "name"),
            ("MODEL", "model_name"),
            ("VERSION", "model_version"),
            ("REQUESTS", "request_count"),
            ("ERRORS", "error_count"),
            ("P50/P95/P99 MS", "latency"),
            ("IN FLIGHT", "in_flight"),
            ("QUEUED", "queued"),
            ("MEMORY", "memory_bytes"),
            ("LAST INFERENCE", "last_inference"),
            ("LOADED", "loaded"),
        ],
    )
    return 0


def _predict(args: argparse.Namespace) -> int:
    output_path: Path | None = args.output
    if output_path is not None and output_path.is_dir():
        raise UsageError(
            f"-o {output_path} is a directory; give the .npz file to write, e.g. {output_path / 'out.npz'}"
        )
    loaded = _load_arrays(args.input)  # a file that cannot be read is reported before any call
    with _connect(args) as client:
        model = client.describe(args.name)
        inputs = match_inputs(loaded, model.inputs, source=args.input, cast=args.cast)
        outputs = client.predict(args.name, inputs)
    if output_path is not None:
        _save_npz(output_path, outputs)
        print(f"saved {len(outputs)} output(s) to {output_path}", file=sys.stderr)
    if args.json:
        dump_json(
            {"model": args.name, "outputs": [_output_dict(n, a, data=True) for n, a in outputs.items()]}
        )
        return 0
    rows = [_output_dict(n, a, data=False) for n, a in outputs.items()]
    table(
        rows,
        [
            ("OUTPUT", "name"),
            ("DTYPE", "dtype"),
            ("SHAPE", "shape_text"),
            ("VALUES", "values"),
            ("ARGMAX", "argmax"),
        ],
    )
    return 0


def _shadow(args: argparse.Namespace) -> int:
    command: str = args.shadow_command
    with _connect(args) as client:
        if command == "load":
            pairs = [
                client.load_shadow(
                    args.handle,
                    args.shadow,
                    sample_rate=args.rate,
                    tolerance=args.tolerance,
                    max_queue=args.max_queue,
                    comparison=args.compare,
                )
            ]
        elif command == "unload":
            pairs = [client.unload_shadow(args.handle)]
        elif command == "promote":
            previous, final = client.promote_shadow(args.handle)
            pairs = [final]
        else:
            pairs = client.shadow_statistics(args.handle)
    rows = [p.to_dict() for p in pairs]
    if args.json:
        dump_json(rows[0] if command != "stats" else rows)
        return 0
    if command == "load":
        print(f"{args.shadow} shadows {pairs[0].champion} on handle {args.handle}")
    elif command == "unload":
        print(f"handle {args.handle}: shadow {pairs[0].shadow} unpaired (still loaded)")
    elif command == "promote":
        print(f"handle {args.handle} -> {pairs[0].shadow} (was {previous}, still loaded)")
    _shadow_table(pairs)
    return 0


def _shadow_table(pairs: Sequence[ShadowStatistics]) -> None:
    rows = [
        {
            "handle": p.handle,
            "champion": f"{p.champion} ({p.champion_model_name} {p.champion_model_version})",
            "shadow": f"{p.shadow} ({p.shadow_model_name} {p.shadow_model_version})",
            "rate": f"{p.sample_rate:g}",
            "mirrored": p.mirrored,
            "agreed": f"{p.agreed}/{p.completed} ({p.agreement_rate:.1%})",
            "errors": p.shadow_errors,
            "dropped": p.dropped,
            "latency": f"{p.champion_p50_ms:.2f}/{p.champion_p99_ms:.2f} vs {p.shadow_p50_ms:.2f}/{p.shadow_p99_ms:.2f}",
            "diff": f"{p.max_abs_diff:.3g}",
        }
        for p in pairs
    ]
    table(
        rows,
        [
            ("HANDLE", "handle"),
            ("CHAMPION", "champion"),
            ("SHADOW", "shadow"),
            ("RATE", "rate"),
            ("MIRRORED", "mirrored"),
            ("AGREED", "agreed"),
            ("ERRORS", "errors"),
            ("DROPPED", "dropped"),
            ("P50/P99 MS CHAMPION VS SHADOW", "latency"),
            ("MAX DIFF", "diff"),
        ],
    )


_OPERATOR_COMMANDS = {
    "list": _list,
    "describe": _describe,
    "load": _load,
    "unload": _unload,
    "predict": _predict,
    "stats": _stats,
    "shadow": _shadow,
}


# --------------------------------------------------------------------------------- predict input


def match_inputs(
    loaded: np.ndarray | dict[str, np.ndarray],
    specs: Sequence[TensorSpec],
    *,
    source: Path,
    cast: bool = False,
) -> dict[str, np.ndarray] | list[np.ndarray]:
    """The arrays read from ``source`` (one .npy array, or .npz arrays by name) as the model's inputs.

    An .npy array is the input of a one-input model; an .npz file holds one array per input, by
    name. Names, dtypes and shapes are checked against ``specs``; a model that describes no inputs
    gets the .npy array by position and the .npz arrays by their names, unchecked.
    :class:`UsageError` for anything that does not fit.
    """
    import numpy as np

    path = source
    names = ", ".join(s.name for s in specs)
    if isinstance(loaded, np.ndarray):
        if not specs:
            return [loaded]
        if len(specs) > 1:
            raise UsageError(
                f"{path} holds one array but the model has {len(specs)} inputs ({names}); "
                "give an .npz file with one array per input name"
            )
        arrays = {specs[0].name: loaded}
    else:
        arrays = loaded
        if specs:
            known = {s.name for s in specs}
            unknown = [k for k in arrays if k not in known]
            if unknown:
                raise UsageError(
                    f"{path} has array(s) {', '.join(map(repr, unknown))} but the model has no such input "
                    f"(its inputs: {names})"
                )
            missing = [s.name for s in specs if s.name not in arrays]
            if missing:
                raise UsageError(
                    f"{path} has no array for input(s) {', '.join(map(repr, missing))} (the model's inputs: {names})"
                )
            arrays = {s.name: arrays[s.name] for s in specs}  # in the model's order
    for spec in specs:
        arrays[spec.name] = _checked(spec, arrays[spec.name], cast)
    return arrays


def _load_arrays(path: Path) -> np.ndarray | dict[str, np.ndarray]:
    import numpy as np

    try:
        with path.open("rb") as handle:
            loaded = np.load(handle, allow_pickle=False)
            if isinstance(loaded, np.ndarray):
                return loaded
            with loaded:
                return {name: loaded[name] for name in loaded.files}
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, OSError, EOFError) as exc:
        # numpy says "pickled data" for anything that is neither .npy nor .npz, and for object arrays
        raise UsageError(f"{path} is not an .npy or .npz file of numeric arrays ({exc})") from None


def _checked(spec: TensorSpec, array: np.ndarray, cast: bool) -> np.ndarray:
    import numpy as np

    want = spec.dtype.numpy
    if array.dtype.newbyteorder("=") != want.newbyteorder("="):
        if not cast:
            raise UsageError(
                f"input {spec.name!r} is {array.dtype} but the model wants {want} ({spec.dtype.name}); "
                f"save it as {want.name} or pass --cast"
            )
        if not np.can_cast(array.dtype, want, casting="same_kind"):
            raise UsageError(f"input {spec.name!r}: {array.dtype} cannot be converted to {want} safely")
        array = array.astype(want)
    if not spec.accepts_shape(array.shape):
        raise UsageError(
            f"input {spec.name!r} has shape {list(array.shape)} but the model wants {list(spec.shape)} "
            "(-1: any size)"
        )
    return array


def _save_npz(path: Path, outputs: dict[str, np.ndarray]) -> None:
    import io

    import numpy as np

    from edgefleet.core.files import write_bytes_atomic

    buffer = io.BytesIO()
    np.savez(buffer, **outputs)  # type: ignore[arg-type]  # numpy's stub types the keywords narrowly
    write_bytes_atomic(path, buffer.getvalue())


# ----------------------------------------------------------------------------------------- views


def _spec_text(spec: TensorSpec) -> str:
    return f"{spec.name}:{spec.dtype.name}[{','.join(str(d) for d in spec.shape)}]"


def _model_dict(model: ModelInfo) -> dict[str, Any]:
    return {
        "name": model.name,
        "url": model.url,
        "inputs": [s.to_dict() for s in model.inputs],
        "outputs": [s.to_dict() for s in model.outputs],
    }


def _show_model(model: ModelInfo, as_json: bool) -> None:
    if as_json:
        dump_json(_model_dict(model))
        return
    fields({"name": model.name, "url": model.url}, [("Name", "name"), ("Package", "url")])
    print()
    rows = [
        {
            "kind": kind,
            "name": s.name,
            "dtype": s.dtype.name,
            "shape": "[" + ", ".join(map(str, s.shape)) + "]",
        }
        for kind, specs in (("input", model.inputs), ("output", model.outputs))
        for s in specs
    ]
    table(rows, [("TENSOR", "kind"), ("NAME", "name"), ("DTYPE", "dtype"), ("SHAPE", "shape")])


def _stats_dict(s: ModelStatistics) -> dict[str, Any]:
    return {
        "name": s.name,
        "model_name": s.model_name,
        "model_version": s.model_version,
        "request_count": s.request_count,
        "error_count": s.error_count,
        "p50_ms": s.p50_ms,
        "p95_ms": s.p95_ms,
        "p99_ms": s.p99_ms,
        "in_flight": s.in_flight,
        "queued": s.queued,
        "memory_bytes": s.memory_bytes,
        "last_inference_time": s.last_inference_time,
        "last_capture_time": s.last_capture_time,
        "loaded_time": s.loaded_time,
    }


def _utc(seconds: float | None) -> str | None:
    """Unix seconds as ``YYYY-MM-DDTHH:MM:SSZ`` (None stays None)."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _output_dict(name: str, array: np.ndarray, *, data: bool) -> dict[str, Any]:
    """One output for the summary table (``data=False``) or for JSON (``data=True``: every value)."""
    import numpy as np

    from edgefleet.core.tensors import DataType

    row: dict[str, Any] = {
        "name": name,
        "dtype": DataType.from_numpy(array.dtype).name,
        "shape": list(array.shape),
    }
    argmax = None
    if array.ndim >= 1 and array.shape[-1] > 1 and array.size // array.shape[-1] <= SMALL_OUTPUT:
        argmax = np.argmax(array, axis=-1).tolist()
    if data:
        row["data"] = array.tolist()
        if argmax is not None:
            row["argmax"] = argmax
        return row
    row["shape_text"] = "[" + ", ".join(map(str, array.shape)) + "]"
    if array.size <= SMALL_OUTPUT:
        row["values"] = np.array2string(array, separator=", ", precision=6, max_line_width=10_000).replace(
            "\n", ""
        )
    elif array.size:
        as_float = array.astype(np.float64)
        row["values"] = f"min {as_float.min():.6g}, max {as_float.max():.6g}, mean {as_float.mean():.6g}"
    row["argmax"] = None if argmax is None else json.dumps(argmax)
    return row
