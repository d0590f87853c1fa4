"""Tests of what ``imageproc._submission`` does around storing originals that the rest of the
suite (through ``Processor``) does not reach: an original deleted by the sweep of orphans while
a task was being recorded on it is put back."""

from __future__ import annotations

from imageproc import Processor, Upload
from imageproc.backends._memory import MemoryQueue, MemoryRepository, MemoryStorage
from imageproc.testing import FAST_OPTIONS, sample_image


class SweptBetween(MemoryStorage):
    """Answers that an object exists, then deletes it at once: what the sweep of orphans does
    when it ran its check before the task was recorded and its delete after the submit found
    the original stored."""

    def __init__(self) -> None:
        super().__init__()
        self.sweeping = False

    def exists(self, key: str) -> bool:
        found = super().exists(key)
        if found and self.sweeping:
            self.sweeping = False
            self.delete(key)
        return found


def build() -> tuple[Processor, SweptBetween]:
    repository = MemoryRepository()
    storage = SweptBetween()
    return Processor(storage, MemoryQueue(repository), repository, **FAST_OPTIONS), storage


def test_an_original_swept_while_its_task_was_recorded_is_put_back() -> None:
    processor, storage = build()
    first = processor.submit(sample_image(), "thumb=fit:64x64,webp")
    processor.run_until_idle()
    storage.sweeping = True
    again = processor.submit(sample_image(), "thumb=fit:64x64,webp")
    assert again.source_key == first.source_key
    assert storage.exists(again.source_key)
    processor.run_until_idle()
    assert processor.get(again.id).status.value == "succeeded"


def test_the_same_holds_for_submit_many() -> None:
    processor, storage = build()
    first = processor.submit(sample_image(), "thumb=fit:64x64,webp")
    storage.sweeping = True
    results = processor.submit_many(
        [Upload(sample_image(), "thumb=fit:64x64,webp"), Upload(sample_image(300))]
    )
    assert not any(isinstance(result, Exception) for result in results)
    assert storage.exists(first.source_key)
