"""MkDocs hooks: the parts of the site generated from the code at build time, so they never drift.

* ``reference/pictures/*``: the before/after picture of every pipeline operation and format,
  rendered by the real engine (``scripts/docs_pictures.py``);
* ``reference/openapi.json`` and the endpoint sections of ``reference/http.md``, from
  ``imageproc.http.OPENAPI`` (the document the service serves);
* the variable table of ``reference/configuration.md``, from ``.env.example``, checked against
  ``imageproc.config.ENV_VARS`` so that an undocumented setting fails the build.

A page asks for generated content with a marker comment on a line of its own:
``<!-- generated: openapi -->`` or ``<!-- generated: settings -->``.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[1]
PICTURES = "reference/pictures"
_MARKER = re.compile(r"^<!-- generated: (\w+) -->$", re.MULTILINE)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated pictures and the OpenAPI document to the site."""
    script = ROOT / "scripts/docs_pictures.py"
    spec = importlib.util.spec_from_file_location("docs_pictures", script)
    if not script.is_file() or spec is None or spec.loader is None:
        raise PluginError(f"{script} is missing")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, content in sorted(module.pictures().items()):
        files.append(File.generated(config, f"{PICTURES}/{name}", content=content))
    document = json.dumps(_openapi(), indent=2) + "\n"
    files.append(File.generated(config, "reference/openapi.json", content=document))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Replace each ``<!-- generated: NAME -->`` marker with what NAME renders."""

    def render(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in _RENDERERS:
            raise PluginError(f"{page.file.src_uri}: unknown generated section {name!r}")
        return _RENDERERS[name]()

    return _MARKER.sub(render, markdown)


# -- the HTTP reference -----------------------------------------------------------------------


def _openapi() -> dict[str, Any]:
    from imageproc.http import OPENAPI

    return OPENAPI


def _schema_name(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return f"`{schema['$ref'].rsplit('/', 1)[-1]}`"
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_schema_name(schema.get('items', {}))}"
    if "contentMediaType" in schema:
        return f"bytes ({schema['contentMediaType']})"
    return str(kind)


_METHODS = ("get", "head", "post", "put", "patch", "delete")


def _render_openapi() -> str:
    document = _openapi()
    lines: list[str] = []
    for path, item in document["paths"].items():
        shared = item.get("parameters", [])  # path-level parameters apply to every method
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            lines += [f"### `{method.upper()} {path}`", "", operation.get("summary", ""), ""]
            if operation.get("description"):
                lines += [operation["description"], ""]
            open_endpoint = operation.get("security") == []
            lines += [
                "No authentication." if open_endpoint else "Needs the API key, when keys are set.",
                "",
            ]
            parameters = [*shared, *operation.get("parameters", [])]
            if parameters:
                lines += ["| parameter | in | type | required |", "| --- | --- | --- | --- |"]
                for parameter in parameters:
                    lines.append(
                        f"| `{parameter['name']}` | {parameter['in']} | "
                        f"{_schema_name(parameter.get('schema', {}))} | "
                        f"{'yes' if parameter.get('required') else 'no'} |"
                    )
                lines.append("")
            body = operation.get("requestBody")
            if body:
                kinds = ", ".join(f"`{kind}`" for kind in body.get("content", {}))
                lines += [f"Request body ({kinds}): {body.get('description', '')}", ""]
                for kind, content in body.get("content", {}).items():
                    properties = content.get("schema", {}).get("properties")
                    if not properties:
                        continue
                    required = set(content["schema"].get("required", []))
                    lines += [f"| `{kind}` field | type | required |", "| --- | --- | --- |"]
                    for name, schema in properties.items():
                        lines.append(
                            f"| `{name}` | {_schema_name(schema)} | "
                            f"{'yes' if name in required else 'no'} |"
                        )
                    lines.append("")
            lines += ["| status | meaning | body |", "| --- | --- | --- |"]
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                bodies = ", ".join(
                    _schema_name(value.get("schema", {})) if "schema" in value else f"`{kind}`"
                    for kind, value in content.items()
                )
                lines.append(f"| {status} | {response.get('description', '')} | {bodies} |")
            lines.append("")
    lines += ["### Schemas", ""]
    for name, schema in document["components"]["schemas"].items():
        lines += [f"#### `{name}`", "", "```json", json.dumps(schema, indent=2), "```", ""]
    return "\n".join(lines)


# -- the configuration reference --------------------------------------------------------------

_VARIABLE = re.compile(r"^(?:# )?(IMAGEPROC_[A-Z0-9_]+)=(.*)$")


def _render_settings() -> str:
    from imageproc.config import ENV_VARS

    rows: list[tuple[str, str, str]] = []
    comment: list[str] = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = _VARIABLE.match(line)
        if match and not line.startswith("#"):
            rows.append((match.group(1), match.group(2), " ".join(comment)))
            comment = []
        elif match:  # a commented-out example value
            comment.append(f"`{line[2:].strip()}`")
        elif line.startswith("# ") and not match:
            comment.append(line[2:].strip())
        elif not line.strip():
            comment = []
    documented = {name for name, _, _ in rows}
    missing = set(ENV_VARS.values()) - documented
    if missing:
        raise PluginError(f".env.example does not document {sorted(missing)}")
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, default, meaning in rows:
        shown = f"`{default}`" if default else "*(empty)*"
        lines.append(f"| `{name}` | {shown} | {meaning.replace('|', '&#124;')} |")
    return "\n".join(lines) + "\n"


_RENDERERS = {"openapi": _render_openapi, "settings": _render_settings}
