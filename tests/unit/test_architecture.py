"""The package's house rules, read from the syntax tree of ``src/ssfilter`` (no import is executed).

* Imports run one way through the layers below (bottom first); a module may import from its own layer or
  any layer beneath it, never from above. Imports inside functions and under ``TYPE_CHECKING`` count.
* The import graph has no cycle, at module granularity.
* No module imports another module's underscore (private) name.
* Files and functions stay readable in one sitting: a file over ``MAX_FILE_LINES`` says in its module
  docstring why it is one job ("One job"), a function over ``MAX_FUNCTION_LINES`` lines of code (its
  docstring not counted) says why in its docstring ("Long because").

Run just these checks with ``python -m pytest tests/unit/test_architecture.py``.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "ssfilter"

#: Layers from the bottom up; a key is a top-level module or sub-package of ``ssfilter``.
LAYERS: list[set[str]] = [
    {"errors", "version", "io", "config", "schedule", "coverage", "runfolder"},
    {"runtime"},
    {"data"},
    {"models"},
    {"filtering"},
    {"baselines"},
    {"training"},
    {"evaluation"},
    {"inference"},
    {"reporting"},
    {"pipelines"},
    {"api"},
    {"cli", "__main__", ""},  # "" is the package's own __init__ (lazy re-exports of the API)
]
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["ssfilter", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _owner(name: str) -> str:
    """The longest known module that ``name`` (a module or ``module.attribute``) lies in."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(module: str, path: Path | None = None) -> Iterator[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` for every ssfilter import of ``module``."""
    path = path or MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ssfilter":
                    yield _owner(alias.name), None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "ssfilter":
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}"
                if full in MODULES:  # `from ssfilter.x import submodule`
                    yield full, None, node.lineno
                else:
                    yield _owner(target), alias.name, node.lineno


def _layer(module: str) -> int:
    key = module.split(".")[1] if "." in module else ""
    for rank, members in enumerate(LAYERS):
        if key in members:
            return rank
    raise AssertionError(f"{module} belongs to no layer: add its package to LAYERS in {__file__}")


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for module in MODULES:
        for target, _, _ in _imports(module):
            if target != module:
                graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in MODULES:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function from its ``def`` to its end, not counting its docstring."""
    size = (node.end_lineno or node.lineno) - node.lineno + 1
    first = node.body[0]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        size -= (first.end_lineno or first.lineno) - first.lineno + 1
    return size


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        _layer(module)


def test_import_graph_has_no_cycle() -> None:
    assert _cycles(_graph()) == []


def test_imports_run_down_the_layers() -> None:
    upward = [
        f"{module}:{line} imports {target} (layer {_layer(target)} above {_layer(module)})"
        for module in MODULES
        for target, _, line in _imports(module)
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_no_module_imports_another_modules_private_name() -> None:
    private = [
        f"{module}:{line} imports {target}.{name}"
        for module in MODULES
        for target, name, line in _imports(module)
        if name is not None and name.startswith("_") and target != module
    ]
    assert private == []


def test_long_files_say_why_they_are_one_job() -> None:
    long = []
    for module, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        if lines > MAX_FILE_LINES and "One job" not in (ast.get_docstring(ast.parse(text)) or ""):
            long.append(f"{module}: {lines} lines")
    assert long == []


def test_long_functions_say_why() -> None:
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = _code_lines(node)
                if size > MAX_FUNCTION_LINES and "Long because" not in (ast.get_docstring(node) or ""):
                    long.append(f"{module}.{node.name}: {size} lines")
    assert long == []


# -- the checks themselves must be able to fail --------------------------------------------------


def test_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"ssfilter.config": {"ssfilter.io"}, "ssfilter.io": {"ssfilter.errors"}}
    assert _cycles(graph) == []
    graph["ssfilter.errors"] = {"ssfilter.config"}
    assert _cycles(graph) == [["ssfilter.config", "ssfilter.errors", "ssfilter.io"]]


def test_function_size_leaves_out_the_docstring() -> None:
    tree = ast.parse('def f():\n    """Doc.\n\n    More.\n    """\n    x = 1\n    return x\n')
    assert _code_lines(tree.body[0]) == 3


def test_import_reader_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ssfilter.api import Detector\n    from ..models import _x\n")
    found = list(_imports("ssfilter.data.probe", probe))
    assert ("ssfilter.api", "Detector", 2) in found
    assert ("ssfilter.models", "_x", 3) in found
    assert _layer("ssfilter.api") > _layer("ssfilter.data.images")
