"""Input checks shared by the control plane's services: names, tags, output locations, page tokens,
and text that no database can store."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import unquote_to_bytes

from edgefleet.core.errors import InvalidArgument

T = TypeVar("T")

# The Edge Manager name pattern, used for fleets, devices, models, plans, stages, handles, aliases.
NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_TAG_KEY_RE = re.compile(r"^[\w.:/=+@ -]{1,128}$")
_TAG_VALUE_RE = re.compile(r"^[\w.:/=+@ -]{0,256}$")
MAX_TAGS = 50
OUTPUT_SCHEMES = ("s3", "file")
#: the largest row id or count a request may carry: SQLite and PostgreSQL integers are 64-bit
MAX_ID = 2**63 - 1
#: the largest count stored in an ``INTEGER`` column (32-bit in PostgreSQL)
MAX_INT32 = 2**31 - 1
# NUL (PostgreSQL refuses it in text; SQLite cuts LIKE patterns at it) and UTF-16 surrogates that
# are not part of a pair (they cannot be encoded as UTF-8, so no database, log or response takes them)
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def validate_name(name: object, what: str) -> str:
    """``name`` if it matches the Edge Manager pattern (1-63 of ``[a-zA-Z0-9](-*[a-zA-Z0-9])*``)."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidArgument(
            f"{what} {name!r} is invalid: 1-63 characters matching [a-zA-Z0-9](-*[a-zA-Z0-9])*"
        )
    return name


def validate_tags(tags: dict[str, str] | None, what: str = "tags") -> dict[str, str]:
    """Tags as a plain dict; keys 1-128 and values 0-256 characters, at most 50."""
    if tags is None:
        return {}
    if len(tags) > MAX_TAGS:
        raise InvalidArgument(f"{what}: at most {MAX_TAGS} tags, got {len(tags)}")
    for key, value in tags.items():
        if not _TAG_KEY_RE.match(key) or key.lower().startswith("aws:"):
            raise InvalidArgument(
                f"{what}: tag key {key!r} is invalid (1-128 letters, digits, spaces, _.:/=+@-)"
            )
        if not _TAG_VALUE_RE.match(value):
            raise InvalidArgument(f"{what}: tag value {value!r} of {key!r} is invalid (0-256 characters)")
    return dict(tags)


def parse_tag_filters(filters: list[str]) -> dict[str, str]:
    """``["k=v", ...]`` (query string or CLI form) to a dict; INVALID_ARGUMENT on a malformed item."""
    parsed: dict[str, str] = {}
    for item in filters:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"tag filter {item!r} must look like KEY=VALUE")
        parsed[key] = value
    return validate_tags(parsed, "tag filter")


def validate_output_location(location: object) -> str:
    """A capture output location: ``s3://bucket[/prefix]`` or ``file:///dir``."""
    if not isinstance(location, str) or "://" not in location:
        raise InvalidArgument(f"output location {location!r} must be a URI like s3://bucket/prefix")
    scheme, _, rest = location.partition("://")
    if scheme not in OUTPUT_SCHEMES:
        raise InvalidArgument(
            f"output location scheme {scheme!r} is not supported (known: {', '.join(OUTPUT_SCHEMES)})"
        )
    if scheme == "s3" and not rest.split("/", 1)[0]:
        raise InvalidArgument(f"output location {location!r} names no bucket")
    if len(location) > 1024:
        raise InvalidArgument("output location is longer than 1024 characters")
    return location


def check_url(path: str, query_string: bytes) -> None:
    """INVALID_ARGUMENT when the request path or a query parameter holds a NUL character.

    Checked once for every request, before routing: a NUL in a filter (``?NameContains=%00``)
    would otherwise reach the database (PostgreSQL refuses it, SQLite's LIKE stops at it).
    """
    if "\x00" in path:
        raise InvalidArgument("the request path holds a NUL character (%00)")
    if b"%00" in query_string and b"\x00" in unquote_to_bytes(query_string):
        raise InvalidArgument("a query parameter holds a NUL character (%00)")


def check_json_text(body: bytes) -> None:
    """INVALID_ARGUMENT when a string (or key) of the JSON document ``body`` holds a NUL or a lone
    UTF-16 surrogate. Bodies that are not JSON are left to the route, which reports them."""
    # In JSON both can only be written as \u escapes: a body without one is clean (nearly all are).
    if b"\\u" not in body:
        return
    try:
        document = json.loads(body)
    except ValueError:
        return
    where = _unstorable(document, "")
    if where is not None:
        raise InvalidArgument(
            f"{where[:200] or 'the body'}: text may not hold a NUL character or an unpaired UTF-16 surrogate"
        )


def _unstorable(value: Any, where: str) -> str | None:
    """The location of the first unstorable string in a parsed JSON value, or None."""
    if isinstance(value, str):
        return where if _UNSTORABLE.search(value) else None
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _unstorable(item, f"{where}[{index}]")
            if found is not None:
                return found
    elif isinstance(value, dict):
        for key, item in value.items():
            if _UNSTORABLE.search(key):
                return f"{where}.(a key)" if where else "(a key)"
            found = _unstorable(item, f"{where}.{key}" if where else key)
            if found is not None:
                return found
    return None


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing and the token for the next (None on the last page)."""

    items: list[T]
    next_token: str | None


def encode_page_token(offset: int) -> str:
    """An opaque token for the page starting at ``offset``."""
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def decode_page_token(token: str | None) -> int:
    """The offset in a token from :func:`encode_page_token` (0 for None); INVALID_ARGUMENT if forged."""
    if not token:
        return 0
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        offset = raw["o"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"NextToken {token!r} is not a token this server issued") from exc
    if not isinstance(offset, int) or offset < 0:
        raise InvalidArgument(f"NextToken {token!r} is not a token this server issued")
    return offset


def check_page_size(limit: int | None, default: int, maximum: int) -> int:
    """A page size in 1..maximum (``default`` when None)."""
    if limit is None:
        return default
    if not 1 <= limit <= maximum:
        raise InvalidArgument(f"MaxResults must be between 1 and {maximum}, got {limit}")
    return limit
