"""The seam between the daemon and the control plane.

:class:`ControlPlane` is what the daemon needs from the server: registration check, heartbeats,
deployments to apply, package download (with resume), deployment results and health reports. It
has two implementations: :class:`edgefleet.device.https.HttpsControlPlane` (the real server over
mutual TLS) and :class:`edgefleet.device.sim.control_plane.FakeControlPlane` (in-process, for tests). The values
that cross it are the device-plane contract in :mod:`edgefleet.core.deviceplane`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from edgefleet.core import deviceplane as dp


class PackageBody(Protocol):
    """An open package download."""

    #: the byte offset the body starts at (the requested offset if the server honoured the range, else 0)
    offset: int
    #: the archive's full size when known
    total: int | None

    def chunks(self, size: int) -> Iterator[bytes]:
        """The body in pieces of at most ``size`` bytes."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


class ControlPlane(Protocol):
    """What the daemon needs from the server. Every call raises an :class:`EdgefleetError`:
    ``UNAVAILABLE`` when the server cannot be reached (the daemon then works offline), other codes
    for refusals."""

    def get_registration(self) -> dp.Registration:
        """Is this device (still) registered?"""
        ...

    def send_heartbeat(self, heartbeat: dp.Heartbeat) -> None:
        """Record a heartbeat."""
        ...

    def get_deployments(self) -> list[dp.Deployment]:
        """The deployments this device must act on, oldest first."""
        ...

    def report_result(self, result: dp.DeploymentResult) -> None:
        """Record the outcome of a deployment on this device."""
        ...

    def report_health(self, report: dp.HealthReport) -> dp.HealthVerdict:
        """Send post-activation figures; the answer says whether to roll back."""
        ...

    def open_package(self, package: dp.PackageRef, offset: int = 0) -> PackageBody:
        """Start downloading ``package`` from byte ``offset`` (HTTP Range)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
