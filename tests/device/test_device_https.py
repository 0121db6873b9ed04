"""The daemon's HTTPS client against the real control plane: enrolment with a pinned CA, mutual TLS,
the device operations, resumable downloads and how refusals and outages surface."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest
from device_testkit import FLEET, LoopbackServer

from edgefleet.core.deviceplane import DeploymentResult, Heartbeat, PackageRef, Result
from edgefleet.core.errors import (
    Code,
    EdgefleetError,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from edgefleet.device.https import HttpsControlPlane, enroller
from edgefleet.device.identity import Identity, enroll


def enrolled(server: LoopbackServer, name: str, state: Path) -> Identity:
    (registered,) = server.op.register_devices(FLEET, [{"DeviceName": name}])
    return enroll(state, server.api_url, registered["EnrolmentToken"], enroller())


def read_all(plane: HttpsControlPlane, package: PackageRef, offset: int) -> tuple[int, bytes]:
    body = plane.open_package(package, offset)
    try:
        return body.offset, b"".join(body.chunks(4096))
    finally:
        body.close()


def test_enrolment_pins_the_fleet_ca_and_uses_the_token_once(server: LoopbackServer, tmp_path: Path) -> None:
    (registered,) = server.op.register_devices(FLEET, [{"DeviceName": "https-pin"}])
    token = registered["EnrolmentToken"]
    wrong_pin = token.rsplit(".", 1)[0] + "." + "0" * 64
    with pytest.raises(FailedPrecondition, match="not the one the enrolment token pins"):
        enroll(tmp_path / "a", server.api_url, wrong_pin, enroller())
    identity = enroll(tmp_path / "a", server.api_url, token, enroller())
    assert identity.device_name == "https-pin" and identity.fleet_name == FLEET
    assert identity.device_url == server.running.endpoints.device_url
    with pytest.raises(EdgefleetError, match="unknown or already used enrolment token") as used:
        enroll(tmp_path / "b", server.api_url, token, enroller())
    assert used.value.code is Code.UNAUTHENTICATED


def test_device_operations_over_mutual_tls(server: LoopbackServer, tmp_path: Path) -> None:
    op = server.op
    identity = enrolled(server, "https-dev", tmp_path / "state")
    plane = HttpsControlPlane(identity, timeout=30)
    try:
        registration = plane.get_registration()
        assert registration.status == "REGISTERED" and registration.cache_ttl_seconds > 0
        plane.send_heartbeat(
            Heartbeat(
                agent_version="9.9.9", taken_at=identity.enrolled_at, platform=("linux", "x86_64", "none")
            )
        )
        assert op.describe_device("https-dev")["AgentVersion"] == "9.9.9"

        op.create_plan(
            {
                "EdgeDeploymentPlanName": "https-plan",
                "DeviceFleetName": FLEET,
                "ModelConfigs": [{"ModelHandle": "detector", "ModelName": "det", "ModelVersion": "1.0"}],
                "Stages": [
                    {
                        "StageName": "one",
                        "DeviceSelectionConfig": {
                            "DeviceSubsetType": "SELECTION",
                            "DeviceNames": ["https-dev"],
                        },
                    }
                ],
            }
        )
        op.start_stage("https-plan", "one")
        (deployment,) = plane.get_deployments()
        assert deployment.name == "https-plan.one"
        (definition,) = deployment.definitions
        archive = server.packages["1.0"].read_bytes()
        assert definition.package.sha256 == hashlib.sha256(archive).hexdigest()
        assert definition.package.size == len(archive)
        assert definition.package.url.startswith("/device/v1/packages/")

        assert read_all(plane, definition.package, 0) == (0, archive)
        assert read_all(plane, definition.package, 100) == (100, archive[100:])  # resumed: 206
        stale = PackageRef(definition.package.url, sha256="0" * 64, size=len(archive))
        assert read_all(plane, stale, 100) == (0, archive)  # If-Range with another ETag: whole archive

        plane.report_result(
            DeploymentResult(
                "https-plan.one", Result.SUCCEEDED, "deployed", identity.enrolled_at, identity.enrolled_at
            )
        )
        stage = op.describe_plan("https-plan")["Stages"][0]["DeploymentStatus"]
        assert stage["StageStatus"] == "DEPLOYED"
        assert plane.get_deployments() == []

        op.deregister_device("https-dev")
        with pytest.raises(EdgefleetError, match=r"revoked|not registered") as revoked:
            plane.get_registration()
        assert revoked.value.code is Code.UNAUTHENTICATED
    finally:
        plane.close()


def test_a_package_outside_the_devices_deployments_is_refused(server: LoopbackServer, tmp_path: Path) -> None:
    identity = enrolled(server, "https-nosy", tmp_path / "state")
    plane = HttpsControlPlane(identity, timeout=30)
    try:
        with pytest.raises(
            EdgefleetError, match=r"is not part of a deployment of device 'https-nosy'"
        ) as refused:
            plane.open_package(PackageRef("/device/v1/packages/1", sha256="0" * 64), 0)
        assert refused.value.code is Code.PERMISSION_DENIED
        plane.get_registration()  # the connection is still usable after a refusal
    finally:
        plane.close()


def test_an_unreachable_server_is_unavailable(server: LoopbackServer, tmp_path: Path) -> None:
    identity = enrolled(server, "https-lost", tmp_path / "state")
    # A port bound but not listening refuses connections, and stays ours for the whole test (a port
    # picked and freed could be taken by another process meanwhile).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        plane = HttpsControlPlane(identity, url=f"https://127.0.0.1:{port}", timeout=5)
        try:
            with pytest.raises(Unavailable, match=r"cannot reach https://127\.0\.0\.1"):
                plane.get_deployments()
        finally:
            plane.close()


def test_refusals_raise_the_class_of_their_code(server: LoopbackServer, tmp_path: Path) -> None:
    identity = enrolled(server, "https-typed", tmp_path / "state")
    plane = HttpsControlPlane(identity, timeout=30)
    try:
        when = identity.enrolled_at
        # pytest.raises(NotFound) is ``except NotFound``: the base class would not match
        with pytest.raises(NotFound, match=r"'no-such-plan\.one' does not exist") as info:
            plane.report_result(DeploymentResult("no-such-plan.one", Result.SUCCEEDED, "x", when, when))
        assert info.value.code is Code.NOT_FOUND
        with pytest.raises(PermissionDenied, match="is not part of a deployment"):
            plane.open_package(PackageRef("/device/v1/packages/1", sha256="0" * 64), 0)
        server.op.deregister_device("https-typed")
        with pytest.raises(Unauthenticated, match=r"revoked|not registered"):
            plane.get_registration()
    finally:
        plane.close()
