"""The backend contracts and the SQL backend on real databases (SQLite, PostgreSQL) and S3."""
