"""TLS for the two listeners, and client certificates handed to the application.

The operator/enrolment listener authenticates the server only. The device listener requires a
client certificate signed by the fleet CA (``CERT_REQUIRED``); uvicorn does not pass the peer
certificate to the application, so :func:`client_cert_protocol` wraps uvicorn's HTTP protocol to put
it in ``scope["extensions"]["tls"]["client_cert_chain"]`` (the ASGI TLS extension).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from edgefleet.core.errors import FailedPrecondition
from edgefleet.core.files import atomic_writer
from edgefleet.server.ca import FleetCA
from edgefleet.server.config import ServerConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TLSFiles:
    """PEM files the listeners use."""

    cert: Path
    key: Path
    ca: Path


def server_names(config: ServerConfig) -> list[str]:
    """Names and addresses the server certificate issued by the fleet CA covers."""
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()]
    if config.host not in ("", "0.0.0.0", "::"):
        names.append(config.host)
    names.extend(config.tls_names)
    return [n for n in dict.fromkeys(names) if n]


def prepare_tls(config: ServerConfig, ca: FleetCA, now: datetime) -> TLSFiles:
    """Write the CA certificate and (unless the operator supplied one) a fresh server certificate."""
    directory = config.data_dir / "tls"
    directory.mkdir(parents=True, exist_ok=True)
    ca_path = directory / "ca.pem"
    _write(ca_path, ca.cert_pem.encode(), 0o644)
    if config.tls_cert is not None or config.tls_key is not None:
        if config.tls_cert is None or config.tls_key is None:
            raise FailedPrecondition("--tls-cert and --tls-key go together")
        check_pair(config.tls_cert, config.tls_key)
        return TLSFiles(config.tls_cert, config.tls_key, ca_path)
    cert_pem, key_pem = ca.issue_server_certificate(server_names(config), now)
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    _write(key_path, key_pem.encode(), 0o600)
    _write(cert_path, cert_pem.encode(), 0o644)
    return TLSFiles(cert_path, key_path, ca_path)


def check_pair(cert: Path, key: Path) -> None:
    """FAILED_PRECONDITION unless ``cert``/``key`` load as a TLS server certificate and its key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise FailedPrecondition(
            f"cannot use {cert} / {key} as the server certificate and key: {exc}"
        ) from exc


def _write(path: Path, data: bytes, mode: int) -> None:
    with atomic_writer(path, mode=mode) as handle:
        handle.write(data)


def client_cert_protocol(base: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """A subclass of uvicorn's HTTP protocol ``base`` that exposes the verified peer certificate."""

    class ClientCertProtocol(base):  # type: ignore[valid-type,misc]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            if not der:
                return
            tls_info = {
                "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)],
                "tls_version": ssl_object.version(),
            }
            inner = cast(Any, self).app

            async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
                extensions = dict(scope.get("extensions") or {})
                extensions["tls"] = tls_info
                scope["extensions"] = extensions
                await inner(scope, receive, send)

            self.app = app

    ClientCertProtocol.__name__ = f"ClientCert{base.__name__}"
    return ClientCertProtocol
