"""The S3-protocol store (``s3://bucket/prefix``: AWS S3, MinIO, Ceph, moto ...) through boto3.

boto3 (the ``s3`` extra) is imported when a store is made, so installs without it never load it.
botocore errors are translated here: a missing object is NOT_FOUND, a refusal PERMISSION_DENIED,
everything else UNAVAILABLE.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
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
from edgefleet.storage.base import (
    CHUNK_SIZE,
    ObjectStore,
    PresignedPut,
    StoreOptions,
    validate_key,
    validate_prefix,
)

#: S3's longest presigned URL lifetime (SigV4: 7 days)
MAX_PRESIGN_SECONDS = 7 * 86400


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


class S3Store(ObjectStore):
    """Objects live under ``s3://bucket/prefix/`` as ``<prefix>/<key>``."""

    def __init__(self, bucket: str, prefix: str = "", options: StoreOptions = StoreOptions()) -> None:  # noqa: B008
        super().__init__(options)
        self.bucket, self.prefix = bucket, prefix.strip("/")
        try:
            import boto3
            from boto3.exceptions import Boto3Error
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError, ClientError
        except ImportError as exc:
            raise FailedPrecondition(
                "s3:// stores need boto3, which is not installed: install it with: pip install 'edgefleet[s3]'"
            ) from exc
        self._errors = (ClientError, BotoCoreError, Boto3Error)
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=options.s3_endpoint_url,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )
        # SigV4 puts the lifetime inside the signature (X-Amz-Expires), so the store enforces it
        # and a holder cannot extend it; the older scheme's expiry is not enforced by every store.
        self._signer: Any = boto3.session.Session().client(
            "s3", endpoint_url=options.s3_endpoint_url, config=Config(signature_version="s3v4")
        )

    @classmethod
    def from_uri(cls, uri: str, options: StoreOptions) -> S3Store:
        """A store for ``s3://bucket[/prefix]``."""
        parts = urlsplit(uri)
        if not parts.netloc:
            raise InvalidArgument(f"S3 store URI {uri!r} must look like s3://bucket/prefix")
        return cls(parts.netloc, parts.path, options)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def check(self) -> None:
        """The bucket exists and the credentials may use it (HeadBucket): NOT_FOUND, PERMISSION_DENIED
        or UNAVAILABLE (endpoint unreachable) otherwise, each naming the bucket and endpoint."""
        where = f"S3 store {self.uri} (endpoint {self.options.s3_endpoint_url or 'AWS'})"
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except self._errors as exc:
            code = _error_code(exc)
            if type(exc).__name__ == "NoCredentialsError":
                raise PermissionDenied(
                    f"{where}: no AWS credentials found (environment, ~/.aws, instance or container role)"
                ) from exc
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise NotFound(f"{where}: bucket {self.bucket!r} does not exist") from exc
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise PermissionDenied(
                    f"{where}: the credentials may not use bucket {self.bucket!r}: {exc}"
                ) from exc
            raise Unavailable(f"{where} cannot be reached: {exc}") from exc

    def _key(self, key: str) -> str:
        validate_key(key, self.what)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextlib.contextmanager
    def _translated(self, key: str) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            code = _error_code(exc)
            error: EdgefleetError
            if code in ("404", "NoSuchKey", "NotFound"):
                error = self._missing(key)
            elif code in ("403", "AccessDenied"):
                error = PermissionDenied(f"S3 store {self.uri} refused access to {key!r}: {exc}")
            else:
                error = Unavailable(f"S3 store {self.uri} failed on {key!r}: {exc}")
            raise error from exc

    def put_stream(self, key: str, source: BinaryIO) -> None:
        # upload_fileobj reads in parts and switches to a multipart upload for large objects.
        with self._translated(key):
            self._client.upload_fileobj(source, self.bucket, self._key(key))

    def open_range(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        full = self._key(key)
        if length == 0:
            return iter(())
        byte_range = f"bytes={start}-" if length is None else f"bytes={start}-{start + length - 1}"
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=full, Range=byte_range)["Body"]
        except self._errors as exc:
            if _error_code(exc) == "InvalidRange":  # starting at the end: nothing to read
                return iter(())
            with self._translated(key):
                raise
        return self._stream(body, key)

    def _stream(self, body: Any, key: str) -> Iterator[bytes]:
        with self._translated(key), contextlib.closing(body):
            yield from body.iter_chunks(CHUNK_SIZE)

    def size(self, key: str) -> int:
        with self._translated(key):
            return int(self._client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])

    def list(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix, self.what)
        full, strip = (f"{self.prefix}/{prefix}", len(self.prefix) + 1) if self.prefix else (prefix, 0)
        keys: list[str] = []
        with self._translated(prefix):
            for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            ):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        with self._translated(key):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def presign_put(self, key: str, ttl: float) -> PresignedPut:
        """A SigV4 presigned PUT URL for ``key``, valid ``ttl`` seconds (1 s to 7 days)."""
        seconds = int(ttl)
        if not 1 <= seconds <= MAX_PRESIGN_SECONDS:
            raise InvalidArgument(f"a presigned URL lives 1 to {MAX_PRESIGN_SECONDS} seconds, not {ttl}")
        full = self._key(key)
        now = datetime.now(UTC)
        with self._translated(key):
            url = self._signer.generate_presigned_url(
                "put_object", Params={"Bucket": self.bucket, "Key": full}, ExpiresIn=seconds
            )
        return PresignedPut(str(url), {}, now + timedelta(seconds=seconds))
