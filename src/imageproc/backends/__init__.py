"""Implementations of the protocols (:class:`~imageproc.Storage`, :class:`~imageproc.Queue`,
:class:`~imageproc.Repository`): in memory here, SQL in :mod:`imageproc.backends.sql`, fsspec
storage in :mod:`imageproc.backends.fsspec`; ``backends_from_urls`` picks them from two URLs.

A backend imports the model and the protocols, never the processor, worker or HTTP layer.
"""

from imageproc.backends._memory import MemoryQueue, MemoryRepository, MemoryStorage
from imageproc.backends._urls import Backends, backends_from_urls

__all__ = ["Backends", "MemoryQueue", "MemoryRepository", "MemoryStorage", "backends_from_urls"]
