"""Web dashboard sessions: an operator API token, checked by the API's own token service, turned
into a server-side session whose secret travels only in an HttpOnly cookie.

Only the SHA-256 of the cookie's secret is stored (like the tokens themselves). A session ends at
its expiry, at logout, or as soon as the token it was opened with is revoked. Each session has its
own CSRF token, which every form and htmx request of the session sends back.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from edgefleet.server import tokens
from edgefleet.server.db.schema import OperatorToken, UISession
from edgefleet.server.tokens import Unauthenticated


@dataclass(frozen=True)
class SessionInfo:
    """A live session: who logged in, the CSRF token its forms carry, when it ends."""

    operator: str
    csrf_token: str
    expires_at: datetime


def open_session(
    session: Session, api_token: str, now: datetime, ttl: timedelta, touch_interval: timedelta
) -> tuple[str, SessionInfo]:
    """Check ``api_token`` as the API does and open a session for it: (cookie secret, session).

    UNAUTHENTICATED with the token service's message when the token is malformed, unknown or
    revoked. Expired sessions of every operator are deleted on the way (cheap: indexed by expiry).
    """
    name = tokens.authenticate(session, api_token.strip(), now, touch_interval)
    token = session.scalar(select(OperatorToken).where(OperatorToken.name == name))
    assert token is not None  # authenticate just found it
    session.execute(delete(UISession).where(UISession.expires_at <= now))
    secret = secrets.token_urlsafe(32)
    info = SessionInfo(name, secrets.token_urlsafe(32), now + ttl)
    session.add(
        UISession(
            session_hash=tokens.hash_secret(secret),
            token_id=token.id,
            operator=name,
            csrf_token=info.csrf_token,
            created_at=now,
            expires_at=info.expires_at,
        )
    )
    return secret, info


def find_session(session: Session, secret: str, now: datetime) -> SessionInfo:
    """The live session whose cookie secret is ``secret``; UNAUTHENTICATED otherwise."""
    found = session.execute(
        select(UISession, OperatorToken.revoked_at)
        .join(OperatorToken, OperatorToken.id == UISession.token_id)
        .where(UISession.session_hash == tokens.hash_secret(secret))
    ).one_or_none()
    if found is None:
        raise Unauthenticated("you are not logged in (or you logged out): log in with an API token")
    row, revoked_at = found
    if row.expires_at <= now:
        raise Unauthenticated("your session expired: log in again with an API token")
    if revoked_at is not None:
        raise Unauthenticated(f"API token {row.operator!r} was revoked: log in with another token")
    return SessionInfo(row.operator, row.csrf_token, row.expires_at)


def close_session(session: Session, secret: str) -> None:
    """End the session whose cookie secret is ``secret`` (nothing happens if there is none)."""
    session.execute(delete(UISession).where(UISession.session_hash == tokens.hash_secret(secret)))


def csrf_matches(expected: str, sent: str | None) -> bool:
    """Whether ``sent`` is the session's CSRF token (compared in constant time)."""
    return sent is not None and hmac.compare_digest(expected.encode(), sent.encode())
