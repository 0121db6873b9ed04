"""An in-process control plane for one device: tests and offline demos of the daemon.

It behaves like the server where the daemon can tell: deployments are listed until the device
reports a result (a SUCCEEDED deployment with a health gate stays listed until a PASS verdict),
packages are served from local files with byte ranges, and the whole thing can be taken offline
(every call then raises UNAVAILABLE, like an unreachable server). Everything the device sent is
recorded for assertions.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgefleet.core.deviceplane import (
    Action,
    Deployment,
    DeploymentResult,
    HealthReport,
    HealthVerdict,
    Heartbeat,
    PackageRef,
    Registration,
    Result,
    Verdict,
)
from edgefleet.core.errors import NotFound, Unavailable
from edgefleet.device.protocol import PackageBody


@dataclass
class _FileBody:
    """A byte range of a local file, optionally cut short to simulate a dropped connection."""

    path: Path
    offset: int
    total: int | None
    cut_after: int | None = None

    def chunks(self, size: int) -> Iterator[bytes]:
        sent = 0
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            while data := fh.read(size):
                if self.cut_after is not None and sent + len(data) > self.cut_after:
                    yield data[: self.cut_after - sent]
                    raise Unavailable("connection lost while downloading (simulated)")
                sent += len(data)
                yield data

    def close(self) -> None:
        return None


@dataclass
class FakeControlPlane:
    """A scriptable control plane (thread-safe)."""

    online: bool = True
    #: the server's answer to health reports (default: PASS)
    judge: Callable[[HealthReport], HealthVerdict] = field(
        default=lambda report: HealthVerdict(Verdict.PASS, "fake server: pass", False)
    )
    deployments: list[Deployment] = field(default_factory=list)
    heartbeats: list[Heartbeat] = field(default_factory=list)
    results: list[DeploymentResult] = field(default_factory=list)
    health_reports: list[HealthReport] = field(default_factory=list)
    #: (url, offset) of every download request
    downloads: list[tuple[str, int]] = field(default_factory=list)
    #: cut the next download after this many bytes (then forget it)
    cut_next_download_after: int | None = None
    #: called before every call with the call's name (tests block or count here)
    hook: Callable[[str], None] | None = None
    _files: dict[str, Path] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- scripting ------------------------------------------------------------------------------
    def add_package(self, path: Path) -> PackageRef:
        """Serve the package archive at ``path``; its reference (URL, SHA-256, size)."""
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        url = f"/device/v1/packages/{digest[:16]}"
        with self._lock:
            self._files[url] = path
        return PackageRef(url=url, sha256=digest, size=path.stat().st_size)

    def set_deployments(self, *deployments: Deployment) -> None:
        """Replace the deployments the device is asked to act on."""
        with self._lock:
            self.deployments = list(deployments)

    def _enter(self, call: str) -> None:
        if self.hook is not None:
            self.hook(call)
        if not self.online:
            raise Unavailable(f"{call}: cannot reach the fake server (offline)")

    # -- ControlPlane ---------------------------------------------------------------------------
    def get_registration(self) -> Registration:
        self._enter("GetDeviceRegistration")
        return Registration("REGISTERED", 3600.0)

    def send_heartbeat(self, heartbeat: Heartbeat) -> None:
        self._enter("SendHeartbeat")
        with self._lock:
            self.heartbeats.append(heartbeat)

    def get_deployments(self) -> list[Deployment]:
        self._enter("GetDeployments")
        with self._lock:
            return list(self.deployments)

    def report_result(self, result: DeploymentResult) -> None:
        self._enter("ReportDeploymentResult")
        with self._lock:
            self.results.append(result)
            keep = []
            for d in self.deployments:
                if d.name != result.deployment_name:
                    keep.append(d)
                elif (
                    d.action is Action.DEPLOY
                    and result.result is Result.SUCCEEDED
                    and d.health_gate is not None
                ):
                    keep.append(d)  # observed until the health gate passes
            self.deployments = keep

    def report_health(self, report: HealthReport) -> HealthVerdict:
        self._enter("ReportDeploymentHealth")
        verdict = self.judge(report)
        with self._lock:
            self.health_reports.append(report)
            if verdict.verdict is Verdict.PASS:
                self.deployments = [d for d in self.deployments if d.name != report.deployment_name]
            elif verdict.rollback:
                self.deployments = [
                    replace(d, action=Action.ROLLBACK) if d.name == report.deployment_name else d
                    for d in self.deployments
                ]
        return verdict

    def open_package(self, package: PackageRef, offset: int = 0) -> PackageBody:
        self._enter("DownloadPackage")
        with self._lock:
            path = self._files.get(package.url)
            self.downloads.append((package.url, offset))
            cut, self.cut_next_download_after = self.cut_next_download_after, None
        if path is None:
            raise NotFound(f"fake server: no package at {package.url}")
        size = path.stat().st_size
        return _FileBody(path, min(offset, size), size, cut)

    def close(self) -> None:
        return None
