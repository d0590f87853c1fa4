"""Keep freed image memory in the process on glibc, so that the next image does not fault it in.

Pillow keeps a decoded image in blocks of up to 16 MiB (``PILLOW_BLOCK_SIZE``). glibc's malloc
serves blocks that large with a fresh ``mmap`` and unmaps them on ``free``, or gives them back by
trimming its heap, so an image is faulted in again page by page, and zeroed by the kernel: a
12 MP PNG costs about 10,000 page faults, 25 ms of a 210 ms thumbnail (``benchmarks/engine.py``).
How often depends on the history of the process (glibc moves both thresholds as it goes). With
``M_MMAP_THRESHOLD`` at 32 MiB (the most glibc allows on 64-bit) and ``M_TRIM_THRESHOLD`` at
64 MiB the blocks come from malloc's arenas and stay there, and one image reuses the memory the
last one freed. The price: resident memory stays near its peak between images instead of
falling back (the peak itself, bounded by the pixel limit as before, was the same in mixed runs of
PNG and JPEG jobs on one and two threads).

The settings are process-wide, so only the worker pool asks for them (:meth:`WorkerPool.start
<imageproc._worker.WorkerPool.start>`); thresholds chosen in the environment
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES``) are left alone.
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Final

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "reuse_image_memory"]

#: Requests below this many bytes come from malloc's arenas rather than their own mapping.
MMAP_THRESHOLD: Final = 32 * 1024 * 1024
#: Free memory at the top of a heap is given back to the system only beyond this many bytes.
TRIM_THRESHOLD: Final = 64 * 1024 * 1024
_M_TRIM_THRESHOLD: Final = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD: Final = -3
_ENVIRONMENT: Final = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_TUNABLES: Final = ("malloc.mmap_threshold", "malloc.trim_threshold")

_lock = threading.Lock()
_in_force = False


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError, AttributeError):  # not glibc, or no confstr at all
        return False


def _chosen_by_environment() -> bool:
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(name in os.environ for name in _ENVIRONMENT) or any(t in tunables for t in _TUNABLES)


def reuse_image_memory() -> bool:
    """Have glibc keep freed image blocks for reuse instead of unmapping them (see the module).

    Returns whether the settings are in force. Does nothing, and returns False, off glibc and
    where the environment sets either threshold. Safe to call more than once, from any thread.
    """
    global _in_force
    with _lock:
        if _in_force:
            return True
        if not _glibc() or _chosen_by_environment():
            return False
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):  # pragma: no cover - glibc always has mallopt
            return False
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        mallopt.restype = ctypes.c_int
        # mallopt returns 1 on success.
        trims = int(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) == 1
        _in_force = trims and int(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) == 1
        return _in_force
