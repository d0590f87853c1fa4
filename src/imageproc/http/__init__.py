"""The HTTP adapter (extra ``imageproc[http]``): ``create_app`` builds a Starlette application
over a :class:`~imageproc.Processor`. :mod:`imageproc.http.serving` holds what guards a server
against slow and oversized clients (middleware, and a protocol class for uvicorn); it is imported
on its own, so an app mounted in another server does not load uvicorn.

The service layer: it may import anything of ours; nothing below it imports Starlette.
"""

from imageproc._signing import parse_api_keys, parse_max_priorities
from imageproc.http._app import create_app
from imageproc.http._openapi import OPENAPI

__all__ = ["OPENAPI", "create_app", "parse_api_keys", "parse_max_priorities"]
