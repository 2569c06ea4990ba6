"""The CLI's flags, parsed in-process: every TF Serving flag either maps onto AppArgs, has no
counterpart here (said in ``_NO_EFFECT``) or is refused with the reason (``_REFUSED``)."""

from __future__ import annotations

import pytest

from compat.errors import InvalidArgument
from serve_app import cli

pytestmark = pytest.mark.unit

BASE = ("--model_base_path=/models/m",)


def app_args(*flags: str):  # type: ignore[no-untyped-def]
    ns, unknown = cli.parser().parse_known_args([*BASE, *flags])
    assert not unknown
    return cli.to_app_args(ns)


@pytest.mark.parametrize("name", sorted(cli._REFUSED))
def test_a_flag_asking_for_what_is_not_served_is_refused_with_the_reason(name: str) -> None:
    accepted, why = cli._REFUSED[name]
    value = "true" if accepted == ("false",) else "x"
    with pytest.raises(InvalidArgument) as e:
        app_args(f"--{name}={value}")
    assert e.value.message == f"Not supported by ray-tfserving: --{name}={value}: {why}"


@pytest.mark.parametrize("name", sorted(cli._REFUSED))
def test_the_values_asking_for_nothing_missing_are_accepted(name: str) -> None:
    for value in cli._REFUSED[name][0]:
        app_args(f"--{name}={value}")
    if cli._REFUSED[name][0] == ("false",):
        app_args(f"--{name}=0")


def test_every_refusal_is_named_at_once() -> None:
    with pytest.raises(InvalidArgument) as e:
        app_args("--platform_config_file=p.txt", "--grpc_socket_path=/tmp/s")
    assert "--platform_config_file=p.txt: platform configs are not read" in e.value.message
    assert "--grpc_socket_path=/tmp/s: no Unix socket is served" in e.value.message


@pytest.mark.parametrize("name", sorted(cli._NO_EFFECT))
def test_thread_and_memory_knobs_without_a_counterpart_are_accepted(name: str) -> None:
    app_args(f"--{name}=8")


def test_flags_beyond_tf_serving_map_onto_app_args() -> None:
    args = app_args(
        "--load_retry_interval_micros=2500000",
        "--max_request_bytes=1048576",
        "--admin_port=8503",
        "--rest_api_port=0",
    )
    assert args.load_retry_interval_s == 2.5
    assert args.max_request_bytes == 1 << 20
    assert (args.admin_port, args.admin_host) == (8503, "127.0.0.1")
    assert args.http_port == 0
    defaults = app_args()
    assert (defaults.admin_port, defaults.max_request_bytes) == (0, 2**31 - 1)
    assert defaults.load_retry_interval_s == 0.0


def test_drain_seconds_default_and_value() -> None:
    assert cli.parser().parse_args([*BASE]).drain_seconds == 5.0
    assert cli.parser().parse_args([*BASE, "--drain_seconds=0"]).drain_seconds == 0.0


def test_grpc_health_service_follows_tf_servings_flag() -> None:
    assert app_args().grpc_health_service
    assert not app_args("--enable_grpc_healthcheck_service=false").grpc_health_service


def test_without_the_health_service_its_methods_are_not_registered() -> None:
    from serve_app.listeners import HEALTH_SERVICE, Listeners

    assert HEALTH_SERVICE not in Listeners(None, "127.0.0.1", 0, 0, health=False).services
    assert HEALTH_SERVICE in Listeners(None, "127.0.0.1", 0, 0).services


def test_ssl_config_file_is_read_at_startup(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from tests.pki import make_pki

    pki = make_pki()
    path = tmp_path / "ssl.config"
    path.write_text(
        f"server_key: {json.dumps(pki.server.key)}\nserver_cert: {json.dumps(pki.server.cert)}\n"
    )
    assert app_args(f"--ssl_config_file={path}").ssl_config_file == str(path.resolve())
    with pytest.raises(InvalidArgument) as e:
        app_args(f"--ssl_config_file={tmp_path / 'missing'}")
    assert e.value.message.startswith("Could not read SSL config file")


def test_serve_run_checks_the_ssl_config_before_deploying(
    tmp_path, capsys: pytest.CaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    """``serve run serve_app:app ssl_config_file=...`` skips the CLI: ``prepare`` checks it."""
    from serve_app.args import AppArgs
    from serve_app.launch import prepare
    from tests.conftest import TESTDATA

    bad = tmp_path / "ssl.config"
    bad.write_text('server_key: "k"\n')
    args = AppArgs(
        model_name="half_plus_two",
        model_base_path=str(TESTDATA / "saved_model_half_plus_two_cpu"),
        ssl_config_file=str(bad),
    )
    with pytest.raises(SystemExit) as e:
        prepare(args)
    assert e.value.code == 1
    assert "needs both server_key and server_cert" in capsys.readouterr().err
