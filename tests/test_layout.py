"""The layering, read from the source with ``ast`` (nothing is imported): ``compat/`` is the TF
Serving API without Ray or a web framework, ``export/`` depends on nothing of ours, ``loadtests/``
drives ray-tfserving from outside (nothing of ``serve_app/``), no two of our modules import each
other, even through others or inside a function, and no module of the product grows past 400
non-blank lines."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("compat", "serve_app", "export", "loadtests")
MAX_LINES = 400

pytestmark = pytest.mark.unit


def modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def imported(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, at any depth (function-level imports too)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module


def top(name: str) -> str:
    return name.split(".")[0]


def imports_of(package: str, banned: set[str]) -> set[str]:
    """``module: import`` for each import in ``package`` of a top-level name in ``banned``."""
    return {
        f"{p.relative_to(REPO)}: {name}"
        for p in modules(package)
        for name in imported(p)
        if top(name) in banned
    }


def test_compat_imports_neither_ray_nor_a_web_framework() -> None:
    banned = {"ray", "starlette", "uvicorn", "fastapi", "aiohttp", "serve_app", "loadtests"}
    assert not imports_of("compat", banned)


def test_export_imports_nothing_of_ours() -> None:
    assert not imports_of("export", set(PACKAGES) - {"export"} | {"tests"})


def test_loadtests_import_nothing_of_serve_app() -> None:
    """The benchmark and the soak start ray-tfserving as a user does (``python -m
    serve_app.launch`` prints the Serve config, ``serve run`` serves it); the test harness that
    may import the server is ``tests/harness.py``."""
    assert not imports_of("loadtests", {"serve_app", "tests"})


def test_the_product_imports_neither_load_tests_nor_tests() -> None:
    assert not imports_of("serve_app", {"loadtests", "tests"})


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(REPO).with_suffix("").parts)
    return name.removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """Our module -> the modules of ours it imports (``from pkg import submodule`` counts as
    the submodule, not the package)."""
    paths = {module_name(p): p for package in PACKAGES for p in modules(package)}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                subs = {f"{node.module}.{alias.name}" for alias in node.names}
                edges |= subs & paths.keys() if subs <= paths.keys() else {node.module}
        graph[name] = {e for e in edges if e in paths and e != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import circle found by a depth-first walk (a back edge closes one)."""
    state: dict[str, int] = {}  # 1: on the walk's path, 2: done
    found: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt, path)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [])
    return found


def test_no_import_circles() -> None:
    graph = import_graph()
    assert len(graph) > 60 and graph["serve_app.app"] >= {"serve_app.rollout"}
    assert not cycles(graph)
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_longer_than_400_non_blank_lines(package: str) -> None:
    long = {
        str(p.relative_to(REPO)): n
        for p in modules(package)
        if (n := sum(1 for line in p.read_text().splitlines() if line.strip())) > MAX_LINES
    }
    assert not long


def test_the_checks_see_the_code() -> None:
    """The walk finds what it looks for: a module of each package, and their imports."""
    assert all(modules(p) for p in PACKAGES)
    assert "compat.errors" in set(imported(REPO / "serve_app" / "ingress.py"))
    assert imports_of("serve_app", {"compat"})
