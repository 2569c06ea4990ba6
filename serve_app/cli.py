"""``ray-tfserving``: tensorflow_model_server's command line, served by Ray Serve.

The flags keep TF Serving's names and defaults (model_servers/main.cc), so
``tensorflow_model_server --port=9000 --model_name=deeplab --model_base_path=...`` works with only
the program name changed. Like TF Serving, it reports ready only once every model's newest
version is AVAILABLE, exits non-zero on a bad config or path, and shuts down on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from serve_app.args import AppArgs
from serve_app.launch import free_ports

#: TF Serving flags that have no effect here; accepted so existing command lines keep working.
_ACCEPTED_NOOPS = (
    "grpc_max_threads",
    "grpc_channel_arguments",
    "ssl_config_file",
    "platform_config_file",
    "saved_model_tags",
    "grpc_socket_path",
    "rest_api_num_threads",
    "xla_cpu_compilation_enabled",
    "enable_profiler",
    "remove_unused_fields_from_bundle_metagraph",
    "load_retry_interval_micros",
    "flush_filesystem_caches",
    "use_tflite_model",
    # Labels named in the startup config are accepted once their versions load (as with this
    # flag set); a reload may still only label AVAILABLE versions.
    "allow_version_labels_for_unavailable_models",
)


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ray-tfserving",
        description="A TensorFlow Serving-compatible model server on Ray Serve.",
        allow_abbrev=False,
    )
    flag = p.add_argument
    flag("--port", type=int, default=8500, help="gRPC port (TF Serving: 8500)")
    flag("--rest_api_port", type=int, default=0, help="HTTP/REST port; 0 disables REST")
    flag("--rest_api_timeout_in_ms", type=int, default=30000, help="REST request deadline")
    flag("--model_name", default="default", help="name of the single model")
    flag("--model_base_path", default="", help="base path of the single model")
    flag("--model_config_file", default="", help="ModelServerConfig text file")
    flag("--model_config_file_poll_wait_seconds", type=float, default=0, help="re-read config")
    flag("--file_system_poll_wait_seconds", type=float, default=1, help="version polling")
    flag("--enable_batching", type=_bool, nargs="?", const=True, default=False)
    flag("--batching_parameters_file", default="", help="BatchingParameters text file")
    flag("--monitoring_config_file", default="", help="MonitoringConfig text file")
    flag("--enable_model_warmup", type=_bool, nargs="?", const=True, default=True)
    flag("--enable_grpc_healthcheck_service", type=_bool, nargs="?", const=True, default=True)
    flag("--enable_signature_method_name_check", type=_bool, nargs="?", const=True, default=False)
    flag("--tensorflow_intra_op_parallelism", type=int, default=0)
    flag("--tensorflow_inter_op_parallelism", type=int, default=0)
    flag("--tensorflow_session_parallelism", type=int, default=0)
    flag("--per_process_gpu_memory_fraction", type=float, default=0.0)
    flag("--host", default="127.0.0.1", help="address to bind (ray-tfserving; loopback default)")
    flag("--accelerator", choices=["auto", "cpu", "gpu"], default="auto", help="ray-tfserving")
    flag("--num_replicas", type=int, default=1, help="replicas per model version (ray-tfserving)")
    flag("--max_num_load_retries", type=int, default=None, help="load retries after a failure")
    flag("--version", action="store_true", help="print the version and exit")
    for name in _ACCEPTED_NOOPS:
        flag(f"--{name}", default=None, help=argparse.SUPPRESS)
    return p


def to_app_args(ns: argparse.Namespace) -> AppArgs:
    """Flags -> the same typed arguments ``serve run serve_app:app`` builds."""
    from compat.errors import InvalidArgument
    from compat.text_configs import read_batching_parameters, read_prometheus_path

    # TF Serving's checks and messages (server.cc, Server::BuildAndStart). With a config file,
    # --model_name and --model_base_path are ignored, as there.
    if not ns.model_config_file and not ns.model_base_path:
        raise InvalidArgument(
            "Both server_options.model_base_path and server_options.model_config_file are empty!"
        )
    if ns.batching_parameters_file and not ns.enable_batching:
        raise InvalidArgument(
            "server_options.batching_parameters_file is set without setting "
            "server_options.enable_batching to true."
        )
    values: dict[str, Any] = {
        "model_name": ns.model_name,
        "model_base_path": ns.model_base_path or "models/deeplab",
        "model_config_file": ns.model_config_file or None,
        "host": ns.host,
        "grpc_port": ns.port,
        "http_port": ns.rest_api_port or free_ports(ns.host, 1, exclude=(ns.port,))[0],
        "rest_api_timeout_in_ms": ns.rest_api_timeout_in_ms,
        "file_system_poll_wait_seconds": ns.file_system_poll_wait_seconds,
        "model_config_file_poll_wait_seconds": ns.model_config_file_poll_wait_seconds,
        "enable_model_warmup": ns.enable_model_warmup,
        "enable_signature_method_name_check": ns.enable_signature_method_name_check,
        "intra_op_parallelism": ns.tensorflow_intra_op_parallelism
        or ns.tensorflow_session_parallelism,
        "inter_op_parallelism": ns.tensorflow_inter_op_parallelism
        or ns.tensorflow_session_parallelism,
        "per_process_gpu_memory_fraction": ns.per_process_gpu_memory_fraction,
        "scaling": {"accelerator": ns.accelerator, "num_replicas": ns.num_replicas},
    }
    if ns.max_num_load_retries is not None:
        values["max_load_retries"] = ns.max_num_load_retries
    if ns.enable_batching:
        values["batching"] = (
            read_batching_parameters(ns.batching_parameters_file)
            if ns.batching_parameters_file
            else {"enabled": True}
        )
    if ns.monitoring_config_file:
        values["prometheus_path"] = read_prometheus_path(ns.monitoring_config_file)
    return AppArgs.model_validate(values)


def wait_until_ready(stop: threading.Event, timeout_s: float = 600.0) -> str | None:
    """Block until every model's newest version is AVAILABLE (None) or say why not.

    Like TF Serving's startup (ServerCore::WaitUntilModelsAvailable), a model whose versions all
    failed to load ends the wait with its error instead of waiting out the timeout.
    """
    from ray import serve

    manager = serve.get_deployment_handle("VersionManager", "default")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if manager.ready.remote().result():
            return None
        failed = _failed_models(manager, manager.snapshot.remote().result())
        if failed:
            return (
                f"UNKNOWN: {len(failed)} model(s) did not become available: {{{''.join(failed)}}}"
            )
        if stop.wait(0.5):
            return "CANCELLED: interrupted while waiting for models to load"
    return f"UNKNOWN: models did not become AVAILABLE within {timeout_s:.0f}s"


def _failed_models(manager: Any, snapshot: dict[str, Any]) -> list[str]:
    """``{name: m version: v} due to error: CODE: message}, `` for each model whose every known
    version ended with a load error (TF Serving's wording)."""
    from compat.protos import get_model_status_pb2
    from serve_app.replies import STATUS_BY_VALUE

    failed = []
    for name, versions in snapshot["status"].items():
        if not versions or any(state != "END" for state in versions.values()):
            continue
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        reply = manager.get_status.remote(request.SerializeToString()).result()
        if reply.code:
            continue
        response = get_model_status_pb2.GetModelStatusResponse.FromString(reply.payload)
        errors = [s for s in response.model_version_status if s.status.error_code]
        if len(errors) != len(response.model_version_status) or not errors:
            continue
        newest = errors[0]  # newest first
        code = STATUS_BY_VALUE.get(newest.status.error_code)
        failed.append(
            f"{{{{name: {name} version: {newest.version}}} due to error: "
            f"{code.name if code else newest.status.error_code}: "
            f"{newest.status.error_message}}}, "
        )
    return failed


def _version() -> str:
    from importlib.metadata import version

    import tensorflow as tf

    return (
        f"TensorFlow ModelServer: ray-tfserving {version('ray-tfserving')}\n"
        f"TensorFlow Library: {tf.__version__}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    ns, unknown = p.parse_known_args(argv)
    if unknown:  # TF Serving prints the same two things (main.cc)
        print(f"unknown argument: {unknown[0]}", file=sys.stderr)
        p.print_usage(sys.stderr)
        return 2
    if ns.version:
        print(_version())
        return 0
    from pydantic import ValidationError

    from compat.errors import InvalidArgument, ServingError
    from serve_app.launch import fail, prepare, start_ray_and_serve

    try:
        args = to_app_args(ns)
    except ServingError as e:
        return fail(e)
    except ValidationError as e:  # e.g. allowed_batch_sizes not ending at max_batch_size
        return fail(InvalidArgument(str(e)))
    args, plan = prepare(args)
    from ray import serve

    from serve_app.app import build_app

    start_ray_and_serve(args)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.run(build_app(args, plan), name="default", route_prefix="/")
        problem = wait_until_ready(stop)
        if problem is not None:
            print(f"ray-tfserving: Failed to start server. Error: {problem}", file=sys.stderr)
            return 1
        print(f"Running gRPC ModelServer at {args.host}:{args.grpc_port} ...", flush=True)
        if ns.rest_api_port:
            print(f"Exporting HTTP/REST API at:{args.host}:{args.http_port} ...", flush=True)
        while not stop.wait(1.0):
            pass
        return 0
    finally:
        import ray

        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
