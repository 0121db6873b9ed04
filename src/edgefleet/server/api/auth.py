"""Who is calling: operators by bearer token, devices by their verified client certificate.

The device listener requires a client certificate signed by the fleet CA (checked by TLS); the
certificate reaches the application through the ASGI TLS extension
(``scope["extensions"]["tls"]["client_cert_chain"]``, see :mod:`edgefleet.server.tls`). Revocation
is checked here on every request against the device's current certificate serial.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from edgefleet.core.errors import InvalidArgument
from edgefleet.server import tokens
from edgefleet.server.api.state import AppState
from edgefleet.server.ca import device_name_from_certificate
from edgefleet.server.tokens import Unauthenticated


def app_state(request: Request) -> AppState:
    """The replica's shared state."""
    state: AppState = request.app.state.edgefleet
    return state


#: ASGI scope key of the operator token name, set by :class:`~edgefleet.server.api.guard.RequestGuard`
OPERATOR_SCOPE_KEY = "edgefleet.operator"


def authenticate_operator(state: AppState, authorization: str) -> str:
    """The name of the operator token in an ``Authorization: Bearer`` header value (blocking: one query)."""
    scheme, _, secret = authorization.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthenticated(
            "missing API token: send 'Authorization: Bearer <token>' (edgefleet admin create-token)"
        )
    with state.db.session() as session:
        return tokens.authenticate(
            session,
            secret.strip(),
            state.db.now(),
            timedelta(seconds=state.config.timing.token_touch_interval),
        )


async def operator(request: Request) -> str:
    """FastAPI dependency: the name of the operator token in ``Authorization: Bearer``.

    The request guard has normally checked the token already, before the body was read; this only
    checks it itself for a route it did not guard.
    """
    name: str | None = request.scope.get(OPERATOR_SCOPE_KEY)
    if name is None:
        name = await run_in_threadpool(
            authenticate_operator, app_state(request), request.headers.get("authorization", "")
        )
    return name


@dataclass(frozen=True)
class DeviceIdentity:
    """A device as proven by its client certificate (not yet checked for revocation)."""

    name: str
    serial: str


async def device_identity(request: Request) -> DeviceIdentity:
    """FastAPI dependency: the identity in the verified client certificate of this connection.

    Async (no thread hop) and cached by certificate: parsing a certificate costs more than the rest
    of a heartbeat's request handling. Revocation is not decided here
    (:func:`edgefleet.server.devices.authenticate_device` decides it).
    """
    return identity_from_scope(request.scope)


def client_certificate(scope: Mapping[str, Any]) -> str:
    """The verified client certificate (PEM) of an ASGI request; UNAUTHENTICATED without one."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        raise Unauthenticated("device endpoints need a client certificate: use the device port (mutual TLS)")
    pem: str = chain[0]
    return pem


def identity_from_scope(scope: Mapping[str, Any]) -> DeviceIdentity:
    """The device identity of an ASGI request's client certificate; UNAUTHENTICATED without one."""
    pem = client_certificate(scope)
    identity = _identities.get(pem)
    if identity is None:
        try:
            name, serial = device_name_from_certificate(ssl.PEM_cert_to_DER_cert(pem))
        except (InvalidArgument, ValueError) as exc:
            raise Unauthenticated(
                f"the client certificate is not an edgefleet device certificate: {exc}"
            ) from exc
        identity = DeviceIdentity(name, serial)
        if len(_identities) >= _IDENTITY_CACHE_SIZE:
            _identities.clear()  # crude but bounded; refilling costs one parse per connection
        _identities[pem] = identity
    return identity


#: verified certificate (PEM) -> identity; certificates are immutable, so entries never go stale
_identities: dict[str, DeviceIdentity] = {}
_IDENTITY_CACHE_SIZE = 100_000
