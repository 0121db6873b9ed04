"""The device's identity: its private key (made here, never leaves the device), its client
certificate from the fleet CA, the CA certificate and the server's addresses.

Files under ``<state_dir>/identity/`` (directory mode 0700):

- ``device.key`` — EC P-256 private key, PKCS#8 PEM, mode 0600;
- ``device.crt`` — the client certificate the fleet CA issued at enrolment;
- ``ca.crt`` — the fleet CA certificate (trust anchor for the server's TLS certificate);
- ``server-ca.crt`` — only when the server presents an operator-supplied certificate: its CA;
- ``identity.json`` — device name, fleet, server and device endpoint URLs; written last, so its
  presence means the enrolment completed;
- ``renewal.key`` / ``renewal.crt`` — only while a certificate renewal is in progress: the new key
  and the certificate the fleet CA issued for it (see :mod:`edgefleet.device.renewal`).

A renewal replaces ``device.key`` then ``device.crt`` by renaming the renewal files over them
(each rename atomic and fsynced). A crash between the two renames leaves ``renewal.crt`` alone,
which :func:`load_identity` installs; a crash while the renewal files are written leaves
``renewal.key`` alone, which it removes. So the device always has a key and a certificate that
belong together, and the current pair stays in use until the new one is installed.
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
from edgefleet.core.files import (
    fsync_dir,
    move_atomic,
    private_dir,
    read_json,
    write_bytes_atomic,
    write_json_atomic,
)

log = logging.getLogger(__name__)

IDENTITY_DIR = "identity"
KEY_FILE = "device.key"
CERT_FILE = "device.crt"
CA_FILE = "ca.crt"
SERVER_CA_FILE = "server-ca.crt"
IDENTITY_FILE = "identity.json"
RENEWAL_KEY_FILE = "renewal.key"
RENEWAL_CERT_FILE = "renewal.crt"

_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")

#: how a device whose certificate can no longer be used gets a new one (docs/device-daemon.md §1)
REENROL_HINT = (
    "enrol the device again: an operator runs `edgefleet device new-token DEVICE`, then on the device "
    "`edgefleet device enroll --force --server URL --token TOKEN --config FILE`"
)


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
    def renewal_key_path(self) -> Path:
        """The new key of a renewal in progress."""
        return self.directory / RENEWAL_KEY_FILE

    @property
    def renewal_cert_path(self) -> Path:
        """The renewed certificate of a renewal in progress."""
        return self.directory / RENEWAL_CERT_FILE

    @property
    def server_ca_path(self) -> Path | None:
        """The CA of an operator-supplied server certificate, if enrolment was given one."""
        path = self.directory / SERVER_CA_FILE
        return path if path.is_file() else None


@dataclass(frozen=True)
class CertificateValidity:
    """When a device certificate is valid, read from the certificate itself."""

    serial: str
    not_before: datetime
    not_after: datetime

    def renew_from(self, fraction: float) -> datetime:
        """The time ``fraction`` of the certificate's lifetime has passed (when renewal is due)."""
        return self.not_before + (self.not_after - self.not_before) * fraction

    def expired(self, now: datetime) -> bool:
        """Whether the certificate is past its end at ``now``."""
        return now >= self.not_after


def certificate_validity(path: Path) -> CertificateValidity:
    """The validity of the PEM certificate in ``path``; FAILED_PRECONDITION if it is unreadable."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(f"cannot read the device certificate {path}: {exc}; enrol again") from exc
    return CertificateValidity(
        format(cert.serial_number, "x"), cert.not_valid_before_utc, cert.not_valid_after_utc
    )


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
    # a renewal of the identity being replaced must not be installed over the new one
    (directory / RENEWAL_CERT_FILE).unlink(missing_ok=True)
    (directory / RENEWAL_KEY_FILE).unlink(missing_ok=True)
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


def store_renewal(identity: Identity, key: ec.EllipticCurvePrivateKey, cert_pem: str) -> None:
    """Put a renewed certificate and its new key on disk beside the current pair (still the one in
    use): the key first, then the certificate, each written atomically and fsynced."""
    cert = _check_certificate(cert_pem, key)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or names[0].value != identity.device_name:
        raise EdgefleetError(f"the renewed certificate is not for device {identity.device_name!r}")
    write_bytes_atomic(identity.renewal_key_path, key_pem(key), mode=0o600)
    write_bytes_atomic(identity.renewal_cert_path, cert_pem.encode(), mode=0o644)


def has_renewal(identity: Identity) -> bool:
    """Whether a renewed key and certificate wait on disk to be confirmed and installed."""
    return identity.renewal_key_path.is_file() and identity.renewal_cert_path.is_file()


def install_renewal(identity: Identity) -> None:
    """Make the renewed pair the current one: rename the key, then the certificate, over the old ones."""
    move_atomic(identity.renewal_key_path, identity.key_path)
    move_atomic(identity.renewal_cert_path, identity.cert_path)


def discard_renewal(identity: Identity) -> None:
    """Forget a renewal (the server refused its certificate): the current pair stays."""
    try:
        identity.renewal_cert_path.unlink(missing_ok=True)
        identity.renewal_key_path.unlink(missing_ok=True)
    except OSError as exc:
        raise EdgefleetError(f"cannot remove the renewal files in {identity.directory}: {exc}") from exc
    fsync_dir(identity.directory)


def _finish_renewal(directory: Path) -> None:
    """Settle what a crash in the middle of a renewal left behind (see the module doc)."""
    key_file, cert_file = directory / RENEWAL_KEY_FILE, directory / RENEWAL_CERT_FILE
    if cert_file.is_file() and not key_file.exists():
        # the new key is installed already, its certificate not yet: finish the install
        try:
            key = serialization.load_pem_private_key((directory / KEY_FILE).read_bytes(), password=None)
            cert_pem = cert_file.read_text("ascii")
        except (OSError, ValueError) as exc:
            raise FailedPrecondition(f"cannot finish the renewal in {directory}: {exc}; enrol again") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise FailedPrecondition(f"{directory / KEY_FILE} is not an EC key; enrol again")
        _check_certificate(cert_pem, key)
        move_atomic(cert_file, directory / CERT_FILE)
        log.warning("finished installing the renewed device certificate (interrupted by a crash)")
    elif key_file.is_file() and not cert_file.exists():
        # the certificate never reached the disk: the current pair is still the one the server accepts
        try:
            key_file.unlink()
        except OSError as exc:
            raise EdgefleetError(f"cannot remove {key_file}: {exc}") from exc
        fsync_dir(directory)
        log.warning("removed the key of an unfinished certificate renewal; the current certificate stays")


def _check_certificate(cert_pem: str, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
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
    return cert


def load_identity(state_dir: Path) -> Identity:
    """The stored identity; NOT_FOUND if the device has not been enrolled.

    A renewal that a crash interrupted is settled first (see the module doc).
    """
    directory = identity_dir(state_dir)
    raw = read_json(directory / IDENTITY_FILE)
    if raw is None:
        raise NotFound(
            f"this device is not enrolled (no {directory / IDENTITY_FILE}); run `edgefleet device enroll`"
        )
    _finish_renewal(directory)
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
