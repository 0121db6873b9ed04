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
