"""Tests of the public surface: what ``imageproc`` and its public subpackages export, and what
importing them loads."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
import typing

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
        " 'uvicorn', 'pillow_heif', 'boto3', 'botocore', 'aiobotocore', 'anyio',"
        " 'httpx', 'httpcore', 'standardwebhooks'})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(result.stdout) == []


def test_the_http_adapter_does_not_load_the_server() -> None:
    # An app mounted in another ASGI server (hypercorn, granian, a FastAPI app) needs Starlette,
    # not uvicorn: only imageproc.http.serving, which guards uvicorn itself, imports it.
    code = "import sys, imageproc.http; print('uvicorn' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"


def test_the_package_is_typed() -> None:
    from importlib.resources import files

    assert files("imageproc").joinpath("py.typed").is_file()


# Every public module (no ``_`` in its dotted path) and what it exports. A new public name is a
# promise to every user: adding one means adding it here, on purpose. ``imageproc.migrations`` is
# Alembic's script folder, loaded by path, not an API.
PUBLIC_SURFACE = {
    "imageproc": sorted(imageproc.__all__),
    "imageproc.backends": [
        "Backends",
        "MemoryQueue",
        "MemoryRepository",
        "MemoryStorage",
        "backends_from_urls",
    ],
    "imageproc.backends.fsspec": ["FsspecStorage", "S3_ENDPOINT_ENV"],
    "imageproc.backends.sql": ["SQLBackend"],
    "imageproc.cli": ["main"],
    "imageproc.config": [
        "ENV_PREFIX",
        "ENV_VARS",
        "LOG_LEVELS",
        "Settings",
        "parse_byte_size",
        "parse_whole_number",
        "parse_workers",
        "read_env_file",
    ],
    "imageproc.delivery": [],
    "imageproc.errors": [
        "BackendUnavailable",
        "ConfigurationError",
        "FetchFailed",
        "IdempotencyConflict",
        "IllegalTransition",
        "ImageprocError",
        "InvalidImage",
        "InvalidInput",
        "InvalidKey",
        "InvalidPipeline",
        "LeaseLost",
        "ObjectNotFound",
        "OriginalGone",
        "QueueFull",
        "RenderFailed",
        "RenderTimeout",
        "StorageError",
        "TaskNotFound",
        "UnsafeURL",
        "WaitTimeout",
        "is_transient",
    ],
    "imageproc.engine": [
        "DEFAULT_FORMATS",
        "ImageLimits",
        "REWRITTEN_FORMATS",
        "Rendered",
        "probe",
        "render",
        "strip_location",
    ],
    "imageproc.http": ["OPENAPI", "create_app", "parse_api_keys", "parse_max_priorities"],
    "imageproc.http.serving": [
        "BodyDeadline",
        "RedactQuerySecrets",
        "SECRET_QUERY_PARAMETERS",
        "UploadLimit",
        "header_deadline_protocol",
        "redact_query_secrets",
    ],
    "imageproc.metrics": ["Metrics"],
    "imageproc.pipeline": [
        "Blur",
        "Colour",
        "Crop",
        "DEFAULT_PIPELINE",
        "Encoding",
        "Fill",
        "Fit",
        "Flip",
        "Grayscale",
        "MAX_JSON_DEPTH",
        "OPERATIONS",
        "Operation",
        "Pad",
        "Pipeline",
        "PipelineLimits",
        "Resize",
        "Rotate",
        "Sharpen",
        "Variant",
    ],
    "imageproc.testing": ["FastForwardClock", "FlakyStorage", "memory_processor", "sample_image"],
}
# The root's list is pinned too: it is spelled out so that a change to it shows in a diff here.
ROOT_EXPORTS = [
    "AddressPolicy", "Delivery", "DeliveryStatus", "DeliveryStore", "Webhooks", "ProgressQueue",
    "FetchFailed", "Fetching", "OriginalGone",
    "AsyncProcessor", "BackendUnavailable", "BatchQueue", "Blur", "Colour", "ConfigurationError",
    "Crop", "Encoding", "Events", "Fill", "Fit", "Flip", "Grayscale", "IdempotencyConflict",
    "IdempotencyRecord", "IdempotencyStore", "IllegalTransition", "ImageLimits",
    "ImageTooLarge", "ImageprocError", "InvalidImage", "InvalidInput", "InvalidKey",
    "InvalidPipeline", "Lease", "LeaseLost", "ListableStorage", "ObjectInfo", "ObjectNotFound",
    "Operation", "Output", "Pad", "Pipeline", "PipelineLimits", "Processor", "Queue", "QueueFull",
    "QueueLimits", "QueueStats", "RenderFailed", "RenderTimeout", "Repository", "Resize",
    "RetryPolicy", "Rotate", "Sharpen", "Source", "SourceInfo", "SourceLookup", "SourceUsage",
    "Storage", "StorageError", "StoredObject", "Task", "TaskError", "TaskNotFound", "TaskStatus",
    "TransactionalRepository", "UnsafeURL", "Upload", "Variant", "WaitTimeout", "__version__",
    "task_json",
]  # fmt: skip


def _public_modules() -> list[str]:
    names = ["imageproc"]
    for info in pkgutil.walk_packages(imageproc.__path__, "imageproc."):
        parts = info.name.split(".")[1:]
        if not any(part.startswith("_") for part in parts) and parts[0] != "migrations":
            names.append(info.name)
    return sorted(names)


def test_the_public_surface_is_a_deliberate_choice() -> None:
    found = {}
    for name in _public_modules():
        module = importlib.import_module(name)
        assert hasattr(module, "__all__"), f"{name} is public: say what it exports in __all__"
        found[name] = sorted(module.__all__)
    assert found == PUBLIC_SURFACE
    assert sorted(imageproc.__all__) == sorted(ROOT_EXPORTS)


def test_every_public_name_is_documented() -> None:
    for name, exports in PUBLIC_SURFACE.items():
        module = importlib.import_module(name)
        assert module.__doc__, name
        for export in exports:
            obj = getattr(module, export)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert obj.__doc__, f"{name}.{export}"


def test_public_classes_keep_their_annotations_resolvable() -> None:
    # Tools that read annotations (typing.get_type_hints, attrs.resolve_types, cattrs) look
    # names up in the module a class says it comes from: it must be the one that defines it.
    for name in imageproc.__all__:
        obj = getattr(imageproc, name)
        if inspect.isclass(obj):
            typing.get_type_hints(obj)
