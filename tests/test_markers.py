"""The classifier that marks every test ``live`` or ``unit`` (``tests/markers.py``): each way a
test can boot a server is found, at any depth of helpers and fixtures, and code that boots
nothing is not taken for a server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import harness
from tests.markers import Classifier, instructions

CLI = str(Path(sys.executable).with_name("ray-tfserving"))
NOT_A_SCRIPT = "ray-tfserving is the command"


def boots(function: object) -> bool:
    return Classifier().function_boots(function)  # type: ignore[arg-type]


# What a test may do, written as tests do it; nothing here is run.


def with_the_harness() -> None:
    harness.start_server("model_name=m")


def with_start_server_imported() -> None:
    from tests.harness import start_server

    start_server("model_name=m")


def through_a_helper() -> None:
    with_the_harness()


def through_a_lambda() -> None:
    (lambda: with_the_harness())()


class Booter:
    def start(self) -> None:
        with_start_server_imported()


def through_a_class() -> None:
    Booter().start()


def with_ray_init() -> None:
    import ray

    ray.init()


def with_a_ray_cluster() -> None:
    from ray.cluster_utils import Cluster

    Cluster(initialize_head=True)


def with_serve_run() -> None:
    from ray import serve

    serve.run(None)  # type: ignore[arg-type]


def with_the_cli() -> None:
    subprocess.Popen([CLI, "--port=1"])


def with_the_benchmark() -> None:
    subprocess.run([sys.executable, "-m", "loadtests.bench", "--smoke"])


def pure() -> None:
    assert harness.require_test_data() is None
    assert harness.free_ports  # named, not called: still no server
    print(NOT_A_SCRIPT, sys.executable)


def with_a_process_that_is_no_server() -> None:
    subprocess.run([sys.executable, "-m", "export", "show", "--dir", "."])


@pytest.mark.parametrize(
    "function",
    [
        with_the_harness,
        with_start_server_imported,
        through_a_helper,
        through_a_lambda,
        through_a_class,
        with_ray_init,
        with_a_ray_cluster,
        with_serve_run,
        with_the_cli,
        with_the_benchmark,
    ],
)
def test_each_way_to_boot_is_found(function: object) -> None:
    assert boots(function)


@pytest.mark.parametrize("function", [pure, with_a_process_that_is_no_server])
def test_code_that_boots_nothing_is_unit(function: object) -> None:
    assert not boots(function)


def test_the_suites_own_fixtures_and_helpers_are_classified() -> None:
    """The fixtures and helpers the live modules boot with, and pure ones beside them."""
    from tests import conftest
    from tests.loadtests import test_soak
    from tests.serve_app import test_cluster, test_predict
    from tests.serve_app.launch import test_cli
    from tests.serve_app.runtime import test_model

    assert boots(test_predict.server)  # a module's fixture over start_server
    assert boots(conftest.server_factory)
    assert boots(test_cli.run_cli) and boots(test_cli.test_unknown_flag_prints_usage_and_fails)
    assert boots(test_cluster.cluster)  # Ray's Cluster inside a fixture
    assert boots(test_soak.test_a_short_soak_loses_nothing_and_stays_bounded)  # via loadtests
    assert not boots(test_model.model)  # a ModelVersion in this process: no server
    assert not boots(conftest.deeplab_base)


def test_instructions_read_as_dis_reads_them() -> None:
    """The classifier's own decoding (``instructions``) names what ``dis`` names, for every
    operation it reads the argument of, in the code of this module's boot examples (imports,
    closures, lambdas, methods, module globals) and of the classifier itself."""
    import dis
    import types

    from tests import markers

    read = {"LOAD_CONST", "IMPORT_NAME", "IMPORT_FROM"}
    read |= markers._LOADS | markers._LOCALS | markers._ATTRS | markers._STORES
    codes = [
        f.__code__
        for module in (sys.modules[__name__], markers)
        for value in vars(module).values()
        for f in (value, *(vars(value).values() if isinstance(value, type) else ()))
        if isinstance(f, types.FunctionType) and f.__module__ == module.__name__
    ]
    for code in codes:
        codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
    seen = set()
    for code in codes:
        expected = [(i.opname, i.argval) for i in dis.get_instructions(code)]
        got = list(instructions(code))
        assert [op for op, _ in got] == [op for op, _ in expected], code
        args = [v for op, v in got if op in read]
        assert args == [v for op, v in expected if op in read], code
        seen |= {op for op, _ in got}
    assert {"LOAD_GLOBAL", "LOAD_DEREF", "IMPORT_FROM", "LOAD_METHOD", "STORE_FAST"} <= seen


def test_every_collected_test_has_exactly_one_of_the_two_marks(
    request: pytest.FixtureRequest,
) -> None:
    for item in request.session.items:
        marks = {m.name for m in item.iter_markers()} & {"unit", "live"}
        assert len(marks) == 1, (item.nodeid, marks)
    assert request.node.get_closest_marker("unit") is not None
