"""The device's identity: its private key (made here, never leaves the device), its client
certificate from the fleet CA, the CA certificate and the server's addresses.

Files under ``<state_dir>/identity/`` (directory mode 0700):

- ``device.key`` — EC P-256 private key, PKCS#8 PEM, mode 0600;
- ``device.crt`` — the client certificate the fleet CA issued at enrolment;
- ``ca.crt`` — the fleet CA certificate (trust anchor for the server's TLS certificate);
- ``server-ca.crt`` — only when the server presents an operator-supplied certificate: its CA;
- ``identity.json`` — device name, fleet, server and device endpoint URLs; written last, so its
  presence means the enrolment completed.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgefleet.core.errors import AlreadyExists, EdgefleetError, FailedPrecondition, InvalidArgument, NotFound
from edgefleet.device.durable import private_dir, read_json, write_bytes_atomic, write_json_atomic

log = logging.getLogger(__name__)

IDENTITY_DIR = "identity"
KEY_FILE = "device.key"
CERT_FILE = "device.crt"
CA_FILE = "ca.crt"
SERVER_CA_FILE = "server-ca.crt"
IDENTITY_FILE = "identity.json"

_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class EnrolmentToken:
    """A one-time enrolment token and the fleet-CA fingerprint it pins (``efe1.<secret>.<ca-sha256>``)."""

    text: str
    ca_fingerprint: str | None

    @classmethod
    def parse(cls, text: str) -> EnrolmentToken:
        """Read a token; INVALID_ARGUMENT if it is empty or malformed."""
        text = text.strip()
        if not text:
            raise InvalidArgument("the enrolment token is empty")
        parts = text.split(".")
        if len(parts) == 3 and parts[0] == "efe1":
            if not parts[1] or not _FINGERPRINT.match(parts[2].lower()):
                raise InvalidArgument("malformed enrolment token (expected efe1.<secret>.<ca-sha256>)")
            return cls(text, parts[2].lower())
        if "." in text:
            raise InvalidArgument("malformed enrolment token (expected efe1.<secret>.<ca-sha256>)")
        return cls(text, None)


@dataclass(frozen=True)
class Enrolment:
    """What the server answers to a successful enrolment."""

    device_name: str
    fleet_name: str
    cert_pem: str
    ca_pem: str
    #: the device (mutual TLS) endpoint
    device_url: str
    #: CA of an operator-supplied server certificate, when the server does not use the fleet CA's
    server_ca_pem: str | None = None


#: ``(server_url, token, csr_pem) -> Enrolment``: the transport of one enrolment.
Enroller = Callable[[str, EnrolmentToken, str], Enrolment]


@dataclass(frozen=True)
class Identity:
    """A completed enrolment as stored on disk."""

    directory: Path
    device_name: str
    fleet_name: str
    server_url: str
    device_url: str
    enrolled_at: datetime

    @property
    def key_path(self) -> Path:
        """The private key file."""
        return self.directory / KEY_FILE

    @property
    def cert_path(self) -> Path:
        """The client certificate file."""
        return self.directory / CERT_FILE

    @property
    def ca_path(self) -> Path:
        """The fleet CA certificate file."""
        return self.directory / CA_FILE

    @property
    def server_ca_path(self) -> Path | None:
        """The CA of an operator-supplied server certificate, if enrolment was given one."""
        path = self.directory / SERVER_CA_FILE
        return path if path.is_file() else None


def ca_fingerprint(ca_pem: str | bytes) -> str:
    """SHA-256 (hex) of a PEM certificate's DER encoding (what enrolment tokens pin)."""
    data = ca_pem.encode() if isinstance(ca_pem, str) else ca_pem
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise InvalidArgument(f"not a PEM certificate: {exc}") from exc
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-256 device key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM of ``key`` (unencrypted: the file's mode protects it)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str = "edgefleet-device") -> str:
    """A PEM certificate signing request for ``key`` (the CA sets the real subject)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def identity_dir(state_dir: Path) -> Path:
    """Where the identity files of a daemon with ``state_dir`` live."""
    return state_dir / IDENTITY_DIR


def enroll(
    state_dir: Path,
    server_url: str,
    token: str,
    enroller: Enroller,
    *,
    force: bool = False,
    now: datetime | None = None,
) -> Identity:
    """Enrol this device: make a key, send a CSR with the one-time token, store what comes back.

    ALREADY_EXISTS if the device is enrolled already (``force`` replaces the identity; the server
    revokes the old certificate). Nothing is written unless the enrolment succeeded; the key file
    is written with mode 0600 inside a 0700 directory.
    """
    parsed = EnrolmentToken.parse(token)
    directory = identity_dir(state_dir)
    if (directory / IDENTITY_FILE).exists() and not force:
        raise AlreadyExists(
            f"this device is enrolled already ({directory}); pass --force to enrol again with a new key"
        )
    key = new_key()
    enrolment = enroller(server_url, parsed, make_csr(key))
    if parsed.ca_fingerprint is not None and ca_fingerprint(enrolment.ca_pem) != parsed.ca_fingerprint:
        raise FailedPrecondition("the server's CA is not the one the enrolment token pins (wrong server?)")
    _check_certificate(enrolment.cert_pem, key)
    private_dir(directory)
    # the marker file goes last: a crash before it leaves an incomplete, ignored identity
    (directory / IDENTITY_FILE).unlink(missing_ok=True)
    write_bytes_atomic(directory / KEY_FILE, key_pem(key), mode=0o600)
    write_bytes_atomic(directory / CERT_FILE, enrolment.cert_pem.encode(), mode=0o644)
    write_bytes_atomic(directory / CA_FILE, enrolment.ca_pem.encode(), mode=0o644)
    if enrolment.server_ca_pem:
        write_bytes_atomic(directory / SERVER_CA_FILE, enrolment.server_ca_pem.encode(), mode=0o644)
    else:
        (directory / SERVER_CA_FILE).unlink(missing_ok=True)
    enrolled_at = now or datetime.now(UTC)
    write_json_atomic(
        directory / IDENTITY_FILE,
        {
            "device_name": enrolment.device_name,
            "fleet_name": enrolment.fleet_name,
            "server_url": server_url,
            "device_url": enrolment.device_url,
            "enrolled_at": enrolled_at.isoformat(),
        },
        mode=0o644,
    )
    log.info("enrolled as device %s of fleet %s", enrolment.device_name, enrolment.fleet_name)
    return load_identity(state_dir)


def _check_certificate(cert_pem: str, key: ec.EllipticCurvePrivateKey) -> None:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError as exc:
        raise EdgefleetError(f"the server sent an unreadable certificate: {exc}") from exc
    mine = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if mine != theirs:
        raise EdgefleetError("the server's certificate is not for this device's key")


def load_identity(state_dir: Path) -> Identity:
    """The stored identity; NOT_FOUND if the device has not been enrolled."""
    directory = identity_dir(state_dir)
    raw = read_json(directory / IDENTITY_FILE)
    if raw is None:
        raise NotFound(
            f"this device is not enrolled (no {directory / IDENTITY_FILE}); run `edgefleet device enroll`"
        )
    try:
        identity = Identity(
            directory=directory,
            device_name=str(raw["device_name"]),
            fleet_name=str(raw["fleet_name"]),
            server_url=str(raw["server_url"]),
            device_url=str(raw["device_url"]),
            enrolled_at=datetime.fromisoformat(str(raw["enrolled_at"])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise FailedPrecondition(f"{directory / IDENTITY_FILE} is damaged: {exc}") from exc
    for path in (identity.key_path, identity.cert_path, identity.ca_path):
        if not path.is_file():
            raise FailedPrecondition(f"the identity is incomplete: {path} is missing; enrol again")
    if identity.key_path.stat().st_mode & 0o077:
        raise FailedPrecondition(f"{identity.key_path} is readable by others; chmod 600 it")
    return identity
