"""Test images and facts about them, shared by the engine's test modules."""

from __future__ import annotations

from PIL import Image

# How a viewer turns stored pixels upright, per EXIF orientation; storing the inverse of an upright
# picture under each tag must give the upright picture back.
INVERSE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
