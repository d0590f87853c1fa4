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


def progressive_jpeg(size: tuple[int, int], *, extra_scans: int = 0, mode: str = "L") -> bytes:
    """A progressive JPEG of ``size``; with ``extra_scans``, its last scan repeated that many
    times more: a small file that costs the decoder a pass over every block per scan."""
    import io

    picture = Image.linear_gradient("L").resize(size).convert(mode)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", progressive=True, quality=50)
    data = buffer.getvalue()
    last_scan = data[data.rindex(b"\xff\xda") : -2]  # up to the end-of-image marker
    return data[:-2] + last_scan * extra_scans + b"\xff\xd9"
