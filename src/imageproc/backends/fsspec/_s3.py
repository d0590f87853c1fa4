"""S3 through s3fs: the endpoint (``IMAGEPROC_S3_ENDPOINT_URL``), s3fs's options, the object's own
content type, and presigned URLs. ``s3fs`` and botocore are imported only when they are used.
"""

from __future__ import annotations

import os
from typing import Any, Final

from imageproc.backends.fsspec._contenttypes import guess_type
from imageproc.backends.fsspec._drivers import FsspecDriver
from imageproc.errors import InvalidKey

__all__ = ["S3_ENDPOINT_ENV", "S3Driver", "is_s3", "s3_options"]

#: The environment variable naming an S3-compatible endpoint for ``s3://`` storage.
S3_ENDPOINT_ENV: Final = "IMAGEPROC_S3_ENDPOINT_URL"


def is_s3(fs: Any) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "s3" in protocols


def s3_options(options: dict[str, Any]) -> dict[str, Any]:
    """The s3fs options: the caller's, plus imageproc's defaults (the endpoint named by
    :data:`S3_ENDPOINT_ENV` unless one is passed in, and those commented below)."""
    options = dict(options)
    client_kwargs = options.get("client_kwargs") or {}
    endpoint = os.environ.get(S3_ENDPOINT_ENV)
    if endpoint and not options.get("endpoint_url") and not client_kwargs.get("endpoint_url"):
        options["endpoint_url"] = endpoint
    config = dict(options.get("config_kwargs") or {})
    # One retry policy (ours) rather than three stacked ones, unless the caller chose botocore's.
    if "retries" not in config and "AWS_MAX_ATTEMPTS" not in os.environ:
        config["retries"] = {"total_max_attempts": 1}
    # Presigned URLs default to legacy SigV2 in us-east-1; AWS is retiring it.
    config.setdefault("signature_version", "s3v4")
    options["config_kwargs"] = config
    # Our own instance: fsspec would otherwise share it with anyone using the same options.
    options.setdefault("skip_instance_cache", True)
    return options


class S3Driver(FsspecDriver):
    """S3 through s3fs: the content type is the object's own ``ContentType``."""

    def __init__(self, fs: Any, root: str) -> None:
        super().__init__(fs, root)
        self.bucket, _, prefix = root.partition("/")
        self.prefix = f"{prefix}/" if prefix else ""

    def _path(self, *parts: str) -> str:
        path = super()._path(*parts)
        if self.fs.split_path(path) != (self.bucket, self.prefix + "/".join(parts), None):
            raise InvalidKey("storage key is not a plain object key on S3")
        return path

    def write(self, key: str, data: bytes, content_type: str) -> None:
        self.fs.pipe_file(self._data(key), data, ContentType=content_type)

    def read(self, key: str) -> bytes:
        # max_concurrency=1: one GET; s3fs would otherwise HEAD first to plan ranged reads.
        return bytes(self.fs.cat_file(self._data(key), max_concurrency=1))

    def _head(self, key: str) -> dict[str, Any]:
        # One HEAD; fs.info would follow a 404 with a LIST to look for a "directory", which a
        # key (never ending in "/") cannot be.
        self._data(key)
        head: dict[str, Any] = self.fs.call_s3(
            "head_object", Bucket=self.bucket, Key=self.prefix + key
        )
        return head

    def stat(self, key: str) -> tuple[int, str]:
        head = self._head(key)
        return int(head["ContentLength"]), head.get("ContentType") or guess_type(key)

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except FileNotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        # S3 deletes a missing key without complaint, so a FileNotFoundError here means the
        # bucket itself is missing, which is worth reporting.
        self.fs.rm_file(self._data(key))

    def url(self, key: str, seconds: int) -> str | None:
        url: str = self.fs.url(self._data(key), expires=seconds)
        return url

    def transient(self, error: Exception) -> bool | None:
        from botocore import exceptions as boto  # type: ignore[import-untyped]

        if isinstance(error, boto.ConnectionError | boto.HTTPClientError):
            return True
        if isinstance(error, boto.BotoCoreError):
            return False  # missing credentials or region, invalid parameters: configuration
        return None
