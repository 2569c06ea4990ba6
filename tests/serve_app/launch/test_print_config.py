"""``python -m serve_app.launch key=value ...``: the Serve config for ``serve run``'s arguments,
which the load tests boot ray-tfserving with (``loadtests.launcher``)."""

from __future__ import annotations

import pytest
import yaml

from serve_app.launch.boot import main, parse_cli_args
from tests.harness import TESTDATA

ARGS = [
    "model_name=half_plus_two",
    f"model_base_path={TESTDATA / 'saved_model_half_plus_two_cpu'}",
    "grpc_port=20001",
    "http_port=0",
    "batching.enabled=true",
    "batching.allowed_batch_sizes=4,16",
    "batching.max_batch_size=16",
    "own_deployments.half_plus_two.num_replicas=None",
    "intra_op_parallelism=1",
]


def test_the_printed_config_deploys_the_arguments_given(capsys: pytest.CaptureFixture) -> None:  # type: ignore[type-arg]
    assert main(ARGS) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    (app,) = config["applications"]
    assert app["import_path"] == "serve_app:app" and config["proxy_location"] == "Disabled"
    given = parse_cli_args(dict(arg.split("=", 1) for arg in ARGS))
    assert parse_cli_args(app["args"]) == given
    assert given.own_deployments["half_plus_two"].num_replicas is None
    assert app["runtime_env"]["env_vars"]["RAY_SERVE_USE_GRPC_BY_DEFAULT"] == "1"


@pytest.mark.parametrize(("arg", "message"), [("nokey", "expected key=value"), ("nope=1", "nope")])
def test_a_bad_argument_exits_2(arg: str, message: str, capsys: pytest.CaptureFixture) -> None:  # type: ignore[type-arg]
    assert main([arg]) == 2
    captured = capsys.readouterr()
    assert not captured.out and message in captured.err
