"""The pipeline language: what to make of an image (variants, their operations and encodings),
its text form (``thumb=fit:256x256,webp:q80``) and its JSON form.

The model: it imports nothing of ours but the errors.
"""

from imageproc.pipeline._model import (
    DEFAULT_PIPELINE,
    MAX_JSON_DEPTH,
    OPERATIONS,
    Blur,
    Colour,
    Crop,
    Encoding,
    Fill,
    Fit,
    Flip,
    Grayscale,
    Operation,
    Pad,
    Pipeline,
    PipelineLimits,
    Resize,
    Rotate,
    Sharpen,
    Variant,
)

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
