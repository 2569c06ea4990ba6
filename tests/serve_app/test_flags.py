"""The CLI's flags, parsed in-process: every TF Serving flag either maps onto AppArgs (the
parser is generated from its fields), has no counterpart here (``NO_EFFECT``: accepted with a
warning) or is refused with the reason (``REFUSED``)."""

from __future__ import annotations

import pytest

from compat.errors import InvalidArgument
from serve_app import flags
from serve_app.args import AppArgs

pytestmark = pytest.mark.unit

BASE = ("--model_base_path=/models/m",)


def app_args(*given: str):  # type: ignore[no-untyped-def]
    ns, unknown = flags.parser().parse_known_args([*BASE, *given])
    assert not unknown
    return flags.to_app_args(ns)


@pytest.mark.parametrize("name", sorted(flags.REFUSED))
def test_a_flag_asking_for_what_is_not_served_is_refused_with_the_reason(name: str) -> None:
    accepted, why = flags.REFUSED[name]
    value = "true" if accepted == ("false",) else "x"
    with pytest.raises(InvalidArgument) as e:
        app_args(f"--{name}={value}")
    assert e.value.message == f"Not supported by ray-tfserving: --{name}={value}: {why}"


@pytest.mark.parametrize("name", sorted(flags.REFUSED))
def test_the_values_asking_for_nothing_missing_are_accepted(name: str) -> None:
    for value in flags.REFUSED[name][0]:
        app_args(f"--{name}={value}")
    if flags.REFUSED[name][0] == ("false",):
        app_args(f"--{name}=0")


def test_every_refusal_is_named_at_once() -> None:
    with pytest.raises(InvalidArgument) as e:
        app_args("--platform_config_file=p.txt", "--use_tflite_model=true")
    assert "--platform_config_file=p.txt: platform configs are not read" in e.value.message
    assert "--use_tflite_model=true: TFLite models are not served" in e.value.message


@pytest.mark.parametrize("name", sorted(flags.NO_EFFECT))
def test_thread_and_memory_knobs_without_a_counterpart_are_accepted_with_a_warning(
    name: str, capsys: pytest.CaptureFixture
) -> None:
    ns = flags.parser().parse_args([*BASE, f"--{name}=8"])
    flags.to_app_args(ns)
    flags.warn_no_effect(ns)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--{name} ({flags.NO_EFFECT[name]})" in err
    flags.warn_no_effect(flags.parser().parse_args([*BASE]))
    assert capsys.readouterr().err == ""


def test_every_app_args_flag_is_generated_from_its_field() -> None:
    """Name, default (the field's, or TF Serving's where that differs) and help (the
    docstring's first sentence) come from AppArgs; nothing else sets them."""
    p = flags.parser()
    actions = {a.option_strings[0]: a for a in p._actions if a.option_strings}
    generated = list(flags.flag_fields(AppArgs))
    assert len(generated) >= 30
    for path, info, flag in generated:
        action = actions[f"--{flag.name}"]
        expected = info.default if flag.cli_default is flags.UNSET else flag.cli_default
        if isinstance(expected, list | dict):
            expected = ""
        assert action.default == expected, path
        first = (info.description or "").replace("``", "").split()[:3]
        assert action.help is not None and action.help.split()[:3] == first, path
    for name, default in (("port", 8500), ("rest_api_port", 0), ("model_name", "default")):
        assert actions[f"--{name}"].default == default
    assert actions["--accelerator"].choices == ["auto", "cpu", "gpu"]


def test_a_flag_left_at_its_default_gives_the_field_its_default() -> None:
    args = app_args()
    for path, info, flag in flags.flag_fields(AppArgs):
        if flag.cli_default is not flags.UNSET:
            continue
        value: object = args
        for key in path:
            value = getattr(value, key)
        assert value == info.default, path


def test_grpc_socket_path_is_made_absolute_and_stands_in_for_the_port(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    args = app_args("--grpc_socket_path=tfs.sock", "--port=0")
    assert args.grpc_socket_path == str(tmp_path / "tfs.sock")
    assert args.grpc_port == 0
    with pytest.raises(InvalidArgument) as e:
        app_args("--port=0")
    assert e.value.message == (
        "At least one of server_options.grpc_port or server_options.grpc_socket_path must be set."
    )


def test_grpc_channel_arguments_are_parsed_as_tf_serving_parses_them() -> None:
    args = app_args(
        "--grpc_channel_arguments=grpc.max_connection_age_ms=2000,"
        "grpc.primary_user_agent=ua,grpc.big=3000000000,grpc.neg=-5"
    )
    assert args.grpc_channel_arguments == {
        "grpc.max_connection_age_ms": 2000,  # an int32: as an integer
        "grpc.primary_user_agent": "ua",
        "grpc.big": "3000000000",  # past int32: as a string, as absl::SimpleAtoi leaves it
        "grpc.neg": -5,
    }
    assert app_args().grpc_channel_arguments == {}
    with pytest.raises(InvalidArgument) as e:
        app_args("--grpc_channel_arguments=grpc.max_connection_age_ms")
    assert "'grpc.max_connection_age_ms' is not key=value" in e.value.message


def test_saved_model_tags_pick_the_meta_graph() -> None:
    assert app_args().saved_model_tags == ["serve"]
    assert app_args("--saved_model_tags=serve,gpu").saved_model_tags == ["serve", "gpu"]


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
    assert flags.parser().parse_args([*BASE]).drain_seconds == 5.0
    assert flags.parser().parse_args([*BASE, "--drain_seconds=0"]).drain_seconds == 0.0


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
    from tests.harness import TESTDATA

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


def test_the_command_line_imports_no_tensorflow_before_it_has_quietened_the_console() -> None:
    """TensorFlow's C++ start-up lines go to fd 2 as it is imported: ``compat.console.quiet``
    must be in place first, so the modules the CLI imports at its top may not import it."""
    import subprocess
    import sys

    probe = "import sys, serve_app.cli; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_enable_batching_alone_takes_tf_servings_batching_defaults() -> None:
    batching = app_args("--enable_batching").batching
    assert batching.enabled
    assert (
        batching.max_batch_size,
        batching.batch_timeout_micros,
        batching.max_enqueued_batches,
        batching.num_batch_threads,  # every core: each replica's share (ModelVersion)
    ) == (1000, 0, 10, 0)
    assert not app_args().batching.enabled


def test_inter_op_parallelism_takes_tfs_negative_value() -> None:
    """TF's ConfigProto: a negative inter_op_parallelism_threads runs every op in the caller's
    thread; TF Serving passes the flag through."""
    assert app_args("--tensorflow_inter_op_parallelism=-1").inter_op_parallelism == -1
    assert app_args().inter_op_parallelism == 0
