"""Tests that start processes or servers: the commands, the served app, render processes, worker
processes, S3 over HTTP, and the examples, the docs and the README run as written."""
