from __future__ import annotations

import inspect
import json
import subprocess
import sys

import imageproc


def test_all_is_sorted_and_matches_the_exports() -> None:
    assert imageproc.__all__ == sorted(imageproc.__all__)
    public = {name for name in vars(imageproc) if not name.startswith("_")}
    # Submodules show up as attributes once imported; they are reached by their dotted names.
    modules = {name for name in public if inspect.ismodule(getattr(imageproc, name))}
    assert set(imageproc.__all__) - {"__version__"} == public - modules


def test_every_export_is_documented() -> None:
    for name in imageproc.__all__:
        obj = getattr(imageproc, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, name


def test_importing_imageproc_pulls_in_no_optional_dependency() -> None:
    code = (
        "import sys, json, imageproc, imageproc.testing;"
        "print(json.dumps(sorted(m for m in sys.modules"
        " if m.split('.')[0] in {'starlette', 's3fs', 'psycopg', 'prometheus_client',"
        " 'uvicorn', 'pillow_heif', 'boto3', 'botocore', 'aiobotocore'})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(result.stdout) == []


def test_the_package_is_typed() -> None:
    from importlib.resources import files

    assert files("imageproc").joinpath("py.typed").is_file()
