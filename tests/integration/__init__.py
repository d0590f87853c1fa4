"""Tests of real components as themselves: the commands, the served app, render and worker
processes, the SQL backend and the backend contracts on PostgreSQL (marked ``postgres``), S3 over
HTTP (moto's server), and the examples, the docs and the README run as written."""
