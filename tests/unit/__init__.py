"""Tests that run in process, on the in-memory doubles or SQLite in a temporary folder.

A few also take the PostgreSQL server or the S3 server as one parameter among others: those are
marked ``postgres`` (deselect with ``-m "not postgres"``) or run on the session's moto server.
"""
