"""The pipeline language reference and its pictures stay true to the code.

``scripts/docs_pictures.py`` must picture every operation and every output format the language
knows, each picture must be a sane image, and ``docs/reference/pipeline.md`` must show every
picture (captioned with the pipeline that made it) and no other. The page's examples (its
``>>>`` sessions, its JSON form, its table of sizes and its table of error messages) are run.
"""

from __future__ import annotations

import doctest
import html
import importlib.util
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

from imageproc import InvalidPipeline, Pipeline, PipelineLimits
from imageproc._formats import OUTPUT_FORMATS
from imageproc.pipeline import OPERATIONS

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "docs_pictures.py"
PAGE = ROOT / "docs" / "reference" / "pipeline.md"
#: ``![alt](pictures/name)``, then optionally ``{ attributes }`` and a figure caption.
_PICTURE = re.compile(
    r"!\[([^\]]*)\]\(pictures/([^)\s]+)\)(?:\{[^}]*\})?"
    r"(?:\s*<figcaption><code>([^<]*)</code></figcaption>)?"
)
_SIZE_ROW = re.compile(r"^\| `([^`]+)` \| (\d+)\u00d7(\d+) \|$", re.MULTILINE)
_ERROR_ROW = re.compile(r"^\| `([^`]+)` \| `([^`]+)` \|$", re.MULTILINE)
_PYCON = re.compile(r"^```pycon\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_pictures", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return _load()


@pytest.fixture(scope="module")
def made(script: ModuleType) -> dict[str, bytes]:
    pictures: dict[str, bytes] = script.pictures()
    return pictures


def _page() -> str:
    return PAGE.read_text(encoding="utf-8")


def _section(title: str) -> str:
    """The text of the ``## title`` section of the page."""
    text = _page().split(f"\n## {title}\n", 1)[1]
    return text.split("\n## ", 1)[0]


def test_every_operation_and_format_has_a_picture(script: ModuleType) -> None:
    operations, formats = script.coverage()
    assert set(OPERATIONS) <= operations
    assert {*OUTPUT_FORMATS, "original"} <= formats
    assert script.missing() == (set(), set())


def test_a_new_operation_without_a_picture_stops_the_build(
    script: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_fit = [p for p in script.PICTURES if "fit:" not in p.pipeline]
    monkeypatch.setattr(script, "PICTURES", tuple(without_fit))
    with pytest.raises(RuntimeError, match=r"operations \['fit'\]"):
        script.pictures()


def test_pictures_are_sane_web_images(script: ModuleType, made: dict[str, bytes]) -> None:
    assert set(made) == {picture.name for picture in script.PICTURES}
    for name, data in made.items():
        assert name.endswith(".png")
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG"
            assert 100 <= image.width <= 1600, name
            assert 80 <= image.height <= 900, name
        assert len(data) < 400_000, name
    assert sum(len(data) for data in made.values()) < 4_000_000


def test_pictures_are_the_same_on_every_run(script: ModuleType, made: dict[str, bytes]) -> None:
    picture = next(p for p in script.PICTURES if p.name == "fill-smart.png")
    assert script.render_picture(picture, script.source_image()) == made["fill-smart.png"]


def test_the_page_shows_every_picture_captioned_with_its_pipeline(script: ModuleType) -> None:
    shown = _PICTURE.findall(_page())
    names = [name for _, name, _ in shown]
    assert sorted(names) == sorted(p.name for p in script.PICTURES)  # each once, none missing
    pipelines = {p.name: p.pipeline for p in script.PICTURES}
    for alt, name, caption in shown:
        assert alt == pipelines[name], name
        assert html.unescape(caption) == pipelines[name], name


def test_the_page_sessions_run() -> None:
    sessions = "\n\n".join(_PYCON.findall(_page()))
    test = doctest.DocTestParser().get_doctest(sessions, {}, str(PAGE), str(PAGE), 0)
    assert len(test.examples) >= 10
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_the_json_example_is_the_text_example() -> None:
    section = _section("JSON form")
    text = section.split("```text\n", 1)[1].split("\n```", 1)[0]
    document = json.loads(section.split("```json\n", 1)[1].split("\n```", 1)[0])
    assert Pipeline.from_json(document) == Pipeline.parse(text)
    assert Pipeline.parse(text).to_json() == document


def _rows(pattern: re.Pattern[str], text: str) -> Iterator[tuple[str, ...]]:
    rows = pattern.findall(text)
    assert rows
    yield from rows


def test_the_table_of_sizes_is_true() -> None:
    for text, width, height in _rows(_SIZE_ROW, _section("Operations")):
        (variant,) = Pipeline.parse(text).variants
        assert variant.target_size(600, 400) == (int(width), int(height)), text


def test_the_error_messages_are_real() -> None:
    for text, message in _rows(_ERROR_ROW, _section("Errors")):
        with pytest.raises(InvalidPipeline) as caught:
            PipelineLimits().check(Pipeline.parse(text))
        assert str(caught.value) == message, text
