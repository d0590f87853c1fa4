"""Unit tests of the backends: fsspec storage on a local folder, SQLite's group commit."""
