"""tests/unit/ starts nothing: no module here imports what starts processes, opens sockets or
assembles real parts (tests/harness/, but for its pure helpers), and no test asks for a fixture
of conftest.py (each is a real part or a place for sockets). Read off the AST; nothing is run."""

from __future__ import annotations

import ast
from pathlib import Path

UNIT = Path(__file__).resolve().parent
CONFTEST = UNIT.parent / "conftest.py"
STARTERS = ("subprocess", "socket", "socketserver", "multiprocessing", "http.server", "http.client")
#: The harness modules that hold values only.
PURE_HARNESS = ("tests.harness.clock", "tests.harness.pullrecord", "tests.harness.criowords")


def within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def imported(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def conftest_fixtures() -> set[str]:
    tree = ast.parse(CONFTEST.read_text())
    names = {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any("fixture" in ast.unparse(decorator) for decorator in node.decorator_list)
    }
    names |= {
        name
        for _, full in imported(tree)
        if within(full, "tests.harness.dist")
        for name in [full.rsplit(".", 1)[1]]
    }
    return names


def violations(path: Path, fixtures: set[str]) -> list[str]:
    tree = ast.parse(path.read_text())
    found = [
        f"{path.name}:{line} imports {name}"
        for line, name in imported(tree)
        if within(name, *STARTERS) or (within(name, "tests.harness") and not within(name, *PURE_HARNESS))
    ]
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            asked = {arg.arg for arg in node.args.args} & fixtures
            found += [
                f"{path.name}:{node.lineno} {node.name} uses the fixture {name}" for name in sorted(asked)
            ]
    return found


def test_the_fixtures_are_read() -> None:
    assert {"containerd", "registry_factory", "stack", "shim_factory", "bundle"} <= conftest_fixtures()


def test_no_unit_test_starts_anything() -> None:
    fixtures = conftest_fixtures()
    assert [v for path in sorted(UNIT.glob("test_*.py")) for v in violations(path, fixtures)] == []


def test_a_unit_test_that_starts_something_is_found(tmp_path: Path) -> None:
    module = tmp_path / "test_x.py"
    module.write_text(
        "import subprocess\nfrom tests.harness.node import Stack\nfrom tests.harness.clock import Clock\n"
        "def test_a(stack, tmp_path):\n    pass\n"
    )
    assert violations(module, conftest_fixtures()) == [
        "test_x.py:1 imports subprocess",
        "test_x.py:2 imports tests.harness.node.Stack",
        "test_x.py:4 test_a uses the fixture stack",
    ]
