"""Helpers for testing code that uses imageproc: a fast all-in-memory Processor, sample images, a
storage double that fails on demand, and a clock to move forward instead of sleeping.

    from imageproc.testing import memory_processor, sample_image

    def test_my_upload_handler():
        processor = memory_processor()
        task = processor.submit(sample_image(1200, 800))
        processor.run_until_idle()
        assert processor.get(task.id).status == "succeeded"
"""

from __future__ import annotations

import io
import threading
from datetime import datetime, timedelta
from typing import Any, BinaryIO

from PIL import Image, ImageDraw

from imageproc._clock import utcnow
from imageproc._processor import Processor
from imageproc._protocols import ObjectInfo, Storage
from imageproc._retrying import RetryPolicy
from imageproc.errors import ImageprocError, StorageError

__all__ = ["FastForwardClock", "FlakyStorage", "memory_processor", "sample_image"]

#: Options that keep a test quick: short polls and backoffs, no long in-place waits.
FAST_OPTIONS: dict[str, Any] = {
    "poll_interval": 0.02,
    "retry": RetryPolicy(backoff_base=0.02, backoff_max=0.5, in_place_wait=0.001),
}


def memory_processor(**options: Any) -> Processor:
    """An all-in-memory :class:`~imageproc.Processor` tuned for tests (fast polling and
    backoff); ``options`` override those and go to the Processor."""
    return Processor.in_memory(**{**FAST_OPTIONS, **options})


def sample_image(
    width: int = 640,
    height: int = 480,
    format: str = "JPEG",
    *,
    mode: str = "RGB",
    orientation: int | None = None,
    **save_options: Any,
) -> bytes:
    """Encode a deterministic test picture (a gradient with shapes) of the given size and format.

    ``orientation`` (1-8) writes an EXIF orientation tag; the pixels are stored as given, so a
    reader that honours the tag shows them turned. Extra ``save_options`` go to Pillow's ``save``.
    """
    gradient = Image.linear_gradient("L").resize((width, height))
    image = Image.merge(
        "RGB",
        (
            gradient,
            gradient.transpose(Image.Transpose.ROTATE_90).resize((width, height)),
            Image.new("L", (width, height), 96),
        ),
    )
    draw = ImageDraw.Draw(image)
    draw.rectangle((width // 8, height // 8, width // 3, height // 3), fill=(220, 30, 30))
    draw.ellipse(
        (width // 2, height // 2, width - width // 8, height - height // 8), fill=(30, 30, 220)
    )
    if mode != "RGB":
        image = image.convert(mode)
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        save_options["exif"] = exif
    buffer = io.BytesIO()
    image.save(buffer, format, **save_options)
    return buffer.getvalue()


class FlakyStorage:
    """Wrap a :class:`~imageproc.Storage` so its first ``failures`` calls (of the
    ``methods`` named) raise ``error`` instead. ``failures=None`` fails every call."""

    def __init__(
        self,
        storage: Storage,
        *,
        failures: int | None = 1,
        error: ImageprocError | None = None,
        methods: frozenset[str] = frozenset({"get", "put"}),
    ) -> None:
        self.storage = storage
        self.failures = failures
        self.error = error or StorageError("injected transient failure")
        self.methods = methods
        #: How many calls failed so far.
        self.failed = 0
        self._lock = threading.Lock()

    def _maybe_fail(self, method: str) -> None:
        if method not in self.methods:
            return
        with self._lock:
            if self.failures is not None and self.failed >= self.failures:
                return
            self.failed += 1
        raise self.error

    def put(self, key: str, data: bytes, *, content_type: str) -> ObjectInfo:
        """Fail, or pass through."""
        self._maybe_fail("put")
        return self.storage.put(key, data, content_type=content_type)

    def get(self, key: str) -> bytes:
        """Fail, or pass through."""
        self._maybe_fail("get")
        return self.storage.get(key)

    def open(self, key: str) -> BinaryIO:
        """Fail, or pass through."""
        self._maybe_fail("open")
        return self.storage.open(key)

    def stat(self, key: str) -> ObjectInfo:
        """Fail, or pass through."""
        self._maybe_fail("stat")
        return self.storage.stat(key)

    def exists(self, key: str) -> bool:
        """Fail, or pass through."""
        self._maybe_fail("exists")
        return self.storage.exists(key)

    def delete(self, key: str) -> None:
        """Fail, or pass through."""
        self._maybe_fail("delete")
        self.storage.delete(key)

    def url(self, key: str, *, expires: timedelta) -> str | None:
        """Fail, or pass through."""
        self._maybe_fail("url")
        return self.storage.url(key, expires=expires)


class FastForwardClock:
    """A clock that runs with real time, plus however far :meth:`advance` has moved it on.

    Pass it as the ``clock`` of a Processor or backend to test leases, backoffs and due times
    without sleeping: ``clock.advance(31)`` and a 30-second lease has expired. It never runs
    backwards, and timestamps taken from the real clock (``utcnow()``) are never after it.
    """

    def __init__(self) -> None:
        self._offset = timedelta(0)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        """The current time, moved on by every :meth:`advance` so far (timezone-aware UTC)."""
        with self._lock:
            return utcnow() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward."""
        if seconds < 0:
            raise ValueError("a clock only moves forward")
        with self._lock:
            self._offset += timedelta(seconds=seconds)
