"""Implementations of the :mod:`imageproc.protocols`: ``memory`` here, SQL and fsspec to come."""
