"""Shared fixtures: real servers (``tests.harness``), the test data and DeepLab exports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import TESTDATA, Server, require_test_data, start_server, stop_shared
from tests.markers import Classifier


def pytest_sessionstart(session: pytest.Session) -> None:
    """A missing test model fails the whole run at once, saying how to get it (no test skips
    for want of one)."""
    problem = require_test_data()
    if problem is not None:
        pytest.exit(problem, returncode=pytest.ExitCode.USAGE_ERROR)


def needs_a_server(item: pytest.Item, classifier: Classifier) -> bool:
    """Whether the test or any fixture of its closure boots a server (``tests.markers``)."""
    function = getattr(item, "function", None)
    if function is not None and classifier.function_boots(function):
        return True
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.values() if info is not None else ()
    return any(classifier.function_boots(d.func) for chain in defs for d in chain)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test is ``live`` (it boots a server) or ``unit`` (it does not), from its code and
    its fixtures' code: no module marks either by hand. The tests of modules that share a
    server (``shares_server``) run one after another, where the first of them was."""
    classifier = Classifier()
    for item in items:
        live = needs_a_server(item, classifier)
        item.add_marker(pytest.mark.live if live else pytest.mark.unit)
    for name in dict.fromkeys(n for n in map(shared, items) if n is not None):
        users = [item for item in items if shared(item) == name]
        first = items.index(users[0])
        rest = [item for item in items if shared(item) != name]
        items[:] = rest[:first] + users + rest[first:]


def shared(item: pytest.Item | None) -> str | None:
    """The shared server (``tests.harness.SHARED``) ``item``'s module uses, if any."""
    mark = item.get_closest_marker("shares_server") if item is not None else None
    return mark.args[0] if mark is not None else None


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """A shared server stops after the last test of a run of tests sharing it."""
    name = shared(item)
    if name is not None and shared(nextitem) != name:
        stop_shared(name)


def pytest_sessionfinish() -> None:
    stop_shared()


@pytest.fixture(scope="session")
def testdata() -> Path:
    return TESTDATA


@pytest.fixture(scope="session")
def deeplab_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DeepLab export (version 1), made once per test session."""
    from export.savedmodel import export_model

    base = tmp_path_factory.mktemp("deeplab")
    export_model(base, 1, steps=40, size=32, seed=0)
    return base


@pytest.fixture(scope="module")
def deeplab_copy(deeplab_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of ``deeplab_base`` for one test module (``<tmp>/deeplab/1``), for tests
    that publish, break or remove versions."""
    import shutil

    root = tmp_path_factory.mktemp("copy") / "deeplab"
    shutil.copytree(deeplab_base / "1", root / "1")
    return root


@pytest.fixture(scope="session")
def deeplab_training(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """The default DeepLab training (about a minute on 2 cores), once per session: the base
    path of its export (version 1) and its TrainStats."""
    from export.deeplab import train
    from export.savedmodel import save

    base = tmp_path_factory.mktemp("deeplab-full")
    model, stats = train(seed=0)
    save(model, base, 1)
    return base, stats


@pytest.fixture(scope="session")
def deeplab_trained(deeplab_training: tuple[Path, Any]) -> Path:
    """Base path of the fully trained default model."""
    return deeplab_training[0]


@pytest.fixture
def server_factory() -> Iterator:  # type: ignore[type-arg]
    started: list[Server] = []

    def factory(*args: str, wait_for: tuple[str, ...] = ()) -> Server:
        server = start_server(*args, wait_for=wait_for)
        started.append(server)
        return server

    yield factory
    for s in started:
        s.stop()
