"""The fleet certificate authority: device client certificates and the servers' TLS certificates.

The CA key and certificate live in the database (one row) so that every replica signs with the same
CA; the first replica to start creates them. Device certificates carry the device name as subject
CN and as a ``urn:edgefleet:device:<name>`` URI SAN, and are only good for client authentication.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from edgefleet.core.errors import InvalidArgument
from edgefleet.server.db.engine import Database
from edgefleet.server.db.schema import CertificateAuthority

log = logging.getLogger(__name__)

DEVICE_URI_PREFIX = "urn:edgefleet:device:"
_CA_DAYS = 3650
_SERVER_CERT_DAYS = 397
_MIN_RSA_BITS = 2048

IssuingKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate issued to a device."""

    cert_pem: str
    serial: str
    not_after: datetime


def fingerprint(cert_pem: str | bytes) -> str:
    """SHA-256 (hex) of a PEM certificate's DER encoding: what enrolment tokens pin."""
    data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    cert = x509.load_pem_x509_certificate(data)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def serial_hex(cert: x509.Certificate) -> str:
    """A certificate's serial number as lower-case hex (how serials are stored and compared)."""
    return format(cert.serial_number, "x")


class FleetCA:
    """Signs device and server certificates with the fleet CA key."""

    def __init__(self, cert_pem: str, key_pem: str) -> None:
        self.cert_pem = cert_pem
        self.cert = x509.load_pem_x509_certificate(cert_pem.encode())
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidArgument("the fleet CA key must be an EC key")
        self._key: IssuingKey = key

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the CA certificate (hex)."""
        return fingerprint(self.cert_pem)

    @classmethod
    def load_or_create(cls, db: Database, common_name: str = "edgefleet fleet CA") -> FleetCA:
        """The CA stored in ``db``, creating it on first use (races between replicas are settled by the PK)."""
        with db.session() as session:
            row = session.get(CertificateAuthority, 1)
            if row is not None:
                return cls(row.cert_pem, row.key_pem)
        cert_pem, key_pem = _new_ca(common_name, db.now())
        try:
            with db.engine.begin() as connection, Session(connection) as session:
                session.add(
                    CertificateAuthority(id=1, cert_pem=cert_pem, key_pem=key_pem, created_at=db.now())
                )
                session.flush()
            log.info("created the fleet CA")
        except IntegrityError:
            log.info("another replica created the fleet CA first; using it")
        with db.session() as session:
            stored = session.scalar(select(CertificateAuthority).where(CertificateAuthority.id == 1))
            assert stored is not None
            return cls(stored.cert_pem, stored.key_pem)

    def issue_device_certificate(
        self, csr_pem: str, device_name: str, now: datetime, days: int
    ) -> IssuedCertificate:
        """Sign a device's CSR. The subject is set by the CA (CN = device name), never taken from the CSR."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise InvalidArgument(f"the CSR is not a valid PEM certificate signing request: {exc}") from exc
        try:
            valid = csr.is_signature_valid
        except (InvalidSignature, UnsupportedAlgorithm) as exc:
            raise InvalidArgument(f"the CSR's signature cannot be checked: {exc}") from exc
        if not valid:
            raise InvalidArgument("the CSR's signature does not verify (proof of key possession failed)")
        public_key = csr.public_key()
        if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size < _MIN_RSA_BITS:
            raise InvalidArgument(f"RSA keys need at least {_MIN_RSA_BITS} bits")
        if not isinstance(
            public_key,
            ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey,
        ):
            raise InvalidArgument("the CSR's key type is not supported (use EC P-256, Ed25519 or RSA)")
        not_after = now + timedelta(days=days)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_name)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(_serial())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(DEVICE_URI_PREFIX + device_name)]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        cert = builder.sign(self._key, hashes.SHA256())
        return IssuedCertificate(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            serial=serial_hex(cert),
            not_after=not_after,
        )

    def issue_server_certificate(self, names: list[str], now: datetime) -> tuple[str, str]:
        """A fresh key and a TLS server certificate for ``names`` (DNS names or IP addresses): (cert, key) PEM."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for name in dict.fromkeys(names):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "edgefleet")])
            )
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(_serial())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=_SERVER_CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def check_new_key(csr_pem: str, cert_pem: str) -> None:
    """INVALID_ARGUMENT if the CSR is for the key of ``cert_pem`` (a renewal needs a new key)."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        requested = csr.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidArgument(f"the CSR is not a valid PEM certificate signing request: {exc}") from exc
    current = (
        x509.load_pem_x509_certificate(cert_pem.encode())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    if requested == current:
        raise InvalidArgument("a renewal needs a new key: the CSR is for the key of the current certificate")


def device_name_from_certificate(cert_der: bytes) -> tuple[str, str]:
    """(device name, serial hex) from a verified client certificate issued by :class:`FleetCA`."""
    cert = x509.load_der_x509_certificate(cert_der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = [
            u
            for u in san.get_values_for_type(x509.UniformResourceIdentifier)
            if u.startswith(DEVICE_URI_PREFIX)
        ]
    except x509.ExtensionNotFound:
        uris = []
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    if len(uris) != 1 or uris[0][len(DEVICE_URI_PREFIX) :] != cn:
        raise InvalidArgument("the client certificate is not an edgefleet device certificate")
    return cn, serial_hex(cert)


def _serial() -> int:
    # RFC 5280: positive, at most 20 octets; 159 random bits keeps it positive and unique.
    return secrets.randbits(159) | 1


def _new_ca(common_name: str, now: datetime) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem
