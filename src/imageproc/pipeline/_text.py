"""The compact text form of a pipeline, and its reader (what :meth:`Pipeline.parse` calls)::

    thumb=fill:256x256:smart,webp:q80;large=fit:1600x1600,jpeg:q85:progressive

Variants are separated by ``;``; each is ``name=`` (optional for a lone variant, which is then
called ``default``) followed by tokens separated by ``,``; a token is ``op`` or ``op:arg:arg``.

Operations (``W``, ``H`` in pixels; no operation enlarges the image unless the variant says
``upscale``):

==========================  ====================================================================
``fit:WxH``                 scale to fit inside the box, keeping the aspect ratio
``fill:WxH[:gravity]``      cover the box, then crop; gravity ``center`` (default), ``n``, ``s``,
                            ``e``, ``w``, ``ne``, ``nw``, ``se``, ``sw``, or ``smart`` (the most
                            detailed region)
``pad:WxH[:colour]``        fit, then letterbox to exactly WxH (colour ``RRGGBB[AA]``, white)
``resize:WxH``              exactly WxH, ignoring the aspect ratio
``resize:Wx`` / ``xH``      one side, keeping the aspect ratio
``crop:x,y,w,h``            the rectangle at (x, y) of w x h, clipped to the image
``rotate:DEG[:colour]``     clockwise; 90/180/270 are lossless, other angles expand the canvas
                            and fill the corners with the colour (white)
``flip:h`` / ``flip:v``     mirror horizontally or vertically
``grayscale``               drop colour
``blur:SIGMA``              Gaussian blur (0 < SIGMA <= 100)
``sharpen[:AMOUNT]``        unsharp mask (0 < AMOUNT <= 10, default 1)
==========================  ====================================================================

Encodings: ``jpeg[:qN][:progressive]``, ``png``, ``webp[:qN][:lossless]``, ``avif[:qN]``,
``gif``, ``tiff``, and ``original`` (the input's format). Without one, a variant is JPEG. Default
qualities: JPEG 85, WebP 79, AVIF 63 (imgproxy's choices for the last two).

Variant options: ``upscale``; ``keep-metadata`` (metadata is stripped by default, for privacy;
colours stay right either way); ``first-frame`` (one still image from an animation);
``placeholder`` (a BlurHash and the dominant colour on the output); ``background:RRGGBB``
(what transparency is flattened onto where the format has none; white by default).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar

from imageproc._formats import OUTPUT_FORMATS
from imageproc.errors import InvalidPipeline
from imageproc.pipeline._colour import Colour
from imageproc.pipeline._encoding import Encoding
from imageproc.pipeline._operations import OPERATIONS, Operation
from imageproc.pipeline._variant import FLAGS, NAME, Variant, opaque

__all__ = ["fail", "parse_pipeline"]

#: What a reader builds: a Pipeline, which it is handed (so it needs no import of it).
P = TypeVar("P")


def parse_pipeline(cls: Callable[[tuple[Variant, ...]], P], text: str) -> P:
    """Read the compact text form into a ``cls`` (made from its variants);
    :class:`~imageproc.InvalidPipeline` names any fault."""
    if not text.strip():
        raise InvalidPipeline("empty pipeline")
    pieces = list(_split(text, ";", 0))
    return cls(tuple(_parse_variant(piece, at, lone=len(pieces) == 1) for piece, at in pieces))


def fail(message: str, position: int) -> InvalidPipeline:
    """The fault ``message`` at ``position`` (0-based) of the input, said counting from 1."""
    return InvalidPipeline(f"{message} (at character {position + 1})")


def _split(text: str, separator: str, start: int) -> Iterator[tuple[str, int]]:
    """Split ``text`` on ``separator``, yielding each piece with its offset in the whole input."""
    offset = start
    for piece in text.split(separator):
        yield piece, offset
        offset += len(piece) + 1


def _tokens(body: str, start: int) -> Iterator[tuple[str, int]]:
    """The variant's tokens with their offsets. ``crop:x,y,w,h`` uses the token separator inside
    its argument, so a crop token takes the three pieces after it along."""
    pieces = list(_split(body, ",", start))
    index = 0
    while index < len(pieces):
        token, at = pieces[index]
        width = 4 if token.strip().startswith("crop:") else 1
        yield ",".join(piece for piece, _ in pieces[index : index + width]), at
        index += width


def _parse_variant(text: str, position: int, *, lone: bool) -> Variant:
    name, body, body_at = "default", text, position
    if "=" in text:
        raw_name, body = text.split("=", 1)
        body_at = position + len(raw_name) + 1
        name = raw_name.strip()  # "a=fit:1x1; b=png" reads as written
        if not NAME.fullmatch(name):
            raise fail(
                f"bad variant name {name!r}", position + len(raw_name) - len(raw_name.lstrip())
            )
    elif not lone:
        raise fail(f"variant {text!r} needs a name (name=…) when there are several", position)
    operations: list[Operation] = []
    options: dict[str, Any] = {}
    encoding: Encoding | None = None
    for token, at in _tokens(body, body_at):
        op, *args = token.strip().split(":")
        try:
            if op in OPERATIONS:
                cls = OPERATIONS[op]
                if cls.needs_args and not args:
                    raise InvalidPipeline(f"{op} needs arguments, as in {_EXAMPLES[op]}")
                operations.append(cls.parse_args(args))
            elif op in OUTPUT_FORMATS or op == "original":
                if encoding is not None:
                    raise InvalidPipeline(f"a second output format (the variant has {encoding})")
                encoding = Encoding.parse(op, args)
            elif op in FLAGS or op == "background":
                attribute = FLAGS.get(op, op)
                if attribute in options:
                    raise InvalidPipeline(f"option {op!r} is given twice")
                if op == "background":
                    if len(args) != 1:
                        raise InvalidPipeline(
                            "background takes one colour, as in background:ffffff"
                        )
                    options[attribute] = opaque(None, None, Colour.parse(args[0]))
                elif args:
                    raise InvalidPipeline(f"option {op!r} takes no arguments")
                else:
                    options[attribute] = True
            elif not op:
                raise InvalidPipeline("empty token")
            else:
                raise _unknown(op, token, at)
        except InvalidPipeline as error:
            if "(at character" in error.message:
                raise
            raise fail(f"{error.message} in {token!r}", at) from error
    return Variant(name, tuple(operations), encoding or Encoding(), **options)


def _unknown(word: str, token: str, at: int) -> InvalidPipeline:
    known = [*OPERATIONS, *OUTPUT_FORMATS, "original", *FLAGS, "background"]
    close = difflib.get_close_matches(word, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    where = f" in {token!r}" if token.strip() != word else ""
    return InvalidPipeline(
        f"unknown operation, format or option {word!r}{where} (at character {at + 1}){hint}"
    )


_EXAMPLES: Final = {
    "fit": "fit:800x600",
    "fill": "fill:256x256",
    "pad": "pad:800x600",
    "resize": "resize:800x",
    "crop": "crop:0,0,100,100",
    "rotate": "rotate:90",
    "flip": "flip:h",
    "blur": "blur:2",
}
