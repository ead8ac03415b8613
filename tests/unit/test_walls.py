"""The walls of docs/architecture.md, read off the product's import statements (AST only: nothing
is imported or run).

An import at module level runs when its module is loaded; one inside a function runs only when
that function is called (the CLI's branches, the metrics endpoint); one under `if TYPE_CHECKING:`
never runs. The rules below say which kind each wall is about. Every module of the product is
read under its installed name (`supervisor/arbiter.py` is `image_cri_shim.supervisor.arbiter`).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "image_cri_shim"
# Real folders, each installed as a subpackage through a symlink in image_cri_shim/.
FOLDERS = ("supervisor", "workers", "syncer", "protos")
MASTER, WORKER, SYNCER = (f"{PACKAGE}.{name}" for name in ("supervisor", "workers", "syncer"))
#: The one module that may import the master, the worker and the syncer (each in its own branch).
COMPOSITION_ROOT = f"{PACKAGE}.cli"
#: Modules that only hand over to the composition root (`python -m image_cri_shim[.workers|.syncer]`).
ENTRIES = {f"{PACKAGE}.__main__", f"{WORKER}.__main__", f"{SYNCER}.__main__"}
#: What a pure module (docs/architecture.md: "pure: ...") must not load: I/O and its libraries.
IO_MODULES = (
    "socket", "ssl", "select", "selectors", "subprocess", "threading", "asyncio", "signal", "mmap",
    "http.client", "http.server", "urllib.request", "grpc", "httpx", "kubernetes", "urllib3", "sdnotify",
    "prometheus_client",
)  # fmt: skip
#: Pure modules that load an I/O library all the same, and why; each entry must still be needed.
IMPURE_BY_DESIGN: dict[str, str] = {}

#: Private names of third-party libraries the product relies on, each used in one module only
#: (pyproject.toml bounds those libraries; tests/unit/test_private_apis.py fails on a release
#: that drops one).
PRIVATE_USES = {
    "_registered_method": f"{WORKER}.runtime.calls",  # grpc: a unary call registered with its channel
    "mmap_dict": f"{MASTER}.samples",  # prometheus-client: reading a child's sample file
    "_content": f"{WORKER}.lookup.transport",  # httpx: a response body read elsewhere
}

MODULE, FUNCTION, TYPING = "module", "function", "typing"


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (a product module's full name, or a library's)
    kind: str  # MODULE, FUNCTION or TYPING
    line: int

    def __str__(self) -> str:
        return f"{self.source}:{self.line} imports {self.target} ({self.kind} level)"


def module_name(path: Path) -> str:
    """The installed name of a product file."""
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[0] in FOLDERS:
        parts.insert(0, PACKAGE)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def product_files() -> dict[str, Path]:
    """Installed name -> file, for every module of the product (symlinks in image_cri_shim/ skipped)."""
    found: dict[str, Path] = {}
    for top in (PACKAGE, *FOLDERS):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).parts
            if not any(ROOT.joinpath(*parts[:i]).is_symlink() for i in range(1, len(parts) + 1)):
                found[module_name(path)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, kind: str) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, kind
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _walk(child, TYPING if kind == TYPING else FUNCTION)
        elif isinstance(child, ast.If) and _is_type_checking(child):
            for statement in child.body:
                yield from _walk(ast.Module(body=[statement], type_ignores=[]), TYPING)
            for statement in child.orelse:
                yield from _walk(ast.Module(body=[statement], type_ignores=[]), kind)
        else:
            yield from _walk(child, kind)


def imports(source: str, text: str, known: Iterable[str], package: bool = False) -> list[Import]:
    """Every import statement of module `source` (whose code is `text`), resolved to full names;
    `from a import b` names `a.b` when that is a module of `known`. `package`: `source` is an
    `__init__`, so a relative import starts from it rather than from its parent."""
    modules = set(known)
    found = []
    for node, kind in _walk(ast.parse(text), MODULE):
        if isinstance(node, ast.Import):
            found += [Import(source, alias.name, kind, node.lineno) for alias in node.names]
            continue
        base = node.module or ""
        if node.level:
            anchor = source.split(".")
            anchor = anchor[: len(anchor) - node.level + (1 if package else 0)]
            base = ".".join([*anchor, *([base] if base else [])])
        for alias in node.names:
            target = f"{base}.{alias.name}"
            found.append(Import(source, target if target in modules else base, kind, node.lineno))
    return found


def graph() -> list[Import]:
    files = product_files()
    return [
        found
        for name, path in files.items()
        for found in imports(name, path.read_text(), files, package=path.name == "__init__.py")
    ]


def within(target: str, *prefixes: str) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


def loaded(start: str, edges: Iterable[Import]) -> set[str]:
    """Every module loading `start` loads: its module-level imports, theirs, and each one's packages."""
    by_source: dict[str, set[str]] = {}
    for edge in edges:
        if edge.kind == MODULE:
            by_source.setdefault(edge.source, set()).add(edge.target)
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for module in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
            if module not in seen:
                seen.add(module)
                todo.extend(by_source.get(module, ()))
    return seen


def cycles(edges: Iterable[Import]) -> list[list[str]]:
    """Each strongly connected group of two or more modules (Tarjan), through imports that run."""
    successors: dict[str, set[str]] = {}
    for edge in edges:
        if edge.kind != TYPING and edge.target != edge.source:
            successors.setdefault(edge.source, set()).add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for after in sorted(successors.get(node, ())):
            if after not in index:
                visit(after)
                low[node] = min(low[node], low[after])
            elif after in stack:
                low[node] = min(low[node], index[after])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(successors):
        if node not in index:
            visit(node)
    return groups


def pure_modules() -> list[str]:
    """The modules docs/architecture.md's table calls pure (`| `workers/lookup/plan.py` | pure: ...`)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    paths = re.findall(r"^\| `([\w/]+\.py)` \| pure\b", text, re.MULTILINE)
    return [module_name(ROOT / path) for path in paths]


# -- the rules, each a list of the imports that break it ----------------------------------------------


def master_violations(edges: Iterable[Import]) -> list[Import]:
    """The master imports neither grpc nor kubernetes, nor the worker's or the syncer's code."""
    return [
        e
        for e in edges
        if within(e.source, MASTER) and within(e.target, "grpc", "kubernetes", WORKER, SYNCER)
    ]


def children_violations(edges: Iterable[Import]) -> list[Import]:
    """The worker and the syncer never import each other (nor the master)."""
    return [
        e
        for e in edges
        if (within(e.source, WORKER) and within(e.target, SYNCER, MASTER))
        or (within(e.source, SYNCER) and within(e.target, WORKER, MASTER))
    ]


def library_violations(edges: Iterable[Import]) -> list[Import]:
    """grpc belongs to the worker and kubernetes to the syncer; the CLI may load either in a branch."""
    owners = {"grpc": WORKER, "kubernetes": SYNCER}
    return [
        e
        for e in edges
        for library, owner in owners.items()
        if within(e.target, library)
        and not within(e.source, owner)
        and not (e.source == COMPOSITION_ROOT and e.kind == FUNCTION)
    ]


def root_violations(edges: Iterable[Import]) -> list[Import]:
    """Only the composition root brings the processes together, and only in the branch that runs
    one: the shared modules import none of them, and the CLI none at module level."""
    processes = (MASTER, WORKER, SYNCER)
    return [
        e
        for e in edges
        if within(e.target, *processes)
        and not within(e.source, *processes)
        and e.source not in ENTRIES
        and not (e.source == COMPOSITION_ROOT and e.kind == FUNCTION)
    ]


def master_load_violations(edges: list[Import]) -> list[str]:
    """What the service loads before it knows its config, and the master loop, load no grpc,
    no kubernetes, no other process's code, and no metrics endpoint (only with metricsAddress)."""
    unwanted = ("grpc", "kubernetes", "prometheus_client", WORKER, SYNCER, f"{MASTER}.endpoint")
    return sorted(
        f"{start} loads {module}"
        for start in (COMPOSITION_ROOT, f"{MASTER}.main")
        for module in loaded(start, edges)
        if within(module, *unwanted)
    )


def pure_violations(edges: list[Import], pure: Iterable[str]) -> list[str]:
    return sorted(
        f"{module} (pure) loads {found}"
        for module in pure
        for found in loaded(module, edges)
        if within(found, *IO_MODULES) and module not in IMPURE_BY_DESIGN
    )


def identifiers(text: str) -> set[str]:
    """Every name, attribute, keyword and imported name a module spells."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.keyword) and node.arg:
            found.add(node.arg)
        elif isinstance(node, ast.alias):
            found.update(node.name.split("."))
    return found


def private_uses(modules: dict[str, str]) -> dict[str, set[str]]:
    """Private name -> the modules that use it."""
    spelled = {name: identifiers(text) for name, text in modules.items()}
    return {private: {m for m, names in spelled.items() if private in names} for private in PRIVATE_USES}


# -- the product ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def edges() -> list[Import]:
    return graph()


def test_every_product_folder_is_read(edges: list[Import]) -> None:
    sources = {e.source for e in edges}
    for name in (COMPOSITION_ROOT, MASTER + ".arbiter", WORKER + ".serve.server", SYNCER + ".process"):
        assert name in sources


def test_the_master_imports_no_grpc_kubernetes_worker_or_syncer(edges: list[Import]) -> None:
    assert [str(e) for e in master_violations(edges)] == []


def test_the_worker_and_the_syncer_never_import_each_other(edges: list[Import]) -> None:
    assert [str(e) for e in children_violations(edges)] == []


def test_grpc_is_the_worker_s_and_kubernetes_the_syncer_s(edges: list[Import]) -> None:
    assert [str(e) for e in library_violations(edges)] == []


def test_only_the_cli_composes_the_processes(edges: list[Import]) -> None:
    assert [str(e) for e in root_violations(edges)] == []


def test_the_master_loads_neither_grpc_nor_kubernetes(edges: list[Import]) -> None:
    assert master_load_violations(edges) == []


def test_no_import_cycles(edges: list[Import]) -> None:
    assert cycles(edges) == []


def test_pure_modules_load_no_io(edges: list[Import]) -> None:
    pure = pure_modules()
    assert f"{WORKER}.lookup.plan" in pure and f"{SYNCER}.merge" in pure, pure
    assert pure_violations(edges, pure) == []
    for module, why in IMPURE_BY_DESIGN.items():
        assert module in pure, f"{module} is no longer called pure: drop it from IMPURE_BY_DESIGN"
        library = why.split(":", 1)[0]
        assert library in loaded(module, edges), f"{module} no longer loads {library}: drop the entry"


def test_each_private_third_party_name_is_used_in_one_module() -> None:
    modules = {name: path.read_text() for name, path in product_files().items()}
    assert private_uses(modules) == {private: {module} for private, module in PRIVATE_USES.items()}


# -- the rules catch what they are for ------------------------------------------------------------------


def edges_of(modules: dict[str, str]) -> list[Import]:
    return [found for name, text in modules.items() for found in imports(name, text, modules)]


SHARED = f"{PACKAGE}.logs"


@pytest.mark.parametrize(
    ("modules", "rule"),
    [
        ({f"{MASTER}.notify": "import grpc\n"}, master_violations),
        (
            {f"{MASTER}.notify": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import grpc\n"},
            master_violations,
        ),
        ({f"{MASTER}.notify": "def f():\n    import kubernetes.client\n"}, master_violations),
        ({f"{MASTER}.arbiter": "from image_cri_shim.workers import server\n"}, master_violations),
        ({f"{WORKER}.serve.images": "from image_cri_shim.syncer.merge import merge\n"}, children_violations),
        ({f"{SYNCER}.apply": "from ..workers import plan\n"}, children_violations),
        ({f"{SYNCER}.kube": "import grpc\n"}, library_violations),
        ({SHARED: "from kubernetes import client\n"}, library_violations),
        ({COMPOSITION_ROOT: "import grpc\n"}, library_violations),
        ({SHARED: "def f():\n    from image_cri_shim.workers import server\n"}, root_violations),
        ({COMPOSITION_ROOT: "from image_cri_shim.syncer import process\n"}, root_violations),
    ],
)
def test_a_violation_is_found(modules: dict[str, str], rule: Callable[[list[Import]], list[Import]]) -> None:
    assert rule(edges_of(modules)), f"{rule.__name__} missed {modules}"


def test_what_the_rules_allow() -> None:
    allowed = edges_of(
        {
            COMPOSITION_ROOT: "def worker():\n    import grpc\n    from .workers import process\n",
            f"{WORKER}.serve.server": "import grpc\nfrom image_cri_shim import logs\n",
            f"{SYNCER}.kube": "from kubernetes import client\n",
            f"{MASTER}.arbiter": "from image_cri_shim.config import load\n",
            f"{WORKER}.__main__": "from image_cri_shim.cli import main\n",
        }
    )
    rules = (master_violations, children_violations, library_violations, root_violations)
    assert [str(e) for rule in rules for e in rule(allowed)] == []


def test_a_module_level_chain_to_grpc_reaches_the_master() -> None:
    modules = {
        f"{MASTER}.main": "from image_cri_shim import heartbeat\n",
        f"{PACKAGE}.heartbeat": "from image_cri_shim.workers.runtime import calls\n",
        f"{WORKER}.runtime.calls": "import grpc\n",
        COMPOSITION_ROOT: "def serve():\n    import image_cri_shim.supervisor.main\n",
    }
    assert f"{MASTER}.main loads grpc" in master_load_violations(edges_of(modules))


def test_a_cycle_is_found_and_type_checking_imports_are_not_one() -> None:
    a, b, c = (f"{PACKAGE}.{n}" for n in "abc")
    modules = {
        a: "from image_cri_shim import b\n",
        b: "from image_cri_shim import c\n",
        c: "import image_cri_shim.a\n",
    }
    assert cycles(edges_of(modules)) == [[a, b, c]]
    modules[c] = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import image_cri_shim.a\n"
    assert cycles(edges_of(modules)) == []


def test_a_pure_module_that_reaches_a_socket_is_found() -> None:
    plan = f"{WORKER}.lookup.plan"
    modules = {
        plan: "from image_cri_shim.workers.lookup import client\n",
        f"{WORKER}.lookup.client": "import httpx\n",
    }
    assert pure_violations(edges_of(modules), [plan]) == [f"{plan} (pure) loads httpx"]


def test_a_second_use_of_a_private_name_is_found() -> None:
    modules = {
        f"{WORKER}.runtime.calls": "channel.unary_unary(m, _registered_method=True)\n",
        f"{WORKER}.runtime.upstream": "channel.unary_unary(m, _registered_method=True)\n",
    }
    expected = {f"{WORKER}.runtime.calls", f"{WORKER}.runtime.upstream"}
    assert private_uses(modules)["_registered_method"] == expected
