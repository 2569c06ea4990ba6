"""tensorflow_model_server's flags, generated from the typed arguments.

Every flag that sets an ``AppArgs`` field comes from that field (``Flag`` in its annotation):
its name, type, choices, default (the field's, or TF Serving's where the two differ) and help
(the first sentence of the field's docstring). ``LaunchArgs`` holds the rest, the flags about
the process rather than the application (which Ray to join, how long to wait) and the files the
command line reads into ``AppArgs`` (batching and monitoring configs). TF Serving's flags with
no counterpart here are either harmless tuning knobs, accepted with a one-line warning that
names them (``NO_EFFECT``), or ask for what is not served, refused with the reason
(``REFUSED``): no flag is accepted and then ignored in silence.
"""

from __future__ import annotations

import argparse
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

from serve_app.config.args import UNSET, AppArgs, Flag

#: TF Serving flags about its C++ server's threads and memory, with no counterpart here (the
#: ports are served by grpc.aio and uvicorn on each serving replica's event loop; the
#: metagraph and file-system caches are Python's): accepted with any value, so that existing
#: command lines keep working, with a warning that names them and says why.
NO_EFFECT = {
    "grpc_max_threads": "grpc.aio serves every call on the replica's event loop",
    "rest_api_num_threads": "uvicorn serves every request on the replica's event loop",
    "remove_unused_fields_from_bundle_metagraph": "a memory saving of TF Serving's loader",
    "flush_filesystem_caches": "a memory saving of TF Serving's loader",
    "num_unload_threads": "a version is unloaded once its last call ends, on no thread pool",
    "num_tflite_pools": "no TFLite interpreter pools: TFLite models are not served",
    "num_tflite_interpreters_per_pool": "no TFLite interpreter pools: TFLite models are not served",
    "thread_pool_factory_config_file": (
        "TF's ops run on each session's own pools (--tensorflow_*_parallelism)"
    ),
    "skip_initialize_tpu": "no TPU is initialized here",
}

#: TF Serving flags asking for what is not served here: (the values that ask for nothing we
#: lack, why). Those values are accepted (TF Serving's defaults, but for --enable_profiler,
#: which is on there: no ProfilerService is served here, so only =false is); anything else is
#: refused at startup with the reason, rather than silently serving something else.
REFUSED: dict[str, tuple[tuple[str, ...], str]] = {
    "platform_config_file": (("",), "platform configs are not read; use the flags"),
    "prefer_tflite_model": (("false",), "TFLite models are not served"),
    "use_tflite_model": (("false",), "TFLite models are not served (TF Serving's older name)"),
    "xla_cpu_compilation_enabled": (("false",), "XLA JIT compilation is not enabled here"),
    "xla_gpu_compilation_enabled": (("false",), "XLA JIT compilation is not enabled here"),
    "enable_profiler": (("false",), "no ProfilerService is served"),
    "use_alts_credentials": (
        ("false",),
        "ALTS (Google's internal transport security) is not served; use --ssl_config_file",
    ),
}

#: TF Serving's boolean flags among ``NO_EFFECT`` and ``REFUSED``: like the boolean fields'
#: flags, they take TF's syntax (``--flag``, ``--flag=true``, ``--flag=false``, ``--flag=1``,
#: ``--flag=0``) and ``--noflag``.
BOOLEAN = frozenset(
    {
        "remove_unused_fields_from_bundle_metagraph",
        "flush_filesystem_caches",
        "skip_initialize_tpu",
        *(name for name, (accepted, _) in REFUSED.items() if accepted == ("false",)),
    }
)


class LaunchArgs(BaseModel):
    """The command line's own flags: the process, and the files it reads into ``AppArgs``."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    batching_parameters_file: Annotated[str, Flag("batching_parameters_file")] = ""
    """A BatchingParameters text file (with --enable_batching): the batching knobs."""
    monitoring_config_file: Annotated[str, Flag("monitoring_config_file")] = ""
    """A MonitoringConfig text file: Prometheus metrics at its path on the REST port."""
    tensorflow_session_parallelism: Annotated[int, Flag("tensorflow_session_parallelism")] = 0
    """Intra- and inter-op threads both, where those flags are 0 (TF Serving's)."""
    ray_address: Annotated[str | None, Flag("ray_address")] = Field(
        default_factory=lambda: os.environ.get("RAY_ADDRESS") or None
    )
    """Join this Ray cluster (default: $RAY_ADDRESS; none: an embedded local Ray)."""
    resource_wait_seconds: Annotated[float, Flag("resource_wait_seconds")] = 60.0
    """How long replicas may wait for resources (e.g. a GPU) before startup fails."""
    model_load_timeout_seconds: Annotated[float, Flag("model_load_timeout_seconds")] = 600.0
    """How long startup waits for every model's newest version to be AVAILABLE."""
    drain_seconds: Annotated[float, Flag("drain_seconds")] = 5.0
    """On SIGTERM, how long health says NOT_SERVING while requests are still served, before
    the ports close (calls in flight then get shutdown_grace_s to finish)."""


def _bool(text: str) -> bool:
    """TF's parser (``command_line_flags.cc``) takes true/false (any case) and 1/0."""
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _bool_text(text: str) -> str:
    """A boolean flag without a field: ``true`` or ``false``, as ``REFUSED`` compares them."""
    return "true" if _bool(text) else "false"


def _add_negation(p: argparse.ArgumentParser, name: str, false: Any) -> None:
    """``--no<name>`` sets the boolean flag ``--<name>`` false (hidden from --help)."""
    p.add_argument(
        f"--no{name}",
        dest=name,
        action="store_const",
        const=false,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )


def _flag(info: FieldInfo) -> Flag | None:
    return next((m for m in info.metadata if isinstance(m, Flag)), None)


def flag_fields(
    model: type[BaseModel], path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], FieldInfo, Flag]]:
    """(the field's path, the field, its flag) for every flag field of ``model`` and of the
    models nested in it (``batching.enabled`` is ``--enable_batching``)."""
    for name, info in model.model_fields.items():
        flag = _flag(info)
        if flag is not None:
            yield (*path, name), info, flag
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            yield from flag_fields(info.annotation, (*path, name))


def _scalar(annotation: Any) -> Any:
    """``int | None`` -> ``int``; other annotations as they are."""
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        return rest[0] if len(rest) == 1 else str
    return annotation


def _help(info: FieldInfo) -> str:
    text = " ".join((info.description or "").split())
    first = text.split(". ")[0].rstrip(".")
    return first.replace("``", "").replace("%", "%%")


def _add(p: argparse.ArgumentParser, info: FieldInfo, flag: Flag) -> None:
    kind = _scalar(info.annotation)
    if flag.cli_default is not UNSET:
        default = flag.cli_default
    elif info.default_factory is not None:
        default = info.default_factory()  # type: ignore[call-arg]
    else:
        default = info.default
    if isinstance(default, list | dict):  # given as one string (a,b / k=v,k=v)
        default = ""
    options: dict[str, Any] = {"default": default, "help": _help(info)}
    if kind is bool:
        options.update(type=_bool, nargs="?", const=True)
    elif get_origin(kind) is Literal:
        options["choices"] = list(get_args(kind))
    elif kind in (int, float):
        options["type"] = kind
    p.add_argument(f"--{flag.name}", **options)
    if kind is bool:
        _add_negation(p, flag.name, False)


def parser() -> argparse.ArgumentParser:
    """The command line: AppArgs' and LaunchArgs' flags, the program's own, TF Serving's
    flags without a counterpart (hidden)."""
    p = argparse.ArgumentParser(
        prog="ray-tfserving",
        description="A TensorFlow Serving-compatible model server on Ray Serve.",
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for model in (AppArgs, LaunchArgs):
        for _, info, flag in flag_fields(model):
            _add(p, info, flag)
    p.add_argument("--print_serve_config", action="store_true", help="print the Serve config")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show everything Ray and TensorFlow print (default: one line per startup step, "
        "warnings and errors)",
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    for name in (*NO_EFFECT, *REFUSED):
        if name in BOOLEAN:
            p.add_argument(
                f"--{name}",
                default=None,
                type=_bool_text,
                nargs="?",
                const="true",
                help=argparse.SUPPRESS,
            )
            _add_negation(p, name, "false")
        else:
            p.add_argument(f"--{name}", default=None, help=argparse.SUPPRESS)
    return p


def launch_args(ns: argparse.Namespace) -> LaunchArgs:
    """The process's own flags, typed."""
    return LaunchArgs.model_validate(
        {path[-1]: getattr(ns, flag.name) for path, _, flag in flag_fields(LaunchArgs)}
    )


def refused_flags(ns: argparse.Namespace) -> list[str]:
    """``--flag=value: why`` for each flag in ``REFUSED`` set to a value it does not accept."""
    refused = []
    for name, (accepted, why) in REFUSED.items():
        value = getattr(ns, name)
        if value is None:
            continue
        if value.strip() not in accepted:  # a boolean's value is already true or false
            refused.append(f"--{name}={value}: {why}")
    return refused


def warn_no_effect(ns: argparse.Namespace) -> None:
    """One line naming the tuning flags given that have no effect here, and why; one line
    for a flag whose effect this machine or the other flags rule out."""
    given = [
        f"--{name} ({why})" for name, why in NO_EFFECT.items() if getattr(ns, name) is not None
    ]
    if given:
        print(f"ray-tfserving: no effect here: {'; '.join(given)}", file=sys.stderr)
    if ns.enable_per_model_batching_parameters and not ns.enable_batching:
        print(
            "ray-tfserving: --enable_per_model_batching_parameters without --enable_batching: "
            "no batching, so no batching_params.pbtxt is read",
            file=sys.stderr,
        )
    if ns.mixed_precision == "bfloat16" and not cpu_has_bfloat16():
        print(
            "ray-tfserving: --mixed_precision=bfloat16: this CPU has no bfloat16 instructions "
            "(avx512_bf16, amx_bf16); TF keeps float32 here",
            file=sys.stderr,
        )


def cpu_has_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has the bfloat16 instructions TF's oneDNN rewrite needs (Linux's
    /proc/cpuinfo flags; elsewhere, unknown: False)."""
    try:
        words = set(Path(cpuinfo).read_text().split())
    except OSError:
        return False
    return bool(words & {"avx512_bf16", "amx_bf16"})


def to_app_args(ns: argparse.Namespace) -> AppArgs:
    """Flags -> the same typed arguments ``serve run serve_app:app`` builds, with TF Serving's
    checks and messages (server.cc, ``Server::BuildAndStart``). With a config file,
    --model_name and --model_base_path are ignored, as there."""
    from compat.errors import InvalidArgument
    from compat.text_configs import (
        BATCHING_DEFAULTS,
        parse_channel_arguments,
        read_batching_parameters,
        read_prometheus_path,
        read_ssl_config,
    )

    launch = launch_args(ns)
    if not ns.model_config_file and not ns.model_base_path:
        raise InvalidArgument(
            "Both server_options.model_base_path and server_options.model_config_file are empty!"
        )
    if not ns.port and not ns.grpc_socket_path:
        raise InvalidArgument(
            "At least one of server_options.grpc_port or server_options.grpc_socket_path must "
            "be set."
        )
    refused = refused_flags(ns)
    if refused:
        raise InvalidArgument("Not supported by ray-tfserving: " + "; ".join(refused))
    if launch.batching_parameters_file and not ns.enable_batching:
        raise InvalidArgument(
            "server_options.batching_parameters_file is set without setting "
            "server_options.enable_batching to true."
        )
    values: dict[str, Any] = {}
    for path, _, flag in flag_fields(AppArgs):
        value = getattr(ns, flag.name)
        if value is None or value == "":  # left unset or empty: the field's default
            continue
        if flag.scale != 1.0:
            value *= flag.scale
        node = values
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    for key in ("intra_op_parallelism", "inter_op_parallelism"):
        values[key] = values[key] or launch.tensorflow_session_parallelism
    for key in ("grpc_socket_path", "ssl_config_file"):  # replicas run elsewhere: absolute
        if key in values:
            values[key] = str(Path(values[key]).resolve())
    if "grpc_channel_arguments" in values:  # TF Serving's message, not a validation error's
        values["grpc_channel_arguments"] = parse_channel_arguments(values["grpc_channel_arguments"])
    if launch.batching_parameters_file:
        values["batching"] = read_batching_parameters(launch.batching_parameters_file)
    elif ns.enable_batching:  # TF Serving's defaults, not the typed config's
        values["batching"] = {"enabled": True, **BATCHING_DEFAULTS}
    if launch.monitoring_config_file:
        values["prometheus_path"] = read_prometheus_path(launch.monitoring_config_file)
    if "ssl_config_file" in values:
        read_ssl_config(values["ssl_config_file"])  # a bad file fails startup, not each replica
    return AppArgs.model_validate(values)
