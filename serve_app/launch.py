"""Turning arguments into a running Serve instance: shared by ``serve run`` and the CLI."""

from __future__ import annotations

import logging
import os
import random
import socket
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

from serve_app.args import AppArgs, ModelArgs
from serve_app.grpc_services import GRPC_HOST_ENV
from serve_app.plan import Plan
from serve_app.repository import ModelPathError, aspired_versions, check_model_path, scan_versions

logger = logging.getLogger("ray.serve")

LOOPBACK = {"127.0.0.1", "localhost", "::1"}

RAY_SERVE_ENV = {
    # Calls between deployments (serving replica -> version manager, or -> a model in its own
    # deployment) over Serve's gRPC transport instead of Ray actor calls: measured 1.6-1.8x
    # the throughput (loadtests/bench.py), payloads never go through plasma.
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    # ... and as large as TF Serving accepts (INT_MAX), not gRPC's 4 MB default.
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(2**31 - 1),
}
"""Ray Serve settings every process of a server we start inherits; the environment wins."""


def parse_cli_args(raw: dict[str, Any]) -> AppArgs:
    """``key=value`` pairs (dots for nesting: ``batching.enabled=true``) -> typed arguments."""
    nested: dict[str, Any] = {}
    for key, value in raw.items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if isinstance(value, str) and leaf in {"allowed_batch_sizes", "versions"}:
            value = [int(v) for v in value.split(",") if v]
        if value in ("None", "none", "null"):
            value = None
        node[leaf] = value
    return AppArgs.model_validate(nested)


def resolve_models(args: AppArgs) -> AppArgs:
    """Fill ``args.models`` from the config file or the single-model flags, absolute paths."""
    from compat import model_config
    from serve_app.rollout import models_from_config

    if args.models:
        models = args.models
    elif args.model_config_file:
        models = models_from_config(model_config.read_file(args.model_config_file))
    else:
        models = [ModelArgs(name=args.model_name, base_path=args.model_base_path)]
    resolved = [
        m.model_copy(update={"base_path": str(Path(m.base_path).resolve())}) for m in models
    ]
    return args.model_copy(update={"models": resolved})


def initial_plan(args: AppArgs) -> Plan:
    """Deploy every aspired version at startup and route to the newest (TF Serving blocks until
    they load; so does ``serve run`` until their replicas are up)."""
    from compat.routing import ModelRoutes
    from serve_app.plan import deployment_name

    plan = Plan()
    for m in args.models:
        aspired = aspired_versions(scan_versions(m.base_path), m.version_policy)
        if not aspired:
            continue
        plan.deployed[m.name] = {v: str(p) for v, p in aspired.items()}
        plan.routing.models[m.name] = ModelRoutes(
            versions={v: deployment_name(m.name, v) for v in aspired},
            latest=max(aspired),
            labels={k: v for k, v in m.version_labels.items() if v in aspired},
        )
    plan.routing.epoch = 1
    return plan


def start_ray_and_serve(args: AppArgs) -> None:
    """A local Ray bound to ``args.host`` (loopback by default) and Serve without proxies: the
    serving replicas hold the client ports themselves (``serve_app.listeners``)."""
    import ray
    from ray import serve
    from ray.serve.schema import LoggingConfig

    os.environ[GRPC_HOST_ENV] = args.host
    for key, value in RAY_SERVE_ENV.items():
        os.environ.setdefault(key, value)
    if not ray.is_initialized():
        if args.host in LOOPBACK:
            # Ray swaps a loopback node address for the machine's network address unless it
            # believes it is a single-machine (non-cluster) install: every Ray server then binds
            # 127.0.0.1. Child processes (raylet, workers) read the same variable.
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
            import ray._private.ray_constants as ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False
        repo_root = str(Path(__file__).resolve().parent.parent)
        ray.init(
            address="local",
            namespace="serve",
            include_dashboard=False,
            logging_level=logging.WARNING,
            runtime_env={
                "worker_process_setup_hook": "serve_app.grpc_services.bind_grpc_to_host",
                "env_vars": {
                    **{k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_")},
                    GRPC_HOST_ENV: args.host,
                    "PYTHONPATH": os.pathsep.join(
                        p for p in (repo_root, os.environ.get("PYTHONPATH", "")) if p
                    ),
                    "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
                },
            },
        )
    serve.start(
        proxy_location="Disabled",
        logging_config=LoggingConfig(enable_access_log=args.access_log),
    )


PICKED_PORTS = range(20000, 30000)
"""Where ``free_ports`` picks: above Ray's worker ports (10002-19999) and below the ports the kernel
hands out for port 0 (Linux: 32768-60999), whence come Ray's own servers, Serve's replica gRPC ports
and every outgoing connection. A port the kernel gave us before Ray started could go to one of those
before Serve bound it (seen in CI: "Failed to bind to address '127.0.0.1:42643'")."""


def free_ports(host: str, count: int, exclude: Collection[int] = ()) -> list[int]:
    """``count`` distinct TCP ports free on ``host`` now, from ``PICKED_PORTS`` minus the kernel's
    ephemeral range and ``exclude`` (for a server started right after)."""
    low, high = _ephemeral_range()
    excluded = set(exclude)
    candidates = [p for p in PICKED_PORTS if not low <= p <= high and p not in excluded]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    held: list[socket.socket] = []
    try:
        for port in random.sample(candidates, min(len(candidates), 200)):
            if len(held) == count:
                break
            s = socket.socket(family)
            try:
                s.bind((host, port))
            except OSError:
                s.close()
                continue
            held.append(s)
        while len(held) < count:  # no candidate left: the kernel's choice
            held.append(socket.socket(family))
            held[-1].bind((host, 0))
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for s in held:
            s.close()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def fail(error: Exception) -> int:
    """Print why the server cannot start, as TF Serving's main.cc does; the exit status."""
    from compat.errors import ServingError

    if isinstance(error, ServingError):
        status = f"{error.code.name}: {error.message}"
    else:  # a bad model path: what TF Serving's file system source reports is INVALID_ARGUMENT
        status = f"INVALID_ARGUMENT: {error}"
    print(f"ray-tfserving: Failed to start server. Error: {status}", file=sys.stderr)
    return 1


def prepare(args: AppArgs) -> tuple[AppArgs, Plan]:
    """Validate models and paths; exits with a clear message naming a bad path."""
    from compat.errors import ServingError

    try:
        args = resolve_models(args)
        for m in args.models:
            check_model_path(m)
    except (ModelPathError, ServingError) as e:
        raise SystemExit(fail(e)) from None
    return args, initial_plan(args)


def application_from_cli_args(raw: dict[str, Any]) -> Any:
    """What ``serve run serve_app:app ...`` deploys."""
    from pydantic import ValidationError

    from serve_app.app import build_app

    try:
        args = parse_cli_args(raw)
    except ValidationError as e:
        print(f"ray-tfserving: invalid arguments:\n{e}", file=sys.stderr)
        raise SystemExit(2) from None
    args, plan = prepare(args)
    start_ray_and_serve(args)
    return build_app(args, plan)
