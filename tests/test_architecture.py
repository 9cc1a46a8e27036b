"""The import rules of ARCHITECTURE.md, stated plainly: no import cycle between the modules of zenzefi_backend,
counting imports inside functions, and a ground floor that imports no domain. `lint-imports` (setup.cfg, run by
.ci/run) checks the finer contracts; this walks every module's syntax tree itself, so it needs nothing but pytest."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "zenzefi_backend"
ROOT = PACKAGE.name

# The shared modules at the package root (and their submodules) that every domain stands on.
GROUND_FLOOR = frozenset(f"{ROOT}.{name}" for name in (
    "clock", "config", "config.redis_url", "database", "errors", "events", "extensions", "idempotency",
    "limit_headers", "metrics", "money", "openapi", "openapi.jsonbody", "pagination", "record_views", "schemas",
    "sealing",
))



def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported_by(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `name` imports anywhere in its file (module level, functions, methods); `from
    . import x` counts as importing module `x`, not the package that holds it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            candidates = [f"{source}.{alias.name}" for alias in node.names]
            # `from .x import y` imports module x (y is a name in it); `from . import x` imports module x itself
            candidates = [c if c in known else source for c in candidates]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name and not candidate.startswith(name + "."):
                found.add(candidate)
    return found


def import_graph() -> dict[str, set[str]]:
    files = modules()
    known = set(files)
    return {name: imported_by(name, path, known) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            advanced = False
            for target in edges:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    advanced = True
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [frozenset({"a", "b", "c"})]
    source = tmp_path / "sample.py"
    source.write_text("def later():\n    from .money import quantize\n    from . import clock\n")
    known = {f"{ROOT}.sample", f"{ROOT}.money", f"{ROOT}.clock", ROOT}
    assert imported_by(f"{ROOT}.sample", source, known) == {f"{ROOT}.money", f"{ROOT}.clock"}


def test_the_package_has_no_import_cycle():
    found = set(cycles(import_graph()))
    assert not found, "import cycles: " + "; ".join(" ↔ ".join(sorted(cycle)) for cycle in found)


def test_the_ground_floor_imports_no_domain():
    graph = import_graph()
    upward = sorted(f"{module} → {target}" for module in GROUND_FLOOR & set(graph) for target in graph[module]
                    if target not in GROUND_FLOOR and target != ROOT)
    assert not upward, upward


def test_the_ground_floor_list_names_real_modules():
    assert set(modules()) >= GROUND_FLOOR
