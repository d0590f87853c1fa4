"""The HTTP adapter (extra ``imageproc[http]``): ``create_app`` builds a Starlette application over
a :class:`~imageproc.Processor`; the middleware and the server protocol here guard it against slow
and oversized clients.

The service layer: it may import anything of ours; nothing below it imports Starlette.
"""

from imageproc._signing import parse_api_keys, parse_max_priorities
from imageproc.http._app import create_app
from imageproc.http._openapi import OPENAPI
from imageproc.http._serving import (
    BodyDeadline,
    RedactQuerySecrets,
    UploadLimit,
    header_deadline_protocol,
)

__all__ = [
    "OPENAPI",
    "BodyDeadline",
    "RedactQuerySecrets",
    "UploadLimit",
    "create_app",
    "header_deadline_protocol",
    "parse_api_keys",
    "parse_max_priorities",
]
