"""Tests of the pipeline language: the model, its text form and its JSON form."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imageproc import Encoding, Fit, InvalidPipeline, Pipeline, PipelineLimits, Resize, Variant
from imageproc.pipeline._colour import Colour
from imageproc.pipeline._json import MAX_JSON_DEPTH
from imageproc.pipeline._operations import Blur, Crop, Fill, Flip, Grayscale, Pad, Rotate, Sharpen
from imageproc.pipeline._pipeline import DEFAULT_PIPELINE
from tests.support.strategies import FOREIGN_ZEROS, foreign_digits, foreign_numbers, pipelines


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


def test_every_operation_and_option_parses() -> None:
    text = (
        "a=fit:100x80,fill:50x50:ne,pad:60x40:00000080,resize:30x,crop:1,2,3,4,rotate:-90:ff0000,"
        "flip:h,grayscale,blur:1.5,sharpen:2,upscale,keep-metadata,first-frame,placeholder,"
        "background:102030,jpeg:q90:progressive;b=webp:lossless;c=avif:q50;d=gif;e=tiff;f=original"
    )
    pipeline = Pipeline.parse(text)
    a = pipeline.variants[0]
    assert a.operations == (
        Fit(100, 80),
        Fill(50, 50, "ne"),
        Pad(60, 40, Colour(0, 0, 0, 128)),
        Resize(30, None),
        Crop(1, 2, 3, 4),
        Rotate(270, Colour(255, 0, 0)),
        Flip("h"),
        Grayscale(),
        Blur(1.5),
        Sharpen(2),
    )
    assert (a.upscale, a.keep_metadata, a.first_frame, a.placeholder) == (True, True, True, True)
    assert a.background == Colour(16, 32, 48)
    assert a.encoding == Encoding("jpeg", 90, progressive=True)
    assert [v.encoding.format for v in pipeline.variants[1:]] == [
        "webp",
        "avif",
        "gif",
        "tiff",
        "original",
    ]
    assert pipeline.variants[1].encoding.lossless
    assert Pipeline.parse(str(pipeline)) == pipeline
    assert str(Pipeline.parse(str(pipeline))) == str(pipeline)


def test_defaults_are_left_out_of_the_text_form() -> None:
    text = "fill:10x10:center,pad:5x5:ffffff,rotate:360,sharpen:1,background:ffffff,webp:q79"
    assert str(Pipeline.parse(text)) == "default=fill:10x10,pad:5x5,rotate:0,sharpen,webp:q79"


def test_original_resolves_to_the_source_format() -> None:
    encoding = Pipeline.parse("original").variants[0].encoding
    assert encoding.resolve("PNG") == Encoding("png")
    assert encoding.resolve("BMP") == Encoding("png")  # not a format we write
    assert encoding.resolve("JPEG").effective_quality == 85
    assert Encoding("avif").effective_quality == 63
    assert Encoding("webp", lossless=True).effective_quality is None


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
        ("fit:800", "fit takes a size WxH, got '800' in 'fit:800' (at character 1)"),
        (
            "a=fit:10x10;b=blurr:3",
            "unknown operation, format or option 'blurr' in 'blurr:3' (at character 15);"
            " did you mean 'blur'?",
        ),
        ("a=fit:10x10,,jpeg", "empty token in '' (at character 13)"),
        ("fit:10x10;fit:5x5", "needs a name"),
        ("a=jpeg;a=png", "used twice"),
        ("a=jpeg,png", "a second output format (the variant has jpeg) in 'png' (at character 8)"),
        ("jpeg:q101", "quality must be between 1 and 100"),
        ("png:q80", "png takes no quality in 'png:q80' (at character 1)"),
        ("jpeg:fast", "jpeg does not understand 'fast'"),
        ("bad name=jpeg", "bad variant name 'bad name' (at character 1)"),
        ("resize:x", "resize takes a size"),
        ("fit:0x10", "width must be at least 1"),
        ("fit", "fit needs arguments, as in fit:800x600"),
        ("fill:10x10:middle", "gravity 'middle' is not one of"),
        ("pad:10x10:red", "colour 'red' is not RRGGBB or RRGGBBAA hex"),
        ("crop:1,2,3", "crop takes x,y,w,h"),
        (
            "a=fit:5x5,crop:1,2,3",
            "crop takes x,y,w,h, got '1,2,3' in 'crop:1,2,3' (at character 11)",
        ),
        ("crop:-1,0,5,5", "crop x must not be negative, got -1"),
        ("rotate:45.5", "rotate takes whole degrees"),
        ("flip:x", "flip takes h or v"),
        ("grayscale:1", "grayscale takes no arguments, got '1'"),
        ("blur:0", "sigma must be over 0"),
        ("blur:1e3", "blur takes a number"),
        ("sharpen:11", "amount must be over 0 and at most 10"),
        ("png:progressive", "only jpeg can be progressive"),
        ("jpeg:lossless", "only webp can be lossless"),
        ("webp:q80:lossless", "lossless webp takes no quality"),
        ("upscale,upscale,png", "option 'upscale' is given twice in 'upscale' (at character 9)"),
        ("upscale:yes", "option 'upscale' takes no arguments"),
        ("background,png", "background takes one colour, as in background:ffffff"),
        ("webpp", "did you mean 'webp'?"),
        ("background:fff,png", "colour 'fff' is not RRGGBB"),
        ("background:00000080,jpeg", "background must be opaque (RRGGBB), got 00000080"),
        ("bmp", "unknown operation, format or option 'bmp' (at character 1)"),
        ("fit:1234567x1", "fit takes a size WxH"),
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
        {"variants": [{"name": "a", "operations": [{"op": "fit", "width": 1.5, "height": 1}]}]},
        {
            "variants": [
                {
                    "name": "a",
                    "operations": [{"op": "crop", "x": "0", "y": 0, "width": 1, "height": 1}],
                }
            ]
        },
        {"variants": [{"name": "a", "operations": ["fit"]}]},
    ],
)
def test_malformed_json_is_refused(obj: dict[str, object]) -> None:
    with pytest.raises(InvalidPipeline):
        Pipeline.from_json(obj)


def _variant(**fields: object) -> dict[str, object]:
    return {"variants": [{"name": "a", **fields}]}


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        # Misspelt or unknown fields are refused, never ignored.
        (_variant(upsacle=True), "a variant has no field 'upsacle'"),
        ({"variants": [], "version": 2}, "a pipeline has no field 'version'"),
        (_variant(encoding={"format": "jpeg", "qualty": 80}), "an encoding has no field 'qualty'"),
        (
            _variant(operations=[{"op": "fit", "width": 1, "height": 1, "gravity": "n"}]),
            "operation 'fit' has no field 'gravity'",
        ),
        # Values only the JSON form could hold, which the text form could not write back.
        (_variant(upscale="false"), "upscale must be true or false, got 'false'"),
        (_variant(encoding={"format": "jpeg", "quality": True}), "quality must be between"),
        (_variant(encoding={"format": "jpeg", "progressive": 1}), "progressive must be true"),
        (_variant(operations=[{"op": "blur", "sigma": 1.23456}]), "at most 4 decimals"),
        (_variant(operations=[{"op": "blur", "sigma": float("nan")}]), "at most 4 decimals"),
        (_variant(operations=[{"op": "rotate", "degrees": 45.7}]), "whole number, got 45.7"),
        (_variant(operations=[{"op": "fit", "width": 10**6, "height": 1}]), "at most 999999"),
        (
            _variant(operations=[{"op": "crop", "x": 10**7, "y": 0, "width": 1, "height": 1}]),
            "at most 999999",
        ),
        (_variant(name=7), "a variant name must be text"),
        (_variant(background=[255, 255, 255]), "background must be RRGGBB text"),
        (_variant(operations={"op": "fit"}), "operations must be a JSON array"),
    ],
)
def test_json_is_read_strictly(obj: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidPipeline) as info:
        Pipeline.from_json(obj)
    assert fragment in info.value.message


def test_pipelines_recorded_by_earlier_versions_are_read_as_the_nearest_valid_one() -> None:
    old = _variant(
        operations=[{"op": "blur", "sigma": 0.123456}, {"op": "sharpen", "amount": 0.00001}],
        encoding={"format": "webp", "quality": 79.6},
        background="00000080",
    )
    with pytest.raises(InvalidPipeline):
        Pipeline.from_json(old)  # not what a client may send now...
    stored = Pipeline.from_stored(old)  # ...but what an earlier version recorded still reads
    assert str(stored) == "a=blur:0.1235,sharpen:0.0001,background:000000,webp:q80"
    with pytest.raises(InvalidPipeline):
        Pipeline.from_stored(_variant(operations=[{"op": "spin"}]))


def test_colour_channels_are_bytes() -> None:
    with pytest.raises(InvalidPipeline, match="colour red must be 0-255, got 256"):
        Colour(256, 0, 0)


def test_spaces_around_variant_names_are_ignored() -> None:
    assert Pipeline.parse("a=fit:1x1; b = png") == Pipeline.parse("a=fit:1x1;b=png")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**7), 10**7) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(st.data())
def test_any_json_is_refused_or_prints_text_that_reads_back(data: st.DataObject) -> None:
    # Start from a valid pipeline's JSON and replace one value anywhere in it with anything.
    obj = data.draw(pipelines()).to_json()
    paths: list[tuple[object, object]] = []

    def walk(node: object) -> None:
        items = (
            node.items()
            if isinstance(node, dict)
            else enumerate(node)
            if isinstance(node, list)
            else ()
        )
        for key, value in items:
            paths.append((node, key))
            walk(value)

    walk(obj)
    node, key = data.draw(st.sampled_from(paths))
    node[key] = data.draw(json_values)  # type: ignore[index]
    try:
        pipeline = Pipeline.from_json(obj)
    except InvalidPipeline:
        return
    assert Pipeline.parse(str(pipeline)) == pipeline
    assert Pipeline.from_json(pipeline.to_json()) == pipeline


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
    assert Fill(100, 50).target_size(400, 400, upscale=False) == (100, 50)
    assert Fill(100, 50).target_size(40, 40, upscale=False) == (40, 20)  # same shape, not enlarged
    assert Fill(100, 50).target_size(40, 40, upscale=True) == (100, 50)
    assert Pad(100, 50).target_size(10, 10, upscale=False) == (100, 50)
    assert Crop(10, 10, 100, 100).target_size(50, 60, upscale=False) == (40, 50)  # clipped
    assert Crop(100, 0, 5, 5).target_size(50, 60, upscale=False) == (50, 60)  # outside: no-op
    assert Rotate(90).target_size(40, 20, upscale=False) == (20, 40)
    assert Rotate(180).target_size(40, 20, upscale=False) == (40, 20)
    assert Rotate(45).target_size(10, 10, upscale=False) == (16, 16)  # as Pillow rounds


def nested(depth: int) -> str:
    """A pipeline document whose ``variants`` nests arrays until the whole is ``depth`` deep."""
    return '{"variants": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


def test_json_text_round_trips() -> None:
    pipeline = Pipeline.parse("thumb=fill:256x256:smart,webp:q80;large=fit:1600x1600")
    assert Pipeline.from_json_text(json.dumps(pipeline.to_json())) == pipeline


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 2_000, 100_000])
def test_json_text_nested_too_deep_is_refused_before_parsing(depth: int) -> None:
    # Deep enough, json.loads itself raises RecursionError: the bound must come first.
    with pytest.raises(InvalidPipeline, match=f"deeper than the limit of {MAX_JSON_DEPTH}"):
        Pipeline.from_json_text(nested(depth))


def test_json_text_at_the_depth_limit_is_read_as_usual() -> None:
    with pytest.raises(InvalidPipeline) as caught:
        Pipeline.from_json_text(nested(MAX_JSON_DEPTH))
    assert "deeper" not in caught.value.message  # refused for what it is, not for its depth


def test_json_text_brackets_inside_strings_do_not_count() -> None:
    name = '"[{\\"' + "[" * 100 + '"'
    with pytest.raises(InvalidPipeline, match="variant name") as caught:
        Pipeline.from_json_text('{"variants": [{"name": ' + name + "}]}")
    assert "deeper" not in caught.value.message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("{not json", "does not parse"), ("[]", "must be an object"), ('{"variants": 3}', "array")],
)
def test_json_text_faults_are_invalid_pipelines(text: str, fragment: str) -> None:
    with pytest.raises(InvalidPipeline, match=fragment):
        Pipeline.from_json_text(text)


# Every place the text form reads a number, with {n} for it.
NUMBER_SLOTS = [
    "fit:{n}x10",
    "fit:10x{n}",
    "fill:{n}x10",
    "pad:10x{n}",
    "resize:{n}x",
    "resize:x{n}",
    "crop:{n},0,1,1",
    "crop:0,0,1,{n}",
    "rotate:{n}",
    "blur:{n}",
    "blur:1.{n}",
    "sharpen:{n}",
    "jpeg:q{n}",
    "webp:q{n}",
]


@given(foreign_numbers(), st.sampled_from(NUMBER_SLOTS))
def test_the_text_form_reads_ascii_digits_only(number: str, slot: str) -> None:
    with pytest.raises(InvalidPipeline):
        Pipeline.parse(slot.format(n=number))


@pytest.mark.parametrize("zero", FOREIGN_ZEROS)
@pytest.mark.parametrize("slot", NUMBER_SLOTS)
def test_a_number_in_another_scripts_digits_is_refused(slot: str, zero: int) -> None:
    Pipeline.parse(slot.format(n="10"))  # the same number in ASCII digits is fine
    with pytest.raises(InvalidPipeline):
        Pipeline.parse(slot.format(n=foreign_digits("10", zero)))
