"""Tests of ``imageproc.testing``, the helpers for users' tests."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from imageproc import StorageError, TaskStatus
from imageproc.backends._memory import MemoryStorage
from imageproc.testing import FlakyStorage, memory_processor, sample_image


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"])
def test_sample_image_in_every_format(fmt: str) -> None:
    with Image.open(io.BytesIO(sample_image(120, 80, fmt))) as image:
        assert (image.format, image.size) == (fmt, (120, 80))


def test_sample_image_writes_the_orientation_tag() -> None:
    with Image.open(io.BytesIO(sample_image(40, 20, orientation=6))) as image:
        assert image.getexif()[0x0112] == 6


def test_sample_image_is_deterministic() -> None:
    assert sample_image(50, 50, "PNG") == sample_image(50, 50, "PNG")


def test_flaky_storage_fails_the_first_calls_then_passes_through() -> None:
    flaky = FlakyStorage(MemoryStorage(), failures=2)
    for _ in range(2):
        with pytest.raises(StorageError):
            flaky.put("k", b"v", content_type="image/png")
    flaky.put("k", b"v", content_type="image/png")
    assert flaky.get("k") == b"v"
    assert flaky.exists("k")  # not among the failing methods
    assert flaky.failed == 2


def test_memory_processor_processes_end_to_end() -> None:
    processor = memory_processor()
    task = processor.submit(sample_image(1200, 800))
    processor.run_until_idle()
    assert processor.get(task.id).status == TaskStatus.SUCCEEDED
