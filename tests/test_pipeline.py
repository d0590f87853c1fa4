from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imageproc import Encoding, Fit, InvalidPipeline, Pipeline, PipelineLimits, Resize, Variant
from imageproc.pipeline import DEFAULT_PIPELINE
from tests.strategies import pipelines


def test_parse_the_documented_example() -> None:
    pipeline = Pipeline.parse("thumb=fit:256x256,webp:q80;large=fit:1600x1600,jpeg:q85")
    assert pipeline == Pipeline(
        [
            Variant("thumb", [Fit(256, 256)], Encoding("webp", 80)),
            Variant("large", [Fit(1600, 1600)], Encoding("jpeg", 85)),
        ]
    )


def test_a_lone_unnamed_variant_is_called_default() -> None:
    assert Pipeline.parse("fit:800x800,jpeg") == Pipeline([Variant("default", [Fit(800, 800)])])


def test_the_encoding_defaults_to_jpeg_and_means_the_same() -> None:
    assert Pipeline.parse("resize:800x") == Pipeline.parse("default=resize:800x,jpeg")


def test_resize_forms() -> None:
    variant = Pipeline.parse("a=resize:10x20,resize:30x,resize:x40,upscale,png").variants[0]
    assert variant.operations == (Resize(10, 20), Resize(30, None), Resize(None, 40))
    assert (variant.upscale, variant.encoding) == (True, Encoding("png"))


def test_default_pipeline_is_one_jpeg_800_wide() -> None:
    (variant,) = DEFAULT_PIPELINE.variants
    assert variant.encoding.format == "jpeg"
    assert variant.target_size(4000, 3000) == (800, 600)
    assert variant.target_size(400, 300) == (400, 300)  # never upscaled


@given(pipelines())
def test_text_form_round_trips(pipeline: Pipeline) -> None:
    assert Pipeline.parse(str(pipeline)) == pipeline
    assert str(Pipeline.parse(str(pipeline))) == str(pipeline)


@given(pipelines())
def test_json_form_round_trips(pipeline: Pipeline) -> None:
    obj = json.loads(json.dumps(pipeline.to_json()))
    assert Pipeline.from_json(obj) == pipeline
    assert Pipeline.from_json(obj).to_json() == obj


@given(st.text(max_size=60))
def test_parse_raises_only_invalid_pipeline(text: str) -> None:
    try:
        pipeline = Pipeline.parse(text)
    except InvalidPipeline as error:
        assert error.message  # noqa: PT017 - either outcome is fine; no other error is
    else:
        assert Pipeline.parse(str(pipeline)) == pipeline


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty pipeline"),
        ("fit:800", "fit takes a size WxH, got '800' (at character 1)"),
        ("a=fit:10x10;b=blurr:3", "unknown operation 'blurr:3' (at character 15)"),
        ("a=fit:10x10,,jpeg", "empty token (at character 13)"),
        ("fit:10x10;fit:5x5", "needs a name"),
        ("a=jpeg;a=png", "used twice"),
        ("a=jpeg,png", "second output format 'png' in variant 'a' (at character 8)"),
        ("jpeg:q101", "quality must be between 1 and 100"),
        ("png:q80", "png takes no quality in 'png:q80' (at character 1)"),
        ("jpeg:fast", "jpeg does not understand 'fast'"),
        ("bad name=jpeg", "bad variant name 'bad name' (at character 1)"),
        ("resize:x", "resize takes a size"),
        ("fit:0x10", "fit width must be at least 1"),
        ("fit", "fit needs arguments"),
    ],
)
def test_malformed_text_is_refused_helpfully(text: str, fragment: str) -> None:
    with pytest.raises(InvalidPipeline) as info:
        Pipeline.parse(text)
    assert fragment in info.value.message


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"variants": []},
        {"variants": [{"operations": []}]},
        {"variants": [{"name": "a", "operations": [{"op": "spin"}]}]},
        {"variants": [{"name": "a", "encoding": {"format": "bmp"}}]},
        {"variants": [{"name": "a", "operations": [{"op": "fit", "width": "x", "height": 1}]}]},
        {"variants": "nope"},
        {"variants": [{"name": "a", "operations": ["fit"]}]},
    ],
)
def test_malformed_json_is_refused(obj: dict[str, object]) -> None:
    with pytest.raises(InvalidPipeline):
        Pipeline.from_json(obj)


def test_limits() -> None:
    limits = PipelineLimits(max_variants=2, max_operations=2, max_side=1000)
    limits.check(Pipeline.parse("a=fit:1000x1000;b=resize:10x,resize:x5"))
    with pytest.raises(InvalidPipeline, match="3 variants, more than the limit of 2"):
        limits.check(Pipeline.parse("a=png;b=png;c=png"))
    with pytest.raises(InvalidPipeline, match="3 operations"):
        limits.check(Pipeline.parse("a=fit:9x9,fit:8x8,fit:7x7"))
    with pytest.raises(InvalidPipeline, match="larger than the limit of 1000"):
        limits.check(Pipeline.parse("a=resize:x1001"))


def test_geometry() -> None:
    assert Fit(100, 100).target_size(400, 200, upscale=False) == (100, 50)
    assert Fit(100, 100).target_size(40, 20, upscale=False) == (40, 20)
    assert Fit(100, 100).target_size(40, 20, upscale=True) == (100, 50)
    assert Resize(50, 60).target_size(400, 200, upscale=False) == (50, 60)
    assert Resize(500, 60).target_size(400, 200, upscale=False) == (400, 60)
    assert Resize(None, 100).target_size(400, 200, upscale=False) == (200, 100)
    assert Resize(1, None).target_size(400, 2, upscale=False) == (1, 1)  # never 0 wide
