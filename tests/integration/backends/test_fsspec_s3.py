"""FsspecStorage on S3, through s3fs against moto's server on loopback: an outage ridden out
(the server is really stopped and started again), a missing bucket, the endpoint from the
environment, missing credentials, and a Processor end to end on SQLite and S3."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

import pytest

from imageproc import ObjectNotFound, Processor, StorageError, TaskStatus
from imageproc import _keys as keys
from imageproc.backends.fsspec import S3_ENDPOINT_ENV, FsspecStorage
from imageproc.testing import FAST_OPTIONS, FastForwardClock, sample_image
from tests.support.s3server import S3Server


def test_s3_outage_is_ridden_out(
    s3_server: S3Server, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    storage = FsspecStorage(
        f"s3://{s3_bucket}/outage",
        retry_attempts=40,
        retry_wait=0.02,
        retry_max_wait=0.2,
        **s3_server.storage_options(),
    )
    storage.put("before.png", b"png", content_type="image/png")
    caplog.set_level(logging.WARNING, logger="imageproc.storage")

    s3_server.stop()
    restart = threading.Timer(0.5, s3_server.start)
    restart.start()
    try:
        started = time.monotonic()
        storage.put("during.png", b"png2", content_type="image/png")
        waited = time.monotonic() - started
        assert storage.get("before.png") == b"png"
    finally:
        restart.join(timeout=10)
    assert s3_server.running
    assert 0.4 < waited < 8
    assert storage.stat("during.png").content_type == "image/png"
    assert any("StorageError" in record.getMessage() for record in caplog.records)


def test_s3_missing_bucket(s3_server: S3Server) -> None:
    storage = FsspecStorage(
        "s3://no-such-bucket-here/prefix", retry_attempts=2, **s3_server.storage_options()
    )
    with pytest.raises(ObjectNotFound):
        storage.get("k.png")
    assert not storage.exists("k.png")
    for operation in (
        lambda: storage.put("k.png", b"png", content_type="image/png"),
        lambda: storage.delete("k.png"),
    ):
        with pytest.raises(StorageError) as failure:
            operation()
        assert not failure.value.transient


@pytest.mark.parametrize("variable", [S3_ENDPOINT_ENV, "AWS_ENDPOINT_URL_S3"])
def test_s3_endpoint_from_the_environment(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, s3_server.endpoint_url)
    storage = FsspecStorage(f"s3://{s3_bucket}/env")  # no endpoint, no credentials in code
    storage.put("a.png", b"png", content_type="image/png")
    client = s3_server.client()
    try:
        head = client.head_object(Bucket=s3_bucket, Key="env/a.png")
    finally:
        client.close()
    assert head["ContentType"] == "image/png"


def test_s3_endpoint_passed_in_wins_over_the_environment(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(S3_ENDPOINT_ENV, "http://127.0.0.1:9")  # nothing listens there
    storage = FsspecStorage(f"s3://{s3_bucket}", retry_attempts=1, **s3_server.storage_options())
    storage.put("a.png", b"png", content_type="image/png")
    assert storage.get("a.png") == b"png"


def test_end_to_end_processor_on_sqlite_and_s3(
    s3_server: S3Server, s3_bucket: str, sqlite_url: str
) -> None:
    # The production shape in miniature: the SQL backend, storage on S3, through from_urls.
    processor = Processor.from_urls(
        sqlite_url,
        f"s3://{s3_bucket}/images",
        storage_options=s3_server.storage_options(),
        **FAST_OPTIONS,
    )
    storage = processor.storage

    task = processor.submit(sample_image(800, 600), "thumb=fit:64x64,webp:q80;big=fit:400x400,png")
    assert processor.run_until_idle() == 1
    done = processor.get(task.id)

    assert done.status == TaskStatus.SUCCEEDED, done.error
    assert {output.name for output in done.outputs} == {"thumb", "big"}
    for output in done.outputs:
        data = storage.get(output.key)
        assert len(data) == output.bytes
        assert storage.stat(output.key).content_type == f"image/{output.format}"
        assert processor.read(output.key) == data
    client = s3_server.client()
    try:
        listing = client.list_objects_v2(Bucket=s3_bucket, Prefix="images/")
    finally:
        client.close()
    stored = {item["Key"] for item in listing.get("Contents", [])}
    expected = {f"images/{key}" for key in (task.source_key, *(o.key for o in done.outputs))}
    assert stored == expected
    processor.close()


def test_orphaned_originals_are_swept_on_s3(
    s3_server: S3Server, s3_bucket: str, sqlite_url: str
) -> None:
    clock = FastForwardClock()
    processor = Processor.from_urls(
        sqlite_url,
        f"s3://{s3_bucket}/images",
        storage_options=s3_server.storage_options(),
        clock=clock,
        **FAST_OPTIONS,
    )
    storage = processor.storage
    task = processor.submit(sample_image(400, 300), "thumb=fit:64x64,webp:q80")
    processor.run_until_idle()
    outputs = [output.key for output in processor.get(task.id).outputs]
    orphan = keys.source_key("ab" * 32, "jpg", "alice")
    storage.put(orphan, b"jpeg", content_type="image/jpeg")

    assert processor.purge(older_than=timedelta(days=1)) == 0
    assert storage.exists(orphan)  # young: within the grace period
    # S3 keeps its own times (LastModified), so the Processor's clock moves instead.
    clock.advance(2 * 3600)
    assert processor.purge(older_than=timedelta(days=1)) == 0
    assert not storage.exists(orphan)
    assert all(storage.exists(key) for key in [task.source_key, *outputs])
    processor.close()


def test_s3_without_credentials_fails_permanently(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    storage = FsspecStorage(
        f"s3://{s3_bucket}", retry_wait=30, retry_max_wait=30, **s3_server.storage_options()
    )
    started = time.monotonic()
    with pytest.raises(StorageError) as failure:
        storage.put("a.png", b"png", content_type="image/png")
    assert not failure.value.transient
    assert "NoCredentialsError" in failure.value.message
    assert time.monotonic() - started < 5
