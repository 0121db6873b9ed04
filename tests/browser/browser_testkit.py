"""Helpers of the real-browser tests: a real ``edgefleet server`` process, simulated devices in a real
``edgefleet simulate`` process, and Chromium (Debian's package) driven by Playwright.

Plain functions and small classes, no fixtures (those are in this directory's conftest).
"""

from __future__ import annotations

import contextlib
import json
import select
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from support import REPO

#: where Debian's ``chromium`` package puts the browser (``playwright install`` cannot download
#: browsers here: see /work/shared/notes/stack-notes.md)
DEBIAN_CHROMIUM = Path("/usr/bin/chromium")
#: Chromium's switches for a headless run in a container, as root, without network side traffic
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Playwright's per-action and per-assertion timeout (ms): generous, the machine is shared
TIMEOUT_MS = 60_000
#: how long a rollout may take to reach its end state in the browser (ms)
ROLLOUT_TIMEOUT_MS = 180_000
#: the page width the dashboard must stay readable at
VIEWPORT = {"width": 1280, "height": 900}
#: seconds to wait for a process to start or stop
PROCESS_SECONDS = 180


def chromium_executable() -> Path | None:
    """Debian's Chromium, or a ``chromium`` on PATH; None when there is none."""
    if DEBIAN_CHROMIUM.is_file():
        return DEBIAN_CHROMIUM
    found = shutil.which("chromium")
    return Path(found) if found else None


def edgefleet_command(*args: str) -> list[str]:
    """The ``edgefleet`` command line run by this interpreter (the repository's package)."""
    return [sys.executable, "-m", "edgefleet", *args]


def stop_process(process: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> int:
    """Stop ``process`` with ``sig`` (SIGKILL if it does not exit in time); its exit code."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=PROCESS_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()
    return process.returncode


@dataclass
class ServerProcess:
    """A running ``edgefleet server`` (SQLite and local artifacts under ``data_dir``)."""

    process: subprocess.Popen[str]
    data_dir: Path
    api_url: str
    ca_cert: Path
    log: IO[str]

    @classmethod
    def start(cls, data_dir: Path, trust_dir: Path, log_path: Path, *extra: str) -> ServerProcess:
        """Start the server on free loopback ports; returns once it answers (its ready line)."""
        command = edgefleet_command("server", "--port", "0", "--data-dir", str(data_dir))
        command += ["--trust", str(trust_dir), *extra]
        log = log_path.open("w", encoding="utf-8")
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO)
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], PROCESS_SECONDS)
        line = process.stdout.readline() if ready else ""
        if not line.startswith("edgefleet server ready:"):
            stop_process(process, signal.SIGKILL)
            log.close()
            raise AssertionError(f"edgefleet server did not start: {line!r}; log in {log_path}")
        words = line.split()
        return cls(process, data_dir, words[5], Path(words[-1]), log)

    def create_token(self, name: str) -> str:
        """A new operator API token, made by ``edgefleet admin create-token`` (the server's CLI)."""
        result = subprocess.run(
            edgefleet_command("admin", "create-token", name, "--data-dir", str(self.data_dir)),
            capture_output=True,
            text=True,
            timeout=PROCESS_SECONDS,
            cwd=REPO,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()[0].strip()

    def stop(self) -> int:
        code = stop_process(self.process)
        self.log.close()
        return code


@dataclass
class Simulation:
    """Simulated devices in an ``edgefleet simulate`` process: each enrols for real and sends real
    heartbeats over mutual TLS, runs deployments and reports their results (a null model whose
    config says ``"fail": true`` fails its smoke test, so its stage fails and rolls back)."""

    process: subprocess.Popen[str]
    log_path: Path
    log: IO[str]

    @classmethod
    def start(
        cls,
        server_url: str,
        registered: list[dict[str, Any]],
        work_dir: Path,
        log_path: Path,
        *,
        interval: float = 1.0,
        inferences: int = 5,
    ) -> Simulation:
        """Run one simulated device per registered device (``{DeviceName, EnrolmentToken}``)."""
        work_dir.mkdir(parents=True, exist_ok=True)
        tokens = work_dir / "tokens.json"
        tokens.write_text(json.dumps({"Devices": registered}), encoding="utf-8")
        command = edgefleet_command(
            "simulate",
            "--server",
            server_url,
            "--devices",
            str(len(registered)),
            "--tokens",
            str(tokens),
            "--heartbeat-interval",
            str(interval),
            "--poll-interval",
            str(interval),
            "--health-interval",
            str(interval),
            "--inferences",
            str(inferences),
            "--workers",
            "4",
            "--work-dir",
            str(work_dir / "devices"),
        )
        log = log_path.open("w", encoding="utf-8")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        return cls(process, log_path, log)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        """Stop like Ctrl-C (the command prints its summary and exits 0)."""
        code = stop_process(self.process, signal.SIGINT)
        self.log.close()
        return code


#: the fleet of simulated devices (online), the fleet of registered devices that never enrolled
SIM_FLEET = "line-a"
IDLE_FLEET = "line-b"
#: simulated devices: the first half tagged site=north, the rest site=south
SIM_DEVICES = [f"cam-{i:02d}" for i in range(6)]
IDLE_DEVICES = [f"spare-{i:02d}" for i in range(55)]
#: rows on one page of the dashboard's device list (more devices than this: a next page)
DEVICE_PAGE = 50
#: the model the deployment tests roll out (approved through the API): 1.0 works, 2.0 fails its smoke test
DEPLOY_MODEL = "det"
#: the model whose versions the approval test approves and rejects in the browser (uploaded pending)
REVIEW_MODEL = "classifier"


@dataclass
class Dashboard:
    """The running control plane the browser talks to, and what the session put in it."""

    server: ServerProcess
    token: str
    op: Any  # an operator client (edgefleet.opclient.client.FleetClient) with ``token``
    simulation: Simulation
    artifacts: Path
    packages: dict[tuple[str, str], Path] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return self.server.api_url

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"


def login(page: Any, dashboard: Dashboard, token: str | None = None) -> None:
    """Log in through the login form (the dashboard redirects ``/ui`` there without a session)."""
    from playwright.sync_api import expect

    page.goto(dashboard.url("/ui"))
    expect(page.locator("#login-form")).to_be_visible()
    page.fill("#token", token or dashboard.token)
    page.click("#login-submit")
    expect(page.locator("#nav-fleets")).to_be_visible()


def by_id(element_id: str) -> str:
    """A selector for the element with id ``element_id`` (ids here hold dots: ``model-row-det-1.0``)."""
    return f'[id="{element_id}"]'


def clear_artifacts(directory: Path) -> None:
    """Remove the screenshots and logs an earlier run left in ``directory`` (nothing else)."""
    for pattern in ("*.png", "*.log"):
        for path in directory.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
