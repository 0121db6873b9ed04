"""``FleetClient``: a typed-enough client of the operator API (``/api/v1``).

Errors come back as the class of the server's code (``except NotFound`` matches; see
:func:`~edgefleet.core.errors.error_from_http`); a server that cannot be reached is UNAVAILABLE. List methods follow ``NextToken`` until the end.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from edgefleet.core.errors import InvalidArgument, NotFound, Unavailable, error_from_http
from edgefleet.core.files import atomic_writer, fsync_dir, fsync_file, sha256_file
from edgefleet.opclient.config import ENV_CA_CERT, ClientConfig

Json = dict[str, Any]
Progress = Callable[[int, int], None]
_CHUNK = 256 * 1024


def _verify_failed(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is a TLS certificate verification failure."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _range_start(value: str | None) -> int:
    """START of ``Content-Range: bytes START-END/TOTAL`` (-1 when malformed)."""
    unit, _, spec = (value or "").partition(" ")
    try:
        return int(spec.split("-", 1)[0]) if unit == "bytes" else -1
    except ValueError:
        return -1


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

    def _unreachable(self, exc: httpx.TransportError) -> Unavailable:
        """UNAVAILABLE for a failed connection; a certificate that did not verify says with which CA."""
        if not _verify_failed(exc):
            return Unavailable(f"cannot reach the edgefleet server at {self.config.server}: {exc}")
        ca = self.config.ca_cert
        used = (
            f"the CA file {ca} ({self.config.ca_cert_source})"
            if ca is not None
            else "the system trust store (no CA file was given)"
        )
        return Unavailable(
            f"the certificate of {self.config.server} did not verify against {used}: {exc}. Give the CA "
            f"that signed it with --ca-cert FILE or ${ENV_CA_CERT}=FILE; a server started with "
            "--data-dir DATA keeps its CA in DATA/tls/ca.pem"
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call; the decoded JSON body (None for 204)."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            raise error_from_http(response.status_code, response.content)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def _pages(
        self, path: str, key: str, params: dict[str, Any], *, token_param: str = "NextToken"
    ) -> Iterator[Json]:
        params = {k: v for k, v in params.items() if v is not None}
        while True:
            body = self.request("GET", path, params=params)
            yield from body[key]
            token = body.get("NextToken")
            if not token:
                return
            params[token_param] = token

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

    def fleet_drift(
        self,
        fleet: str,
        model: str,
        *,
        version: str | None = None,
        since: str | None = None,
        bucket_seconds: int | None = None,
        device_tag: str | None = None,
    ) -> Json:
        """The fleet's drift report for ``model`` (``since``: ISO 8601 time; ``device_tag``: KEY=VALUE)."""
        params = {
            "ModelName": model,
            "ModelVersion": version,
            "Since": since,
            "BucketSeconds": bucket_seconds,
            "DeviceTag": device_tag,
        }
        result: Json = self.request(
            "GET", f"/api/v1/fleets/{fleet}/drift", params={k: v for k, v in params.items() if v is not None}
        )
        return result

    def fleet_shadows(
        self,
        fleet: str,
        *,
        champion_model: str | None = None,
        shadow_model: str | None = None,
        since: str | None = None,
    ) -> Json:
        """The fleet's shadow figures per model pair (``since``: ISO 8601 time)."""
        params = {"ChampionModel": champion_model, "ShadowModel": shadow_model, "Since": since}
        result: Json = self.request(
            "GET",
            f"/api/v1/fleets/{fleet}/shadows",
            params={k: v for k, v in params.items() if v is not None},
        )
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

    def put_baseline(self, name: str, version: str, summary: dict[str, Any]) -> Json:
        """Attach ``summary`` (``ModelSummary.to_wire()``) to the version as its drift baseline."""
        result: Json = self.request(
            "PUT", f"/api/v1/models/{name}/versions/{version}/baseline", json={"Summary": summary}
        )
        return result

    def get_baseline(self, name: str, version: str) -> Json:
        result: Json = self.request("GET", f"/api/v1/models/{name}/versions/{version}/baseline")
        return result

    def put_alert_rule(self, model: str, rule: str, body: dict[str, Any]) -> Json:
        """Create or replace the drift alert rule ``rule`` of ``model`` (``{MaxPsi, MaxKs, MaxJs,
        DeviceFleetName, ModelVersion, Webhook: {Url, Secret}}``)."""
        result: Json = self.request("PUT", f"/api/v1/models/{model}/alert-rules/{rule}", json=body)
        return result

    def list_alert_rules(self, model: str) -> list[Json]:
        result: Json = self.request("GET", f"/api/v1/models/{model}/alert-rules")
        return list(result["AlertRules"])

    def get_alert_rule(self, model: str, rule: str) -> Json:
        result: Json = self.request("GET", f"/api/v1/models/{model}/alert-rules/{rule}")
        return result

    def delete_alert_rule(self, model: str, rule: str) -> None:
        self.request("DELETE", f"/api/v1/models/{model}/alert-rules/{rule}")

    def list_alert_events(
        self, model: str, *, rule: str | None = None, fleet: str | None = None, open_only: bool = False
    ) -> Iterator[Json]:
        """The model's alert events, newest first."""
        params = {"AlertRuleName": rule, "DeviceFleetName": fleet, "OpenOnly": "true" if open_only else None}
        return self._pages(f"/api/v1/models/{model}/alert-events", "AlertEvents", params)

    # ------------------------------------------------------------------ jobs

    def submit_job(self, kind: str, params: Json, *, max_attempts: int | None = None) -> Json:
        """Submit a job of ``kind`` (``compile``, ``wait``) with its parameters."""
        body: Json = {"Kind": kind, kind.capitalize(): params}
        if max_attempts is not None:
            body["MaxAttempts"] = max_attempts
        result: Json = self.request("POST", "/api/v1/jobs", json=body)
        return result

    def list_jobs(self, *, state: str | None = None, kind: str | None = None) -> Iterator[Json]:
        """Jobs, newest first."""
        return self._pages("/api/v1/jobs", "Jobs", {"State": state, "Kind": kind})

    def describe_job(self, job_id: str) -> Json:
        result: Json = self.request("GET", f"/api/v1/jobs/{quote(job_id, safe='')}")
        return result

    def cancel_job(self, job_id: str) -> Json:
        result: Json = self.request("POST", f"/api/v1/jobs/{quote(job_id, safe='')}/cancel")
        return result

    def job_logs(self, job_id: str, *, after: int = 0) -> Json:
        """The job's log lines after line id ``after`` (``LastId`` of the answer continues), and its state."""
        result: Json = self.request(
            "GET", f"/api/v1/jobs/{quote(job_id, safe='')}/logs", params={"After": after}
        )
        return result

    # ------------------------------------------------------------------ pipelines

    def put_pipeline(self, config_text: str, *, replace: bool = False) -> Json:
        """Store a model's pipeline configuration (TOML text)."""
        result: Json = self.request(
            "POST", "/api/v1/pipelines", json={"PipelineConfig": config_text, "Replace": replace}
        )
        return result

    def describe_pipeline(self, name: str) -> Json:
        result: Json = self.request("GET", f"/api/v1/pipelines/{quote(name, safe='')}")
        return result

    def list_pipelines(self) -> list[Json]:
        result: Json = self.request("GET", "/api/v1/pipelines")
        return list(result["Pipelines"])

    def start_pipeline_run(
        self, name: str, *, version: str | None = None, source: str | None = None, trigger: str = "manual"
    ) -> Json:
        body: Json = {"ModelVersion": version, "Source": source, "Trigger": trigger}
        result: Json = self.request("POST", f"/api/v1/pipelines/{quote(name, safe='')}/runs", json=body)
        return result

    def list_pipeline_runs(self, *, pipeline: str | None = None, state: str | None = None) -> Iterator[Json]:
        """Runs, newest first."""
        return self._pages("/api/v1/pipeline-runs", "Runs", {"PipelineName": pipeline, "State": state})

    def describe_pipeline_run(self, run_id: str) -> Json:
        result: Json = self.request("GET", f"/api/v1/pipeline-runs/{quote(run_id, safe='')}")
        return result

    def pipeline_run_logs(self, run_id: str, *, after: int = 0) -> Json:
        result: Json = self.request(
            "GET", f"/api/v1/pipeline-runs/{quote(run_id, safe='')}/logs", params={"After": after}
        )
        return result

    def decide_pipeline_run(self, run_id: str, *, approve: bool, note: str | None = None) -> Json:
        """Approve or reject a run waiting at its approval gate."""
        action = "approve" if approve else "reject"
        result: Json = self.request(
            "POST", f"/api/v1/pipeline-runs/{quote(run_id, safe='')}/{action}", json={"Note": note}
        )
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

    def download_package(
        self, name: str, version: str, target: str, dest_dir: Path, *, progress: Progress | None = None
    ) -> Path:
        """Download a version's package for ``target`` into the directory ``dest_dir``; its path.

        The file is ``NAME-VERSION-TARGET.tar.gz``; bytes arrive in ``… .tar.gz.part`` first, which a
        later call resumes with a Range request (If-Range: a partial of other bytes starts over). The
        file gets its final name only after its size and SHA-256 match the registry's.
        """
        if dest_dir.exists() and not dest_dir.is_dir():
            raise InvalidArgument(f"{dest_dir} is a file: give the directory to download into")
        packages = self.describe_version(name, version)["Packages"]
        package = next((p for p in packages if p["Target"] == target), None)
        if package is None:
            known = ", ".join(sorted(p["Target"] for p in packages)) or "none"
            raise NotFound(
                f"version {version!r} of {name!r} has no package for target {target!r} (it has: {known})"
            )
        expected, size = str(package["Sha256"]), int(package["Size"])
        try:
            dest_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidArgument(f"cannot create the directory {dest_dir}: {exc}") from exc
        final = dest_dir / f"{name}-{version}-{target}.tar.gz"
        url = f"/api/v1/models/{name}/versions/{version}/packages/{target}"
        if final.is_file() and final.stat().st_size == size and sha256_file(final) == expected:
            if progress is not None:
                progress(size, size)
            return final  # already here, verified
        part = final.with_name(final.name + ".part")
        for attempt in range(2):
            offset = part.stat().st_size if part.is_file() else 0
            if offset > size:
                offset = 0  # longer than the package: not a partial of it
            if offset == size:
                got = sha256_file(part)  # complete, but not yet renamed (interrupted just before)
            else:
                got = self._download_to(url, part, offset, size, expected, progress)
            written = part.stat().st_size
            if written == size and got == expected:
                fsync_file(part)
                os.replace(part, final)
                fsync_dir(dest_dir)
                return final
            part.unlink()
            if offset == 0 or attempt:
                raise Unavailable(
                    f"the download of {name} {version} for {target} is damaged ({written} of {size} bytes, "
                    f"SHA-256 {got} where the registry has {expected}); nothing was kept, try again"
                )
            # the resumed partial held other bytes than this package's: start over once, from zero
        raise AssertionError("unreachable")

    def _download_to(
        self, url: str, part: Path, offset: int, size: int, sha256: str, progress: Progress | None
    ) -> str:
        """Fetch the package into ``part`` from ``offset`` (appending to what is there); the file's SHA-256."""
        digest = hashlib.sha256()
        headers: dict[str, str] = {}
        if offset:
            headers = {"Range": f"bytes={offset}-", "If-Range": f'"{sha256}"'}
        try:
            with self._http.stream("GET", url, headers=headers) as response:
                if response.status_code == 416 and offset:
                    response.close()
                    return self._download_to(url, part, 0, size, sha256, progress)  # start over
                if response.status_code >= 400:
                    response.read()
                    raise error_from_http(response.status_code, response.content)
                if response.status_code == 206:
                    start = _range_start(response.headers.get("Content-Range"))
                    if start != offset:
                        raise Unavailable(f"the server resumed at byte {start}, not {offset}: {url}")
                    with part.open("rb") as existing:
                        while block := existing.read(_CHUNK):
                            digest.update(block)
                    mode, done = "ab", offset
                else:
                    mode, done = "wb", 0
                with part.open(mode) as out:
                    for chunk in response.iter_bytes(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, size)
        except httpx.TransportError as exc:
            if _verify_failed(exc):
                raise self._unreachable(exc) from exc
            raise Unavailable(
                f"download from {self.config.server} broke off: {exc}; run it again to resume"
            ) from exc
        except OSError as exc:
            raise InvalidArgument(f"cannot write {part}: {exc}") from exc
        return digest.hexdigest()

    # ------------------------------------------------------------------ captures

    def list_captures(
        self,
        *,
        fleet: str | None = None,
        model: str | None = None,
        version: str | None = None,
        device: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        page_size: int | None = None,
    ) -> Iterator[Json]:
        """Indexed capture objects, oldest first (every page)."""
        params = {
            "fleet": fleet,
            "model": model,
            "version": version,
            "device": device,
            "since": since.isoformat() if isinstance(since, datetime) else since,
            "until": until.isoformat() if isinstance(until, datetime) else until,
            "limit": page_size,
        }
        return self._pages("/api/v1/captures", "Captures", params, token_param="next_token")

    def describe_capture(self, key: str) -> Json:
        """The index's row of the capture object ``key``."""
        result: Json = self.request("GET", f"/api/v1/captures/{quote(key)}")
        return result

    def fetch_capture(self, key: str, dest: Path) -> int:
        """Download the capture object ``key`` into the file ``dest`` (replaced whole); its size."""
        return self._stream_to(f"/api/v1/captures/{quote(key)}/object", dest)

    def capture_bytes(self, key: str) -> bytes:
        """The capture object ``key``'s bytes."""
        return self._get_bytes(f"/api/v1/captures/{quote(key)}/object")

    def capture_raw(self, key: str, name: str) -> bytes:
        """A raw-data payload (``raw-data/<name>`` beside the object ``key``) its records refer to."""
        return self._get_bytes(f"/api/v1/captures/{quote(key)}/raw/{quote(name, safe='')}")

    def _get_bytes(self, url: str) -> bytes:
        try:
            response = self._http.get(url)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            raise error_from_http(response.status_code, response.content)
        return response.content

    def _stream_to(self, url: str, dest: Path) -> int:
        size = 0
        try:
            with self._http.stream("GET", url) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_from_http(response.status_code, response.content)
                with atomic_writer(dest) as out:
                    for chunk in response.iter_bytes(_CHUNK):
                        out.write(chunk)
                        size += len(chunk)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        except OSError as exc:
            raise InvalidArgument(f"cannot write {dest}: {exc}") from exc
        return size

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
