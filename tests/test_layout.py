"""The layering, read from the source with ``ast`` (nothing is imported): ``compat/`` is the TF
Serving API without Ray or a web framework, ``export/`` depends on nothing of ours, ``loadtests/``
drives ray-tfserving from outside (nothing of ``serve_app/``), ``serve_app/``'s subpackages are
layers (``LAYERS``: transports never reach the lifecycle, only ``launch`` imports everything), no
two of our modules import each other, even through others or inside a function, and no module of
the product grows past 400 non-blank lines."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("compat", "serve_app", "export", "loadtests")
MAX_LINES = 400


def modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@functools.cache
def import_nodes(path: Path) -> tuple[ast.Import | ast.ImportFrom, ...]:
    """The import statements of ``path``, at any depth, read once per run (the checks walk the
    same files)."""
    nodes = ast.walk(ast.parse(path.read_text(), str(path)))
    return tuple(n for n in nodes if isinstance(n, ast.Import | ast.ImportFrom))


def imported(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, at any depth (function-level imports too)."""
    for node in import_nodes(path):
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
    serve_app.launch.boot`` prints the Serve config, ``serve run`` serves it); the test harness that
    may import the server is ``tests/harness.py``."""
    assert not imports_of("loadtests", {"serve_app", "tests"})


def test_the_product_imports_neither_load_tests_nor_tests() -> None:
    assert not imports_of("serve_app", {"loadtests", "tests"})


LAYERS: dict[str, set[str]] = {
    "config": set(),
    "shared": {"config"},
    "storage": {"config", "shared"},
    "transports": {"config", "shared"},
    "runtime": {"config", "shared", "storage", "transports"},
    "lifecycle": {"config", "shared", "storage", "runtime"},
    "launch": {"config", "shared", "storage", "transports", "runtime", "lifecycle"},
    "entry": {"launch", "shared"},
}
"""Each part of ``serve_app`` and the parts it may import. ``shared`` is the request contract
(``calls``), the deployments' names and the typed calls between them (``deployments``: the
version manager's client and snapshot), ``metrics``, which every layer records, and
``ray_patches``, the one module of Ray's private API; ``entry`` is the package itself, whose
``app`` (``serve run serve_app:app``) imports the launch lazily. A part imports itself freely."""


def layer(module: str) -> str:
    parts = module.split(".")
    if parts == ["serve_app"]:
        return "entry"
    if parts[1] in LAYERS:
        return parts[1]
    assert parts[1] in {"calls", "deployments", "metrics", "ray_patches"}, (
        f"{module} is in no layer: add it to LAYERS"
    )
    return "shared"


def layer_breaches(graph: dict[str, set[str]]) -> set[str]:
    """``importer -> imported`` for each import of ``serve_app`` that ``LAYERS`` does not allow."""
    return {
        f"{name} -> {dep}"
        for name, deps in graph.items()
        if name.startswith("serve_app")
        for dep in deps
        if dep.startswith("serve_app")
        and layer(dep) != layer(name)
        and layer(dep) not in LAYERS[layer(name)]
    }


def test_serve_apps_layers_import_only_the_layers_below() -> None:
    graph = import_graph()
    assert {layer(n) for n in graph if n.startswith("serve_app")} == set(LAYERS)
    assert not layer_breaches(graph)
    # The check sees a breach: a transport reaching the lifecycle, the runtime the launch.
    fake = {
        "serve_app.transports.rest": {"serve_app.lifecycle.rollout"},
        "serve_app.runtime.model": {"serve_app.launch.app", "serve_app.calls"},
    }
    assert layer_breaches(fake) == {
        "serve_app.transports.rest -> serve_app.lifecycle.rollout",
        "serve_app.runtime.model -> serve_app.launch.app",
    }


def test_the_protocol_transports_share_only_transports_http() -> None:
    """REST and V2 are each one module over ``transports.http`` (bodies, deadlines) and the
    data plane's Protocol (``transports.plane``); their codecs are in ``compat``
    (``json_codec``, ``open_inference_json``, ``http_codec``)."""
    graph = import_graph()
    for name in ("serve_app.transports.rest", "serve_app.transports.open_inference"):
        siblings = {d for d in graph[name] if d.startswith("serve_app.transports.")}
        assert siblings <= {"serve_app.transports.http", "serve_app.transports.plane"}, name
    assert "compat.open_inference_json" in graph["serve_app.transports.open_inference"]
    assert "compat.http_codec" in graph["serve_app.transports.http"]


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
        for node in import_nodes(path):
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
    assert len(graph) > 60 and graph["serve_app.launch.app"] >= {"serve_app.lifecycle.rollout"}
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
    assert "compat.errors" in set(imported(REPO / "serve_app" / "runtime" / "dataplane.py"))
    assert imports_of("serve_app", {"compat"})


PRIVATE_RAY = ("ray._private", "serve._private", "_internal=", ".to_full_id_str(", ".unique_id")


def private_ray_uses(package: str) -> set[str]:
    """``module: text`` for each use of Ray's private API in ``package`` outside ray_patches."""
    return {
        f"{p.relative_to(REPO)}: {text}"
        for p in modules(package)
        if p.name != "ray_patches.py"
        for text in PRIVATE_RAY
        if text in p.read_text()
    }


def test_rays_private_api_is_used_in_ray_patches_only() -> None:
    assert not private_ray_uses("serve_app") | private_ray_uses("compat")
    patches = (REPO / "serve_app" / "ray_patches.py").read_text()
    assert all(text in patches for text in PRIVATE_RAY)


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("serve_app", {"ray", "tensorflow", "serve_app.launch"}),
        ("serve_app.config.args", {"ray", "tensorflow", "serve_app.launch"}),
        ("compat.errors", {"ray", "tensorflow", "serve_app"}),
    ],
)
def test_importing_a_part_imports_only_what_it_needs(module: str, absent: set[str]) -> None:
    """The package imports nothing on its own (``serve_app:app`` loads the launch when Serve
    calls it), so a part is imported without the whole application."""
    import subprocess
    import sys

    code = f"import sys, {module}; print(sorted(m for m in {sorted(absent)!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
