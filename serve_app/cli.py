"""``ray-tfserving``: tensorflow_model_server's command line, served by Ray Serve.

The flags (``serve_app.flags``, generated from ``AppArgs``) keep TF Serving's names and
defaults (model_servers/main.cc), so
``tensorflow_model_server --port=8500 --model_name=deeplab --model_base_path=...`` works with only
the program name changed. Like TF Serving, it reports ready only once every model's newest
version is AVAILABLE, exits non-zero on a bad config or path, and shuts down on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from serve_app import flags
from serve_app.args import APP_NAME
from serve_app.startup import Progress, wait_until_ready


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
    p = flags.parser()
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
        args = flags.to_app_args(ns)
        launch = flags.launch_args(ns)
    except ServingError as e:
        return fail(e)
    except ValidationError as e:  # e.g. allowed_batch_sizes not ending at max_batch_size
        return fail(InvalidArgument(str(e)))
    flags.warn_no_effect(ns)
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
            f"starting Ray ({f'joining {launch.ray_address}' if launch.ray_address else 'embedded'}"
            f"{', loopback only' if args.loopback else ''})"
        )
        start_ray_and_serve(args, launch.ray_address)
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
            timeout_s=launch.model_load_timeout_seconds,
            resource_wait_s=launch.resource_wait_seconds,
            models=args.models,
            on_states=progress.states,
        )
        if problem is not None:
            print(f"ray-tfserving: Failed to start server. Error: {problem}", file=sys.stderr)
            return 1
        if args.grpc_port:
            print(f"Running gRPC ModelServer at {args.host}:{args.grpc_port} ...", flush=True)
        if args.grpc_socket_path:
            unix = args.grpc_socket_path
            print(f"Running gRPC ModelServer at UNIX socket {unix} ...", flush=True)
        if args.http_port:
            print(f"Exporting HTTP/REST API at:{args.host}:{args.http_port} ...", flush=True)
        progress.ready(args)
        stop.interrupting = False  # serving: a signal ends the loop below, then drain, shutdown
        while not stop.event.wait(1.0):
            progress.watch()
        if stop.signals[:1] == [signal.SIGTERM] and launch.drain_seconds > 0:
            _drain(launch.drain_seconds, stop.again)
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
        _shut_down(joined=bool(launch.ray_address), started=started)
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
