"""A griffe extension that turns the reST markup of imageproc's docstrings into Markdown.

The docstrings are written to read well in ``help()`` and editors, with Sphinx roles such as
``:class:`~imageproc.Processor``` and ``::`` before literal blocks. mkdocstrings renders
Markdown, where those would show up verbatim, so they become inline code here; the source stays
as it is.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

# :class:`~imageproc.Processor`, :meth:`Processor.submit`, :data:`ENV_VARS`, …
_ROLE = re.compile(r":(?:py:)?[a-z]+:`(~?)([^`<]+?)(?:\s*<([^>]+)>)?`")
# A paragraph ending in "::" introduces an indented literal block in reST.
_LITERAL = re.compile(r"(\S)::$", re.MULTILINE)
_BARE_LITERAL = re.compile(r"^(\s*)::$", re.MULTILINE)


def _role(match: re.Match[str]) -> str:
    short, text, target = match.group(1), match.group(2).strip(), match.group(3)
    if target:  # :class:`the processor <Processor>` reads as its text
        return f"`{text}`"
    if short:  # ~a.b.C shows only C
        text = text.rsplit(".", 1)[-1]
    return f"`{text}`"


def markdown(text: str) -> str:
    """``text`` with Sphinx roles as inline code and ``::`` literal markers as a colon."""
    text = _ROLE.sub(_role, text)
    text = _BARE_LITERAL.sub("", text)
    return _LITERAL.sub(r"\1:", text)


class ReSTRoles(griffe.Extension):
    """Rewrite every docstring once the package is loaded."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
