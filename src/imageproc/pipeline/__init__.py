"""The pipeline language: what to make of an image (variants, their operations and encodings),
its text form (``thumb=fit:256x256,webp:q80``) and its JSON form.

The model: it imports nothing of ours but the errors and the format table (``_formats``).
"""

from imageproc.pipeline._colour import Colour
from imageproc.pipeline._encoding import Encoding
from imageproc.pipeline._json import MAX_JSON_DEPTH
from imageproc.pipeline._operations import (
    OPERATIONS,
    Blur,
    Crop,
    Fill,
    Fit,
    Flip,
    Grayscale,
    Operation,
    Pad,
    Resize,
    Rotate,
    Sharpen,
)
from imageproc.pipeline._pipeline import DEFAULT_PIPELINE, Pipeline, PipelineLimits
from imageproc.pipeline._variant import Variant

__all__ = [
    "DEFAULT_PIPELINE",
    "MAX_JSON_DEPTH",
    "OPERATIONS",
    "Blur",
    "Colour",
    "Crop",
    "Encoding",
    "Fill",
    "Fit",
    "Flip",
    "Grayscale",
    "Operation",
    "Pad",
    "Pipeline",
    "PipelineLimits",
    "Resize",
    "Rotate",
    "Sharpen",
    "Variant",
]
