"""The Processor's ways in besides bytes: :meth:`Ingesting.submit_url`, which fetches the
image from a URL first (safely: :mod:`imageproc._fetching`). :class:`Processor
<imageproc.Processor>` has these methods from :class:`Ingesting`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from imageproc._fetching import Fetching, fetch
from imageproc._task import Task
from imageproc._upload import PipelineSpec
from imageproc.engine._imaging import ImageLimits

__all__ = ["Ingesting"]


class Ingesting:
    """The URL methods; the Processor provides what they use."""

    _fetching: Fetching

    @property
    def image_limits(self) -> ImageLimits:
        """What an upload may be (the Processor's)."""
        raise NotImplementedError

    #: Store an image and queue its task (the Processor's).
    submit: Callable[..., Task]

    @property
    def fetching(self) -> Fetching:
        """How images are fetched from URLs (:class:`~imageproc.Fetching`)."""
        return self._fetching

    def fetch(self, url: str) -> bytes:
        """The image at ``url``, fetched as :meth:`submit_url` fetches it: the URL and every
        redirect checked (:class:`~imageproc.UnsafeURL`), at most the upload size limit read,
        within :attr:`fetching`'s timeout (:class:`~imageproc.FetchFailed`, transient when the
        server failed or did not answer)."""
        return fetch(url, self._fetching, max_bytes=self.image_limits.max_bytes)

    def submit_url(self, url: str, pipeline: PipelineSpec = None, **options: Any) -> Task:
        """Fetch the image at ``url`` (:meth:`fetch`), then :meth:`submit` it with
        ``pipeline`` and ``options`` (any of ``submit``'s keyword arguments).

        The fetch happens here, before anything is stored or recorded: a URL that may not be
        fetched, a server that fails, or a body that is not an acceptable image refuses the
        submit as a bad upload does, and nothing is left behind. Only ``http`` and ``https``
        to public addresses (or those :attr:`fetching` allows), every redirect checked too,
        at most three redirects; see "Ingest" in the docs.
        """
        return self.submit(self.fetch(url), pipeline, **options)
