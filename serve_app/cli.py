"""``ray-tfserving``: tensorflow_model_server's command line, served by Ray Serve.

The flags keep TF Serving's names and defaults (model_servers/main.cc), so
``tensorflow_model_server --port=9000 --model_name=deeplab --model_base_path=...`` works with only
the program name changed. Like TF Serving, it reports ready only once every model's newest
version is AVAILABLE, exits non-zero on a bad config or path, and shuts down on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from serve_app.args import AppArgs

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
    for name in _ACCEPTED_NOOPS:
        flag(f"--{name}", default=None, help=argparse.SUPPRESS)
    return p


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def to_app_args(ns: argparse.Namespace) -> AppArgs:
    """Flags -> the same typed arguments ``serve run serve_app:app`` builds."""
    from compat.text_configs import read_batching_parameters, read_prometheus_path

    if not ns.model_config_file and not ns.model_base_path:
        raise ValueError("Both model_config_file and model_base_path cannot be empty!")
    if ns.model_config_file and ns.model_base_path:
        raise ValueError("Only one of model_config_file and model_base_path may be set, not both.")
    values: dict[str, Any] = {
        "model_name": ns.model_name,
        "model_base_path": ns.model_base_path or "models/deeplab",
        "model_config_file": ns.model_config_file or None,
        "host": ns.host,
        "grpc_port": ns.port,
        "http_port": ns.rest_api_port or _free_loopback_port(),
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
    if ns.enable_batching:
        values["batching"] = (
            read_batching_parameters(ns.batching_parameters_file)
            if ns.batching_parameters_file
            else {"enabled": True}
        )
    if ns.monitoring_config_file:
        values["prometheus_path"] = read_prometheus_path(ns.monitoring_config_file)
    return AppArgs.model_validate(values)


def wait_until_ready(timeout_s: float = 600.0) -> bool:
    from ray import serve

    manager = serve.get_deployment_handle("VersionManager", "default")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if manager.ready.remote().result():
            return True
        time.sleep(0.5)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    from compat.errors import ServingError
    from serve_app.app import build_app
    from serve_app.launch import prepare, start_ray_and_serve

    ns = parser().parse_args(argv)
    try:
        args = to_app_args(ns)
    except (ValueError, ServingError) as e:
        print(f"ray-tfserving: {getattr(e, 'message', None) or e}", file=sys.stderr)
        return 1
    args, plan = prepare(args)
    start_ray_and_serve(args)
    from ray import serve

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.run(build_app(args, plan), name="default", route_prefix="/")
        if not wait_until_ready():
            print("ray-tfserving: models did not become AVAILABLE", file=sys.stderr)
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
