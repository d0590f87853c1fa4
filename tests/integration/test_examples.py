"""Every example runs, and produces what it says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

from imageproc.testing import sample_image

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_quickstart_with_a_sample(tmp_path: Path) -> None:
    result = run(str(EXAMPLES / "quickstart.py"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "imageproc-output" / "thumb.webp") as thumb:
        assert (thumb.format, thumb.size) == ("WEBP", (256, 171))
    with Image.open(tmp_path / "imageproc-output" / "large.jpg") as large:
        assert (large.format, large.size) == ("JPEG", (1600, 1067))
    assert "thumb: 256x171 webp" in result.stdout
    # The embedded default: a SQLite file and a folder of originals and outputs.
    assert (tmp_path / "imageproc.db").is_file()
    stored = sorted(p.name for p in (tmp_path / "imageproc-data" / "outputs").glob("*/*"))
    assert stored == ["large.jpg", "thumb.webp"]


def test_quickstart_with_a_given_image_and_pipeline(tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(sample_image(500, 1000, "PNG"))
    result = run(
        str(EXAMPLES / "quickstart.py"),
        "cat.png",
        "--out",
        "out",
        "--pipeline",
        "small=fit:100x100,png",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "out" / "small.png") as small:
        assert small.size == (50, 100)


def test_quickstart_refuses_a_non_image(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    result = run(str(EXAMPLES / "quickstart.py"), "notes.txt", cwd=tmp_path)
    assert result.returncode == 1
    assert "refused: not a readable image" in result.stderr
    assert "Traceback" not in result.stderr


def test_readme_quick_start_runs_as_written(tmp_path: Path) -> None:
    readme = (EXAMPLES.parent / "README.md").read_text()
    code = readme.split("## Quick start", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    result = run("-c", code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "succeeded [('thumb', 256, 171), ('large', 1600, 1067)]"


def test_the_testing_example_passes_its_own_tests(tmp_path: Path) -> None:
    # examples/test_avatars.py tests examples/avatars.py with imageproc.testing, as a user's
    # suite would; pytest does not collect examples/ on its own, so run it here.
    result = run(
        "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
        str(EXAMPLES / "test_avatars.py"),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 passed" in result.stdout
    assert list(tmp_path.iterdir()) == []  # all in memory: no database, no folder


def test_every_example_is_exercised() -> None:
    # A new example must get a test; this map says where each one's is.
    tested = {
        "quickstart.py": "tests/integration/test_examples.py",
        "worker.py": "tests/integration/test_examples_service.py",
        "batch.py": "tests/integration/test_examples_service.py",
        "starlette_app.py": "tests/integration/test_http_server.py",
        "fastapi_app.py": "tests/integration/test_examples_frameworks.py",
        "fastapi_transactional.py": "tests/integration/test_examples_frameworks.py",
        "flask_app.py": "tests/integration/test_examples_frameworks.py",
        "postgres_s3.py": "tests/integration/test_examples_scaling.py",
        "avatars.py": "tests/integration/test_examples.py",  # through test_avatars.py
        "test_avatars.py": "tests/integration/test_examples.py",
        "webhook_receiver.py": "tests/integration/test_examples_webhooks.py",
    }
    assert {path.name for path in EXAMPLES.glob("*.py")} == set(tested)
    for example, module in tested.items():
        assert example in (EXAMPLES.parent / module).read_text(), (example, module)
