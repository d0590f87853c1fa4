"""The Storage contract, run against every implementation."""

from __future__ import annotations

from datetime import timedelta

import pytest

from imageproc import InvalidKey, ObjectInfo, ObjectNotFound, Storage
from imageproc.backends.memory import MemoryStorage


@pytest.fixture(params=["memory"])
def storage(request: pytest.FixtureRequest) -> Storage:
    """Every Storage implementation."""
    return MemoryStorage()


HOSTILE = ["../escape", "/etc/passwd", "a/../../b", "a\\b", "a\x00b", "", "a//b"]


def test_put_get_stat_open_delete(storage: Storage) -> None:
    info = storage.put("outputs/t/thumb.webp", b"RIFFdata", content_type="image/webp")
    assert info == ObjectInfo("outputs/t/thumb.webp", 8, "image/webp")
    assert storage.get("outputs/t/thumb.webp") == b"RIFFdata"
    assert storage.stat("outputs/t/thumb.webp") == info
    assert storage.exists("outputs/t/thumb.webp")
    with storage.open("outputs/t/thumb.webp") as stream:
        assert stream.read() == b"RIFFdata"
    storage.delete("outputs/t/thumb.webp")
    assert not storage.exists("outputs/t/thumb.webp")
    storage.delete("outputs/t/thumb.webp")  # deleting what is gone is fine


def test_put_replaces(storage: Storage) -> None:
    storage.put("k", b"one", content_type="image/png")
    storage.put("k", b"two!", content_type="image/jpeg")
    assert storage.get("k") == b"two!"
    assert storage.stat("k").content_type == "image/jpeg"


def test_missing_objects(storage: Storage) -> None:
    for call in (storage.get, storage.stat, storage.open):
        with pytest.raises(ObjectNotFound):
            call("nothing/here")
    assert not ObjectNotFound("x").transient


@pytest.mark.parametrize("key", HOSTILE)
def test_hostile_keys_are_refused_by_every_method(storage: Storage, key: str) -> None:
    with pytest.raises(InvalidKey):
        storage.put(key, b"x", content_type="image/png")
    for call in (storage.get, storage.stat, storage.open, storage.exists, storage.delete):
        with pytest.raises(InvalidKey):
            call(key)
    with pytest.raises(InvalidKey):
        storage.url(key, expires=timedelta(minutes=5))
