"""Speed and peak memory of the imaging engine against naive Pillow and pyvips.

    python benchmarks/engine.py [--repeat 3] [--workdir DIR]

Three sources with real detail (gradients, shapes and noise, the same every run) are written to
``DIR`` once (default: ``imageproc-bench`` in the temporary directory): a 24 MP JPEG, a 12 MP
JPEG and a 12 MP PNG. For each, two jobs:

* one 256 px JPEG thumbnail (q85);
* three variants from one source: 256 px WebP q80, 1024 px WebP q80, 1600 px JPEG q85.

Each job is run by each engine in a fresh process, so that its peak RSS is its own (``VmHWM``
on Linux: a child's ``ru_maxrss`` there starts from its parent's peak):

* ``imageproc``: ``imageproc.engine.render`` with the pipeline, all variants in one call, with
  glibc's malloc set as imageproc's worker pool sets it (``engine._allocator``: freed image
  memory kept for the next image rather than unmapped; the other engines keep glibc's defaults,
  which suit pyvips slightly better);
* ``one by one`` (three variants only): one ``render`` call per variant, decoding each time;
* ``Pillow``: naive Pillow per variant: full decode, EXIF transpose, one LANCZOS resize, encode;
* ``pyvips``: ``thumbnail_buffer`` per variant (shrink-on-load) with ``VIPS_CONCURRENCY=1`` and
  the operation cache off; skipped when pyvips or libvips is missing (``apt-get install
  libvips42``, ``pip install pyvips``: not a dependency of imageproc).

Inside each process one run warms up, then the median of ``--repeat`` runs is reported. The runs
happen on a worker thread, as in imageproc's workers: on glibc the main thread is markedly slower
with big Pillow buffers (see benchmarks/throughput.py). The table gives milliseconds, peak RSS in
MB, imageproc's time as a ratio to pyvips and to naive Pillow (below 1 is faster), and the bytes
each engine wrote for the job (all variants together), so that a speed-up bought with bigger
files shows.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from PIL import Image, ImageDraw, ImageOps

#: name → (file name, size, Pillow format, save options)
SOURCES: Final[dict[str, tuple[str, tuple[int, int], str, dict[str, Any]]]] = {
    "24 MP JPEG": ("24mp.jpg", (6000, 4000), "JPEG", {"quality": 90}),
    "12 MP JPEG": ("12mp.jpg", (4000, 3000), "JPEG", {"quality": 90}),
    "12 MP PNG": ("12mp.png", (4000, 3000), "PNG", {"compress_level": 6}),
}
#: job → variants as (longest side, imageproc encoding token, pyvips suffix, Pillow format, options)
Variant = tuple[int, str, str, str, dict[str, Any]]
JOBS: Final[dict[str, list[Variant]]] = {
    "256 px JPEG": [(256, "jpeg:q85", ".jpg[Q=85]", "JPEG", {"quality": 85})],
    "3 variants": [
        (256, "webp:q80", ".webp[Q=80]", "WEBP", {"quality": 80}),
        (1024, "webp:q80", ".webp[Q=80]", "WEBP", {"quality": 80}),
        (1600, "jpeg:q85", ".jpg[Q=85]", "JPEG", {"quality": 85}),
    ],
}
ENGINES: Final = ("imageproc", "one by one", "Pillow", "pyvips")


# --- sources -------------------------------------------------------------------------------------


def picture(width: int, height: int, seed: int) -> Image.Image:
    """A deterministic picture with detail at every scale: gradients, shapes, noise."""
    rng = random.Random(seed)
    across = Image.linear_gradient("L").resize((width, height))
    down = Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_90).resize((width, height))
    radial = Image.radial_gradient("L").resize((width, height))
    image = Image.merge("RGB", (across, down, radial))
    draw = ImageDraw.Draw(image)
    for _ in range(600):
        x, y = rng.randrange(width), rng.randrange(height)
        w, h = rng.randrange(4, width // 6), rng.randrange(4, height // 6)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        shape = rng.randrange(3)
        if shape == 0:
            draw.rectangle((x, y, x + w, y + h), fill=colour)
        elif shape == 1:
            draw.ellipse((x, y, x + w, y + h), outline=colour, width=rng.randrange(1, 12))
        else:
            draw.line((x, y, x + w, y + h), fill=colour, width=rng.randrange(1, 6))
    noise = Image.merge(
        "RGB", [Image.frombytes("L", (width, height), rng.randbytes(width * height))] * 3
    )
    return Image.blend(image, noise, 0.12)


def sources(workdir: Path) -> dict[str, Path]:
    """Write the sources to ``workdir`` unless they are there already; their paths by name."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for seed, (name, (file_name, size, fmt, options)) in enumerate(SOURCES.items()):
        path = workdir / file_name
        if not path.exists():
            print(f"writing {path} …", file=sys.stderr)
            partial = path.with_suffix(".partial")
            picture(*size, seed=seed).save(partial, fmt, **options)
            partial.rename(path)
        paths[name] = path
    return paths


# --- one measurement, in a process of its own ----------------------------------------------------


def pipeline_text(variants: list[Variant]) -> str:
    return ";".join(
        f"v{i}=fit:{side}x{side},{token}" for i, (side, token, *_) in enumerate(variants)
    )


def work(engine: str, variants: list[Variant], data: bytes) -> Callable[[], int]:
    """The job as a function returning the bytes it produced."""
    if engine in ("imageproc", "one by one"):
        from imageproc.engine import _allocator as allocator

        allocator.reuse_image_memory()  # as WorkerPool.start does
    if engine == "imageproc":
        from imageproc import Pipeline
        from imageproc.engine._imaging import render

        pipeline = Pipeline.parse(pipeline_text(variants))
        return lambda: sum(len(r.data) for r in render(data, pipeline))
    if engine == "one by one":
        from imageproc import Pipeline
        from imageproc.engine._imaging import render

        pipelines = [Pipeline.parse(pipeline_text([variant])) for variant in variants]
        return lambda: sum(len(r.data) for p in pipelines for r in render(data, p))
    if engine == "Pillow":
        return lambda: sum(naive_pillow(data, variant) for variant in variants)
    if engine == "pyvips":
        import pyvips  # type: ignore[import-not-found, import-untyped, unused-ignore]

        pyvips.cache_set_max(0)  # every run must do the work, not find it cached
        return lambda: sum(
            len(pyvips.Image.thumbnail_buffer(data, side, height=side).write_to_buffer(suffix))
            for side, _, suffix, _, _ in variants
        )
    raise ValueError(engine)


def naive_pillow(data: bytes, variant: Variant) -> int:
    side, _, _, fmt, options = variant
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        upright = ImageOps.exif_transpose(image) or image
        scale = min(1.0, side / max(upright.size))
        size = (max(1, round(upright.width * scale)), max(1, round(upright.height * scale)))
        resized = upright.resize(size, Image.Resampling.LANCZOS).convert("RGB")
        buffer = io.BytesIO()
        resized.save(buffer, fmt, **options)
        return len(buffer.getbuffer())


def measure(engine: str, job: str, path: Path, repeat: int) -> dict[str, float]:
    """Run one job ``repeat`` times after a warm-up, on a worker thread; median ms, peak RSS."""
    data = path.read_bytes()
    run = work(engine, JOBS[job], data)
    timings: list[float] = []
    sizes: list[int] = []
    failure: list[BaseException] = []

    def loop() -> None:
        try:
            sizes.append(run())
            for _ in range(repeat):
                started = time.perf_counter()
                run()
                timings.append((time.perf_counter() - started) * 1000)
        except BaseException as error:  # reported by the parent
            failure.append(error)

    thread = threading.Thread(target=loop)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return {
        "ms": statistics.median(timings),
        "rss_mb": peak_rss_kb() / 1024,
        "kb": sizes[0] / 1024,
    }


def peak_rss_kb() -> int:
    """This process's peak RSS: VmHWM where Linux has it, because its ``ru_maxrss`` starts from
    the parent's peak (exec keeps the high-water mark of the memory it replaces)."""
    import resource

    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def in_fresh_process(engine: str, job: str, path: Path, repeat: int) -> dict[str, float] | None:
    env = {**os.environ, "VIPS_CONCURRENCY": "1"}
    command = [sys.executable, __file__, "--measure", engine, job, str(path), str(repeat)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  {engine} / {job} / {path.name}: failed: {last}", file=sys.stderr)
        return None
    figures: dict[str, float] = json.loads(result.stdout)
    return figures


def pyvips_available() -> bool:
    try:
        import pyvips  # type: ignore[import-not-found, import-untyped, unused-ignore]

        pyvips.Image.black(1, 1).avg()
    except Exception:  # ImportError, or an OSError when libvips itself is missing
        return False
    return True


# --- the table -----------------------------------------------------------------------------------


def ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or not denominator:
        return "-"
    return f"{numerator / denominator:.2f}"


def cell(figures: dict[str, float] | None, key: str, digits: int = 0) -> str:
    return "-" if figures is None else f"{figures[key]:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "imageproc-bench"
    )
    parser.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        engine, job, path, repeat = args.measure
        print(json.dumps(measure(engine, job, Path(path), int(repeat))))
        return

    paths = sources(args.workdir)
    engines = [e for e in ENGINES if e != "pyvips" or pyvips_available()]
    if "pyvips" not in engines:
        print("pyvips or libvips is missing: the pyvips column is skipped", file=sys.stderr)
    header = (
        f"{'source':<11} {'job':<12} {'imageproc':>9} {'1-by-1':>7} {'Pillow':>7} {'pyvips':>7}"
        f" {'÷pyvips':>7} {'÷Pillow':>7}   peak RSS MB: imageproc  1-by-1  Pillow  pyvips"
        "   output KB: imageproc  Pillow  pyvips"
    )
    print(
        f"ms per job (median of {args.repeat}), one thread; ratios are imageproc's time over theirs"
    )
    print(header)
    print("-" * len(header))
    for source, path in paths.items():
        for job in JOBS:
            results: dict[str, dict[str, float] | None] = {}
            for engine in engines:
                if engine == "one by one" and len(JOBS[job]) == 1:
                    continue  # the same as imageproc for a single variant
                results[engine] = in_fresh_process(engine, job, path, args.repeat)
            ours = results.get("imageproc")
            mine = ours["ms"] if ours else None
            vips, pillow = results.get("pyvips"), results.get("Pillow")
            print(
                f"{source:<11} {job:<12} {cell(ours, 'ms'):>9}"
                f" {cell(results.get('one by one'), 'ms'):>7} {cell(pillow, 'ms'):>7}"
                f" {cell(vips, 'ms'):>7} {ratio(mine, vips['ms'] if vips else None):>7}"
                f" {ratio(mine, pillow['ms'] if pillow else None):>7}   {'':>12}"
                f" {cell(ours, 'rss_mb'):>9} {cell(results.get('one by one'), 'rss_mb'):>7}"
                f" {cell(pillow, 'rss_mb'):>7} {cell(vips, 'rss_mb'):>7}   {'':>10}"
                f" {cell(ours, 'kb'):>9} {cell(pillow, 'kb'):>7} {cell(vips, 'kb'):>7}",
                flush=True,
            )


if __name__ == "__main__":
    main()
