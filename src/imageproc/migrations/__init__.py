"""Alembic migrations for imageproc's SQL schema (run through SQLBackend.migrate)."""
