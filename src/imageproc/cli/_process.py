"""``imageproc process``: local files processed now, without a queue, on a pool of threads, with a
progress bar on stderr."""

from __future__ import annotations

import argparse
import logging
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING

from imageproc.cli._reporting import EXIT_FAILED, EXIT_OK, UsageError
from imageproc.config import Settings
from imageproc.errors import ImageprocError

if TYPE_CHECKING:
    from imageproc.engine._imaging import ImageLimits, Rendered
    from imageproc.pipeline._pipeline import Pipeline

__all__ = ["process"]

logger = logging.getLogger("imageproc.cli")


def process(args: argparse.Namespace, settings: Settings) -> int:
    from imageproc.engine._open import ImageLimits
    from imageproc.pipeline._pipeline import DEFAULT_PIPELINE, Pipeline, PipelineLimits

    if args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {args.jobs}")
    pipeline = DEFAULT_PIPELINE
    if args.pipeline is not None:
        pipeline = Pipeline.parse(args.pipeline)
        PipelineLimits().check(pipeline)
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create {out}: {error.strerror}") from None
    limits = ImageLimits(max_bytes=settings.max_upload_bytes)
    files = list(dict.fromkeys(_expand(args.files)))  # a file given twice is done once
    if not files:
        raise UsageError("no files to process (the folders given are empty)")
    _refuse_shared_names(files)
    total, done, failed = len(files), 0, 0
    progress = _Progress(total)
    # Pillow releases the GIL while it decodes, resizes and encodes, so threads use every core.
    with ThreadPoolExecutor(max_workers=min(args.jobs, total)) as pool:
        futures = {pool.submit(_process_one, path, pipeline, limits, out): path for path in files}
        # In the order files finish, so the count moves while one big file is still working.
        for future in as_completed(futures):
            path, problem = futures[future], future.result()
            done += 1
            progress.show(done, path.name)
            if problem is not None:
                failed += 1
                progress.error(f"{path}: {problem}")
    progress.finish(f"{total - failed} processed, {failed} failed, into {out}")
    return EXIT_FAILED if failed else EXIT_OK


def _expand(paths: list[Path]) -> list[Path]:
    """The files to process: each path given, a folder standing for the files directly in it
    (sorted; hidden ones left out). A path that does not exist stays, to be reported."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(
                child for child in path.iterdir() if child.is_file() and child.name[0] != "."
            )
        else:
            files.append(path)
    return files


def _refuse_shared_names(files: list[Path]) -> None:
    """Outputs are named ``<stem>-<variant>.<ext>``: refuse files that would overwrite each
    other's (``a/cat.jpg`` and ``b/cat.jpg``, or ``cat.jpg`` and ``cat.png``)."""
    by_stem: dict[str, list[Path]] = {}
    for path in files:
        by_stem.setdefault(path.stem, []).append(path)
    shared = [paths for paths in by_stem.values() if len(paths) > 1]
    if shared:
        clashes = "; ".join(" and ".join(str(p) for p in paths) for paths in shared)
        raise UsageError(
            f"these files would write the same outputs (<name>-<variant>.<ext>): {clashes};"
            " process them into different --out folders, or rename them"
        )


def _process_one(path: Path, pipeline: Pipeline, limits: ImageLimits, out: Path) -> str | None:
    """Render every variant of one file into ``out``; the problem as text, or None."""
    from imageproc.engine import _imaging as imaging

    try:
        with path.open("rb") as file:
            data = file.read(limits.max_bytes + 1)
    except OSError as error:
        return f"cannot read: {error.strerror}"
    if len(data) > limits.max_bytes:
        return f"larger than the limit of {limits.max_bytes} bytes"
    try:
        imaging.probe(data, limits)
        rendered: list[Rendered] = imaging.render(data, pipeline, limits)
    except ImageprocError as error:
        return str(error)
    except Exception as error:  # a file must not stop the batch; the rest still get done
        logger.debug("unexpected error on %s", path, exc_info=True)
        return f"unexpected {type(error).__name__}"
    try:
        for variant in rendered:
            (out / f"{path.stem}-{variant.name}.{variant.extension}").write_bytes(variant.data)
    except OSError as error:
        return f"cannot write: {error.strerror}"
    return None


class _Progress:
    """A progress bar on one line of stderr, redrawn in place, on a terminal
    (``[#####---------------] 10/40 cat.jpg``); ``[10/40] cat.jpg`` a line each elsewhere."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.tty = sys.stderr.isatty()
        self._width = 0

    def show(self, done: int, name: str) -> None:
        line = f"[{done}/{self.total}] {name}"
        if self.tty:
            filled = _BAR * done // self.total
            line = f"[{'#' * filled}{'-' * (_BAR - filled)}] {done}/{self.total} {name}"
            sys.stderr.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            # Not a terminal (a log file, CI): one line per file, no carriage returns.
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def error(self, message: str) -> None:
        if self.tty:
            sys.stderr.write("\n")
            self._width = 0
        sys.stderr.write(f"error: {message}\n")

    def finish(self, summary: str) -> None:
        if self.tty and self._width:
            sys.stderr.write("\n")
        sys.stderr.write(summary + "\n")


#: Characters in the progress bar.
_BAR = 20
