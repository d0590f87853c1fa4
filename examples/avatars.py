"""Application code that uses imageproc, and is tested with imageproc.testing in
``examples/test_avatars.py`` (run it with ``pytest examples/test_avatars.py``).

Users upload a picture; it becomes two square WebP avatars. The Processor is passed in, so
production hands over one on PostgreSQL and S3 while the tests hand over one in memory.
"""

from __future__ import annotations

from imageproc import InvalidImage, Processor, Source, TaskStatus

#: The one pipeline the application uses, by name (``Processor(presets=PRESETS)``).
PRESETS = {"avatar": "small=fill:64x64:smart,webp;large=fill:256x256:smart,webp"}


class AvatarError(Exception):
    """The upload cannot become an avatar."""


def upload_avatar(processor: Processor, user: str, image: Source) -> str:
    """Queue ``image`` to become ``user``'s avatar; the id to follow it by."""
    try:
        return processor.submit(image, "avatar", owner=user).id
    except InvalidImage as error:
        raise AvatarError(f"not a picture we can use: {error}") from None


def avatar(processor: Processor, task_id: str) -> dict[str, bytes] | None:
    """The avatar's sizes, encoded, by name; None while it is still being made."""
    task = processor.get(task_id)
    if task.status == TaskStatus.SUCCEEDED:
        return {output.name: processor.read(output.key) for output in task.outputs}
    if task.status.is_final:
        raise AvatarError(f"the avatar could not be made ({task.status})")
    return None
