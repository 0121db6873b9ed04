"""The twins' parent: imports the agent and the daemon once, then forks each twin.

Importing what a twin runs (gRPC, NumPy, the agent, the daemon, httpx, cryptography)
takes ~2 s of CPU and ~60 MB per interpreter. Twenty twins that each import it themselves spend
40 s of CPU on two cores before the first heartbeat, and hold twenty private copies. The zygote
imports it once, freezes the imported objects out of the garbage collector's reach (``gc.freeze``:
the collector would otherwise write to every object's header and unshare its page) and forks a
twin per request: each twin is still its own process with its own state directory, identity,
agent socket, ONNX Runtime sessions and daemon (:func:`edgefleet.twin.process.run_twin`), sharing
only the read-only pages of the modules.

The zygote is single-threaded when it forks, native threads included (checked at start-up: a zygote
with a thread exits with the reason in its log, and the fleet fails to start its twins, rather than
fork children that would miss a thread; ``TwinFleet(preload=False)`` does without the zygote).

Protocol, one line each way: the fleet writes ``spawn SPEC_PATH``, the zygote answers ``pid PID`` (or ``error MESSAGE``); ``exit PID CODE`` when a twin exits. The zygote
exits when its input closes or on SIGTERM, after stopping the twins it forked; it gets SIGTERM when
its parent dies, and so do the twins when it dies.
"""

from __future__ import annotations

import gc
import os
import selectors
import signal
import sys
import threading
from pathlib import Path

#: what every twin imports, imported once here before forking
PRELOAD = (
    "edgefleet.agent.runner",
    "edgefleet.agent.config",
    "edgefleet.client",
    "edgefleet.device.daemon",
    "edgefleet.device.config",
    "edgefleet.device.https",
    "edgefleet.capture.sinks",
    "edgefleet.runtimes.base",
)
# ONNX Runtime is not among them: importing it starts a native thread, which a forked child would
# not have; each twin imports it when it loads its first model (0.1 s of CPU and ~7 MB of its own
# memory: the library's pages are shared through the page cache anyway).


def _child(spec_path: str, zygote: int, selector: selectors.BaseSelector, control: list[int]) -> int:
    """In a forked twin: fresh signal dispositions, output to the twin's log, then run the twin."""
    from edgefleet.twin import process

    selector.close()
    for fd in control:
        os.close(fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    gc.unfreeze()  # the twin's own objects are collected as usual; the frozen ones stay shared
    spec = process.TwinSpec.read(Path(spec_path))
    log = os.open(Path(spec.directory) / process.LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # replaces the zygote's request pipe (and its answers on 1) in this process
    os.dup2(log, 1)
    os.dup2(log, 2)
    for fd in (log, devnull):
        if fd > 2:
            os.close(fd)
    return process.main([spec_path, str(zygote)])


def main() -> int:
    """``python -m edgefleet.twin.zygote PARENT_PID``: serve spawn requests on stdin until it closes."""
    import importlib

    from edgefleet.twin.process import die_with_parent

    die_with_parent(int(sys.argv[1]))
    for name in PRELOAD:
        importlib.import_module(name)
    out = sys.stdout
    threads = len(os.listdir("/proc/self/task"))  # native threads too, not only Python's
    if threads != 1:
        print(f"the zygote has {threads} threads after its imports; it cannot fork safely", file=sys.stderr)
        return 1
    gc.collect()
    gc.freeze()
    children: set[int] = set()
    stopping = False
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        if signum == signal.SIGTERM:
            stopping = True
        try:
            os.write(wake_w, b"x")
        except BlockingIOError:
            pass

    signal.signal(signal.SIGCHLD, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the fleet's to handle
    selector = selectors.DefaultSelector()
    stdin = sys.stdin.fileno()
    selector.register(stdin, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    pending = b""
    open_input = True

    def reap() -> None:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                return
            if pid == 0:
                return
            children.discard(pid)
            out.write(f"exit {pid} {os.waitstatus_to_exitcode(status)}\n")
            out.flush()

    while open_input and not stopping:
        for key, _ in selector.select():
            if key.fd == wake_r:
                os.read(wake_r, 512)
                reap()
                continue
            data = os.read(stdin, 65536)
            if not data:
                open_input = False
                break
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                command, _, argument = line.decode().partition(" ")
                if command != "spawn" or not argument:
                    out.write(f"error unknown request {line.decode()!r}\n")
                    out.flush()
                    continue
                out.flush()
                pid = os.fork()
                if pid == 0:
                    code = 1
                    try:
                        code = _child(argument, os.getppid(), selector, [wake_r, wake_w])
                    except BaseException:
                        import traceback

                        traceback.print_exc()  # into the twin's log, or the zygote's if it failed before
                    finally:
                        sys.stderr.flush()
                        os._exit(code)
                children.add(pid)
                out.write(f"pid {pid}\n")
                out.flush()
    # the fleet went away or asked the zygote to stop: stop the twins first
    for pid in list(children):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            children.discard(pid)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for pid in list(children):
        try:
            _, status = os.waitpid(pid, 0)
            out.write(f"exit {pid} {os.waitstatus_to_exitcode(status)}\n")
        except ChildProcessError:
            pass
    try:
        out.flush()
    except (BrokenPipeError, OSError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())


class Zygote:
    """The fleet's side of a zygote process: :meth:`spawn` a twin, :meth:`exit_code` of one, :meth:`close`."""

    def __init__(self, python: str, log: Path, env: dict[str, str], *, timeout: float = 120.0) -> None:
        import queue
        import subprocess

        self.timeout = timeout
        self.log = log
        self._answers: queue.Queue[str] = queue.Queue()
        self._codes: dict[int, int] = {}
        self._lock = threading.Lock()
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                [python, "-m", "edgefleet.twin.zygote", str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
            )
        self._reader = threading.Thread(target=self._read, name="twin-zygote", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            kind, _, rest = line.partition(" ")
            if kind == "exit":
                pid, _, code = rest.partition(" ")
                with self._lock:
                    self._codes[int(pid)] = int(code)
            else:
                self._answers.put(line)
        self._answers.put("error the zygote exited")

    def spawn(self, spec_path: Path) -> int:
        """Fork a twin running the spec at ``spec_path``; its pid. FAILED_PRECONDITION if the zygote cannot."""
        import queue

        from edgefleet.core.errors import FailedPrecondition

        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(f"spawn {spec_path}\n".encode())
            self.proc.stdin.flush()
            answer = self._answers.get(timeout=self.timeout)
        except (BrokenPipeError, OSError, queue.Empty) as exc:
            raise FailedPrecondition(
                f"the twins' zygote (pid {self.pid}) does not answer: {exc}; see {self.log}"
            ) from exc
        kind, _, rest = answer.partition(" ")
        if kind != "pid":
            raise FailedPrecondition(
                f"the twins' zygote (pid {self.pid}) cannot start a twin: {rest}; see {self.log}"
            )
        return int(rest)

    def exit_code(self, pid: int) -> int | None:
        """The exit code of twin ``pid`` once the zygote reaped it."""
        with self._lock:
            return self._codes.get(pid)

    def close(self, timeout: float = 60.0) -> None:
        """Close the request pipe: the zygote stops any twin left and exits."""
        import subprocess

        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
