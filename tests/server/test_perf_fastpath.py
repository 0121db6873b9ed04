"""The device listener's fast path (edgefleet.server.api.fastpath) through a real server: what it
serves, and that everything it declines still gets the application's documented answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from server_testkit import enrol

Server = Any
Client = Any


def _error(response: Any) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["error"]["code"], body["error"]["message"]


def test_declined_requests_get_the_applications_answers(
    fleet_server: Server, op: Client, tmp_path: Path
) -> None:
    op.create_fleet("fast", "s3://bucket/fast")
    [registered] = op.register_devices("fast", [{"DeviceName": "fast-1"}])
    cam = enrol(fleet_server.endpoints.api_url, registered["EnrolmentToken"], tmp_path / "cam")
    try:
        assert cam.call("GetDeployments").json() == {"Deployments": []}  # idle: served by the fast path
        assert cam.call("SendHeartbeat", {"AgentVersion": "1.0"}).json() == {}
        assert op.describe_device("fast-1")["AgentVersion"] == "1.0"
        # Bad fields: the application reports them, in the documented shape.
        status, code, message = _error(cam.call("SendHeartbeat", {"AgentVersion": "v" * 65}))
        assert (status, code, message) == (400, "INVALID_ARGUMENT", "AgentVersion must be 1-64 characters")
        status, code, message = _error(cam.call("SendHeartbeat", {"AgentMetrics": "many"}))
        assert (status, code) == (400, "INVALID_ARGUMENT") and "AgentVersion: Field required" in message
        broken = cam.http.post(
            "/device/v1/SendHeartbeat", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert _error(broken)[:2] == (400, "INVALID_ARGUMENT")
        # A heartbeat larger than the fast path reads is replayed to the application and stored.
        stamp = "2030-01-01T00:00:00Z"
        models = [
            {
                "ModelName": f"model-{m}",
                "ModelVersion": "1",
                "ModelMetrics": [
                    {"MetricName": f"metric-{i}", "Value": i, "Timestamp": stamp} for i in range(150)
                ],
            }
            for m in range(30)
        ]
        large = {"AgentVersion": "2.0", "Models": models}
        assert len(json.dumps(large)) > 256 * 1024
        assert cam.call("SendHeartbeat", large).json() == {}
        described = op.describe_device("fast-1")
        assert described["AgentVersion"] == "2.0" and len(described["Models"]) == 30
        # Another device's name: refused by the application (the fast path does not vouch for it).
        assert _error(cam.call("GetDeployments", DeviceName="fast-2"))[:2] == (403, "PERMISSION_DENIED")
        # Deregistration revokes the certificate at once, on the routine calls too.
        op.deregister_device("fast-1")
        for operation, body in (("GetDeployments", None), ("SendHeartbeat", {"AgentVersion": "3.0"})):
            status, code, message = _error(cam.call(operation, body))
            assert (status, code) == (401, "UNAUTHENTICATED") and "revoked" in message
    finally:
        cam.close()


def test_a_rollout_through_the_fast_path_answers_like_the_application(
    fleet_server: Server, op: Client, signing_keys: Any, tmp_path: Path
) -> None:
    import hashlib

    from server_testkit import build_test_package

    op.create_fleet("fast-roll", "s3://bucket/fast-roll")
    registered = op.register_devices("fast-roll", [{"DeviceName": f"roll-{i}"} for i in range(3)])
    cams = [
        enrol(fleet_server.endpoints.api_url, r["EnrolmentToken"], tmp_path / r["DeviceName"])
        for r in registered
    ]
    try:
        package = build_test_package(signing_keys.directory, tmp_path / "pkg", "fast-model", "1")
        op.upload_package(package)
        op.set_approval("fast-model", "1", "Approved")
        op.create_plan(
            {
                "EdgeDeploymentPlanName": "fast-roll",
                "DeviceFleetName": "fast-roll",
                "ModelConfigs": [{"ModelHandle": "m", "ModelName": "fast-model", "ModelVersion": "1"}],
                "Stages": [
                    {
                        "StageName": "all",
                        "DeviceSelectionConfig": {"DeviceSubsetType": "PERCENTAGE", "Percentage": 100},
                    }
                ],
            }
        )
        op.start_stage("fast-roll", "all")
        # The first poll starts the stage (the application); the others are plain fetches (fast path):
        # both answer the same deployment.
        answers = [cam.call("GetDeployments").json()["Deployments"] for cam in cams]
        assert answers[0] == answers[1] == answers[2] and len(answers[0]) == 1
        [definition] = answers[0][0]["Definitions"]
        # A whole download (fast path) and a ranged one (the application): same archive, same headers.
        whole = cams[1].http.get(definition["PackageUrl"])
        ranged = cams[1].http.get(definition["PackageUrl"], headers={"Range": "bytes=0-"})
        assert (whole.status_code, ranged.status_code) == (200, 206)
        assert whole.content == ranged.content == package.read_bytes()
        assert hashlib.sha256(whole.content).hexdigest() == definition["Sha256"]
        for header in ("ETag", "Accept-Ranges", "Content-Disposition", "Content-Type", "Content-Length"):
            assert whole.headers[header] == ranged.headers[header], header
        outsider_pkg = definition["PackageUrl"].rsplit("/", 1)[0] + "/999999"
        assert _error(cams[1].http.get(outsider_pkg))[:2] == (403, "PERMISSION_DENIED")
        # Results: a plain success (fast path) and a failure (the application).
        result = {"DeploymentName": "fast-roll.all", "DeploymentStatus": "SUCCEEDED"}
        assert cams[0].call("ReportDeploymentResult", {"DeploymentResult": result}).json() == {
            "DeploymentName": "fast-roll.all",
            "DeviceDeploymentStatus": "DEPLOYED",
        }
        assert (
            cams[1]
            .call("ReportDeploymentResult", {"DeploymentResult": result})
            .json()["DeviceDeploymentStatus"]
            == "DEPLOYED"
        )
        assert (
            cams[2].call("GetDeployments").json()["Deployments"] == answers[0]
        )  # asked again before reporting
        assert op.describe_plan("fast-roll")["Stages"][0]["DeploymentStatus"]["StageStatus"] == "INPROGRESS"
        assert cams[2].call("ReportDeploymentResult", {"DeploymentResult": result}).status_code == 200
        status = op.describe_plan("fast-roll")["Stages"][0]["DeploymentStatus"]
        assert (status["StageStatus"], status["EdgeDeploymentSuccessInStage"]) == ("DEPLOYED", 3)
        assert [cam.call("GetDeployments").json() for cam in cams] == [{"Deployments": []}] * 3
    finally:
        for cam in cams:
            cam.close()
