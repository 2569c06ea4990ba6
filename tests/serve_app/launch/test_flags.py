"""The CLI's flags, parsed in-process: every TF Serving flag either maps onto AppArgs (the
parser is generated from its fields), has no counterpart here (``NO_EFFECT``: accepted with a
warning) or is refused with the reason (``REFUSED``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from compat.errors import InvalidArgument
from serve_app.config.args import AppArgs
from serve_app.launch import flags

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
    ns = flags.parser().parse_args([*BASE, f"--{name}" if name in flags.BOOLEAN else f"--{name}=8"])
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
    from serve_app.transports.listeners import Listeners
    from serve_app.transports.plane import HEALTH_SERVICE

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
    from serve_app.config.args import AppArgs
    from serve_app.launch.boot import prepare
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

    probe = "import sys, serve_app.launch.cli; print('tensorflow' in sys.modules)"
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


# --- TF Serving 2.20's flag list (tests/data/tfserving_main_flags.txt) -------------------------

MAIN_FLAGS = Path(__file__).resolve().parents[3] / "tests" / "data" / "tfserving_main_flags.txt"


def main_flags() -> dict[str, tuple[str, str]]:
    """name -> (type, default) of every flag of TF Serving's main.cc, as the test data lists."""
    rows = [line.split() for line in MAIN_FLAGS.read_text().splitlines()]
    return {r[0]: (r[1], r[2]) for r in rows if r and not r[0].startswith("#")}


#: Flags of main.cc answered by the program itself rather than by a field.
OWN = {"version"}


def fields_flags() -> dict[str, object]:
    """--name -> its argparse action, for the flags that set a field of AppArgs or LaunchArgs."""
    names = {f.name for m in (AppArgs, flags.LaunchArgs) for _, _, f in flags.flag_fields(m)}
    actions = {a.option_strings[0][2:]: a for a in flags.parser()._actions if a.option_strings}
    return {n: actions[n] for n in names}


def test_the_flag_list_is_tf_servings_whole_list() -> None:
    listed = main_flags()
    assert len(listed) == 48
    for name in ("port", "rest_api_enable_cors_support", "enable_serialization_as_tensor_content"):
        assert name in listed


@pytest.mark.parametrize("name", sorted(main_flags()))
def test_every_flag_of_tf_servings_main_cc_is_known(name: str) -> None:
    """Each works (a field's flag, or the program's own), warns or is refused: none ends the
    command line with "unknown argument"."""
    known = set(fields_flags()) | set(flags.NO_EFFECT) | set(flags.REFUSED) | OWN
    assert name in known
    kind = main_flags()[name][0]
    sample = {"int32": "1", "int64": "1", "float": "0.5"}.get(kind, "x")
    given = f"--{name}" if kind == "bool" else f"--{name}={sample}"
    if name == "mixed_precision":  # its one mode
        given = "--mixed_precision=bfloat16"
    _, unknown = flags.parser().parse_known_args([*BASE, given])
    assert not unknown


BOOLEANS = sorted(n for n, (kind, _) in main_flags().items() if kind == "bool" and n not in OWN)


@pytest.mark.parametrize("name", BOOLEANS)
def test_boolean_flags_take_tfs_syntax(name: str) -> None:
    """--flag (true), --flag=true|false|1|0 in any case, as TF's command_line_flags.cc reads
    them, and --noflag (false); another value exits 2 as a bad value."""
    p = flags.parser()

    def value(*given: str) -> bool:
        got = getattr(p.parse_args([*BASE, *given]), name)
        return got in (True, "true")

    assert value(f"--{name}")
    assert value(f"--{name}=true") and value(f"--{name}=TRUE") and value(f"--{name}=1")
    assert not value(f"--{name}=false") and not value(f"--{name}=0")
    assert not value(f"--no{name}")
    with pytest.raises(SystemExit) as e:
        p.parse_args([*BASE, f"--{name}=maybe"])
    assert e.value.code == 2


def test_a_bare_boolean_tuning_flag_is_accepted_with_its_warning(
    capsys: pytest.CaptureFixture,
) -> None:
    ns = flags.parser().parse_args(
        [*BASE, "--flush_filesystem_caches", "--remove_unused_fields_from_bundle_metagraph"]
    )
    flags.to_app_args(ns)
    flags.warn_no_effect(ns)
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--flush_filesystem_caches (" in err and "--remove_unused_fields" in err


@pytest.mark.parametrize("name", ["prefer_tflite_model", "use_tflite_model"])
def test_tflite_under_either_name_is_refused_with_the_reason(name: str) -> None:
    for given in (f"--{name}", f"--{name}=true", f"--{name}=1"):
        with pytest.raises(InvalidArgument) as e:
            app_args(given)
        assert f"--{name}=true: TFLite models are not served" in e.value.message
    app_args(f"--{name}=false")
    app_args(f"--no{name}")


def test_alts_and_xla_gpu_are_refused_with_the_reason() -> None:
    with pytest.raises(InvalidArgument) as e:
        app_args("--use_alts_credentials", "--xla_gpu_compilation_enabled=true")
    assert "--use_alts_credentials=true: ALTS" in e.value.message
    assert "use --ssl_config_file" in e.value.message
    assert "--xla_gpu_compilation_enabled=true: XLA JIT" in e.value.message


#: Defaults of ours that are not TF Serving's, each saying why in its --help and docstring.
OWN_DEFAULTS = {
    "max_num_load_retries",
    "load_retry_interval_micros",
    "enable_grpc_healthcheck_service",
}


def _same_default(ours: object, theirs: str) -> bool:
    if isinstance(ours, list):  # a list field: given as one comma-separated string
        ours = ",".join(map(str, ours))
    if isinstance(ours, dict):  # key=value,...
        ours = ",".join(f"{k}={v}" for k, v in ours.items())
    if ours is None or ours == "":
        return theirs == '""'
    if isinstance(ours, bool):
        return str(ours).lower() == theirs
    if isinstance(ours, int | float):
        return float(ours) == float(theirs)
    return str(ours) == theirs


def test_defaults_are_tf_servings_or_say_why() -> None:
    """Item 4 of issue 25: a flag's default differs from TF Serving's only where its help says
    why (and names TF Serving's)."""
    listed = main_flags()
    actions = fields_flags()
    defaults = {
        f.name: info.default if f.cli_default is flags.UNSET else f.cli_default
        for m in (AppArgs, flags.LaunchArgs)
        for _, info, f in flags.flag_fields(m)
    }
    differ = {
        name
        for name, default in defaults.items()
        if name in listed and listed[name][1] != "-" and not _same_default(default, listed[name][1])
    }
    assert differ == OWN_DEFAULTS
    for name in OWN_DEFAULTS:
        assert "TF Serving" in actions[name].help  # type: ignore[attr-defined]


def test_the_new_flags_map_onto_app_args(tmp_path: Path) -> None:
    config = tmp_path / "session.pbtxt"
    config.write_text("intra_op_parallelism_threads: 3\nallow_soft_placement: false\n")
    args = app_args(
        "--allow_version_labels_for_unavailable_models",
        "--enable_per_model_batching_parameters",
        f"--tensorflow_session_config_file={config}",
        "--num_load_threads=4",
        "--num_request_iterations_for_warmup=3",
        "--rest_api_enable_cors_support",
        "--enable_serialization_as_tensor_content=true",
        "--mixed_precision=bfloat16",
    )
    assert args.allow_version_labels_for_unavailable_models
    assert args.enable_per_model_batching_parameters
    assert "intra_op_parallelism_threads: 3" in args.session_config
    assert (args.num_load_threads, args.num_request_iterations_for_warmup) == (4, 3)
    assert args.rest_api_enable_cors_support and args.enable_serialization_as_tensor_content
    assert args.mixed_precision == "bfloat16"
    defaults = app_args()
    assert not defaults.rest_api_enable_cors_support and defaults.session_config == ""
    assert defaults.mixed_precision == "" and defaults.num_load_threads == 0


def test_a_session_config_file_that_does_not_parse_fails_startup(tmp_path: Path) -> None:
    from pydantic import ValidationError

    bad = tmp_path / "session.pbtxt"
    bad.write_text("no_such_field: 1\n")
    with pytest.raises(ValidationError, match="Invalid protobuf file"):
        app_args(f"--tensorflow_session_config_file={bad}")
    with pytest.raises(ValidationError, match="Could not read session config file"):
        app_args(f"--tensorflow_session_config_file={tmp_path / 'missing'}")


def test_mixed_precision_takes_bfloat16_only() -> None:
    with pytest.raises(SystemExit):
        flags.parser().parse_args([*BASE, "--mixed_precision=float16"])


def test_bfloat16_on_a_cpu_without_it_warns(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t: fpu sse2 avx2 avx512f\n")
    assert not flags.cpu_has_bfloat16(str(cpuinfo))
    cpuinfo.write_text("flags\t: fpu sse2 avx512f avx512_bf16\n")
    assert flags.cpu_has_bfloat16(str(cpuinfo))
    assert not flags.cpu_has_bfloat16(str(tmp_path / "none"))
    ns = flags.parser().parse_args([*BASE, "--mixed_precision=bfloat16"])
    flags.warn_no_effect(ns)
    err = capsys.readouterr().err
    assert ("no bfloat16 instructions" in err) == (not flags.cpu_has_bfloat16())


def test_per_model_batching_without_batching_warns(capsys: pytest.CaptureFixture) -> None:
    flags.warn_no_effect(
        flags.parser().parse_args([*BASE, "--enable_per_model_batching_parameters"])
    )
    assert "without --enable_batching" in capsys.readouterr().err
    flags.warn_no_effect(
        flags.parser().parse_args(
            [*BASE, "--enable_per_model_batching_parameters", "--enable_batching"]
        )
    )
    assert capsys.readouterr().err == ""


def test_version_prints_the_version_as_tf_serving_does() -> None:
    """``--version``: TF Serving's two lines, ours and TensorFlow's, with exit 0 (``cli._main``
    returns before anything starts)."""
    from importlib.metadata import version

    import tensorflow as tf

    from serve_app.launch import cli

    assert flags.parser().parse_known_args(["--version"])[0].version
    assert cli._version().splitlines() == [
        f"TensorFlow ModelServer: ray-tfserving {version('ray-tfserving')}",
        f"TensorFlow Library: {tf.__version__}",
    ]


def test_serving_replicas_take_a_count_or_auto_with_bounds() -> None:
    assert app_args("--serving_replicas=3").ingress_replicas == 3
    auto = app_args(
        "--serving_replicas=auto",
        "--serving_min_replicas=2",
        "--serving_max_replicas=6",
        "--serving_target_in_flight=4",
    )
    assert auto.serving_autoscaled
    assert (auto.serving_replicas_least, auto.serving_replicas_most) == (2, 6)
    assert auto.serving_autoscaling.target_in_flight == 4
    assert app_args().ingress_replicas == 2
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        app_args("--serving_replicas=some")
