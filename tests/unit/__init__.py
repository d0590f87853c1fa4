"""Tests that run in process, on the in-memory doubles or SQLite in a temporary folder.

A few go further where a module's tests belong together: a few tests run a snippet in a fresh
interpreter (what an import loads, peak memory, outputs the same in another process) or serve
metrics on a port of their own. The backend contracts, which run on PostgreSQL and S3 too, are
in ``tests/integration/backends``.
"""
