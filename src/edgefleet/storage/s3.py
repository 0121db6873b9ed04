"""The S3-protocol store (``s3://bucket/prefix``: AWS S3, MinIO, Ceph, moto ...) through boto3.

boto3 is imported when a store is made, so installs without the ``s3`` extra never load it.
botocore errors are translated here: a missing object is NOT_FOUND, a refusal PERMISSION_DENIED,
everything else UNAVAILABLE.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from edgefleet.core.errors import (
    EdgefleetError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from edgefleet.storage.base import CHUNK_SIZE, validate_key, validate_prefix

_MISSING = {"404", "NoSuchKey", "NotFound"}
_REFUSED = {"403", "AccessDenied"}


def _boto3_client(endpoint_url: str | None) -> tuple[Any, tuple[type[Exception], ...]]:
    """A boto3 S3 client and the exception types it raises; FAILED_PRECONDITION naming the extra."""
    try:
        import boto3
        from boto3.exceptions import Boto3Error
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError as exc:
        raise FailedPrecondition(
            "s3:// stores need boto3, which is not installed: install it with: pip install 'edgefleet[s3]'"
        ) from exc
    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, config=Config(retries={"max_attempts": 5, "mode": "standard"})
    )
    return client, (ClientError, BotoCoreError, Boto3Error)


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


class S3Store:
    """Objects live under ``s3://bucket/prefix/``; ``what`` names an object in error messages."""

    def __init__(
        self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, what: str = "object"
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.what = what
        self._client, self._errors = _boto3_client(endpoint_url)

    @classmethod
    def from_uri(cls, uri: str, *, endpoint_url: str | None = None, what: str = "object") -> S3Store:
        """A store for ``s3://bucket[/prefix]``."""
        parts = urlsplit(uri)
        if parts.scheme.lower() != "s3" or not parts.netloc:
            raise InvalidArgument(f"S3 store URI {uri!r} must look like s3://bucket/prefix")
        return cls(parts.netloc, parts.path, endpoint_url=endpoint_url, what=what)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _key(self, key: str) -> str:
        validate_key(key, self.what)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, exc: Exception, key: str) -> EdgefleetError:
        code = _error_code(exc)
        if code in _MISSING:
            return NotFound(f"{self.what} {key!r} does not exist in {self.uri}")
        if code in _REFUSED:
            return PermissionDenied(f"S3 store {self.uri} refused access to {key!r}: {exc}")
        return Unavailable(f"S3 store {self.uri} failed on {key!r}: {exc}")

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except self._errors as exc:
            raise self._fail(exc, key) from exc

    def put_stream(self, key: str, source: BinaryIO) -> None:
        # upload_fileobj switches to a multipart upload for large objects, reading in chunks.
        try:
            self._client.upload_fileobj(source, self.bucket, self._key(key))
        except self._errors as exc:
            raise self._fail(exc, key) from exc

    def put_file(self, key: str, path: Path) -> None:
        try:
            self._client.upload_file(str(path), self.bucket, self._key(key))
        except self._errors as exc:
            raise self._fail(exc, key) from exc

    def get_bytes(self, key: str) -> bytes:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            data: bytes = response["Body"].read()
        except self._errors as exc:
            raise self._fail(exc, key) from exc
        return data

    def open_range(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        full = self._key(key)
        if length == 0:
            return iter(())
        byte_range = f"bytes={start}-" if length is None else f"bytes={start}-{start + length - 1}"
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=full, Range=byte_range)
        except self._errors as exc:
            if _error_code(exc) == "InvalidRange":  # starting at the end: nothing to read
                return iter(())
            raise self._fail(exc, key) from exc
        return self._stream(response["Body"], key)

    def _stream(self, body: Any, key: str) -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(CHUNK_SIZE)
        except self._errors as exc:
            raise self._fail(exc, key) from exc
        finally:
            body.close()

    def size(self, key: str) -> int:
        try:
            response = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except self._errors as exc:
            raise self._fail(exc, key) from exc
        return int(response["ContentLength"])

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except NotFound:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix, self.what)
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            ):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except self._errors as exc:
            raise self._fail(exc, prefix) from exc
        return sorted(keys)

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except self._errors as exc:
            raise self._fail(exc, key) from exc

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"
