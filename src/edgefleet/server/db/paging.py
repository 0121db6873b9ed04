"""Offset pagination of ordered SELECTs with opaque tokens."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import Session

from edgefleet.server.validation import Page, decode_page_token, encode_page_token

T = TypeVar("T")


def paginate(session: Session, stmt: Select[T], limit: int, token: str | None) -> Page[T]:
    """Run an ordered ``stmt`` for one page of ``limit`` rows starting at ``token``."""
    offset = decode_page_token(token)
    rows: list[Any] = list(session.scalars(stmt.offset(offset).limit(limit + 1)).unique())
    next_token = encode_page_token(offset + limit) if len(rows) > limit else None
    return Page(items=rows[:limit], next_token=next_token)
