"""Agent Predict overhead and throughput against in-process ONNX Runtime, measured in one run.

    .venv/bin/python bench/agent_predict.py [--iterations 200] [--seconds 2] [--repeat 7]

Prints p50/p99 latency of: in-process ONNX Runtime (the baseline), the agent with inline tensors,
the agent with System V shared memory (ResNet-18 224x224 batch 1 and a digits classifier), and
requests/second with 1, 2 and 4 concurrent client processes. The throughput runs go in rounds (1, 2,
4 clients, then again), so a ratio compares runs seconds apart; the figures are medians over
--repeat rounds, the ratio to one client the median of each round's ratio.
Needs torch==2.13.0 for ResNet-18.

The shadow case (also alone with --shadow-only): ResNet-18 on an agent with intra_op_threads = 1,
the champion's Predict p50 through a handle while a shadow (a second ResNet-18) mirrors every
request, against the same handle with no shadow, in interleaved rounds on the same agent; the
figure is the ratio of the medians of the rounds' p50s (budget: at most 1.05).

A second reference, the "bare grpcio floor", is measured in the same run: the least a Python gRPC
server can do, a grpcio server on a Unix socket whose one method takes the raw input bytes, runs the
same ONNX Runtime session with the same options as the agent and returns the raw output bytes (no
protobuf tensors, no checks, no shared memory, no statistics). What the agent costs beyond that is
edgefleet's; the rest is grpcio and the machine's thread wake-ups. The "bare socket floor" does the
same for the agent's fast path: a Python server on a plain Unix socket, one thread per connection,
length-prefixed raw bytes in and out, the same session.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))


def measure(fn: Callable[[], object], iterations: int) -> np.ndarray:
    times = np.empty(iterations)
    for i in range(iterations):
        start = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - start
    return times * 1000


def interleaved(
    fns: dict[str, Callable[[], object]], iterations: int, rounds: int = 10
) -> dict[str, np.ndarray]:
    """Alternate the variants in rounds so machine noise hits them alike."""
    for fn in fns.values():
        for _ in range(5):
            fn()
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in fns}
    per_round = max(1, iterations // rounds)
    for _ in range(rounds):
        for name, fn in fns.items():
            chunks[name].append(measure(fn, per_round))
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def row(name: str, ms: np.ndarray, base: np.ndarray | None) -> str:
    p50, p99 = np.percentile(ms, 50), np.percentile(ms, 99)
    ratio = f"{p50 / np.percentile(base, 50):6.3f}x" if base is not None else "  base "
    return f"  {name:<34} p50 {p50:8.3f} ms   p99 {p99:8.3f} ms   p50 ratio {ratio}"


def floor_line(res: dict[str, np.ndarray], agent: str, floor: str = "bare grpcio floor (raw bytes)") -> str:
    """``agent``'s p50 against a floor's (same transport, nothing but the model), and what each
    costs over in-process."""
    p50 = {k: float(np.percentile(v, 50)) for k, v in res.items()}
    base, least, ours = p50["in-process ONNX Runtime"], p50[floor], p50[agent]
    short = floor.removesuffix(" (raw bytes)")
    return (
        f"  {agent} / {short}: {ours / least:.3f}x (over in-process: the floor "
        f"{least - base:+.3f} ms, {agent} {ours - base:+.3f} ms)"
    )


BARE_METHOD = "/bench.Bare/Run"


def _bare_sessions(models: dict[str, str], spinning: bool) -> dict[str, tuple[Any, str, tuple[int, ...]]]:
    """model name -> (session, input name, input shape) with the agent's session options."""
    sessions = {}
    for name, onnx_path in models.items():
        so = ort.SessionOptions()  # the agent's options (runtimes/onnxruntime.py)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        session = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        first = session.get_inputs()[0]
        shape = tuple(d if isinstance(d, int) else 1 for d in first.shape)
        sessions[name] = (session, first.name, shape)
    return sessions


def _bare_server(path: str, models: dict[str, str], spinning: bool, ready: Any) -> None:
    """The bare grpcio floor: method ``/bench.Bare/Run`` with metadata ``model`` runs that model on the
    request's raw float32 bytes (shape from the model) and answers its last output's raw bytes."""
    from concurrent import futures

    import grpc

    sessions = _bare_sessions(models, spinning)

    def run(request: bytes, context: Any) -> bytes:
        session, input_name, shape = sessions[dict(context.invocation_metadata())["model"]]
        x = np.frombuffer(request, dtype=np.float32).reshape(shape)
        return bytes(np.ascontiguousarray(session.run(None, {input_name: x})[-1]).tobytes())

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))  # the agent's default grpc_workers
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "bench.Bare", {"Run": grpc.unary_unary_rpc_method_handler(run)}
            ),
        )
    )
    server.add_insecure_port(f"unix://{path}")
    server.start()
    ready.set()
    server.wait_for_termination()


class BareClient:
    """Calls the bare grpcio floor server; ``predict`` mirrors AgentClient.predict's signature."""

    def __init__(self, address: str) -> None:
        import grpc

        self._channel = grpc.insecure_channel(address)
        self._run = self._channel.unary_unary(BARE_METHOD)

    def predict(self, model: str, inputs: dict[str, np.ndarray]) -> bytes:
        (x,) = inputs.values()
        return self._run(np.ascontiguousarray(x, dtype=np.float32).tobytes(), metadata=(("model", model),))  # type: ignore[no-any-return]

    def close(self) -> None:
        self._channel.close()


def _read(sock: Any, n: int) -> bytearray:
    """Exactly ``n`` bytes from ``sock`` (the agent's own helper); ConnectionError at end of stream."""
    from edgefleet.protocol.agent.framing import recv_exact

    data = recv_exact(sock, n)
    if data is None:
        raise ConnectionError("the peer closed the connection")
    return data


def _socket_server(path: str, models: dict[str, str], spinning: bool, ready: Any) -> None:
    """The bare socket floor: the least a Python server can do over a plain Unix socket, the fast
    path's transport. One thread per connection; a request is a u32 length, the model name's
    length byte and name, then the raw float32 input; the reply is a u32 length and the last
    output's raw bytes. Same sessions and options as the agent; no protobuf, checks or statistics."""
    import socket
    import struct
    import threading

    sessions = _bare_sessions(models, spinning)
    length = struct.Struct("<I")

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                while True:
                    (n,) = length.unpack(_read(conn, 4))
                    body = bytes(_read(conn, n))
                    session, input_name, shape = sessions[body[1 : 1 + body[0]].decode()]
                    x = np.frombuffer(body, dtype=np.float32, offset=1 + body[0]).reshape(shape)
                    out = np.ascontiguousarray(session.run(None, {input_name: x})[-1]).tobytes()
                    conn.sendall(length.pack(len(out)) + out)
            except (ConnectionError, OSError):
                return

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    ready.set()
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


class SocketClient:
    """Calls the bare socket floor server; ``predict`` mirrors AgentClient.predict's signature."""

    def __init__(self, address: str) -> None:
        import socket

        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(address.removeprefix("unix://"))

    def predict(self, model: str, inputs: dict[str, np.ndarray]) -> bytes:
        (x,) = inputs.values()
        name = model.encode()
        body = bytes((len(name),)) + name + np.ascontiguousarray(x, dtype=np.float32).tobytes()
        self._sock.sendall(len(body).to_bytes(4, "little") + body)
        n = int.from_bytes(_read(self._sock, 4), "little")
        return bytes(_read(self._sock, n))

    def close(self) -> None:
        self._sock.close()


def _client_proc(
    address: str,
    transport: str,
    model: str,
    inputs: dict[str, np.ndarray],
    commands: mp.Queue,  # type: ignore[type-arg]
    results: mp.Queue,  # type: ignore[type-arg]
) -> None:
    """A client process: connects once, then for each ``(start_at, seconds)`` command calls Predict
    in a loop from ``start_at`` for ``seconds`` and reports the count; ``None`` ends it."""
    from edgefleet.client import AgentClient

    client: Any
    if transport == "bare":
        client = BareClient(address)
    elif transport == "socket":
        client = SocketClient(address)
    else:
        client = AgentClient(address, fast_path=transport == "fast")
    client.predict(model, inputs)
    results.put(0)  # connected and warmed up
    while (command := commands.get()) is not None:
        start_at, seconds = command
        while time.time() < start_at:
            time.sleep(0.0005)
        count = 0
        end = start_at + seconds
        while time.time() < end:
            client.predict(model, inputs)
            count += 1
        results.put(count)
    client.close()


def scaling_runs(
    address: str,
    model: str,
    inputs: dict[str, np.ndarray],
    counts: tuple[int, ...],
    seconds: float,
    rounds: int,
    *,
    transport: str = "fast",
) -> dict[int, list[float]]:
    """Requests/second with each number of concurrent clients in ``counts``, ``rounds`` times.

    The client processes start once and stay connected; each round runs every count in turn, so
    the runs that a ratio compares are seconds apart and slow drifts of the machine hit them alike.
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    commands = [ctx.Queue() for _ in range(max(counts))]
    procs = [
        ctx.Process(target=_client_proc, args=(address, transport, model, inputs, q, results))
        for q in commands
    ]
    for p in procs:
        p.start()
    rates: dict[int, list[float]] = {n: [] for n in counts}
    try:
        for _ in procs:
            results.get(timeout=120)
        for _ in range(rounds):
            for n in counts:
                start_at = time.time() + 0.2
                for q in commands[:n]:
                    q.put((start_at, seconds))
                rates[n].append(sum(results.get(timeout=120 + seconds) for _ in range(n)) / seconds)
    finally:
        for q in commands:
            q.put(None)
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return rates


def shadow_cost(
    client: Any, model: str, inputs: dict[str, np.ndarray], iterations: int, rounds: int = 20
) -> None:
    """Champion p50 through handle ``champ`` with a shadow mirroring every call against no shadow."""
    client.set_handle("champ", model)
    for _ in range(20):  # warm the champion and the shadow alike
        client.predict("champ", inputs)
        client.predict(f"{model}-shadow", inputs)
    calls = max(10, iterations // 10)
    on_p50s, off_p50s, deltas = [], [], []
    mirrored = agreed = 0
    for _round in range(rounds):
        client.load_shadow("champ", f"{model}-shadow", sample_rate=1.0)
        on_p50s.append(float(np.median(measure(lambda: client.predict("champ", inputs), calls))))
        # the last mirrored call finishes before the round without a shadow starts
        while (pair := client.shadow_statistics("champ")[0]).completed + pair.shadow_errors < pair.mirrored:
            time.sleep(0.005)
        final = client.unload_shadow("champ")
        mirrored += final.mirrored
        agreed += final.agreed
        off_p50s.append(float(np.median(measure(lambda: client.predict("champ", inputs), calls))))
        deltas.append(on_p50s[-1] - off_p50s[-1])
    on, off = float(np.median(on_p50s)), float(np.median(off_p50s))
    print(
        f"\nshadow testing, {model}, agent.intra_op_threads = 1, fast path System V shm ({rounds} interleaved "
        f"rounds of {calls} calls; medians of the rounds' p50s):"
    )
    print(f"  champion, a shadow mirroring every request  p50 {on:8.3f} ms")
    print(f"  champion, no shadow                          p50 {off:8.3f} ms")
    print(
        f"  ratio {on / off:.3f}x (budget 1.050x), median round difference {float(np.median(deltas)):+.3f} ms; "
        f"{mirrored} calls mirrored, {agreed} agreed"
    )
    client.remove_handle("champ")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each throughput run")
    parser.add_argument(
        "--repeat",
        type=int,
        default=7,
        help="interleaved rounds of throughput runs (1, 2, 4 clients each); medians are printed (default 7)",
    )
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument(
        "--summaries-only",
        action="store_true",
        help="only the model-summaries cost (summaries on against off, two agents started alike)",
    )
    parser.add_argument(
        "--shadow-only",
        action="store_true",
        help="only the shadow-testing cost (ResNet-18, a shadow mirroring every request against none)",
    )
    parser.add_argument(
        "--no-spinning",
        dest="spinning",
        action="store_false",
        help="agent.intra_op_spinning = false (ONNX Runtime threads sleep instead of spin-waiting)",
    )
    args = parser.parse_args()

    from edgefleet.client import AgentClient
    from edgefleet.core.signing import init_keys
    from edgefleet.demo.device import train_digits
    from edgefleet.packager.build import build_package

    work = Path(tempfile.mkdtemp(prefix="ef-bench-"))
    init_keys(work / "keys")
    digits_onnx, x_test, _, _ = train_digits(work, lambda s: None)
    packages = {
        "digits": build_package(digits_onnx, name="digits", version="1", key_dir=work / "keys", out_dir=work)
    }
    resnet_onnx = None
    if not args.skip_resnet:
        try:
            from models import ResNet18, export_onnx

            resnet_onnx = export_onnx(ResNet18(), work / "resnet18.onnx")
            packages["resnet18"] = build_package(
                resnet_onnx, name="resnet18", version="1", key_dir=work / "keys", out_dir=work
            )
        except ImportError as exc:
            print(f"(ResNet-18 skipped: {exc}; install torch==2.13.0)")

    started: list[subprocess.Popen[bytes]] = []

    def start_agent(label: str, extra: str) -> str:
        """Start an agent with extra [agent] settings, load the packages; return its address."""
        config = work / f"agent-{label}.toml"
        config.write_text(
            f'[device]\nname = "bench"\nfleet = "bench"\n[agent]\ntrust_dir = "{work / "keys" / "trust"}"\n'
            f'data_dir = "{work / ("data-" + label)}"\nintra_op_spinning = {str(args.spinning).lower()}\n{extra}'
        )
        sock = Path(tempfile.mkdtemp(prefix="ef-", dir="/tmp")) / "agent.sock"
        started.append(
            subprocess.Popen(
                [sys.executable, "-m", "edgefleet", "agent", "-a", f"unix://{sock}", "-c", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        with AgentClient(f"unix://{sock}", timeout=60) as c:
            c.wait_ready(60)
            for model_name, pkg in packages.items():
                c.load(str(pkg), model_name)
        return f"unix://{sock}"

    ctx = mp.get_context("spawn")
    bare_path = Path(tempfile.mkdtemp(prefix="ef-", dir="/tmp")) / "bare.sock"
    bare_models = {"digits": str(digits_onnx)} | ({"resnet18": str(resnet_onnx)} if resnet_onnx else {})
    ready = ctx.Event()
    bare_proc = ctx.Process(
        target=_bare_server, args=(str(bare_path), bare_models, args.spinning, ready), daemon=True
    )
    bare_proc.start()
    socket_path = bare_path.with_name("socket.sock")
    socket_ready = ctx.Event()
    socket_proc = ctx.Process(
        target=_socket_server,
        args=(str(socket_path), bare_models, args.spinning, socket_ready),
        daemon=True,
    )
    socket_proc.start()
    try:
        address = start_agent("default", "")
        client = AgentClient(address, timeout=60, fast_path=False)
        fast = AgentClient(address, timeout=60)
        if not ready.wait(60):
            raise SystemExit("the bare grpcio server did not start")
        bare_address = f"unix://{bare_path}"
        bare = BareClient(bare_address)
        if not socket_ready.wait(60):
            raise SystemExit("the bare socket server did not start")
        socket_address = f"unix://{socket_path}"
        raw = SocketClient(socket_address)

        print(
            f"edgefleet agent Predict benchmark — {os.cpu_count()} CPUs, onnxruntime {ort.__version__}, "
            f"{args.iterations} iterations per variant, interleaved; agent spin-wait {args.spinning}"
        )
        so = ort.SessionOptions()
        so.inter_op_num_threads = 1
        image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        if args.shadow_only:
            if resnet_onnx is None:
                raise SystemExit("the shadow case needs ResNet-18 (torch==2.13.0)")
            shadow_agent = start_agent("shadow", "intra_op_threads = 1\n")
            with AgentClient(shadow_agent, timeout=60, shm_threshold=0) as c:
                c.load(str(packages["resnet18"]), "resnet18-shadow")
                shadow_cost(c, "resnet18", {"input": image}, args.iterations)
            return 0
        if resnet_onnx is not None and not args.summaries_only:
            session = ort.InferenceSession(str(resnet_onnx), so, providers=["CPUExecutionProvider"])
            inline = AgentClient(address, shm_threshold=1 << 62, fast_path=False)
            shm = AgentClient(address, shm_threshold=0, fast_path=False)
            fast_inline = AgentClient(address, shm_threshold=1 << 62)
            fast_shm = AgentClient(address, shm_threshold=0)
            ref = session.run(None, {"input": image})[0]
            got = shm.predict("resnet18", {"input": image})["logits"]
            assert np.allclose(ref, got, atol=1e-4), "agent output differs from in-process ONNX Runtime"
            res = interleaved(
                {
                    "in-process ONNX Runtime": lambda: session.run(None, {"input": image}),
                    "agent, inline tensor": lambda: inline.predict("resnet18", {"input": image}),
                    "agent, System V shared memory": lambda: shm.predict("resnet18", {"input": image}),
                    "agent fast path, inline tensor": lambda: fast_inline.predict(
                        "resnet18", {"input": image}
                    ),
                    "agent fast path, System V shm": lambda: fast_shm.predict("resnet18", {"input": image}),
                    "bare grpcio floor (raw bytes)": lambda: bare.predict("resnet18", {"input": image}),
                    "bare socket floor (raw bytes)": lambda: raw.predict("resnet18", {"input": image}),
                },
                args.iterations,
            )
            base = res["in-process ONNX Runtime"]
            print(f"\nResNet-18, 1x3x224x224 float32 ({image.nbytes / 1024:.0f} KiB) batch 1:")
            for name, ms in res.items():
                print(row(name, ms, None if ms is base else base))
            print(floor_line(res, "agent, System V shared memory"))
            print(floor_line(res, "agent fast path, System V shm", "bare socket floor (raw bytes)"))
            assert fast_shm.fast_path_calls > 0 and shm.fast_path_calls == 0, "fast path not used as labelled"
            for c in (inline, shm, fast_inline, fast_shm):
                c.close()

        session = ort.InferenceSession(str(digits_onnx), so, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        x = x_test[:1]
        res = (
            {}
            if args.summaries_only
            else interleaved(
                {
                    "in-process ONNX Runtime": lambda: session.run(None, {name: x}),
                    "agent (inline)": lambda: client.predict("digits", {name: x}),
                    "agent fast path (inline)": lambda: fast.predict("digits", {name: x}),
                    "bare grpcio floor (raw bytes)": lambda: bare.predict("digits", {name: x}),
                    "bare socket floor (raw bytes)": lambda: raw.predict("digits", {name: x}),
                },
                args.iterations * 5,
            )
        )
        if res:
            base = res["in-process ONNX Runtime"]
            print("\ndigits MLP, 1x64 float32 batch 1:")
            for label, ms in res.items():
                print(row(label, ms, None if ms is base else base))
            print(floor_line(res, "agent (inline)"))
            print(floor_line(res, "agent fast path (inline)", "bare socket floor (raw bytes)"))

        # Model summaries (drift monitoring) are opt-in; the same calls against an agent with them
        # on, interleaved with those against an agent started alike with them off, give their cost
        # on Predict (both agents the same age and equally warmed: a long-running agent is faster
        # than a fresh one, which alone looked like ~70 us on the digits model).
        on_address = start_agent("summaries", "model_summaries = true\n")
        off_address = start_agent("summaries-off", "model_summaries = false\n")
        summary_cases: list[tuple[str, str, dict[str, np.ndarray], int]] = [
            ("digits MLP, fast path inline", "digits", {name: x}, 0),
        ]
        if resnet_onnx is not None:
            summary_cases.append(("ResNet-18, fast path, System V shm", "resnet18", {"input": image}, 1))
        print(
            "\nmodel summaries on against off (the default), p50; per round of interleaved calls the "
            "difference of the p50s, the figure their median (robust on a busy machine):"
        )
        for label, model, inputs, use_shm in summary_cases:
            threshold = 0 if use_shm else 1 << 62
            on_client = AgentClient(on_address, timeout=60, shm_threshold=threshold)
            off_client = AgentClient(off_address, timeout=60, shm_threshold=threshold)
            for _ in range(1000 if model == "digits" else 50):  # warm both alike
                on_client.predict(model, inputs)
                off_client.predict(model, inputs)
            calls = args.iterations * (5 if model == "digits" else 1) // 10
            deltas, on_p50s, off_p50s = [], [], []
            for _round in range(20):
                for key, c in (("on", on_client), ("off", off_client)):
                    ms = measure(lambda c=c, m=model, i=inputs: c.predict(m, i), calls)
                    (on_p50s if key == "on" else off_p50s).append(float(np.median(ms)))
                deltas.append(on_p50s[-1] - off_p50s[-1])
            on, off, delta = float(np.median(on_p50s)), float(np.median(off_p50s)), float(np.median(deltas))
            print(
                f"  {label:38s} on {on:8.3f} ms  off {off:8.3f} ms  {delta * 1000:+7.1f} us "
                f"(rounds {min(deltas) * 1000:+.0f}..{max(deltas) * 1000:+.0f})  {on / off:5.3f}x"
            )
            on_client.close()
            off_client.close()

        def scaling(
            label: str, addr: str, model: str, inputs: dict[str, np.ndarray], transport: str = "grpc"
        ) -> None:
            print(
                f"\nthroughput, {model}, {label} (client processes; {args.repeat} interleaved rounds of "
                f"{args.seconds:g} s per point; medians):"
            )
            rates = scaling_runs(
                addr, model, inputs, (1, 2, 4), args.seconds, args.repeat, transport=transport
            )
            for clients, runs in rates.items():
                rate = float(np.median(runs))
                # each round's ratio compares runs seconds apart; their median is the figure
                ratios = [r / one for r, one in zip(runs, rates[1], strict=True)]
                spread = (
                    f"runs {min(runs):.0f}-{max(runs):.0f}, ratios {min(ratios):.2f}-{max(ratios):.2f}"
                    if len(runs) > 1
                    else ""
                )
                print(
                    f"  {clients} client(s): {rate:9.1f} req/s   {float(np.median(ratios)):5.2f}x one client   {spread}"
                )

        if args.summaries_only:
            return 0
        if resnet_onnx is not None:
            shadow_agent = start_agent("shadow", "intra_op_threads = 1\n")
            with AgentClient(shadow_agent, timeout=60, shm_threshold=0) as c:
                c.load(str(packages["resnet18"]), "resnet18-shadow")
                shadow_cost(c, "resnet18", {"input": image}, args.iterations)
        scaling("agent over gRPC, default config", address, "digits", {name: x})
        scaling("agent over its fast path, default config", address, "digits", {name: x}, "fast")
        scaling("bare grpcio floor", bare_address, "digits", {name: x}, "bare")
        scaling("bare socket floor", socket_address, "digits", {name: x}, "socket")
        if resnet_onnx is not None:
            image0 = {"input": np.zeros((1, 3, 224, 224), np.float32)}
            scaling("default config (each request may use every core)", address, "resnet18", image0)
            tuned = start_agent("throughput", "intra_op_threads = 1\n")
            scaling("agent.intra_op_threads = 1 (one core per request)", tuned, "resnet18", image0)
            scaling("agent.intra_op_threads = 1, fast path", tuned, "resnet18", image0, "fast")
            adaptive = start_agent("adaptive", "adaptive_threads = true\n")
            with AgentClient(adaptive, timeout=60, fast_path=False) as lone:
                lone_ms = measure(lambda: lone.predict("resnet18", image0), args.iterations // 2)
            print(
                f"\nagent.adaptive_threads = true: a lone ResNet-18 request p50 {np.percentile(lone_ms, 50):.3f} ms "
                f"(over gRPC; every core; overlapping requests get one core each)"
            )
            scaling("agent.adaptive_threads = true", adaptive, "resnet18", image0)
        client.close()
        fast.close()
        bare.close()
        raw.close()
    finally:
        bare_proc.kill()
        socket_proc.kill()
        for agent in started:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
