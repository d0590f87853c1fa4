"""The layer rules of the design, checked on the import statements of every module of the
package (parsed, not imported: fast, and a module that fails to import cannot hide an edge).

An import under ``if TYPE_CHECKING:`` never runs, so it is not a dependency. An import inside a
function runs later, when the function is called: it counts for the layer rules (it is still a
dependency) but not for cycles (Python resolves those fine).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs
import pytest

import imageproc

PACKAGE = "imageproc"
# The package the tests import, so the rules hold for the code that actually runs.
ROOT = Path(imageproc.__file__).resolve().parent


@attrs.frozen
class Import:
    """One import statement's target: an imageproc module, or a third-party top-level name."""

    target: str
    line: int
    #: Runs when the importing module is imported (not inside a function).
    eager: bool


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(
    body: Iterable[ast.stmt], *, eager: bool
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, eager
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_nodes(node.orelse, eager=eager)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _import_nodes(_child_statements(node), eager=False)
        else:
            yield from _import_nodes(_child_statements(node), eager=eager)


def _child_statements(node: ast.AST) -> list[ast.stmt]:
    # Statements nested in any block (if/try/with/for/class/match/handlers), in source order.
    found: list[ast.stmt] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.stmt):
            found.append(child)
        elif isinstance(child, ast.excepthandler | ast.match_case):
            found.extend(child.body)
    return found


def _package_of(module: str) -> str:
    is_package = MODULES[module].name == "__init__.py"
    return module if is_package else module.rpartition(".")[0]


def _resolve_from(module: str, node: ast.ImportFrom) -> list[str]:
    if node.level:
        base = _package_of(module)
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        base = f"{base}.{node.module}" if node.module else base
    else:
        base = node.module or ""
    if base.split(".")[0] != PACKAGE:
        return [base.split(".")[0]]
    # ``from pkg import name`` imports the submodule pkg.name when there is one, else pkg.
    targets = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
    if len(targets) < len(node.names):
        targets.append(base)
    return targets


def imports_of(module: str) -> list[Import]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: list[Import] = []
    for node, eager in _import_nodes(tree.body, eager=True):
        if isinstance(node, ast.Import):
            targets = [
                alias.name if alias.name.split(".")[0] == PACKAGE else alias.name.split(".")[0]
                for alias in node.names
            ]
        else:
            targets = _resolve_from(module, node)
        found.extend(Import(target, node.lineno, eager) for target in targets)
    return found


IMPORTS = {module: imports_of(module) for module in MODULES}


def ours(module: str, *, eager_only: bool = False) -> set[str]:
    """The imageproc modules ``module`` imports itself."""
    return {
        imp.target
        for imp in IMPORTS[module]
        if imp.target in MODULES and imp.target != module and (imp.eager or not eager_only)
    }


def reachable(module: str, *, eager_only: bool = False) -> dict[str, str]:
    """Every imageproc module that importing ``module`` (and calling it) may import in turn,
    each with the chain of imports that gets there (for the failure message).

    Importing ``imageproc.http._app`` runs ``imageproc/http/__init__`` first, so a module's
    parent packages are followed too, except the root: every ``imageproc.x`` runs
    ``imageproc/__init__``, which imports the whole public API, so following it would make
    everything reach everything. An explicit ``from imageproc import Name`` is followed: it does
    run ``__init__``.
    """
    chains: dict[str, str] = {}
    todo = [(module, module)]
    while todo:
        source, chain = todo.pop()
        for imp in IMPORTS[source]:
            if not (imp.eager or not eager_only):
                continue
            for target in (imp.target, *_parents(imp.target)):
                if target in MODULES and target != module and target not in chains:
                    chains[target] = f"{chain} -({imp.line})-> {target}"
                    todo.append((target, chains[target]))
    return chains


def _parents(module: str) -> list[str]:
    """The packages whose ``__init__`` importing ``module`` runs, the root left out."""
    parts = module.split(".")
    return [".".join(parts[:n]) for n in range(2, len(parts))]


def under(prefix: str) -> list[str]:
    return [m for m in MODULES if m == prefix or m.startswith(prefix + ".")]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


# -- the parser itself: a rule is only as good as the edges it sees ----------------------------


def test_every_module_of_the_package_is_parsed() -> None:
    assert {"imageproc", "imageproc._processor", "imageproc.backends.sql._backend"} <= set(MODULES)
    assert "imageproc.delivery._completions" in MODULES


def test_relative_and_package_imports_are_resolved() -> None:
    # _backend.py says ``from imageproc.backends.sql import _schema as sqlschema``: the submodule.
    assert {"imageproc.backends.sql._schema", "imageproc.backends.sql._groupcommit"} <= ours(
        "imageproc.backends.sql._backend"
    )


def test_type_checking_imports_are_not_dependencies() -> None:
    # _completions.py imports Task only for annotations.
    assert "imageproc._task" not in ours("imageproc.delivery._completions")


def test_imports_inside_functions_count_but_are_not_eager() -> None:
    # The CLI imports the HTTP app only when ``serve`` runs.
    assert "imageproc.http._app" in ours("imageproc.cli._serve")
    assert "imageproc.http._app" not in ours("imageproc.cli._serve", eager_only=True)


def test_importing_a_module_runs_its_parent_packages() -> None:
    # _backend imports imageproc.backends.sql._schema, which runs backends/__init__ first.
    chains = reachable("imageproc.backends.sql._backend")
    assert "imageproc.backends" in chains
    assert PACKAGE not in chains


def test_a_cycle_is_found_and_named() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# -- the rules ----------------------------------------------------------------------------------


def test_no_import_cycles_among_our_modules() -> None:
    graph = {module: ours(module, eager_only=True) for module in MODULES}
    assert find_cycle(graph) is None


def test_no_cycles_inside_a_package_even_at_call_time() -> None:
    # Within one package, an import deferred into a function is still a knot: the text reader
    # that builds a Pipeline must not import the module whose Pipeline.parse imports it.
    graph = {
        module: {
            target
            for target in ours(module)
            if target.rpartition(".")[0] == module.rpartition(".")[0]
            and MODULES[target].name != "__init__.py"
        }
        for module in MODULES
    }
    assert find_cycle(graph) is None


@pytest.mark.parametrize(
    "module", ["imageproc._worker", "imageproc._execution", "imageproc._submission"]
)
def test_the_parts_never_reach_the_processor(module: str) -> None:
    # The Processor composes them; they must not know it, not even through another module.
    chains = reachable(module)
    assert "imageproc._processor" not in chains, chains["imageproc._processor"]


# Above the backends: what composes them. A backend that reached any of these would tie storage
# or the queue to one way of running them.
APPLICATION = (
    "imageproc._processor",
    "imageproc._worker",
    "imageproc._execution",
    "imageproc._submission",
    *under("imageproc.cli"),
    "imageproc.config",
    *under("imageproc.http"),
)


@pytest.mark.parametrize("module", under("imageproc.backends"))
def test_a_backend_never_imports_the_processor_worker_or_http(module: str) -> None:
    chains = reachable(module)
    assert [chains[m] for m in APPLICATION if m in chains] == []


# The service layer: the HTTP adapter is an optional extra (``imageproc[http]``); the core must
# work without it.
ADAPTERS = {*under("imageproc.cli"), "imageproc.config", *under("imageproc.http")}


def _starlette_importers() -> dict[str, int]:
    return {
        module: imp.line
        for module in MODULES
        for imp in IMPORTS[module]
        if imp.target == "starlette"
    }


def test_nothing_below_the_service_layer_imports_starlette() -> None:
    importers = _starlette_importers()
    assert importers, "the parser no longer sees the HTTP adapter's starlette imports"
    assert {f"{m}:{line}" for m, line in importers.items() if m not in ADAPTERS} == set()


def test_importing_the_core_does_not_pull_in_starlette() -> None:
    importers = _starlette_importers()
    pulled = [
        chain
        for module in sorted(set(MODULES) - ADAPTERS - {PACKAGE})
        for target, chain in reachable(module, eager_only=True).items()
        if target in importers
    ]
    assert pulled == []


# "The model imports nothing of ours but errors": the errors, the pipeline language and the task.
# A Task holds its Pipeline, so the task may import the pipeline too.
MODEL = {
    "imageproc.errors",
    "imageproc._formats",
    *under("imageproc.pipeline"),
    "imageproc._task",
    "imageproc._idempotency",
    # Values too, though they live with what uses them: a task as JSON, and a webhook
    # delivery (the outbox row a backend writes with a final status).
    "imageproc._taskjson",
    "imageproc.delivery._outbox",
}
MODEL_ALLOWED = {
    "imageproc.errors": set(),
    "imageproc._formats": set(),
    **{
        m: {"imageproc.errors", "imageproc._formats", *under("imageproc.pipeline")}
        for m in under("imageproc.pipeline")
    },
    "imageproc._task": {"imageproc.errors", *under("imageproc.pipeline")},
    "imageproc._idempotency": {"imageproc.errors", "imageproc._task", *under("imageproc.pipeline")},
    "imageproc._taskjson": {"imageproc._task"},
    "imageproc.delivery._outbox": {"imageproc._task", "imageproc._taskjson"},
}


@pytest.mark.parametrize("module", sorted(MODEL_ALLOWED))
def test_the_model_imports_nothing_of_ours_but_errors(module: str) -> None:
    extra = [
        f"{module}:{i.line} imports {i.target}"
        for i in IMPORTS[module]
        if i.target.split(".")[0] == PACKAGE and i.target not in MODEL_ALLOWED[module] | {module}
    ]
    assert extra == []


# The engine is pure: bytes in, bytes out. It imports only the model and itself, and nothing that
# reaches a network, a database, a filesystem library or another process.
NO_IO = {"socket", "subprocess", "asyncio", "urllib", "http", "fsspec", "s3fs", "sqlalchemy"}


@pytest.mark.parametrize("module", under("imageproc.engine"))
def test_the_engine_imports_only_the_model_and_does_no_io(module: str) -> None:
    allowed = MODEL | set(under("imageproc.engine"))
    wrong = [
        f"{module}:{i.line} imports {i.target}"
        for i in IMPORTS[module]
        if (i.target.split(".")[0] == PACKAGE and i.target not in allowed) or i.target in NO_IO
    ]
    assert wrong == []


# The protocols name what a backend must do, never an implementation.
def test_the_protocols_import_only_the_model() -> None:
    wrong = [
        f"{i.line}: {i.target}"
        for i in IMPORTS["imageproc._protocols"]
        if i.target.split(".")[0] == PACKAGE and i.target not in MODEL
    ]
    assert wrong == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_opens_with_what_it_holds(module: str) -> None:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    docstring = ast.get_docstring(tree)
    assert docstring, f"{MODULES[module]} has no module docstring"
    first = tree.body[0]
    assert isinstance(first, ast.Expr)
    assert first.lineno == 1
