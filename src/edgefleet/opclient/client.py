"""``FleetClient``: a typed-enough client of the operator API (``/api/v1``).

Errors come back as :class:`~edgefleet.core.errors.EdgefleetError` with the server's code; a
server that cannot be reached is UNAVAILABLE. List methods follow ``NextToken`` until the end.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from edgefleet.core.errors import Code, EdgefleetError, Unavailable
from edgefleet.opclient.config import ClientConfig

Json = dict[str, Any]
Progress = Callable[[int, int], None]
_CHUNK = 256 * 1024


def _error(response: httpx.Response) -> EdgefleetError:
    try:
        body = response.json()
        detail = body["error"]
        code = Code(detail["code"])
        message = str(detail["message"])
    except (ValueError, KeyError, TypeError):
        code = Code.UNAVAILABLE if response.status_code >= 500 else Code.INVALID_ARGUMENT
        message = f"HTTP {response.status_code}: {response.text[:200]}"
    return EdgefleetError(message, code)


class FleetClient:
    """Calls the operator API of one server."""

    def __init__(self, config: ClientConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        verify: ssl.SSLContext | bool = True
        if config.ca_cert is not None:
            verify = ssl.create_default_context(cafile=str(config.ca_cert))
        headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
        self._http = httpx.Client(
            base_url=config.server,
            headers=headers,
            verify=verify,
            timeout=config.timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call; the decoded JSON body (None for 204)."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unavailable(f"cannot reach the edgefleet server at {self.config.server}: {exc}") from exc
        if response.status_code >= 400:
            raise _error(response)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def _pages(self, path: str, key: str, params: dict[str, Any]) -> Iterator[Json]:
        params = {k: v for k, v in params.items() if v is not None}
        while True:
            body = self.request("GET", path, params=params)
            yield from body[key]
            token = body.get("NextToken")
            if not token:
                return
            params["NextToken"] = token

    # ------------------------------------------------------------------ fleets

    def create_fleet(
        self,
        name: str,
        output_location: str,
        *,
        description: str | None = None,
        kms_key_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> Json:
        body = {
            "DeviceFleetName": name,
            "OutputConfig": {"S3OutputLocation": output_location, "KmsKeyId": kms_key_id},
            "Description": description,
            "Tags": tags,
        }
        result: Json = self.request("POST", "/api/v1/fleets", json=body)
        return result

    def list_fleets(self, *, name_contains: str | None = None) -> Iterator[Json]:
        return self._pages("/api/v1/fleets", "DeviceFleetSummaries", {"NameContains": name_contains})

    def describe_fleet(self, name: str) -> Json:
        result: Json = self.request("GET", f"/api/v1/fleets/{name}")
        return result

    def update_fleet(self, name: str, **fields: Any) -> Json:
        result: Json = self.request("PATCH", f"/api/v1/fleets/{name}", json=fields)
        return result

    def delete_fleet(self, name: str) -> None:
        self.request("DELETE", f"/api/v1/fleets/{name}")

    def fleet_report(self, name: str, *, regenerate: bool = False) -> Json:
        result: Json = self.request("POST" if regenerate else "GET", f"/api/v1/fleets/{name}/report")
        return result

    # ------------------------------------------------------------------ devices

    def register_devices(
        self, fleet: str, devices: list[Json], *, tags: dict[str, str] | None = None
    ) -> list[Json]:
        body = {"DeviceFleetName": fleet, "Devices": devices, "Tags": tags}
        result: list[Json] = self.request("POST", "/api/v1/devices", json=body)["Devices"]
        return result

    def list_devices(
        self,
        *,
        fleet: str | None = None,
        model: str | None = None,
        heartbeat_after: str | None = None,
        tags: list[str] | None = None,
    ) -> Iterator[Json]:
        params = {
            "DeviceFleetName": fleet,
            "ModelName": model,
            "LatestHeartbeatAfter": heartbeat_after,
            "Tag": tags,
        }
        return self._pages("/api/v1/devices", "DeviceSummaries", params)

    def describe_device(self, name: str) -> Json:
        result: Json = self.request("GET", f"/api/v1/devices/{name}")
        return result

    def update_device(self, name: str, **fields: Any) -> Json:
        result: Json = self.request("PATCH", f"/api/v1/devices/{name}", json=fields)
        return result

    def deregister_device(self, name: str) -> None:
        self.request("DELETE", f"/api/v1/devices/{name}")

    def new_enrolment_token(self, name: str) -> Json:
        result: Json = self.request("POST", f"/api/v1/devices/{name}/enrolment-token")
        return result

    # ------------------------------------------------------------------ registry

    def create_model(self, name: str, *, description: str | None = None) -> Json:
        result: Json = self.request(
            "POST", "/api/v1/models", json={"ModelName": name, "Description": description}
        )
        return result

    def list_models(self, *, name_contains: str | None = None) -> Iterator[Json]:
        return self._pages("/api/v1/models", "Models", {"NameContains": name_contains})

    def describe_model(self, name: str) -> Json:
        result: Json = self.request("GET", f"/api/v1/models/{name}")
        return result

    def delete_model(self, name: str) -> None:
        self.request("DELETE", f"/api/v1/models/{name}")

    def list_versions(self, name: str, *, approval_status: str | None = None) -> Iterator[Json]:
        return self._pages(
            f"/api/v1/models/{name}/versions", "ModelVersions", {"ApprovalStatus": approval_status}
        )

    def describe_version(self, name: str, version: str) -> Json:
        result: Json = self.request("GET", f"/api/v1/models/{name}/versions/{version}")
        return result

    def delete_version(self, name: str, version: str) -> None:
        self.request("DELETE", f"/api/v1/models/{name}/versions/{version}")

    def set_approval(self, name: str, version: str, status: str, *, reason: str | None = None) -> Json:
        body = {"ApprovalStatus": status, "Reason": reason}
        result: Json = self.request("PUT", f"/api/v1/models/{name}/versions/{version}/approval", json=body)
        return result

    def set_alias(self, name: str, alias: str, version: str) -> Json:
        result: Json = self.request(
            "PUT", f"/api/v1/models/{name}/aliases/{alias}", json={"ModelVersion": version}
        )
        return result

    def delete_alias(self, name: str, alias: str) -> Json:
        result: Json = self.request("DELETE", f"/api/v1/models/{name}/aliases/{alias}")
        return result

    def upload_package(self, path: Path, *, progress: Progress | None = None) -> Json:
        """Upload a package archive (streamed); ``progress(sent, total)`` is called as bytes go out."""
        total = path.stat().st_size

        def chunks() -> Iterator[bytes]:
            sent = 0
            with path.open("rb") as handle:
                while chunk := handle.read(_CHUNK):
                    sent += len(chunk)
                    yield chunk
                    if progress is not None:
                        progress(sent, total)

        headers = {"Content-Type": "application/gzip", "Content-Length": str(total)}
        # the file name lets the server's messages name the package the user uploaded
        result: Json = self.request(
            "POST", "/api/v1/packages", content=chunks(), headers=headers, params={"FileName": path.name}
        )
        return result

    def download_package(self, name: str, version: str, target: str, dest: Path) -> Path:
        """Download a package to ``dest``, resuming a partial file with a Range request."""
        offset = dest.stat().st_size if dest.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        url = f"/api/v1/models/{name}/versions/{version}/packages/{target}"
        try:
            with self._http.stream("GET", url, headers=headers) as response:
                if response.status_code == 416:
                    return dest  # already complete
                if response.status_code >= 400:
                    response.read()
                    raise _error(response)
                mode = "ab" if response.status_code == 206 else "wb"
                with dest.open(mode) as out:
                    for chunk in response.iter_bytes(_CHUNK):
                        out.write(chunk)
        except httpx.TransportError as exc:
            raise Unavailable(f"download from {self.config.server} broke off: {exc}") from exc
        return dest

    # ------------------------------------------------------------------ deployments

    def create_plan(self, body: Json) -> Json:
        result: Json = self.request("POST", "/api/v1/deployment-plans", json=body)
        return result

    def list_plans(self, *, fleet: str | None = None, name_contains: str | None = None) -> Iterator[Json]:
        params = {"DeviceFleetName": fleet, "NameContains": name_contains}
        return self._pages("/api/v1/deployment-plans", "EdgeDeploymentPlanSummaries", params)

    def describe_plan(self, name: str) -> Json:
        result: Json = self.request("GET", f"/api/v1/deployment-plans/{name}")
        return result

    def delete_plan(self, name: str) -> None:
        self.request("DELETE", f"/api/v1/deployment-plans/{name}")

    def start_stage(self, plan: str, stage: str) -> Json:
        result: Json = self.request("POST", f"/api/v1/deployment-plans/{plan}/stages/{stage}/start")
        return result

    def stop_stage(self, plan: str, stage: str) -> Json:
        result: Json = self.request("POST", f"/api/v1/deployment-plans/{plan}/stages/{stage}/stop")
        return result

    def stage_devices(self, plan: str, stage: str, *, status: str | None = None) -> Iterator[Json]:
        return self._pages(
            f"/api/v1/deployment-plans/{plan}/stages/{stage}/devices",
            "DeviceDeploymentSummaries",
            {"DeviceDeploymentStatus": status},
        )
