"""``ray-tfserving``: tensorflow_model_server's command line, served by Ray Serve.

The flags (``serve_app.launch.flags``, generated from ``AppArgs``) keep TF Serving's names and
defaults (model_servers/main.cc), so
``tensorflow_model_server --port=8500 --model_name=deeplab --model_base_path=...`` works with only
the program name changed. Like TF Serving, it reports ready only once every model's newest
version is AVAILABLE, exits non-zero on a bad config or path, and shuts down on Ctrl-C/SIGTERM.
``ray-tfserving replay ...`` replays logged requests against two versions offline
(``compat.replay``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from serve_app.config.args import APP_NAME
from serve_app.launch import flags
from serve_app.launch.startup import Progress, wait_until_ready


def _version() -> str:
    from importlib.metadata import version

    import tensorflow as tf

    return (
        f"TensorFlow ModelServer: ray-tfserving {version('ray-tfserving')}\n"
        f"TensorFlow Library: {tf.__version__}"
    )


class _Stop:
    """SIGINT and SIGTERM at any moment. While starting (from the first line of ``main``) they
    interrupt what runs: Python's import of Ray or TensorFlow, Ray's start, a deploy, a wait;
    should what runs swallow the interrupt, it is raised again every ``RETRY_S`` until the
    cleanup begins, and a cleanup still running ``BOUND_S`` after the signal ends with every
    process the CLI started killed. Once serving, they end the serving loop; during cleanup
    they are only noted, so that cleanup finishes."""

    RETRY_S = 1.0
    BOUND_S = 8.0

    def __init__(self) -> None:
        self.event = threading.Event()
        self.interrupting = True
        self.starting = True
        """Not serving yet: a signal interrupts the start (and the watchdog bounds its end)."""
        self.signals: list[int] = []
        self.again = threading.Event()
        """A second signal: stop draining now."""
        self.cleaning = threading.Event()
        """The cleanup has begun: no more interrupts."""
        self.done = threading.Event()
        """The cleanup is over."""

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self)

    def __call__(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)
        if self.event.is_set():
            self.again.set()
        first = not self.event.is_set()
        self.event.set()
        if first and self.starting and not self.cleaning.is_set():
            threading.Thread(target=self._watchdog, name="rtfs-stop", daemon=True).start()
        if self.interrupting and not self.cleaning.is_set():
            self.interrupting = False
            raise KeyboardInterrupt

    def cleanup(self) -> None:
        """From here on a signal interrupts nothing."""
        self.interrupting = False
        self.cleaning.set()

    def _watchdog(self) -> None:
        """A start interrupted: the interrupt again until the cleanup begins (a library that
        caught it), and the end within ``BOUND_S`` whatever hangs."""
        deadline = time.monotonic() + self.BOUND_S
        while not self.cleaning.wait(self.RETRY_S):
            if time.monotonic() >= deadline:
                break
            self.interrupting = True
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
        if self.done.wait(max(0.0, deadline - time.monotonic())):
            return
        print("ray-tfserving: stopping took too long; killing what is left", file=sys.stderr)
        _kill(_descendants(), grace_s=0.0)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["replay"]:  # ``ray-tfserving replay ...``: no server (``compat.replay``)
        from compat import replay

        return replay.run(args[1:])
    stop = _Stop()
    stop.install()  # before anything slow: a signal at any moment is honoured
    try:
        return _main(stop, argv)
    except KeyboardInterrupt:
        print("ray-tfserving: interrupted while starting", file=sys.stderr)
        return 1
    finally:
        stop.cleanup()
        stop.done.set()


def _main(stop: _Stop, argv: Sequence[str] | None) -> int:
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
    from serve_app.launch.boot import fail, prepare, serve_config, start_ray_and_serve

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
    ray_started = False
    progress = Progress(plan.deployed)
    try:
        progress.say(
            f"starting Ray ({f'joining {launch.ray_address}' if launch.ray_address else 'embedded'}"
            f"{', loopback only' if args.loopback else ''})"
        )
        ray_started = True
        start_ray_and_serve(args, launch.ray_address)
        stop.install()  # ray.init put its own SIGTERM handler in place
        progress.deploying()
        from ray import serve

        from serve_app.launch.app import build_app

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
        stop.interrupting = False  # serving: a signal ends the loop below, then drain, shutdown
        stop.starting = False
        if args.grpc_port:
            print(f"Running gRPC ModelServer at {args.host}:{args.grpc_port} ...", flush=True)
        if args.grpc_socket_path:
            unix = args.grpc_socket_path
            print(f"Running gRPC ModelServer at UNIX socket {unix} ...", flush=True)
        if args.http_port:
            print(f"Exporting HTTP/REST API at:{args.host}:{args.http_port} ...", flush=True)
        progress.ready(args)
        while not stop.event.wait(1.0):
            progress.watch()
        if stop.signals[:1] == [signal.SIGTERM] and launch.drain_seconds > 0:
            _drain(launch.drain_seconds, stop.again)
        return 0
    except KeyboardInterrupt:
        print("ray-tfserving: interrupted while starting", file=sys.stderr)
        return 1
    finally:
        stop.cleanup()
        serving = not stop.starting
        if ray_started:
            progress.say("stopping")
            _shut_down(joined=bool(launch.ray_address), serving=serving)
            progress.say("stopped")


def _drain(seconds: float, again: threading.Event) -> None:
    """SIGTERM: health NOT_SERVING and readiness 503 for ``seconds`` while requests are still
    answered (load balancers take the server out), then the shutdown closes the ports; a second
    signal ends the wait."""
    from serve_app.deployments import ManagerClient

    try:
        ManagerClient.connect().drain_blocking(timeout_s=5.0)
    except Exception as e:  # the manager gone: nothing to tell the load balancers
        print(f"ray-tfserving: could not mark the server as draining: {e}", file=sys.stderr)
        return
    print(f"ray-tfserving: draining for {seconds:g}s (health NOT_SERVING)", flush=True)
    again.wait(seconds)


def _shut_down(joined: bool, serving: bool) -> None:
    """Leave nothing behind: on a cluster we joined, our application (the cluster stays); an
    embedded Ray, all of it, its agents included (the raylet starts them and they outlive it
    for a while otherwise). A server that served shuts Serve down first (calls in flight
    finish); a start that was interrupted or failed has nothing to drain: Ray's processes get
    ``STARTING_GRACE_S`` to exit, then are killed."""
    import ray

    own = _descendants() if not joined else []
    try:
        if ray.is_initialized():
            from ray import serve

            try:
                if joined:
                    serve.delete(APP_NAME)
                elif serving:
                    serve.shutdown()
            finally:
                ray.shutdown()
    finally:
        _kill(own + _descendants(), SHUTDOWN_GRACE_S if serving else STARTING_GRACE_S)


def _kill(processes: list[Any], grace_s: float) -> None:
    """SIGTERM to ``processes`` still alive, SIGKILL to those alive after ``grace_s``; then the
    same for any process they started meanwhile."""
    import psutil

    for _ in range(3):
        alive = [p for p in processes if p.is_running()]
        if not alive:
            return
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.terminate()
        _, alive = psutil.wait_procs(alive, timeout=grace_s)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(alive, timeout=1.0)
        processes = _descendants()


SHUTDOWN_GRACE_S = 10.0
"""How long the embedded Ray's processes get to exit on their own before they are killed."""
STARTING_GRACE_S = 2.0
"""The same, when the server never served (a start interrupted or failed)."""


def _descendants() -> list[Any]:
    import psutil

    with contextlib.suppress(psutil.Error):
        return list(psutil.Process().children(recursive=True))
    return []


if __name__ == "__main__":
    sys.exit(main())
