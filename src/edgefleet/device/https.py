"""The control plane over HTTPS with mutual TLS, on httpx (the operator client's HTTP stack too).

Endpoints (docs/fleet-api.md): enrolment on the server's main port, ``GET /enrol/v1/ca.pem`` and
``POST /enrol/v1/enrol``; the device data plane on the device endpoint handed out at enrolment,
``POST /device/v1/<Operation>`` with ``DeviceName``/``DeviceFleetName`` in every body and
``GET /device/v1/packages/<id>`` with HTTP Range. Errors come back as
``{"error": {"code": CODE, "message": ...}}`` and are raised as that code's class
(:func:`~edgefleet.core.errors.error_from_http`); a server that cannot be reached (refused, reset,
timed out, a proxy's 502/503/504) is ``UNAVAILABLE``.
"""

from __future__ import annotations

import functools
import json
import logging
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from edgefleet import __version__
from edgefleet.core.deviceplane import (
    Deployment,
    DeploymentResult,
    HealthReport,
    HealthVerdict,
    Heartbeat,
    PackageRef,
    Registration,
)
from edgefleet.core.errors import (
    EdgefleetError,
    FailedPrecondition,
    InvalidArgument,
    Unauthenticated,
    Unavailable,
    error_from_http,
)
from edgefleet.device.identity import (
    REENROL_HINT,
    Enroller,
    Enrolment,
    EnrolmentToken,
    Identity,
    ca_fingerprint,
    certificate_validity,
)
from edgefleet.device.protocol import PackageBody

log = logging.getLogger(__name__)

ENROL_CA_PATH = "/enrol/v1/ca.pem"
ENROL_PATH = "/enrol/v1/enrol"
DEVICE_PREFIX = "/device/v1/"
USER_AGENT = f"edgefleet-device/{__version__}"

_E = TypeVar("_E", bound=BaseException)
#: the default clock of expiry checks (injected by tests)
_CLOCK: Callable[[], datetime] = functools.partial(datetime.now, UTC)


def _base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise InvalidArgument(f"server URL {url!r} must be https://host[:port]")
    return urlunsplit(("https", parts.netloc, parts.path.rstrip("/"), "", ""))


class _Connection:
    """One keep-alive HTTPS connection, re-opened when it breaks (one request at a time)."""

    def __init__(
        self,
        url: str,
        context: ssl.SSLContext,
        timeout: float,
        *,
        certificate_problem: Callable[[], str | None] | None = None,
    ) -> None:
        self.base = _base_url(url)
        self.url = url
        self.context = context
        self._timeout = timeout
        #: what is wrong with the client certificate presented (e.g. it expired), if anything
        self._certificate_problem = certificate_problem
        self._client: httpx.Client | None = None
        self.lock = threading.Lock()

    def reset(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def request(
        self,
        method: str,
        path: str,
        what: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send a request; the answer's body is still to be read (and the answer closed)."""
        all_headers = {"Accept": "application/json", **(headers or {})}
        if body is not None:
            all_headers["Content-Type"] = "application/json"
        # a kept-alive connection the server closed meanwhile fails on first use: retry once on a fresh one
        for attempt in (1, 2):
            fresh = self._client is None
            if self._client is None:
                self._client = httpx.Client(
                    verify=self.context,
                    timeout=self._timeout,
                    limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                    # the wire as before: no compression, and no proxy or CA settings from the environment
                    headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
                    trust_env=False,
                )
            request = self._client.build_request(method, self.base + path, content=body, headers=all_headers)
            try:
                return self._client.send(request, stream=True)
            except httpx.TransportError as exc:
                self.reset()
                cause = _under(exc, ssl.SSLError)
                if isinstance(cause, ssl.SSLCertVerificationError):
                    raise FailedPrecondition(
                        f"{what}: the server's TLS certificate is not trusted ({cause.verify_message})"
                    ) from exc
                refused = _refused_certificate(cause)
                if refused is None and self._certificate_problem is not None:
                    # a server refusing an expired client certificate under TLS 1.3 often just
                    # closes the connection: that is a refusal, not an outage, when ours has expired
                    refused = self._certificate_problem()
                if refused is not None:
                    raise Unauthenticated(f"{what}: {refused}") from exc
                # disconnected before an answer (or a garbled one), reset, broken pipe: a stale connection
                stale = isinstance(exc, httpx.RemoteProtocolError) or bool(
                    _under(exc, ConnectionResetError) or _under(exc, BrokenPipeError)
                )
                if attempt == 1 and not fresh and stale:
                    continue
                raise Unavailable(f"{what}: cannot reach {self.url}: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def fetch(self, method: str, path: str, payload: Any | None, what: str) -> bytes:
        """The whole answer to a request whose body (if any) is ``payload`` as JSON; a refusal raises."""
        body = None if payload is None else json.dumps(payload).encode("utf-8")
        with self.lock:
            response = self.request(method, path, what, body)
            data = self.read(response, what)
            if response.headers.get("Connection", "").lower() == "close":
                self.reset()
        if response.status_code >= 300:
            raise error_from_http(response.status_code, data, what)
        return data

    def read(self, response: httpx.Response, what: str) -> bytes:
        """The whole body of ``response``, which is closed."""
        try:
            return response.read()
        except httpx.TransportError as exc:
            self.reset()
            raise Unavailable(f"{what}: connection lost while reading the answer: {exc}") from exc
        finally:
            response.close()

    def call_json(self, method: str, path: str, payload: Any | None, what: str) -> Any:
        data = self.fetch(method, path, payload, what)
        if not data:
            return {}
        try:
            return json.loads(data)
        except ValueError as exc:
            raise EdgefleetError(f"{what}: the server's answer is not JSON: {data[:200]!r}") from exc

    def close(self) -> None:
        with self.lock:
            self.reset()


#: TLS alerts by which a server refuses the client certificate (OpenSSL reason -> what it means)
_CERTIFICATE_ALERTS = {
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the server refused this device's certificate: it has expired",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "the server refused this device's certificate: it is revoked",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the server refused this device's certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the server refused this device's certificate",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "the server refused this device's certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the server does not know the CA of this device's certificate (another fleet?)",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a device certificate",
}


def _under(exc: BaseException, kind: type[_E]) -> _E | None:
    """The first ``kind`` error in the causes of ``exc`` (httpx wraps httpcore's, which wraps the OS's)."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, kind):
        seen = seen.__cause__ or seen.__context__
    return seen


def _refused_certificate(exc: ssl.SSLError | None) -> str | None:
    """What a TLS alert refusing the client certificate means, with the way out; None for others.

    Such a refusal is not an outage: the device would wait for a server that never accepts it.
    """
    if exc is None:
        return None
    meaning = _CERTIFICATE_ALERTS.get(str(exc.reason or ""))
    if meaning is None:
        return None
    return f"{meaning} ({exc.reason}); {REENROL_HINT}"


# ---------------------------------------------------------------------------------------------
# enrolment


def fetch_ca(server_url: str, timeout: float = 30.0) -> str:
    """The fleet CA certificate (PEM), fetched WITHOUT verifying TLS: check it against a pin before use."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = _Connection(server_url, context, timeout)
    try:
        return connection.fetch("GET", ENROL_CA_PATH, None, "fetching the fleet CA").decode(
            "ascii", "replace"
        )
    finally:
        connection.close()


def enroller(
    server_ca_file: str | None = None, timeout: float = 30.0, *, known_ca: str | None = None
) -> Enroller:
    """An :data:`~edgefleet.device.identity.Enroller` speaking to the real server.

    The fleet CA is fetched unverified (or ``known_ca`` is used) and checked against the fingerprint
    the token pins; the token and CSR then travel over TLS verified with that CA (or with
    ``server_ca_file`` when the server presents an operator-supplied certificate).
    """

    def enrol(server_url: str, token: EnrolmentToken, csr_pem: str) -> Enrolment:
        ca_pem = known_ca or fetch_ca(server_url, timeout)
        if token.ca_fingerprint is None:
            raise InvalidArgument(
                "this enrolment token pins no CA fingerprint (expected efe1.<secret>.<ca-sha256>)"
            )
        if ca_fingerprint(ca_pem) != token.ca_fingerprint:
            raise FailedPrecondition(
                f"the CA served by {server_url} is not the one the enrolment token pins (wrong server, "
                "or someone in the middle)"
            )
        context = ssl.create_default_context(cadata=ca_pem)
        server_ca_pem = None
        if server_ca_file:
            try:
                server_ca_pem = Path(server_ca_file).read_text("ascii")
                context.load_verify_locations(cadata=server_ca_pem)
            except (OSError, ValueError, ssl.SSLError) as exc:
                raise InvalidArgument(f"cannot use {server_ca_file} as the server's CA: {exc}") from exc
        connection = _Connection(server_url, context, timeout)
        try:
            answer = connection.call_json(
                "POST",
                ENROL_PATH,
                {"EnrolmentToken": token.text, "CertificateSigningRequest": csr_pem},
                "enrolment",
            )
        finally:
            connection.close()
        try:
            chain = answer.get("CertificateChain") or [ca_pem]
            return Enrolment(
                device_name=str(answer["DeviceName"]),
                fleet_name=str(answer["DeviceFleetName"]),
                cert_pem=str(answer["Certificate"]),
                ca_pem=str(chain[-1]),
                device_url=str(answer.get("DeviceEndpoint") or server_url),
                server_ca_pem=server_ca_pem,
            )
        except (KeyError, TypeError, IndexError) as exc:
            raise EdgefleetError(f"the enrolment answer lacks {exc}: {answer}") from exc

    return enrol


# ---------------------------------------------------------------------------------------------
# the device data plane


def device_context(
    identity: Identity, *, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A TLS context that presents the device certificate (or ``cert``/``key``, a renewed pair) and
    trusts the fleet CA (and the server certificate's CA given at enrolment, if any)."""
    try:
        context = ssl.create_default_context(cafile=str(identity.ca_path))
        if identity.server_ca_path is not None:
            context.load_verify_locations(cafile=str(identity.server_ca_path))
        context.load_cert_chain(str(cert or identity.cert_path), str(key or identity.key_path))
    except (OSError, ssl.SSLError) as exc:
        raise FailedPrecondition(f"cannot load the device identity in {identity.directory}: {exc}") from exc
    return context


class _PackageBody:
    """A package download in progress (see :class:`~edgefleet.device.protocol.PackageBody`)."""

    def __init__(
        self, connection: _Connection, response: httpx.Response, offset: int, total: int | None, what: str
    ) -> None:
        self._connection = connection
        self._response = response
        self._what = what
        self.offset = offset
        self.total = total

    def chunks(self, size: int) -> Iterator[bytes]:
        try:
            yield from self._response.iter_raw(size)
        except httpx.TransportError as exc:
            self._connection.reset()
            raise Unavailable(f"{self._what}: connection lost while downloading: {exc}") from exc

    def close(self) -> None:
        try:
            self._response.close()
            # downloads are rare: do not keep a second connection per device open between them
            self._connection.reset()
        finally:
            self._connection.lock.release()


class HttpsControlPlane:
    """The real control plane: the device endpoint over mutual TLS with the enrolled identity.

    Safe to share between threads (one request at a time per instance; a download holds the
    connection until its body is closed, so downloads use their own instance's connection).
    """

    def __init__(
        self,
        identity: Identity,
        *,
        url: str | None = None,
        timeout: float = 30.0,
        context: ssl.SSLContext | None = None,
        now: Callable[[], datetime] = _CLOCK,
    ) -> None:
        self.identity = identity
        self.url = url or identity.device_url
        self._now = now
        context = context or device_context(identity)
        self._presented = identity.cert_path
        self._api = _Connection(self.url, context, timeout, certificate_problem=self._expired)
        self._downloads = _Connection(self.url, context, timeout, certificate_problem=self._expired)
        self._ref = {"DeviceName": identity.device_name, "DeviceFleetName": identity.fleet_name}

    def _call(self, operation: str, payload: Mapping[str, Any]) -> Any:
        return self._api.call_json("POST", DEVICE_PREFIX + operation, {**self._ref, **payload}, operation)

    def get_registration(self) -> Registration:
        return Registration.from_wire(self._call("GetDeviceRegistration", {}))

    def send_heartbeat(self, heartbeat: Heartbeat) -> None:
        self._call("SendHeartbeat", heartbeat.to_wire())

    def get_deployments(self) -> list[Deployment]:
        answer = self._call("GetDeployments", {})
        return [Deployment.from_wire(item) for item in answer.get("Deployments") or []]

    def report_result(self, result: DeploymentResult) -> None:
        self._call("ReportDeploymentResult", {"DeploymentResult": result.to_wire()})

    def report_health(self, report: HealthReport) -> HealthVerdict:
        return HealthVerdict.from_wire(self._call("ReportDeploymentHealth", report.to_wire()))

    def renew_certificate(self, csr_pem: str) -> str:
        """A certificate (PEM) for the new key of ``csr_pem``, asked for with the current one (*extension*)."""
        answer = self._call("RenewCertificate", {"CertificateSigningRequest": csr_pem})
        try:
            return str(answer["Certificate"])
        except (KeyError, TypeError) as exc:
            raise EdgefleetError(f"the RenewCertificate answer lacks {exc}: {answer}") from exc

    def use_certificate(self, cert: Path | None = None, key: Path | None = None) -> None:
        """Present ``cert``/``key`` (default: the identity's current pair, read again) from the next
        request on; open connections are closed, since TLS fixes the certificate per connection."""
        context = device_context(self.identity, cert=cert, key=key)
        self._presented = cert or self.identity.cert_path
        for connection in (self._api, self._downloads):
            with connection.lock:
                connection.reset()
                connection.context = context

    def _expired(self) -> str | None:
        """Why the server refuses the certificate presented, if it has expired (else None)."""
        try:
            validity = certificate_validity(self._presented)
        except EdgefleetError:
            return None
        if not validity.expired(self._now()):
            return None
        return (
            f"the server refused this device's certificate: it expired at "
            f"{validity.not_after.isoformat()}; {REENROL_HINT}"
        )

    def open_package(self, package: PackageRef, offset: int = 0) -> PackageBody:
        path = package.url
        if "://" in path:
            if not urljoin(self.url + "/", path).startswith(self.url):
                raise InvalidArgument(f"package URL {path} is not on the device endpoint {self.url}")
            path = urlsplit(path).path
        headers = {"Accept": "application/octet-stream"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if package.sha256:
                headers["If-Range"] = f'"{package.sha256}"'
        what = f"downloading {path}"
        self._downloads.lock.acquire()
        try:
            response = self._downloads.request("GET", path, what, headers=headers)
            if response.status_code >= 300:
                raise error_from_http(response.status_code, self._downloads.read(response, what), what)
            start = 0
            length = response.headers.get("Content-Length")  # digits only: h11 refuses anything else
            total = None if length is None else int(length)
            if response.status_code == 206:
                start, total = _content_range(response.headers.get("Content-Range"), what)
            return _PackageBody(self._downloads, response, start, total, what)
        except BaseException:
            self._downloads.lock.release()
            raise

    def close(self) -> None:
        self._api.close()
        self._downloads.close()


def _content_range(value: str | None, what: str) -> tuple[int, int | None]:
    """(start, total) of ``Content-Range: bytes START-END/TOTAL``."""
    try:
        unit, _, spec = (value or "").partition(" ")
        span, _, total = spec.partition("/")
        start = int(span.split("-", 1)[0])
        if unit != "bytes":
            raise ValueError(unit)
        return start, None if total == "*" else int(total)
    except ValueError as exc:
        raise EdgefleetError(f"{what}: malformed Content-Range {value!r}") from exc
