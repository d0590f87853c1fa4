"""Hypothesis strategies for imageproc values, in one place."""

from __future__ import annotations

from hypothesis import strategies as st

from imageproc import Encoding, Fit, Pipeline, Resize, Variant
from imageproc.pipeline import DEFAULT_QUALITY, FORMATS

sides = st.integers(min_value=1, max_value=8192)
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,15}", fullmatch=True)

operations = st.one_of(
    st.builds(Fit, sides, sides),
    st.builds(Resize, sides, sides),
    st.builds(Resize, sides, st.none()),
    st.builds(Resize, st.none(), sides),
)


@st.composite
def encodings(draw: st.DrawFn) -> Encoding:
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    quality = draw(st.none() | st.integers(1, 100)) if fmt in DEFAULT_QUALITY else None
    return Encoding(fmt, quality)


@st.composite
def pipelines(draw: st.DrawFn) -> Pipeline:
    variant_names = draw(st.lists(names, min_size=1, max_size=5, unique=True))
    return Pipeline(
        Variant(
            name,
            tuple(draw(st.lists(operations, max_size=4))),
            draw(encodings()),
            draw(st.booleans()),
        )
        for name in variant_names
    )
