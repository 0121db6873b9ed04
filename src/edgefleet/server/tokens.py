"""Operator API tokens: created once (the secret is shown only then), stored as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.core.errors import AlreadyExists, Code, EdgefleetError, InvalidArgument, NotFound
from edgefleet.server.db.schema import OperatorToken

TOKEN_PREFIX = "eft_"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")


class Unauthenticated(EdgefleetError):
    """Missing, unknown or revoked credentials (core has no such subclass yet)."""

    code = Code.UNAUTHENTICATED


def hash_secret(secret: str) -> str:
    """SHA-256 hex of a token secret (tokens are high-entropy, so no salt or KDF is needed)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    """What is known about a token without its secret."""

    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def _info(row: OperatorToken) -> TokenInfo:
    return TokenInfo(row.name, row.created_at, row.last_used_at, row.revoked_at)


def create_token(session: Session, name: str, now: datetime) -> str:
    """Create a token called ``name`` (an operator or automation identity) and return its secret."""
    if not _NAME_RE.match(name):
        raise InvalidArgument(f"token name {name!r} is invalid: 1-100 characters from [A-Za-z0-9._@-]")
    if session.scalar(select(OperatorToken).where(OperatorToken.name == name)) is not None:
        raise AlreadyExists(f"a token named {name!r} already exists")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(OperatorToken(name=name, token_hash=hash_secret(secret), created_at=now))
    return secret


def list_tokens(session: Session) -> list[TokenInfo]:
    """All tokens, by name."""
    return [_info(row) for row in session.scalars(select(OperatorToken).order_by(OperatorToken.name))]


def revoke_token(session: Session, name: str, now: datetime) -> TokenInfo:
    """Revoke the token called ``name``; it stops working at once."""
    row = session.scalar(select(OperatorToken).where(OperatorToken.name == name))
    if row is None:
        raise NotFound(f"no token named {name!r}")
    if row.revoked_at is None:
        row.revoked_at = now
    return _info(row)


def authenticate(session: Session, secret: str, now: datetime, touch_interval: timedelta) -> str:
    """The name of the live token whose secret is ``secret``; UNAUTHENTICATED otherwise."""
    if not secret.startswith(TOKEN_PREFIX):
        raise Unauthenticated("malformed API token (edgefleet tokens start with 'eft_')")
    row = session.scalar(select(OperatorToken).where(OperatorToken.token_hash == hash_secret(secret)))
    if row is None:
        raise Unauthenticated("unknown API token")
    if row.revoked_at is not None:
        raise Unauthenticated(f"API token {row.name!r} was revoked")
    if row.last_used_at is None or now - row.last_used_at > touch_interval:
        row.last_used_at = now
    return row.name
