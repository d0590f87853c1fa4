"""The README's service quick start works as written: its curl lines, run by a shell against a
real ``imageproc serve`` in a fresh folder (only the port is changed, to a free one)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from imageproc.config import Settings
from imageproc.testing import sample_image
from tests.support.processes import eventually, fetch, free_port, start, stop

README = Path(__file__).resolve().parents[2] / "README.md"


def service_quick_start() -> str:
    section = README.read_text().split("## Quick start: the service", 1)[1]
    return section.split("```sh", 1)[1].split("```", 1)[0]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_curl_quick_start_works_as_written(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "cat.jpg").write_bytes(sample_image(1200, 800))
    server = start("serve", "--port", str(port), cwd=tmp_path)
    try:
        eventually(lambda: fetch(f"http://127.0.0.1:{port}/healthz")[0] == 200, what="serve")
        script = service_quick_start().replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
    finally:
        code, _, stderr = stop(server)
    assert code == 0, stderr
    with Image.open(tmp_path / "thumb.webp") as thumb:
        assert (thumb.format, thumb.size) == ("WEBP", (256, 171))
    # The loop's pattern matches the server's JSON (else it would stop at once, by luck or not).
    waiting = re.search(r"grep -Eq '([^']+)'", service_quick_start())
    assert waiting is not None
    assert re.search(waiting[1], (tmp_path / "upload.json").read_text())


def test_the_library_quick_starts_use_the_services_database_and_folder() -> None:
    # Run in one folder, the service's workers may claim the library's tasks: both must find the
    # originals in the same place, or the task fails with object_not_found.
    defaults = Settings()
    pages = [
        README,
        *(README.parent / "docs" / page for page in ("index.md", "getting-started.md")),
    ]
    for page in pages:
        urls = re.findall(r'Processor\.from_urls\("([^"]+)", "([^"]+)"\)', page.read_text())
        assert urls, page.name
        assert set(urls) == {(defaults.database_url, defaults.storage_url)}, page.name
