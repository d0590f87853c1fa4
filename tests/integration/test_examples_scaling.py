"""examples/postgres_s3.py against a real PostgreSQL database (one per test) and an S3 server
(moto), after `imageproc migrate`: with its own workers, and with a separate `imageproc worker`
process doing the work while the example only submits and waits."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image

from tests.support.processes import environment, stop
from tests.support.s3server import S3Server

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "postgres_s3.py"
TIMEOUT = 90


def run(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )


def stored_images(
    server: S3Server, bucket: str, prefix: str
) -> dict[str, tuple[str, tuple[int, int]]]:
    client = server.client()
    listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    found = {}
    for item in listing.get("Contents", []):
        body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        with Image.open(io.BytesIO(body)) as image:
            found[item["Key"].removeprefix(prefix)] = (str(image.format), image.size)
    client.close()
    return found


def task_row(database: str, task_id: str) -> tuple[str, int, str | None]:
    """The task's status, attempts and error code, read straight from PostgreSQL."""
    engine = sa.create_engine(database, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT status, attempts, error_code FROM imageproc_tasks WHERE id = :id"),
                {"id": task_id},
            ).one()
            return (row.status, row.attempts, row.error_code)
    finally:
        engine.dispose()


def check_outputs(stdout: str, bucket: str) -> str:
    """The task id, after checking the lines the example printed about it."""
    lines = stdout.splitlines()
    assert lines[0].startswith("submitted ")
    task_id = lines[0].removeprefix("submitted ")
    root = f"s3://{bucket}/images/outputs/{task_id}"
    assert lines[1:] == [
        f"thumb: 256x171 webp, {root}/thumb.webp",
        f"large: 1600x1067 jpeg, {root}/large.jpg",
    ]
    return task_id


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_s3_example_with_its_own_workers(
    tmp_path: Path, postgres_url: str, s3_server: S3Server, s3_bucket: str
) -> None:
    env = environment(
        IMAGEPROC_DATABASE_URL=postgres_url,
        IMAGEPROC_STORAGE_URL=f"s3://{s3_bucket}/images",
        IMAGEPROC_S3_ENDPOINT_URL=s3_server.endpoint_url,
    )
    migrated = run("-m", "imageproc", "migrate", env=env, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.startswith("schema at revision ")

    result = run(str(EXAMPLE), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    task_id = check_outputs(result.stdout, s3_bucket)

    assert stored_images(s3_server, s3_bucket, f"images/outputs/{task_id}/") == {
        "thumb.webp": ("WEBP", (256, 171)),
        "large.jpg": ("JPEG", (1600, 1067)),
    }
    originals = stored_images(s3_server, s3_bucket, "images/originals/")
    assert list(originals.values()) == [("JPEG", (2400, 1600))]
    assert task_row(postgres_url, task_id) == ("succeeded", 1, None)


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_s3_example_waits_for_a_separate_worker(
    tmp_path: Path, postgres_url: str, s3_server: S3Server, s3_bucket: str
) -> None:
    # The database of postgres_url is already migrated; the S3 endpoint goes as a flag here.
    storage = f"s3://{s3_bucket}/images"
    worker = subprocess.Popen(
        [sys.executable, "-m", "imageproc", "worker", "--workers", "1"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=environment(
            IMAGEPROC_DATABASE_URL=postgres_url,
            IMAGEPROC_STORAGE_URL=storage,
            IMAGEPROC_S3_ENDPOINT_URL=s3_server.endpoint_url,
        ),
    )  # fmt: skip
    try:
        result = run(
            str(EXAMPLE), "--database", postgres_url, "--storage", storage,
            "--s3-endpoint", s3_server.endpoint_url, "--workers", "0", "--timeout", "60",
            env=environment(), cwd=tmp_path,
        )  # fmt: skip
    finally:
        _, _, worker_log = stop(worker, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr + worker_log
    task_id = check_outputs(result.stdout, s3_bucket)
    assert worker.returncode == 0, worker_log
    assert "Traceback" not in worker_log
    assert set(stored_images(s3_server, s3_bucket, f"images/outputs/{task_id}/")) == {
        "thumb.webp",
        "large.jpg",
    }
    assert task_row(postgres_url, task_id) == ("succeeded", 1, None)


def test_postgres_s3_example_without_urls_says_what_it_needs(tmp_path: Path) -> None:
    result = run(str(EXAMPLE), env=environment(), cwd=tmp_path)
    assert result.returncode == 2
    assert "give --database and --storage" in result.stderr
