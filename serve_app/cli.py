"""``ray-tfserving``: tensorflow_model_server's command line, served by Ray Serve.

The flags keep TF Serving's names and defaults (model_servers/main.cc), so
``tensorflow_model_server --port=8500 --model_name=deeplab --model_base_path=...`` works with only
the program name changed. Like TF Serving, it reports ready only once every model's newest
version is AVAILABLE, exits non-zero on a bad config or path, and shuts down on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serve_app.args import AppArgs
from serve_app.launch import APP_NAME
from serve_app.startup import Progress, wait_until_ready

#: TF Serving flags about its C++ server's threads and memory, with no counterpart here: the
#: ports are served by grpc.aio and uvicorn on each serving replica's event loop, and the
#: metagraph and file-system caches are Python's. Accepted, with any value, so that existing
#: command lines keep working; what each does here is the comment.
_NO_EFFECT = {
    "grpc_max_threads": "grpc.aio serves every call on the replica's event loop",
    "rest_api_num_threads": "uvicorn serves every request on the replica's event loop",
    "remove_unused_fields_from_bundle_metagraph": "a memory saving of TF Serving's loader",
    "flush_filesystem_caches": "a memory saving of TF Serving's loader",
    # Labels named in the startup config are accepted once their versions load (as with this
    # flag set); a reload may still only label AVAILABLE versions.
    "allow_version_labels_for_unavailable_models": "labels in the startup config always are",
}

#: TF Serving flags asking for what is not served here: (the values that ask for nothing we
#: lack, why). Those values are accepted (TF Serving's defaults, but for --enable_profiler,
#: which is on there: no ProfilerService is served here, so only =false is); anything else is
#: refused at startup with the reason, rather than silently serving something else (plaintext
#: for a TLS config, say).
_REFUSED: dict[str, tuple[tuple[str, ...], str]] = {
    "grpc_socket_path": (("",), "no Unix socket is served (every serving replica shares --port)"),
    "platform_config_file": (("",), "platform configs are not read; use the flags"),
    "grpc_channel_arguments": (("",), "gRPC channel arguments cannot be set"),
    "saved_model_tags": (("", "serve"), "only the 'serve' MetaGraph is loaded"),
    "use_tflite_model": (("false",), "TFLite models are not served"),
    "xla_cpu_compilation_enabled": (("false",), "XLA JIT compilation is not enabled here"),
    "enable_profiler": (("false",), "no ProfilerService is served"),
}


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
    flag("--ssl_config_file", default="", help="SSLConfig text file: TLS on gRPC and REST")
    flag("--enable_model_warmup", type=_bool, nargs="?", const=True, default=True)
    flag("--enable_grpc_healthcheck_service", type=_bool, nargs="?", const=True, default=True)
    flag("--enable_signature_method_name_check", type=_bool, nargs="?", const=True, default=False)
    flag("--tensorflow_intra_op_parallelism", type=int, default=0)
    flag("--tensorflow_inter_op_parallelism", type=int, default=0)
    flag("--tensorflow_session_parallelism", type=int, default=0)
    flag("--per_process_gpu_memory_fraction", type=float, default=0.0)
    flag("--host", default="127.0.0.1", help="address to bind (ray-tfserving; loopback default)")
    flag("--accelerator", choices=["auto", "cpu", "gpu"], default="auto", help="ray-tfserving")
    flag("--num_gpus", type=float, default=1.0, help="GPUs per replica, fractional shares a card")
    flag(
        "--max_concurrent_requests",
        type=int,
        default=1024,
        help="requests in flight per serving replica; beyond: RESOURCE_EXHAUSTED / 429 at once",
    )
    flag(
        "--max_request_bytes",
        type=int,
        default=2**31 - 1,
        help="largest gRPC message / REST body taken (TF Serving: INT_MAX)",
    )
    flag(
        "--admin_port",
        type=int,
        default=0,
        help="ray-tfserving's admin routes (canary weights) on this loopback port; 0: off",
    )
    flag("--serving_replicas", type=int, default=2, help="processes holding the ports and models")
    flag("--num_replicas", type=int, default=1, help="replicas per model version, --colocate=false")
    flag("--colocate", type=_bool, nargs="?", const=True, default=True, help="models in-process")
    flag(
        "--ray_address",
        default=os.environ.get("RAY_ADDRESS") or None,
        help="join this Ray cluster (default: $RAY_ADDRESS; none: an embedded local Ray)",
    )
    flag(
        "--resource_wait_seconds",
        type=float,
        default=60.0,
        help="how long replicas may wait for resources (e.g. a GPU) before startup fails",
    )
    flag(
        "--model_load_timeout_seconds",
        type=float,
        default=600.0,
        help="how long startup waits for every model's newest version to be AVAILABLE",
    )
    flag(
        "--drain_seconds",
        type=float,
        default=5.0,
        help="on SIGTERM, how long health says NOT_SERVING while requests are still served, "
        "before the ports close (calls in flight then get shutdown_grace_s to finish)",
    )
    flag("--print_serve_config", action="store_true", help="print the Serve config and exit")
    flag(
        "--verbose",
        action="store_true",
        help="show everything Ray and TensorFlow print (default: one line per startup step, "
        "warnings and errors)",
    )
    flag("--max_num_load_retries", type=int, default=None, help="load retries after a failure")
    flag("--version", action="store_true", help="print the version and exit")
    flag(
        "--load_retry_interval_micros",
        type=int,
        default=None,
        help="wait between load retries (default: at once; TF Serving's is 1 min)",
    )
    for name in (*_NO_EFFECT, *_REFUSED):
        flag(f"--{name}", default=None, help=argparse.SUPPRESS)
    return p


def _refused_flags(ns: argparse.Namespace) -> list[str]:
    """``--flag=value: why`` for each flag in ``_REFUSED`` set to a value it does not accept."""
    refused = []
    for name, (accepted, why) in _REFUSED.items():
        value = getattr(ns, name)
        if value is None:
            continue
        normal = value.strip()
        if accepted == ("false",):  # a boolean flag
            normal = {"1": "true", "yes": "true", "0": "false", "no": "false"}.get(
                normal.lower(), normal.lower()
            )
        if normal not in accepted:
            refused.append(f"--{name}={value}: {why}")
    return refused


def to_app_args(ns: argparse.Namespace) -> AppArgs:
    """Flags -> the same typed arguments ``serve run serve_app:app`` builds."""
    from compat.errors import InvalidArgument
    from compat.text_configs import (
        read_batching_parameters,
        read_prometheus_path,
        read_ssl_config,
    )

    # TF Serving's checks and messages (server.cc, Server::BuildAndStart). With a config file,
    # --model_name and --model_base_path are ignored, as there.
    if not ns.model_config_file and not ns.model_base_path:
        raise InvalidArgument(
            "Both server_options.model_base_path and server_options.model_config_file are empty!"
        )
    refused = _refused_flags(ns)
    if refused:
        raise InvalidArgument("Not supported by ray-tfserving: " + "; ".join(refused))
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
        "http_port": ns.rest_api_port,  # 0: no REST, as in TF Serving
        "admin_port": ns.admin_port,
        "grpc_health_service": ns.enable_grpc_healthcheck_service,
        "max_request_bytes": ns.max_request_bytes,
        "max_concurrent_requests": ns.max_concurrent_requests,
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
        "scaling": {
            "accelerator": ns.accelerator,
            "num_gpus": ns.num_gpus,
            "num_replicas": ns.num_replicas,
        },
        "ingress_replicas": ns.serving_replicas,
        "colocate": ns.colocate,
    }
    if ns.max_num_load_retries is not None:
        values["max_load_retries"] = ns.max_num_load_retries
    if ns.load_retry_interval_micros is not None:
        values["load_retry_interval_s"] = ns.load_retry_interval_micros / 1e6
    if ns.enable_batching:
        values["batching"] = (
            read_batching_parameters(ns.batching_parameters_file)
            if ns.batching_parameters_file
            else {"enabled": True}
        )
    if ns.monitoring_config_file:
        values["prometheus_path"] = read_prometheus_path(ns.monitoring_config_file)
    if ns.ssl_config_file:
        read_ssl_config(ns.ssl_config_file)  # a bad file fails startup, not each replica
        values["ssl_config_file"] = str(Path(ns.ssl_config_file).resolve())
    return AppArgs.model_validate(values)


def _version() -> str:
    from importlib.metadata import version

    import tensorflow as tf

    return (
        f"TensorFlow ModelServer: ray-tfserving {version('ray-tfserving')}\n"
        f"TensorFlow Library: {tf.__version__}"
    )


class _Stop:
    """SIGINT and SIGTERM at any moment: while starting, they interrupt what runs (Ray's
    start, a deploy, a wait); once serving, they end the serving loop; during cleanup they are
    only noted, so that cleanup finishes."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.interrupting = True
        self.signals: list[int] = []
        self.again = threading.Event()
        """A second signal: stop draining now."""

    def __call__(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)
        if self.event.is_set():
            self.again.set()
        self.event.set()
        if self.interrupting:
            self.interrupting = False
            raise KeyboardInterrupt


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
    if not ns.verbose:  # before anything imports TensorFlow
        from compat.console import quiet

        quiet()
    from pydantic import ValidationError

    from compat.errors import InvalidArgument, ServingError
    from serve_app.launch import fail, prepare, serve_config, start_ray_and_serve

    try:
        args = to_app_args(ns)
    except ServingError as e:
        return fail(e)
    except ValidationError as e:  # e.g. allowed_batch_sizes not ending at max_batch_size
        return fail(InvalidArgument(str(e)))
    if ns.print_serve_config:
        import yaml

        print(yaml.safe_dump(serve_config(args), sort_keys=False), end="")
        return 0
    args, plan = prepare(args)
    stop = _Stop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    started = False
    progress = Progress(plan.deployed)
    try:
        progress.say(
            f"starting Ray ({f'joining {ns.ray_address}' if ns.ray_address else 'embedded'}"
            f"{', loopback only' if args.loopback else ''})"
        )
        start_ray_and_serve(args, ns.ray_address)
        progress.deploying()
        started = True
        for sig in (signal.SIGINT, signal.SIGTERM):  # Ray's core worker put absl's in place
            signal.signal(sig, stop)
        from ray import serve

        from serve_app.app import build_app

        target = serve.RunTarget(target=build_app(args, plan), name=APP_NAME, route_prefix=None)
        serve.run_many([target], wait_for_applications_running=False)
        problem = wait_until_ready(
            stop.event,
            args.scaling.accelerator,
            timeout_s=ns.model_load_timeout_seconds,
            resource_wait_s=ns.resource_wait_seconds,
            models=args.models,
            on_states=progress.states,
        )
        if problem is not None:
            print(f"ray-tfserving: Failed to start server. Error: {problem}", file=sys.stderr)
            return 1
        if args.grpc_port:
            print(f"Running gRPC ModelServer at {args.host}:{args.grpc_port} ...", flush=True)
        if args.http_port:
            print(f"Exporting HTTP/REST API at:{args.host}:{args.http_port} ...", flush=True)
        progress.ready(args)
        stop.interrupting = False  # serving: a signal ends the loop below, then drain, shutdown
        while not stop.event.wait(1.0):
            progress.watch()
        if stop.signals[:1] == [signal.SIGTERM] and ns.drain_seconds > 0:
            _drain(ns.drain_seconds, stop.again)
        return 0
    except KeyboardInterrupt:
        if started:
            return 0
        print("ray-tfserving: interrupted while starting", file=sys.stderr)
        return 1
    finally:
        stop.interrupting = False
        if started:
            progress.say("stopping")
        _shut_down(joined=bool(ns.ray_address), started=started)
        if started:
            progress.say("stopped")


def _drain(seconds: float, again: threading.Event) -> None:
    """SIGTERM: health NOT_SERVING and readiness 503 for ``seconds`` while requests are still
    answered (load balancers take the server out), then the shutdown closes the ports; a second
    signal ends the wait."""
    from ray import serve

    try:
        manager = serve.get_deployment_handle("VersionManager", APP_NAME)
        manager.drain.remote().result(timeout_s=5.0)
    except Exception as e:  # the manager gone: nothing to tell the load balancers
        print(f"ray-tfserving: could not mark the server as draining: {e}", file=sys.stderr)
        return
    print(f"ray-tfserving: draining for {seconds:g}s (health NOT_SERVING)", flush=True)
    again.wait(seconds)


def _shut_down(joined: bool, started: bool) -> None:
    """Leave nothing behind: on a cluster we joined, our application (the cluster stays); an
    embedded Ray, all of it, its agents included (the raylet starts them and they outlive it
    for a while otherwise)."""
    import psutil
    import ray

    own = _descendants() if not joined else []
    try:
        if ray.is_initialized():
            from ray import serve

            try:
                if joined:
                    serve.delete(APP_NAME)
                elif started:
                    serve.shutdown()
            finally:
                ray.shutdown()
    finally:
        _, alive = psutil.wait_procs(own, timeout=SHUTDOWN_GRACE_S)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()


SHUTDOWN_GRACE_S = 10.0
"""How long the embedded Ray's processes get to exit on their own before they are killed."""


def _descendants() -> list[Any]:
    import psutil

    with contextlib.suppress(psutil.Error):
        return list(psutil.Process().children(recursive=True))
    return []


if __name__ == "__main__":
    sys.exit(main())
