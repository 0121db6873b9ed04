"""The control plane through a real server (uvicorn, real TLS and mutual TLS on loopback ports)."""

from __future__ import annotations

import hashlib
import random
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_testkit import build_test_package, enrol, tamper_package, unsigned_package

from edgefleet.core import signing
from edgefleet.core.errors import Code, EdgefleetError

Server = Any
Client = Any


def _raw(server: Server, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    context = ssl.create_default_context(cafile=server.endpoints.ca_cert)
    return httpx.Client(base_url=server.endpoints.api_url, verify=context, headers=headers)


def _error(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["error"]["code"], body["error"]["message"]


def test_openapi_document_and_health(fleet_server: Server) -> None:
    with _raw(fleet_server) as http:
        doc = http.get("/openapi.json").json()
        assert "/api/v1/fleets" in doc["paths"] and "/device/v1/GetDeployments" in doc["paths"]
        assert http.get("/healthz").json() == {"Status": "alive"}
        assert http.get("/readyz").json() == {"Status": "ready"}


def test_operator_api_needs_a_valid_token(fleet_server: Server) -> None:
    with _raw(fleet_server) as http:
        status, code, message = _error(http.get("/api/v1/fleets"))
        assert (status, code) == (401, "UNAUTHENTICATED") and "missing API token" in message
    with _raw(fleet_server, "eft_forged") as http:
        assert _error(http.get("/api/v1/fleets"))[:2] == (401, "UNAUTHENTICATED")


def test_bad_input_gets_a_clear_4xx_and_changes_nothing(fleet_server: Server, operator_token: str) -> None:
    good = {"DeviceFleetName": "bad-input", "OutputConfig": {"S3OutputLocation": "s3://b/p"}}
    with _raw(fleet_server, operator_token) as http:
        cases = [
            (
                http.post("/api/v1/fleets", json={**good, "DeviceFleetName": "no_underscores"}),
                400,
                "INVALID_ARGUMENT",
                "fleet name",
            ),
            (
                http.post("/api/v1/fleets", json={"DeviceFleetName": "x"}),
                400,
                "INVALID_ARGUMENT",
                "OutputConfig: Field required",
            ),
            (
                http.post("/api/v1/fleets", json={**good, "Colour": "red"}),
                400,
                "INVALID_ARGUMENT",
                "Colour: Extra inputs",
            ),
            (
                http.post(
                    "/api/v1/fleets", content=b"{not json", headers={"Content-Type": "application/json"}
                ),
                400,
                "INVALID_ARGUMENT",
                "JSON",
            ),
            (http.get("/api/v1/fleets/ghost"), 404, "NOT_FOUND", "fleet 'ghost' does not exist"),
            (
                http.get("/api/v1/fleets", params={"MaxResults": 0}),
                400,
                "INVALID_ARGUMENT",
                "MaxResults must be between",
            ),
            (
                http.get("/api/v1/fleets", params={"NextToken": "garbage!"}),
                400,
                "INVALID_ARGUMENT",
                "NextToken",
            ),
            (http.get("/api/v1/nowhere"), 404, "NOT_FOUND", "no such endpoint"),
            (
                http.post(
                    "/api/v1/devices", json={"DeviceFleetName": "ghost", "Devices": [{"DeviceName": "d"}]}
                ),
                404,
                "NOT_FOUND",
                "fleet 'ghost'",
            ),
        ]
        for response, status, code, fragment in cases:
            got = _error(response)
            assert got[:2] == (status, code) and fragment in got[2], got
        assert http.post("/api/v1/fleets", json=good).status_code == 201
        assert _error(http.post("/api/v1/fleets", json=good))[:2] == (409, "ALREADY_EXISTS")
        # A batch with one bad device registers none of them.
        batch = {
            "DeviceFleetName": "bad-input",
            "Devices": [{"DeviceName": "fine-1"}, {"DeviceName": "-bad"}],
        }
        assert _error(http.post("/api/v1/devices", json=batch))[:2] == (400, "INVALID_ARGUMENT")
        assert (
            http.get("/api/v1/devices", params={"DeviceFleetName": "bad-input"}).json()["DeviceSummaries"]
            == []
        )


def test_package_upload_is_verified_against_the_trust_store(
    fleet_server: Server, op: Client, signing_keys: Any, tmp_path: Path
) -> None:
    good = build_test_package(signing_keys.directory, tmp_path / "good", "uploads", "1", arch="x86_64")
    stored_before = fleet_server.state.artifacts.list()
    # Tampered after signing: refused, nothing stored.
    with pytest.raises(EdgefleetError, match="was modified") as info:
        op.upload_package(tamper_package(good, tmp_path / "tampered.tar.gz"))
    assert info.value.code is Code.FAILED_PRECONDITION
    # Not signed at all: refused.
    with pytest.raises(EdgefleetError, match=r"manifest\.sig") as info:
        op.upload_package(unsigned_package(good, tmp_path / "unsigned.tar.gz"))
    assert info.value.code is Code.FAILED_PRECONDITION
    # Signed by keys the server does not trust: refused.
    strangers = signing.init_keys(tmp_path / "strangers")
    foreign = build_test_package(strangers.directory, tmp_path / "foreign", "uploads", "1", arch="x86_64")
    with pytest.raises(EdgefleetError, match="trust") as info:
        op.upload_package(foreign)
    assert info.value.code is Code.FAILED_PRECONDITION
    # Not a package at all.
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"definitely not gzip")
    with pytest.raises(EdgefleetError) as info:
        op.upload_package(junk)
    assert info.value.code is Code.INVALID_ARGUMENT
    assert fleet_server.state.artifacts.list() == stored_before
    with pytest.raises(EdgefleetError, match="model 'uploads' does not exist"):
        op.describe_model("uploads")

    sent: list[int] = []
    version = op.upload_package(good, progress=lambda done, total: sent.append(done))
    assert sent[-1] == good.stat().st_size
    assert (version["ModelName"], version["ModelVersion"], version["ApprovalStatus"]) == (
        "uploads",
        "1",
        "PendingManualApproval",
    )
    [package] = version["Packages"]
    assert package["Target"] == "linux-x86_64-none"
    assert package["Sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()
    assert "package signer" in package["Signer"]
    with pytest.raises(EdgefleetError, match="already has a package for target linux-x86_64-none") as info:
        op.upload_package(good)
    assert info.value.code is Code.ALREADY_EXISTS
    other = build_test_package(signing_keys.directory, tmp_path / "arm", "uploads", "1", arch="aarch64")
    assert [p["Target"] for p in op.upload_package(other)["Packages"]] == [
        "linux-aarch64-none",
        "linux-x86_64-none",
    ]
    approved = op.set_approval("uploads", "1", "Approved", reason="offline eval ok")
    assert (approved["ApprovalStatus"], approved["ApprovalUpdatedBy"]) == ("Approved", "ops-alice")
    late = build_test_package(signing_keys.directory, tmp_path / "late", "uploads", "1", arch="armv7l")
    with pytest.raises(EdgefleetError, match="packages can only be added while it is PendingManualApproval"):
        op.upload_package(late)
    assert op.set_alias("uploads", "champion", "1")["Aliases"] == {"champion": "1"}
    # Operators can download what they uploaded into a directory, resuming a partial with Range.
    dest = tmp_path / "download"
    dest.mkdir()
    (dest / "uploads-1-linux-x86_64-none.tar.gz.part").write_bytes(good.read_bytes()[:100])
    path = op.download_package("uploads", "1", "linux-x86_64-none", dest)
    assert path == dest / "uploads-1-linux-x86_64-none.tar.gz"
    assert path.read_bytes() == good.read_bytes()


def test_enrolment_mutual_tls_isolation_and_revocation(
    fleet_server: Server, op: Client, tmp_path: Path
) -> None:
    op.create_fleet("mtls", "s3://bucket/mtls")
    tokens = {
        r["DeviceName"]: r["EnrolmentToken"]
        for r in op.register_devices("mtls", [{"DeviceName": "cam-a"}, {"DeviceName": "cam-b"}])
    }
    api = fleet_server.endpoints.api_url
    cam_a = enrol(api, tokens["cam-a"], tmp_path / "a")
    cam_b = enrol(api, tokens["cam-b"], tmp_path / "b")
    try:
        # The token is one-time.
        with httpx.Client(verify=ssl.create_default_context(cafile=fleet_server.endpoints.ca_cert)) as http:
            from server_testkit import make_csr

            again = http.post(
                f"{api}/enrol/v1/enrol",
                json={"EnrolmentToken": tokens["cam-a"], "CertificateSigningRequest": make_csr()[1]},
            )
            assert _error(again)[:2] == (401, "UNAUTHENTICATED")
        assert cam_a.call("GetDeviceRegistration").json() == {
            "DeviceRegistration": "REGISTERED",
            "CacheTTL": "3600",
        }
        heartbeat = {
            "AgentVersion": "0.9.1",
            "AgentMetrics": [{"MetricName": "CPU", "Value": 12.5, "Timestamp": 1_900_000_000}],
            "Models": [
                {"ModelName": "detector", "ModelVersion": "1", "LatestInference": "2030-01-01T00:00:00Z"}
            ],
            "Platform": {"Os": "linux", "Arch": "x86_64"},
        }
        assert cam_a.call("SendHeartbeat", heartbeat).json() == {}
        described = op.describe_device("cam-a")
        assert described["AgentVersion"] == "0.9.1" and described["LatestHeartbeat"] is not None
        assert described["Models"] == [
            {
                "ModelName": "detector",
                "ModelVersion": "1",
                "LatestSampleTime": None,
                "LatestInference": "2030-01-01T00:00:00Z",
            }
        ]
        assert described["Platform"] == {"Os": "linux", "Arch": "x86_64", "Accelerator": "none"}
        # A device cannot read another device's deployments or write its heartbeats.
        status, code, message = _error(cam_a.call("GetDeployments", DeviceName="cam-b"))
        assert (status, code) == (403, "PERMISSION_DENIED") and "may not act for device 'cam-b'" in message
        assert _error(cam_a.call("SendHeartbeat", heartbeat, DeviceName="cam-b"))[:2] == (
            403,
            "PERMISSION_DENIED",
        )
        assert _error(cam_a.call("GetDeployments", DeviceFleetName="other"))[:2] == (403, "PERMISSION_DENIED")
        assert cam_b.call("GetDeployments").json() == {"Deployments": []}
        # Device routes on the operator port (no client certificate): refused.
        with _raw(fleet_server) as http:
            status, code, _ = _error(
                http.post(
                    "/device/v1/GetDeployments", json={"DeviceName": "cam-a", "DeviceFleetName": "mtls"}
                )
            )
            assert (status, code) == (401, "UNAUTHENTICATED")
        # The device port refuses TLS clients without a certificate from the fleet CA.
        context = ssl.create_default_context(cafile=fleet_server.endpoints.ca_cert)
        with httpx.Client(verify=context) as anonymous, pytest.raises(httpx.HTTPError):
            anonymous.post(f"{fleet_server.endpoints.device_url}/device/v1/GetDeployments", json={})
        # Deregistration revokes the certificate at once (checked on every request).
        op.deregister_device("cam-a")
        status, code, message = _error(cam_a.call("GetDeviceRegistration"))
        assert (status, code) == (401, "UNAUTHENTICATED") and "revoked" in message
        assert cam_b.call("GetDeviceRegistration").status_code == 200
        # Re-enrolment with a new token revokes the certificate held before.
        new_token = op.new_enrolment_token("cam-b")["EnrolmentToken"]
        cam_b2 = enrol(api, new_token, tmp_path / "b2")
        try:
            assert _error(cam_b.call("GetDeviceRegistration"))[:2] == (401, "UNAUTHENTICATED")
            assert cam_b2.call("GetDeviceRegistration").status_code == 200
        finally:
            cam_b2.close()
    finally:
        cam_a.close()
        cam_b.close()


def test_staged_rollout_over_http(
    fleet_server: Server, op: Client, signing_keys: Any, tmp_path: Path
) -> None:
    package = build_test_package(
        signing_keys.directory, tmp_path / "pkg", "counter", "7", payload=random.Random(7).randbytes(300_000)
    )
    op.upload_package(package)
    op.set_approval("counter", "7", "Approved")
    op.set_alias("counter", "champion", "7")
    op.create_fleet("rollout", "s3://bucket/rollout")
    registered = op.register_devices(
        "rollout", [{"DeviceName": f"edge-{i}"} for i in range(3)], tags={"site": "lab"}
    )
    fleet = {
        r["DeviceName"]: enrol(
            fleet_server.endpoints.api_url, r["EnrolmentToken"], tmp_path / r["DeviceName"]
        )
        for r in registered
    }
    try:
        plan = op.create_plan(
            {
                "EdgeDeploymentPlanName": "counter-7",
                "DeviceFleetName": "rollout",
                "ModelConfigs": [
                    {"ModelHandle": "counter", "ModelName": "counter", "ModelAlias": "champion"}
                ],
                "Stages": [
                    {
                        "StageName": "canary",
                        "DeviceSelectionConfig": {"DeviceSubsetType": "PERCENTAGE", "Percentage": 30},
                    },
                    {
                        "StageName": "rest",
                        "DeviceSelectionConfig": {"DeviceSubsetType": "PERCENTAGE", "Percentage": 100},
                    },
                ],
            }
        )
        assert [s["DeploymentStatus"]["StageStatus"] for s in plan["Stages"]] == [
            "READYTODEPLOY",
            "READYTODEPLOY",
        ]
        assert plan["ModelConfigs"] == [
            {"ModelHandle": "counter", "ModelName": "counter", "ModelVersion": "7", "ModelAlias": "champion"}
        ]
        with pytest.raises(EdgefleetError, match="stage 'canary' is READYTODEPLOY") as info:
            op.start_stage("counter-7", "rest")
        assert info.value.code is Code.FAILED_PRECONDITION
        started = op.start_stage("counter-7", "canary")
        assert started["Stages"][0]["DeploymentStatus"]["StageStatus"] == "STARTING"
        [canary] = [d["DeviceName"] for d in op.stage_devices("counter-7", "canary")]
        device = fleet[canary]
        [deployment] = device.call("GetDeployments").json()["Deployments"]
        assert (deployment["DeploymentName"], deployment["Action"], deployment["FailureHandlingPolicy"]) == (
            "counter-7.canary",
            "DEPLOY",
            "ROLLBACK_ON_FAILURE",
        )
        [definition] = deployment["Definitions"]
        assert definition["Checksum"]["Type"] == "SHA1" and definition["State"] == "DEPLOY"
        # Download in two parts, as a device resuming after a dropped connection would.
        first = device.http.get(definition["PackageUrl"], headers={"Range": "bytes=0-99999"})
        assert (
            first.status_code == 206
            and first.headers["Content-Range"] == f"bytes 0-99999/{definition['Size']}"
        )
        rest = device.http.get(
            definition["PackageUrl"], headers={"Range": "bytes=100000-", "If-Range": first.headers["ETag"]}
        )
        assert rest.status_code == 206
        assert hashlib.sha256(first.content + rest.content).hexdigest() == definition["Sha256"]
        beyond = device.http.get(definition["PackageUrl"], headers={"Range": f"bytes={definition['Size']}-"})
        assert beyond.status_code == 416 and beyond.json()["error"]["code"] == "OUT_OF_RANGE"
        # Devices outside the stage get nothing, and cannot fetch the package.
        outsider = fleet[next(n for n in fleet if n != canary)]
        assert outsider.call("GetDeployments").json() == {"Deployments": []}
        assert _error(outsider.http.get(definition["PackageUrl"]))[:2] == (403, "PERMISSION_DENIED")
        # The result arrives with a heartbeat.
        heartbeat = {
            "AgentVersion": "1.0",
            "Models": [
                {"ModelName": "counter", "ModelVersion": "7", "LatestInference": "2099-01-01T00:00:00Z"}
            ],
            "DeploymentResult": {
                "DeploymentName": "counter-7.canary",
                "DeploymentStatus": "SUCCEEDED",
                "DeploymentModels": [{"ModelHandle": "counter", "Status": "SUCCESS"}],
            },
        }
        assert device.call("SendHeartbeat", heartbeat).status_code == 200
        described = op.describe_plan("counter-7")
        canary_status = described["Stages"][0]["DeploymentStatus"]
        assert (canary_status["StageStatus"], canary_status["EdgeDeploymentSuccessInStage"]) == (
            "DEPLOYED",
            1,
        )
        op.start_stage("counter-7", "rest")
        rest_devices = sorted(d["DeviceName"] for d in op.stage_devices("counter-7", "rest"))
        assert rest_devices == sorted(n for n in fleet if n != canary)
        for name in rest_devices:
            assert [
                d["DeploymentName"] for d in fleet[name].call("GetDeployments").json()["Deployments"]
            ] == ["counter-7.rest"]
            body = {"DeploymentResult": {"DeploymentName": "counter-7.rest", "DeploymentStatus": "SUCCEEDED"}}
            assert (
                fleet[name].call("ReportDeploymentResult", body).json()["DeviceDeploymentStatus"]
                == "DEPLOYED"
            )
        final = op.describe_plan("counter-7")
        assert (
            final["EdgeDeploymentSuccess"],
            final["EdgeDeploymentPending"],
            final["EdgeDeploymentFailed"],
        ) == (3, 0, 0)
        with pytest.raises(EdgefleetError, match="used by 1 deployment plan") as info:
            op.delete_version("counter", "7")
        assert info.value.code is Code.FAILED_PRECONDITION
        report = op.fleet_report("rollout", regenerate=True)
        assert report["DeviceStats"] == {"ConnectedDeviceCount": 1, "RegisteredDeviceCount": 3}
        assert report["ModelStats"] == [
            {
                "ModelName": "counter",
                "ModelVersion": "7",
                "OfflineDeviceCount": 0,
                "ConnectedDeviceCount": 1,
                "ActiveDeviceCount": 1,
                "SamplingDeviceCount": 0,
            }
        ]
        assert op.fleet_report("rollout")["ReportGenerated"] == report["ReportGenerated"]
        assert [d["DeviceName"] for d in op.list_devices(fleet="rollout", model="counter")] == [canary]
        assert len(list(op.list_devices(tags=["site=lab"]))) == 3
    finally:
        for client in fleet.values():
            client.close()


def test_health_gate_failure_rolls_the_device_back(
    fleet_server: Server, op: Client, signing_keys: Any, tmp_path: Path
) -> None:
    package = build_test_package(signing_keys.directory, tmp_path / "pkg", "gated", "2")
    op.upload_package(package)
    op.set_approval("gated", "2", "Approved")
    op.create_fleet("gated", "s3://bucket/gated")
    [reg] = op.register_devices("gated", [{"DeviceName": "gated-1"}])
    device = enrol(fleet_server.endpoints.api_url, reg["EnrolmentToken"], tmp_path / "gated-1")
    try:
        plan = op.create_plan(
            {
                "EdgeDeploymentPlanName": "gated-2",
                "DeviceFleetName": "gated",
                "ModelConfigs": [{"ModelHandle": "gated", "ModelName": "gated", "ModelVersion": "2"}],
                "Stages": [
                    {
                        "StageName": "all",
                        "DeviceSelectionConfig": {
                            "DeviceSubsetType": "SELECTION",
                            "DeviceNames": ["gated-1"],
                        },
                    }
                ],
                "HealthGate": {
                    "MaxErrorRate": 0.05,
                    "MaxP99LatencyMs": 20,
                    "MinInferences": 5,
                    "ObservationSeconds": 30,
                },
            }
        )
        assert plan["HealthGate"] == {
            "MaxErrorRate": 0.05,
            "MaxP99LatencyMs": 20.0,
            "MinInferences": 5,
            "ObservationSeconds": 30.0,
            "MaxDriftScore": None,
        }
        op.start_stage("gated-2", "all")
        [deployment] = device.call("GetDeployments").json()["Deployments"]
        assert deployment["HealthGate"]["MaxP99LatencyMs"] == 20.0
        result = {"DeploymentResult": {"DeploymentName": "gated-2.all", "DeploymentStatus": "SUCCEEDED"}}
        assert device.call("ReportDeploymentResult", result).json()["DeviceDeploymentStatus"] == "INPROGRESS"
        health = {"DeploymentName": "gated-2.all", "Inferences": 2, "Errors": 0, "P99LatencyMs": 3.0}
        assert device.call("ReportDeploymentHealth", health).json()["Verdict"] == "PENDING"
        verdict = device.call(
            "ReportDeploymentHealth", {**health, "Inferences": 50, "P99LatencyMs": 45.0}
        ).json()
        assert (verdict["Verdict"], verdict["Action"]) == ("FAIL", "ROLLBACK")
        assert "p99 latency 45 ms > 20 ms" in verdict["Reason"]
        [rollback] = device.call("GetDeployments").json()["Deployments"]
        assert rollback["Action"] == "ROLLBACK" and rollback["Definitions"][0]["State"] == "UNDEPLOY"
        rolled_back = {
            "DeploymentResult": {"DeploymentName": "gated-2.all", "DeploymentStatus": "FAILED_ROLLED_BACK"}
        }
        assert device.call("ReportDeploymentResult", rolled_back).json()["DeviceDeploymentStatus"] == "FAILED"
        assert device.call("GetDeployments").json() == {"Deployments": []}
        [row] = op.stage_devices("gated-2", "all")
        assert (row["DeviceDeploymentStatus"], row["Rollback"], row["Health"]["P99LatencyMs"]) == (
            "FAILED",
            "DONE",
            45.0,
        )
        assert op.describe_plan("gated-2")["Stages"][0]["DeploymentStatus"]["StageStatus"] == "FAILED"
        bad = device.call("ReportDeploymentHealth", {**health, "Errors": 9})
        assert _error(bad)[:2] == (400, "INVALID_ARGUMENT")
    finally:
        device.close()
