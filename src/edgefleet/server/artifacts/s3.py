"""The S3-protocol artifact store (AWS S3, MinIO, Ceph, moto ...) through boto3.

botocore errors are translated here: a missing object is NOT_FOUND, everything else UNAVAILABLE.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from edgefleet.core.errors import EdgefleetError, InvalidArgument, NotFound, Unavailable
from edgefleet.server.artifacts.base import CHUNK_SIZE, validate_key

_MISSING = {"404", "NoSuchKey", "NotFound"}


class S3ArtifactStore:
    """Objects live under ``s3://bucket/prefix/``."""

    def __init__(
        self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, client: Any = None
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self._client: Any = client or boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, config=Config(retries={"max_attempts": 5, "mode": "standard"})
        )

    @classmethod
    def from_uri(cls, uri: str, *, endpoint_url: str | None = None) -> S3ArtifactStore:
        """A store for ``s3://bucket[/prefix]``."""
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise InvalidArgument(f"S3 artifact store URI {uri!r} must look like s3://bucket/prefix")
        return cls(parsed.netloc, parsed.path, endpoint_url=endpoint_url)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, exc: Exception, key: str) -> EdgefleetError:
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING:
                return NotFound(f"artifact {key!r} does not exist in {self.uri}")
        return Unavailable(f"S3 store {self.uri} failed on {key!r}: {exc}")

    def put_file(self, key: str, path: Path) -> None:
        try:
            self._client.upload_file(str(path), self.bucket, self._key(key))
        except (ClientError, BotoCoreError, boto3.exceptions.S3UploadFailedError) as exc:
            raise self._fail(exc, key) from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, key) from exc

    def get_bytes(self, key: str) -> bytes:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            data: bytes = response["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, key) from exc
        return data

    def size(self, key: str) -> int:
        try:
            response = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, key) from exc
        return int(response["ContentLength"])

    def open_range(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        if length == 0:
            return iter(())
        byte_range = f"bytes={start}-" if length is None else f"bytes={start}-{start + length - 1}"
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key), Range=byte_range)
        except (ClientError, BotoCoreError) as exc:
            if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return iter(())
            raise self._fail(exc, key) from exc
        return self._stream(response["Body"], key)

    def _stream(self, body: Any, key: str) -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(CHUNK_SIZE)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, key) from exc
        finally:
            body.close()

    def list(self, prefix: str = "") -> list[str]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            ):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, prefix) from exc
        return sorted(keys)

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, key) from exc

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"
