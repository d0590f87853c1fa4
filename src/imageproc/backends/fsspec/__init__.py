"""Storage on any fsspec filesystem: a local folder (``file://``) or S3 (``s3://``, extra
``imageproc[s3]``), with keys checked at the boundary so nothing outside the root is reached.

A backend imports the model and the protocols, never the processor, worker or HTTP layer.
"""

from imageproc.backends.fsspec._s3 import S3_ENDPOINT_ENV
from imageproc.backends.fsspec._storage import FsspecStorage

__all__ = ["S3_ENDPOINT_ENV", "FsspecStorage"]
