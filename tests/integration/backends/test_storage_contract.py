"""The Storage contract, run against every implementation.

``storage`` is each of: the in-memory dict, fsspec's memory filesystem, a local folder, and S3
through s3fs against moto's server on loopback (see ``tests/support/s3server.py``).
"""

from __future__ import annotations

import os
import secrets
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imageproc import (
    InvalidKey,
    ListableStorage,
    ObjectInfo,
    ObjectNotFound,
    Storage,
    StorageError,
)
from imageproc._clock import utcnow
from imageproc._keys import MAX_KEY_LENGTH, validate_key
from imageproc.backends._memory import MemoryStorage
from imageproc.backends.fsspec._storage import FsspecStorage

#: In-place retries that keep a failing test quick.
FAST_RETRIES: dict[str, Any] = {"retry_attempts": 3, "retry_wait": 0.001, "retry_max_wait": 0.01}

FSSPEC_BACKENDS = ["fsspec-memory", "file", "s3"]
BACKENDS = ["memory", *FSSPEC_BACKENDS]


@contextmanager
def make_storage(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """The storage of one kind, cleaned up afterwards."""
    if kind == "memory":
        yield MemoryStorage()
    elif kind == "fsspec-memory":
        # fsspec's memory filesystem is one store per process: each test takes its own root.
        memory = FsspecStorage(f"memory://imageproc-tests/{secrets.token_hex(6)}", **FAST_RETRIES)
        yield memory
        with suppress(FileNotFoundError):
            memory.fs.rm(memory.root, recursive=True)
    elif kind == "file":
        yield FsspecStorage((tmp_path / "root").as_uri(), **FAST_RETRIES)
    else:
        server = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        yield FsspecStorage(f"s3://{bucket}/prefix", **FAST_RETRIES, **server.storage_options())


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """Every Storage implementation."""
    with make_storage(request.param, request, tmp_path) as made:
        yield made


@pytest.fixture(params=FSSPEC_BACKENDS)
def fsspec_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """Every kind of FsspecStorage, for what only they promise."""
    with make_storage(request.param, request, tmp_path) as made:
        yield made


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


def test_a_prefix_of_stored_keys_is_no_object(storage: Storage) -> None:
    storage.put("outputs/t/thumb.webp", b"RIFF", content_type="image/webp")
    assert not storage.exists("outputs/t")
    for call in (storage.get, storage.stat, storage.open):
        with pytest.raises(ObjectNotFound):
            call("outputs/t")
    storage.delete("outputs/t")  # nothing there to delete, and no error
    assert storage.exists("outputs/t/thumb.webp")


@pytest.mark.parametrize("key", HOSTILE)
def test_hostile_keys_are_refused_by_every_method(storage: Storage, key: str) -> None:
    assert_refused(storage, key)


def assert_refused(storage: Storage, key: str) -> None:
    """Every method of ``storage`` refuses ``key`` with InvalidKey."""
    with pytest.raises(InvalidKey):
        storage.put(key, b"x", content_type="image/png")
    for call in (storage.get, storage.stat, storage.open, storage.exists, storage.delete):
        with pytest.raises(InvalidKey):
            call(key)
    with pytest.raises(InvalidKey):
        storage.url(key, expires=timedelta(minutes=5))


_safe_segments = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,8}", fullmatch=True)
_bad_segments = st.sampled_from(
    ["..", ".", "", ".hidden", ".imageproc", "~", "~root", "a:b", "C:", "*", "a?b", "[ab]", "é"]
)
_bad_characters = st.sampled_from(["\\", "\x00", "\n", "\x7f", " ", "\u2215", "%2e"])


@st.composite
def hostile_keys(draw: st.DrawFn) -> str:
    """Keys that try to escape the root, or that two backends could read differently."""
    segments = draw(st.lists(_safe_segments, max_size=4))
    how = draw(st.sampled_from(["segment", "character", "absolute", "trailing", "long"]))
    if how == "segment":
        segments.insert(draw(st.integers(0, len(segments))), draw(_bad_segments))
    elif how == "character":
        segments.append(draw(_safe_segments))
        index = draw(st.integers(0, len(segments) - 1))
        segment = segments[index]
        cut = draw(st.integers(0, len(segment)))
        segments[index] = segment[:cut] + draw(_bad_characters) + segment[cut:]
    elif how == "absolute":
        return "/" + "/".join([*segments, draw(_safe_segments)])
    elif how == "trailing":
        return "/".join([*segments, draw(_safe_segments)]) + "/"
    else:
        return "/".join([*segments, "a" * (MAX_KEY_LENGTH + 1)])
    return "/".join(segments)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=hostile_keys())
def test_generated_hostile_keys_are_refused_by_every_method(storage: Storage, key: str) -> None:
    assert_refused(storage, key)


def test_content_type_round_trip(storage: Storage) -> None:
    types = {
        "no-extension": "image/avif",
        "a/b.png": "image/webp",  # what the caller says wins over the extension
        "c.bin": "application/x-custom+json; charset=binary",
    }
    for key, content_type in types.items():
        assert storage.put(key, b"data", content_type=content_type).content_type == content_type
    for key, content_type in types.items():
        assert storage.stat(key) == ObjectInfo(key, 4, content_type)


def test_open_streams_and_seeks(storage: Storage) -> None:
    data = os.urandom(300_000)
    storage.put("big.bin", data, content_type="application/octet-stream")
    with storage.open("big.bin") as stream:
        assert stream.read(10) == data[:10]
        stream.seek(200_000)
        assert stream.read(5) == data[200_000:200_005]
        stream.seek(0)
        assert stream.read() == data


def test_url(storage: Storage, request: pytest.FixtureRequest) -> None:
    storage.put("outputs/t/thumb.webp", b"RIFFdata", content_type="image/webp")
    url = storage.url("outputs/t/thumb.webp", expires=timedelta(minutes=5))
    if request.node.callspec.params["storage"] != "s3":
        assert url is None
        return
    assert url is not None
    assert url.startswith("http://127.0.0.1:")
    assert "X-Amz-Signature=" in url  # SigV4, not the retired SigV2
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.read() == b"RIFFdata"
        assert response.headers["Content-Type"] == "image/webp"


# -- only the fsspec backends ------------------------------------------------------------------


def test_bookkeeping_keys_are_refused(fsspec_storage: Storage) -> None:
    fsspec_storage.put("k", b"x", content_type="image/png")
    assert_refused(fsspec_storage, ".imageproc/content-type/k")


def test_unsafe_expiry_is_refused(fsspec_storage: Storage) -> None:
    for expires in (timedelta(0), timedelta(seconds=-1), timedelta(days=8)):
        with pytest.raises(ValueError, match="expires"):
            fsspec_storage.url("k", expires=expires)


# -- only a local folder -----------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> tuple[FsspecStorage, Path, Path]:
    """A local storage, its root, and a directory beside the root holding ``secret.txt``."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    return FsspecStorage(root.as_uri(), **FAST_RETRIES), root, outside


def test_symlinks_out_of_the_root_cannot_be_read_or_written_through(
    folder: tuple[FsspecStorage, Path, Path],
) -> None:
    storage, root, outside = folder
    (root / "dirlink").symlink_to(outside, target_is_directory=True)
    (root / "filelink").symlink_to(outside / "secret.txt")
    (root / "nested").mkdir()
    (root / "nested" / "up").symlink_to("../../outside", target_is_directory=True)
    for key in ("dirlink/secret.txt", "filelink", "nested/up/secret.txt", "dirlink/new.png"):
        assert_refused(storage, key)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_bytes() == b"secret"


def test_symlinks_inside_the_root_are_followed(folder: tuple[FsspecStorage, Path, Path]) -> None:
    storage, root, _ = folder
    storage.put("real/a.png", b"png", content_type="image/png")
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    assert storage.get("alias/a.png") == b"png"
    storage.put("alias/b.png", b"png2", content_type="image/png")
    assert (root / "real" / "b.png").read_bytes() == b"png2"


@given(
    key=st.lists(
        st.sampled_from(["a", "b.png", ".", "..", "", "~", ".x", "a:b", "\\", "..\\.."]),
        min_size=1,
        max_size=6,
    ).map("/".join)
)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_whatever_the_key_nothing_lands_outside_the_root(
    folder: tuple[FsspecStorage, Path, Path], key: str
) -> None:
    storage, root, outside = folder
    try:
        storage.put(key, b"x", content_type="image/png")
    except InvalidKey:
        with pytest.raises(InvalidKey):
            validate_key(key)
        return
    except StorageError:
        return  # e.g. a file in the way of a directory; refused, not written elsewhere
    written = Path(os.path.realpath(root / key))
    assert written.is_relative_to(root.resolve())
    assert written.read_bytes() == b"x"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_failed_local_write_leaves_nothing_behind(
    folder: tuple[FsspecStorage, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, root, _ = folder
    storage.put("outputs/t/old.png", b"old image", content_type="image/png")

    def disk_fails(fd: int) -> None:
        raise OSError(5, "Input/output error")

    # The bytes are written, then syncing them fails: nothing may reach the key.
    monkeypatch.setattr(os, "fsync", disk_fails)
    with pytest.raises(StorageError) as failure:
        storage.put("outputs/t/new.png", b"new image", content_type="image/png")
    assert failure.value.transient
    with pytest.raises(StorageError):
        storage.put("outputs/t/old.png", b"replacement", content_type="image/png")
    monkeypatch.undo()

    assert not storage.exists("outputs/t/new.png")
    assert storage.get("outputs/t/old.png") == b"old image"
    assert sorted(p.name for p in (root / "outputs" / "t").iterdir()) == ["old.png"]


def test_local_objects_are_plain_files(folder: tuple[FsspecStorage, Path, Path]) -> None:
    storage, root, _ = folder
    storage.put("outputs/t/thumb.webp", b"RIFFdata", content_type="image/webp")
    assert (root / "outputs" / "t" / "thumb.webp").read_bytes() == b"RIFFdata"
    # Files dropped in by hand have no recorded type: it is guessed from the extension.
    (root / "by-hand").mkdir()
    (root / "by-hand" / "photo.jpg").write_bytes(b"\xff\xd8")
    (root / "by-hand" / "blob").write_bytes(b"??")
    assert storage.stat("by-hand/photo.jpg") == ObjectInfo("by-hand/photo.jpg", 2, "image/jpeg")
    assert storage.stat("by-hand/blob").content_type == "application/octet-stream"


# -- listing (ListableStorage) ---------------------------------------------------------------


def test_every_storage_lists_a_folder_with_sizes_and_write_times(storage: Storage) -> None:
    assert isinstance(storage, ListableStorage)
    before = utcnow() - timedelta(minutes=5)  # S3 and file times are the server's, to the second
    # A content type no extension implies: the fsspec storages keep it in a sidecar object,
    # which is bookkeeping, not an object a listing shows.
    storage.put("originals/ab/abcd.jpg", b"jpeg bytes", content_type="image/x-odd")
    storage.put("originals/o1/cd/cdef.png", b"png", content_type="image/png")
    storage.put("outputs/t1/thumb.webp", b"RIFF", content_type="image/webp")
    storage.put("originals-not/x.jpg", b"x", content_type="image/jpeg")  # no folder of ours

    listed = {stored.key: stored for stored in storage.list_objects("originals/")}
    assert sorted(listed) == ["originals/ab/abcd.jpg", "originals/o1/cd/cdef.png"]
    assert listed["originals/ab/abcd.jpg"].size == len(b"jpeg bytes")
    for stored in listed.values():
        assert stored.modified.tzinfo is not None
        assert before <= stored.modified <= utcnow() + timedelta(minutes=5)
    everything = sorted(stored.key for stored in storage.list_objects(""))
    assert everything == [
        "originals-not/x.jpg",
        "originals/ab/abcd.jpg",
        "originals/o1/cd/cdef.png",
        "outputs/t1/thumb.webp",
    ]
    storage.delete("originals/ab/abcd.jpg")
    assert [s.key for s in storage.list_objects("originals/")] == ["originals/o1/cd/cdef.png"]
    assert list(storage.list_objects("nothing-here/")) == []


@pytest.mark.parametrize("prefix", ["originals", "/originals/", "../", "a//", "originals/*/"])
def test_a_listing_takes_only_a_folder_of_keys(storage: Storage, prefix: str) -> None:
    assert isinstance(storage, ListableStorage)
    with pytest.raises(InvalidKey):
        list(storage.list_objects(prefix))


def test_a_listing_of_the_bookkeeping_folder_is_refused(fsspec_storage: Storage) -> None:
    assert isinstance(fsspec_storage, ListableStorage)
    with pytest.raises(InvalidKey):
        list(fsspec_storage.list_objects(".imageproc/"))


def test_a_local_listing_leaves_out_temporary_files_and_links(
    folder: tuple[FsspecStorage, Path, Path],
) -> None:
    storage, root, outside = folder
    storage.put("originals/ab/abcd.jpg", b"jpeg", content_type="image/jpeg")
    # What a write interrupted by a crash leaves behind, and links someone made by hand.
    (root / "originals" / "ab" / ".imageproc-0123456789abcdef.tmp").write_bytes(b"half")
    (outside / "secret.jpg").write_bytes(b"not ours")
    (root / "originals" / "ab" / "link.jpg").symlink_to(outside / "secret.jpg")
    old = time.time() - 7200
    os.utime(root / "originals" / "ab" / "abcd.jpg", (old, old))

    [stored] = storage.list_objects("originals/")
    assert stored.key == "originals/ab/abcd.jpg"
    assert stored.modified == datetime.fromtimestamp(old, UTC)
