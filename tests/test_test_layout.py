"""The test suite's own layout (ARCHITECTURE.md, Tests): scaffolding lives in `tests/fixtures/` modules registered
with `pytest_plugins`, and no module imports from a conftest file.

A conftest is pytest's to load: a module that imports one runs it a second time under another name (its fixtures
and autouse hooks twice over), and a fixture re-imported by name hides where it comes from.
"""
from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def conftest_imports(source: str, filename: str = "<source>") -> list[str]:
    """Every import in `source` that reaches a conftest module, as written (`from .conftest import x`, ...)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            parts = module.split(".") if module else []
            if "conftest" in parts or any(alias.name == "conftest" for alias in node.names):
                names = ", ".join(alias.name for alias in node.names)
                found.append(f"line {node.lineno}: from {'.' * node.level}{module} import {names}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if "conftest" in alias.name.split("."):
                    found.append(f"line {node.lineno}: import {alias.name}")
    return found


def registered_plugins() -> list[str]:
    """`pytest_plugins` of the root conftest, read from its source (importing it is what this file forbids)."""
    tree = ast.parse((TESTS / "conftest.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytest_plugins" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return []


def defines_fixtures(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                if isinstance(target, ast.Attribute) and target.attr == "fixture":
                    return True
    return False


def test_the_detector_finds_every_way_of_importing_a_conftest():
    source = "\n".join([
        "from tests.proxy.conftest import ProxyEnv",
        "from .conftest import verify_signature",
        "from . import conftest",
        "from tests.notifications import conftest as notes",
        "import tests.conftest",
        "def later():",
        "    from tests.conftest import app_config",
        "from tests.fixtures.proxy import ProxyEnv",
        "from tests.support import conftest_free",
    ])
    assert [line.split(":")[0] for line in conftest_imports(source)] == [f"line {n}" for n in (1, 2, 3, 4, 5, 7)]


def test_no_module_imports_from_a_conftest():
    offenders = {str(path.relative_to(TESTS.parent)): found for path in sorted(TESTS.rglob("*.py"))
                 if (found := conftest_imports(path.read_text(), str(path)))}
    assert offenders == {}, "import these from tests/fixtures/ (or tests/support.py), not from a conftest"


def test_conftest_files_hold_fixtures_only_no_scaffolding_classes():
    classes = {str(path.relative_to(TESTS.parent)): [node.name for node in ast.parse(path.read_text()).body
                                                      if isinstance(node, ast.ClassDef)]
               for path in sorted(TESTS.rglob("conftest.py"))}
    assert {path: names for path, names in classes.items() if names} == {}, "move them to tests/fixtures/"


def test_every_fixtures_module_with_fixtures_is_a_registered_plugin():
    plugins = registered_plugins()
    assert plugins, "tests/conftest.py lists no pytest_plugins"
    modules = {f"tests.fixtures.{path.stem}" for path in (TESTS / "fixtures").glob("*.py")
               if path.stem != "__init__" and defines_fixtures(path)}
    assert modules - set(plugins) == set(), "add them to pytest_plugins in tests/conftest.py"
    assert {plugin for plugin in plugins if not (TESTS.parent / (plugin.replace(".", "/") + ".py")).exists()} == set()
