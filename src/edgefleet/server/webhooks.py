"""Webhook delivery with retry: a durable outbox posted by the periodic work.

An alert event writes its delivery row (:func:`enqueue`) on the event's own transaction, so an
event is never without its webhook and a webhook never without its event. :func:`deliver_due`
posts the rows that are due with httpx and records the outcome: a 2xx answer delivers; anything
else (another status, a timeout, a refused connection) schedules the next attempt after an
exponentially growing delay shortened by a random fraction (jitter), until the delivery is older
than :attr:`~edgefleet.server.config.WebhookPolicy.give_up_after`, when it is given up (logged at
ERROR, kept with its last error).

Several replicas may post at once: a replica claims due rows by moving their next attempt past
the time a post can take (``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL, SQLite's one writer),
then posts outside any transaction, several receivers at once (each receiver's deliveries in turn). A replica that dies after claiming leaves rows that become due
again when the claim runs out: delivery is *at least once*; receivers deduplicate by the
``X-Edgefleet-Delivery`` header.

With a secret, the body is signed: ``X-Edgefleet-Signature: sha256=<hex HMAC-SHA256 of the body>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.server.config import WebhookPolicy
from edgefleet.server.db.engine import Database
from edgefleet.server.db.schema import WebhookDeliveryRow

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Edgefleet-Signature"
DELIVERY_HEADER = "X-Edgefleet-Delivery"
EVENT_HEADER = "X-Edgefleet-Event"
#: how much of an error answer is kept in ``last_error``
_ERROR_CHARS = 500


def body_of(payload: dict[str, Any]) -> bytes:
    """The bytes posted for ``payload`` (and signed): compact JSON with sorted keys."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of ``body`` keyed by ``secret``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def enqueue(
    session: Session,
    *,
    event_id: int | None,
    url: str,
    payload: dict[str, Any],
    secret: str | None,
    now: datetime,
) -> WebhookDeliveryRow:
    """Write a delivery of ``payload`` to ``url`` on ``session``'s transaction, due now."""
    row = WebhookDeliveryRow(
        event_id=event_id,
        url=url,
        payload=payload,
        signature=sign(secret, body_of(payload)) if secret else None,
        attempts=0,
        created_at=now,
        next_attempt_at=now,
    )
    session.add(row)
    return row


def backoff(policy: WebhookPolicy, attempts: int, rng: random.Random) -> float:
    """Seconds to wait after the ``attempts``-th failure: doubling from ``first_backoff`` up to
    ``max_backoff``, shortened by up to ``jitter`` of itself."""
    delay = min(policy.max_backoff, policy.first_backoff * 2.0 ** max(0, attempts - 1))
    return float(delay * (1.0 - policy.jitter * rng.random()))


@dataclass(frozen=True)
class Outcome:
    """What one round of :func:`deliver_due` did."""

    delivered: int = 0
    retrying: int = 0
    given_up: int = 0


@dataclass(frozen=True)
class _Claimed:
    id: int
    url: str
    payload: dict[str, Any]
    signature: str | None
    attempts: int
    created_at: datetime


def deliver_due(
    db: Database,
    policy: WebhookPolicy,
    *,
    rng: random.Random | None = None,
    transport: httpx.BaseTransport | None = None,
) -> Outcome:
    """Post the deliveries that are due (at most ``policy.batch``) and record each outcome.

    Deliveries to different receivers (URLs) are posted concurrently, up to
    ``policy.concurrency`` receivers at once, so one slow or dead receiver does not hold up the
    others; a receiver's own deliveries go one after another, oldest first, so it sees an alert's
    opening before its clearing."""
    rng = rng or random.Random()
    claimed = _claim(db, policy)
    if not claimed:
        return Outcome()
    by_url: dict[str, list[_Claimed]] = {}
    for item in claimed:
        by_url.setdefault(item.url, []).append(item)
    tally: Counter[str] = Counter()
    with httpx.Client(timeout=policy.timeout, transport=transport, follow_redirects=False) as client:

        def post_in_turn(items: list[_Claimed]) -> Counter[str]:
            return Counter(_record(db, policy, item, _post(client, item), rng) for item in items)

        workers = max(1, min(policy.concurrency, len(by_url)))
        with ThreadPoolExecutor(workers, thread_name_prefix="edgefleet-webhooks") as pool:
            for counted in pool.map(post_in_turn, by_url.values()):
                tally.update(counted)
    return Outcome(tally["delivered"], tally["retrying"], tally["given_up"])


def _record(
    db: Database, policy: WebhookPolicy, item: _Claimed, error: str | None, rng: random.Random
) -> str:
    """Record one post's outcome: ``delivered``, ``retrying``, ``given_up`` (or ``gone``: the row was
    settled meanwhile)."""
    now = db.now()
    with db.session() as session:
        row = session.get(WebhookDeliveryRow, item.id, with_for_update=True)
        if row is None or row.delivered_at is not None or row.failed_at is not None:
            return "gone"
        row.attempts = item.attempts + 1
        if error is None:
            row.delivered_at, row.next_attempt_at, row.last_error = now, None, None
            log.info("webhook delivery %d to %s delivered (attempt %d)", row.id, row.url, row.attempts)
            return "delivered"
        row.last_error = error
        if now - item.created_at >= timedelta(seconds=policy.give_up_after):
            row.failed_at, row.next_attempt_at = now, None
            log.error(
                "webhook delivery %d to %s given up after %d attempts: %s",
                row.id,
                row.url,
                row.attempts,
                error,
            )
            return "given_up"
        delay = backoff(policy, row.attempts, rng)
        row.next_attempt_at = now + timedelta(seconds=delay)
        log.warning(
            "webhook delivery %d to %s failed (attempt %d, next in %.0f s): %s",
            row.id,
            row.url,
            row.attempts,
            delay,
            error,
        )
        return "retrying"


def _claim(db: Database, policy: WebhookPolicy) -> list[_Claimed]:
    """Take the due deliveries for this replica: their next attempt moves past a post's time."""
    now = db.now()
    with db.session() as session:
        rows = session.scalars(
            select(WebhookDeliveryRow)
            .where(WebhookDeliveryRow.next_attempt_at <= now)
            .order_by(WebhookDeliveryRow.next_attempt_at, WebhookDeliveryRow.id)
            .limit(policy.batch)
            .with_for_update(skip_locked=True)
        ).all()
        # the claim lasts as long as posting them all one after another can take (each post's
        # connect, write and read may each take the timeout): the bound when they all go to one
        # receiver, which gets its deliveries in turn
        lease = timedelta(seconds=len(rows) * 3 * policy.timeout + 30.0)
        claimed = []
        for row in rows:
            row.next_attempt_at = now + lease
            claimed.append(
                _Claimed(row.id, row.url, dict(row.payload), row.signature, row.attempts, row.created_at)
            )
    return claimed


def _post(client: httpx.Client, item: _Claimed) -> str | None:
    """POST one delivery; None when the receiver answered 2xx, else what went wrong."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "edgefleet-webhooks",
        DELIVERY_HEADER: str(item.id),
        EVENT_HEADER: str(item.payload.get("Type", "")),
    }
    if item.signature:
        headers[SIGNATURE_HEADER] = item.signature
    try:
        response = client.post(item.url, content=body_of(item.payload), headers=headers)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}: {response.text[:200]}"[:_ERROR_CHARS]
