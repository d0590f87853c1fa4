"""Tests that run in process, on the in-memory doubles or SQLite in a temporary folder.

Some of them go further where a module's tests belong together: the backend contracts and
test_sql also run on PostgreSQL (each such test is marked ``postgres``: deselect them with
``-m "not postgres"``), the storage contract also on S3 through the session's moto server, and a
few tests run a snippet in a fresh interpreter (what an import loads, peak memory, outputs the
same in another process) or serve metrics on a port of their own.
"""
