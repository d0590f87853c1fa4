"""Helpers shared by the tests: doubles, pictures, strategies, databases, processes, the S3 server.

Test modules import from here and never from each other or from a conftest; the fixtures are in
the conftest.py files (``databases`` and ``s3server`` are loaded as plugins by tests/conftest.py).
"""
