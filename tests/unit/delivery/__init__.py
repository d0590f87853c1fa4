"""Unit tests of the completion push."""
