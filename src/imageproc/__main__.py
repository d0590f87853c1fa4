"""``python -m imageproc``: the same as the ``imageproc`` command (see :mod:`imageproc.cli`)."""

from imageproc.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
