"""A server (or a TLS-terminating proxy) that refuses the device certificate with a TLS alert: the
daemon's client reports UNAUTHENTICATED with the reason and the way to enrol again, not an outage."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgefleet.core.errors import Unauthenticated
from edgefleet.device.https import HttpsControlPlane
from edgefleet.device.identity import Identity, key_pem

NOW = datetime.now(UTC)


def _certificate(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[ec.EllipticCurvePrivateKey, x509.Name] | None,
    start: datetime,
    end: datetime,
    *,
    ca: bool = False,
    ip: str | None = None,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer, issuer_name = issuer or (key, subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _drain(conn: socket.socket) -> None:
    conn.settimeout(10)
    try:
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass
    except OSError:
        pass  # the client is gone already


@pytest.fixture
def refusing_server(tmp_path: Path) -> Iterator[Identity]:
    """A plain OpenSSL TLS server that requires client certificates, and a device whose
    certificate expired yesterday (by real time)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("ca", ca_key, None, NOW - timedelta(days=10), NOW + timedelta(days=10), ca=True)
    issuer = (ca_key, ca.subject)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate(
        "server", server_key, issuer, NOW - timedelta(days=1), NOW + timedelta(days=1), ip="127.0.0.1"
    )
    device_key = ec.generate_private_key(ec.SECP256R1())
    device = _certificate("cam-1", device_key, issuer, NOW - timedelta(days=4), NOW - timedelta(days=1))
    (tmp_path / "ca.crt").write_bytes(_pem(ca))
    (tmp_path / "server.pem").write_bytes(_pem(server))
    (tmp_path / "server.key").write_bytes(key_pem(server_key))
    (tmp_path / "device.crt").write_bytes(_pem(device))
    (tmp_path / "device.key").write_bytes(key_pem(device_key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    context.load_verify_locations(tmp_path / "ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # the listener was closed: the test is over
            raw = conn.dup()  # wrap_socket takes over (and, failing, closes) conn's descriptor
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1024)
            except (OSError, ssl.SSLError):
                # The handshake refused the certificate and sent the alert. Read what the client
                # sent meanwhile before closing: closing with unread data resets the connection,
                # and a reset can overtake the alert.
                _drain(raw)
            finally:
                raw.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    identity = Identity(tmp_path, "cam-1", "line-1", "https://unused", f"https://127.0.0.1:{port}", NOW)
    try:
        yield identity
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (closing alone does not)
        listener.close()
        thread.join(10)


def test_a_tls_alert_refusing_the_certificate_is_unauthenticated(
    refusing_server: Identity,
) -> None:
    identity = refusing_server
    # the device's clock still believes the certificate valid: only the server's alert tells
    plane = HttpsControlPlane(identity, timeout=10, now=lambda: NOW - timedelta(days=2))
    try:
        with pytest.raises(
            Unauthenticated,
            match=r"it has expired \(SSLV3_ALERT_CERTIFICATE_EXPIRED\); enrol the device again.*new-token",
        ):
            plane.get_registration()
    finally:
        plane.close()
