"""The allocator's settings, measured in a fresh interpreter: the memory one image freed is
reused by the next, unless the environment chose thresholds of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from imageproc.engine import _allocator as allocator

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or allocator._glibc() is False, reason="glibc only"
)

# Renders one 3000x2000 PNG twice on a worker thread and prints the page faults of the second
# render; the decoded image alone is 24 MB, about 5,900 pages.
_SECOND_RENDER_FAULTS = textwrap.dedent(
    """
    import io, resource, sys, threading
    from PIL import Image
    from imageproc import Pipeline
    from imageproc.engine import _allocator as allocator
    from imageproc.engine._imaging import render

    print(allocator.reuse_image_memory() if sys.argv[1] == "reuse" else False)
    picture = Image.linear_gradient("L").resize((3000, 2000)).convert("RGB")
    buffer = io.BytesIO()
    picture.save(buffer, "PNG", compress_level=1)
    data, pipeline = buffer.getvalue(), Pipeline.parse("t=fit:256x256,jpeg:q85")
    faults = []

    def work():
        render(data, pipeline)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        render(data, pipeline)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    print(faults[0])
    """
)


def _second_render(mode: str, **env: str) -> tuple[str, int]:
    result = subprocess.run(
        [sys.executable, "-c", _SECOND_RENDER_FAULTS, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    in_force, faults = result.stdout.split()
    return in_force, int(faults)


@glibc_only
def test_the_next_image_reuses_the_memory_the_last_one_freed() -> None:
    in_force, faults = _second_render("reuse")
    assert in_force == "True"
    assert faults < 2_000  # not the ~5,900 pages of the decoded image faulted in again


@glibc_only
def test_a_threshold_chosen_in_the_environment_is_left_alone() -> None:
    assert _second_render("reuse", MALLOC_MMAP_THRESHOLD_="131072")[0] == "False"
    assert _second_render("reuse", MALLOC_TRIM_THRESHOLD_="131072")[0] == "False"
    assert _second_render("reuse", GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072")[0] == (
        "False"
    )
