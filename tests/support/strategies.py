"""Hypothesis strategies for imageproc values, in one place."""

from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import strategies as st

from imageproc._formats import OUTPUT_FORMATS
from imageproc._retrying import RetryPolicy
from imageproc.pipeline._colour import Colour
from imageproc.pipeline._encoding import DEFAULT_QUALITY, Encoding
from imageproc.pipeline._operations import (
    GRAVITIES,
    Blur,
    Crop,
    Fill,
    Fit,
    Flip,
    Grayscale,
    Pad,
    Resize,
    Rotate,
    Sharpen,
)
from imageproc.pipeline._pipeline import Pipeline
from imageproc.pipeline._variant import Variant

sides = st.integers(min_value=1, max_value=8192)
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,15}", fullmatch=True)
colours = st.builds(
    Colour,
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 255),
)
opaque_colours = st.builds(Colour, st.integers(0, 255), st.integers(0, 255), st.integers(0, 255))
# Numbers as the text form writes them: up to four decimals.
amounts = st.integers(1, 100_000).map(lambda n: n / 10_000)

operations = st.one_of(
    st.builds(Fit, sides, sides),
    st.builds(Fill, sides, sides, st.sampled_from(sorted(GRAVITIES))),
    st.builds(Pad, sides, sides, colours),
    st.builds(Resize, sides, sides),
    st.builds(Resize, sides, st.none()),
    st.builds(Resize, st.none(), sides),
    st.builds(Crop, st.integers(0, 9999), st.integers(0, 9999), sides, sides),
    st.builds(Rotate, st.integers(-720, 720), colours),
    st.builds(Flip, st.sampled_from(["h", "v"])),
    st.just(Grayscale()),
    st.builds(Blur, st.integers(1, 1_000_000).map(lambda n: n / 10_000)),
    st.builds(Sharpen, amounts),
)


@st.composite
def encodings(draw: st.DrawFn) -> Encoding:
    fmt = draw(st.sampled_from([*sorted(OUTPUT_FORMATS), "original"]))
    lossless = fmt == "webp" and draw(st.booleans())
    quality = None
    if fmt in DEFAULT_QUALITY and not lossless:
        quality = draw(st.none() | st.integers(1, 100))
    progressive = fmt == "jpeg" and draw(st.booleans())
    return Encoding(fmt, quality, progressive, lossless)


@st.composite
def pipelines(draw: st.DrawFn) -> Pipeline:
    variant_names = draw(st.lists(names, min_size=1, max_size=5, unique=True))
    return Pipeline(
        Variant(
            name,
            tuple(draw(st.lists(operations, max_size=4))),
            draw(encodings()),
            upscale=draw(st.booleans()),
            keep_metadata=draw(st.booleans()),
            first_frame=draw(st.booleans()),
            placeholder=draw(st.booleans()),
            background=draw(opaque_colours),
        )
        for name in variant_names
    )


# Retry policies with any legal backoff (finite; a zero base or cap is legal), for the delay
# bounds. Waits in place are zero so that a policy drawn here never sleeps when it is called.
backoff_policies = st.builds(
    RetryPolicy,
    backoff_base=st.floats(0, 3600, allow_nan=False),
    backoff_max=st.floats(0, 86_400, allow_nan=False),
    jitter=st.floats(0, 1, allow_nan=False),
    in_place_wait=st.just(0.0),
    in_place_max_wait=st.just(0.0),
)


# Decimal digits that int() and float() read like ASCII ones: Arabic-Indic, Devanagari,
# fullwidth. Written as code points so the sources stay ASCII.
FOREIGN_ZEROS = (0x0660, 0x0966, 0xFF10)


def foreign_digits(text: str, zero: int = 0xFF10) -> str:
    """``text`` with its ASCII digits written in another script's (fullwidth by default)."""
    return text.translate({ord("0") + d: zero + d for d in range(10)})


@st.composite
def foreign_numbers(draw: st.DrawFn) -> str:
    """A whole number as int() reads it but no ASCII-only parser should: some of its digits in
    another script, or ``_`` between digits (``1_000``)."""
    text = str(draw(st.integers(0, 999_999)))
    if draw(st.booleans()) and len(text) > 1:
        cut = draw(st.integers(1, len(text) - 1))
        return f"{text[:cut]}_{text[cut:]}"
    zero = draw(st.sampled_from(FOREIGN_ZEROS))
    which = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)).filter(any))
    return "".join(foreign_digits(c, zero) if w else c for c, w in zip(text, which, strict=True))


@st.composite
def ipv4_spellings(draw: st.DrawFn) -> tuple[str, IPv4Address]:
    """An IPv4 address and one of the ways ``inet_aton`` (and browsers) read it: 1 to 4 parts,
    each decimal, octal (a leading 0) or hex (0x), the last filling the bytes left over
    (``127.1``, ``2130706433``, ``0x7f.0.0.1``, ``0177.0.0.1``)."""
    address = draw(st.ip_addresses(v=4))
    value = int(address)
    parts = draw(st.integers(1, 4))
    numbers = [(value >> 8 * (3 - i)) & 0xFF for i in range(parts - 1)]
    numbers.append(value & ((1 << 8 * (5 - parts)) - 1))
    spellings = [
        lambda n: str(n),
        lambda n: f"0{n:o}",
        lambda n: f"0x{n:x}",
        lambda n: f"0X{n:08X}",
    ]
    spelled = [draw(st.sampled_from(spellings))(n) for n in numbers]
    return ".".join(spelled), address
