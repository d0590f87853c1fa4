"""The code on the documentation's hand-written pages runs and prints what the pages say.

(The guides include the examples with the snippets extension; ``test_examples*.py`` run those. The
site itself is built with ``mkdocs build --strict`` by ``scripts/test``.)
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from imageproc.testing import sample_image

DOCS = Path(__file__).resolve().parents[2] / "docs"


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.DOTALL)


def run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_the_index_example_runs_on_a_picture(tmp_path: Path) -> None:
    (tmp_path / "cat.jpg").write_bytes(sample_image(2400, 1600))
    [code] = python_blocks("index.md")
    result = run(code, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert [line[:4] for line in lines] == [
        ["thumb", "256", "256", "webp"],
        ["large", "1600", "1067", "jpeg"],
    ]
    assert all(int(line[4]) > 0 for line in lines)  # bytes


def test_getting_started_prints_what_the_page_says(tmp_path: Path) -> None:
    [code] = python_blocks("getting-started.md")
    result = run(code, tmp_path)
    assert result.returncode == 0, result.stderr
    said = re.search(r"It prints `(.*?)`", (DOCS / "getting-started.md").read_text())
    assert said is not None
    assert result.stdout.strip() == said.group(1)
    stored = sorted(p.name for p in (tmp_path / "imageproc-data" / "outputs").glob("*/*"))
    assert stored == ["large.jpg", "thumb.webp"]


@pytest.mark.parametrize(
    "page", ["concepts/pipelines.md", "concepts/backends.md", "concepts/exactly-once.md"]
)
def test_concept_snippets_run(page: str, tmp_path: Path) -> None:
    for code in python_blocks(page):
        result = run(code, tmp_path)
        assert result.returncode == 0, (code, result.stderr)


def test_the_delivery_page_prints_what_it_says(tmp_path: Path) -> None:
    [code] = python_blocks("concepts/delivery.md")
    result = run(code, tmp_path)
    assert result.returncode == 0, result.stderr
    said = re.search(r"It prints `(.*?)`", (DOCS / "concepts/delivery.md").read_text())
    assert said is not None
    assert result.stdout.strip() == said.group(1)


def install_targets(text: str) -> list[str]:
    """What each ``pip install`` in ``text`` asks for (its arguments that are not options)."""
    targets = []
    for command in re.findall(r"pip install ([^\n`#]*)", text):
        try:
            words = shlex.split(command)
        except ValueError:  # an unbalanced quote: the line is prose, not a command
            continue
        targets += [word for word in words if not word.startswith("-")]
    return targets


def test_every_install_line_installs_imageproc_from_a_checkout() -> None:
    # imageproc is not on the package index yet: `pip install imageproc[…]` cannot work.
    pages = [DOCS.parent / "README.md", *sorted(DOCS.rglob("*.md"))]
    by_name = {
        f"{page.name}: {target}"
        for page in pages
        for target in install_targets(page.read_text())
        if target.split("[")[0] == "imageproc"
    }
    assert not by_name
    assert "imageproc[http]" in install_targets("pip install 'imageproc[http]' fastapi")


def test_curl_examples_send_pipelines_as_strings() -> None:
    # `curl -F pipeline='a=…;b=…'` cuts the value at the `;` (curl's own separator in -F) and
    # the server makes one variant: pipelines go with --form-string, which sends them whole.
    pages = [DOCS.parent / "README.md", *sorted(DOCS.rglob("*.md"))]
    pages += sorted((DOCS.parent / "examples").glob("*.py"))
    cut = [
        f"{page.name}: {line.strip()}"
        for page in pages
        for line in page.read_text().splitlines()
        if re.search(r"""(-F|--form)\s+['"]?pipeline=""", line)
    ]
    assert not cut
