"""Capture objects uploaded through the control plane: no store credentials on the device.

:class:`ControlPlaneStore` is the device's side of ``/device/v1/capture`` (docs/fleet-api.md §5.7).
Its ``put`` asks the control plane, over mutual TLS with the device certificate, for an upload
target for the key (``PresignUploads``) and PUTs the bytes there:

- ``presigned``: the target is a short-lived presigned URL of the capture store, PUT to without
  credentials; the control plane never sees the bytes. A store that cannot presign (a directory)
  answers with the relay path instead, which is then used.
- ``relay``: the bytes go to the control plane's relay path (``PUT /device/v1/capture/objects/<key>``,
  mutual TLS), for stores the device cannot reach.

A URL that has expired (or is refused, 403) before the PUT is asked for again once. A store or a
control plane that cannot be reached, or answers 5xx, is UNAVAILABLE: the capture service retries.
Reading back is not possible from the device; only ``put``, ``url`` and ``check`` are served.
"""

from __future__ import annotations

import enum
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote, urlsplit

from edgefleet.core.deviceplane import CAPTURE_OBJECTS_PATH, UploadGrant, UploadTarget
from edgefleet.core.errors import (
    EdgefleetError,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
    error_from_http,
)
from edgefleet.storage.base import CHUNK_SIZE, ObjectStore, StoreOptions, validate_key

if TYPE_CHECKING:  # imported when a store is made: an agent without this upload mode never pays for it
    import httpx

PRESIGN_PATH = "/device/v1/capture/PresignUploads"


class UploadMode(enum.StrEnum):
    """How capture objects reach the store (``capture.upload``)."""

    #: the standard AWS credential chain on the device (the s3:// store)
    AWS = "aws"
    #: presigned URLs from the control plane, PUT straight to the store
    PRESIGNED = "presigned"
    #: through the control plane
    RELAY = "relay"


@dataclass(frozen=True)
class DeviceEndpoint:
    """The control plane's device endpoint and this device's TLS identity for it."""

    #: base URL of the device data plane (``https://host:port``)
    url: str
    device_name: str
    fleet_name: str
    #: the device certificate and its key (PEM)
    cert_file: Path
    key_file: Path
    #: CA that signed the server's certificate (the fleet CA)
    ca_file: Path
    #: seconds any one request may take (connect, each read and write)
    timeout: float = 30.0

    def context(self) -> ssl.SSLContext:
        """A TLS context presenting the device certificate and trusting ``ca_file`` only."""
        for path, what in ((self.cert_file, "certificate"), (self.key_file, "key"), (self.ca_file, "CA")):
            if not path.is_file():
                raise FailedPrecondition(
                    f"capture uploads through the control plane need the device {what} {path}: no such file"
                )
        try:
            context = ssl.create_default_context(cafile=str(self.ca_file))
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise FailedPrecondition(
                f"cannot use the device certificate {self.cert_file} / key {self.key_file} / CA {self.ca_file}: {exc}"
            ) from exc
        return context


class ControlPlaneStore(ObjectStore):
    """Capture objects PUT to where the control plane says (module doc); keys as the server's store sees them."""

    def __init__(
        self,
        endpoint: DeviceEndpoint,
        mode: UploadMode = UploadMode.PRESIGNED,
        options: StoreOptions = StoreOptions(),  # noqa: B008 - frozen
    ) -> None:
        super().__init__(options)
        if mode is UploadMode.AWS:
            raise InvalidArgument("the control-plane store uploads in presigned or relay mode, not aws")
        parts = urlsplit(endpoint.url)
        if parts.scheme != "https" or not parts.hostname:
            raise InvalidArgument(f"control plane URL {endpoint.url!r} must be https://host[:port]")
        self.endpoint = endpoint
        self.mode = mode
        self._base = endpoint.url.rstrip("/")
        self._ref = {"DeviceName": endpoint.device_name, "DeviceFleetName": endpoint.fleet_name}
        self._lock = threading.Lock()
        self._location: str | None = None
        import httpx

        self._httpx = httpx
        self._device: httpx.Client | None = None  # mutual TLS, to the control plane
        self._plain = httpx.Client(timeout=endpoint.timeout, trust_env=False)  # presigned URLs

    @classmethod
    def from_uri(cls, uri: str, options: StoreOptions) -> ControlPlaneStore:
        raise InvalidArgument(
            "a control-plane capture store is made from the agent's configuration, not a URI"
        )

    @property
    def uri(self) -> str:
        """The server's capture store (known after :meth:`check`), else the control plane's URL."""
        return self._location or f"{self._base}{PRESIGN_PATH}"

    def _client(self) -> httpx.Client:
        with self._lock:
            if self._device is None:
                self._device = self._httpx.Client(
                    base_url=self._base,
                    verify=self.endpoint.context(),
                    timeout=self.endpoint.timeout,
                    trust_env=False,
                    headers={"Accept-Encoding": "identity"},
                )
            return self._device

    def _send(self, client: httpx.Client, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            return client.request(method, url, **kwargs)
        except self._httpx.TransportError as exc:
            raise Unavailable(f"{what}: cannot reach {url.split('?', 1)[0]}: {exc}") from exc

    def _mtls(self, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        """A request to the control plane with the device certificate. Refused as unauthenticated
        (401), the certificate files are read again and the request sent once more: the device
        daemon renews the certificate in place, and the server revokes the old one at first use of
        the new one."""
        response = self._send(self._client(), method, url, what, **kwargs)
        if response.status_code == 401:
            self._reset_device()
            response = self._send(self._client(), method, url, what, **kwargs)
        return response

    def _reset_device(self) -> None:
        with self._lock:
            if self._device is not None:
                self._device.close()
                self._device = None

    def grant(self, keys: list[str]) -> UploadGrant:
        """Upload targets for ``keys`` from the control plane (no keys: only where objects live)."""
        what = f"asking {self._base} for capture upload URLs"
        response = self._mtls("POST", PRESIGN_PATH, what, json={**self._ref, "Keys": keys})
        if response.status_code >= 300:
            raise error_from_http(response.status_code, response.content, what)
        try:
            answer = UploadGrant.from_wire(json.loads(response.content))
        except (ValueError, KeyError, TypeError, EdgefleetError) as exc:
            raise Unavailable(
                f"{what}: the answer is not an upload grant: {response.content[:200]!r}"
            ) from exc
        if answer.location:
            self._location = answer.location.rstrip("/")
        return answer

    def check(self) -> None:
        """The certificate loads, the control plane answers and accepts this device (it also says
        where the objects will live, which :meth:`url` needs)."""
        grant = self.grant([])
        prefix = f"{self.endpoint.fleet_name}/"
        if grant.prefix and grant.prefix != prefix:
            raise FailedPrecondition(
                f"the control plane keeps this fleet's captures under {grant.prefix!r}, not {prefix!r}"
            )

    def url(self, key: str) -> str:
        """``<the server's capture store>/<key>`` (an ``s3://`` or ``file://`` URI)."""
        validate_key(key, self.what)
        if self._location is None:
            self.grant([])
        assert self._location is not None
        return f"{self._location}/{quote(key, safe='/') if self._location.startswith('file:') else key}"

    def put_stream(self, key: str, source: BinaryIO) -> None:
        validate_key(key, self.what)
        data = b"".join(iter(lambda: source.read(CHUNK_SIZE), b""))
        for attempt in (1, 2):
            target = self._target(key)
            response = self._put(target, data)
            if response.status_code < 300:
                return
            if response.status_code == 403 and not target.relayed and attempt == 1:
                continue  # the URL expired (or the clocks disagree): a fresh one, once
            self._refused(response, target)

    def _target(self, key: str) -> UploadTarget:
        if self.mode is UploadMode.RELAY:
            return UploadTarget(key, CAPTURE_OBJECTS_PATH + quote(key, safe="/"))
        [target] = self.grant([key]).uploads
        if target.key != key:
            raise Unavailable(f"the control plane answered an upload URL for {target.key!r}, not {key!r}")
        return target

    def _put(self, target: UploadTarget, data: bytes) -> httpx.Response:
        headers = dict(target.headers)
        if target.relayed:
            return self._mtls(
                target.method, target.url, f"uploading {target.key}", content=data, headers=headers
            )
        return self._send(
            self._plain, target.method, target.url, f"uploading {target.key}", content=data, headers=headers
        )

    def _refused(self, response: httpx.Response, target: UploadTarget) -> None:
        what = f"uploading capture object {target.key!r}"
        if target.relayed:
            raise error_from_http(response.status_code, response.content, what)
        detail = response.text[:300]
        if response.status_code == 403:
            raise PermissionDenied(f"{what}: the store refused a fresh presigned URL: {detail}")
        raise Unavailable(f"{what}: the store answered {response.status_code}: {detail}")

    def _unsupported(self) -> FailedPrecondition:
        return FailedPrecondition(
            "capture objects uploaded through the control plane cannot be read, listed or deleted from the device"
        )

    def open_range(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        raise self._unsupported()

    def size(self, key: str) -> int:
        raise self._unsupported()

    def list(self, prefix: str = "") -> list[str]:
        raise self._unsupported()

    def delete(self, key: str) -> None:
        raise self._unsupported()

    def close(self) -> None:
        """Close the connections."""
        self._plain.close()
        self._reset_device()


__all__ = ["ControlPlaneStore", "DeviceEndpoint", "UploadMode"]
