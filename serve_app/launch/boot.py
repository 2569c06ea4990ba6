"""From arguments to a running server: the pure builder ``serve run`` and ``serve deploy`` call,
the generated Serve config (``python -m serve_app.launch key=value ...`` prints it), and the CLI's
start (join a cluster, or an embedded local Ray)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from serve_app.config.args import APP_NAME, AppArgs, ModelArgs
from serve_app.lifecycle.plan import Plan
from serve_app.lifecycle.repository import (
    ModelPathError,
    aspired_versions,
    check_model_path,
)
from serve_app.storage.factory import open_store
from serve_app.storage.versions import ScanError

logger = logging.getLogger("ray.serve")


def parse_cli_args(raw: dict[str, Any]) -> AppArgs:
    """``key=value`` pairs (dots for nesting: ``batching.enabled=true``) -> typed arguments."""
    nested: dict[str, Any] = {}
    for key, value in raw.items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if value in ("None", "none", "null"):
            value = None
        node[leaf] = value
    return AppArgs.model_validate(nested)


def resolve_models(args: AppArgs) -> AppArgs:
    """Fill ``args.models`` from the config file or the single-model flags, absolute paths
    (base paths, request logs' prefixes), and ``request_log_allowed_dirs`` with the request
    logs' directories."""
    from compat import model_config
    from serve_app.config.args import models_from_config
    from serve_app.runtime import request_log

    if args.models:
        models = args.models
    elif args.model_config_file:
        models = models_from_config(model_config.read_file(args.model_config_file))
    else:
        models = [ModelArgs(name=args.model_name, base_path=args.model_base_path)]
    resolved = [m.model_copy(update={"base_path": absolute(m.base_path)}) for m in models]
    # The request logs' directories at startup are those a reload may write under.
    allowed = request_log.allowed_dirs(resolved, args.request_log_allowed_dirs)
    resolved = request_log.confine(resolved, allowed)
    return args.model_copy(update={"models": resolved, "request_log_allowed_dirs": allowed})


def absolute(path: str) -> str:
    """A local path made absolute; an object-store URI as it is."""
    return open_store(path).location


def initial_plan(args: AppArgs) -> Plan:
    """Deploy every aspired version at startup and route to the newest (TF Serving blocks until
    they load; so does ``serve run`` until their replicas are up)."""
    from compat.routing import ModelRoutes
    from serve_app.deployments import deployment_name

    plan = Plan()
    for m in args.models:
        try:
            aspired = aspired_versions(open_store(m.base_path).ready(), m.version_policy)
        except ScanError:  # gone since it was checked: the version manager's polls find it
            continue
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


EMBEDDED_RAY_ENV = {
    # Serve's controller reconciles twice a second instead of ten times: on a 2-core node its
    # loop, and the GCS queries each turn makes, cost DeepLab some of its throughput (measured
    # as in the README's "Benchmark"). A dead replica is replaced, and a rollout moves on, at
    # most 0.4 s later.
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
}
"""Ray settings of the Ray the CLI starts itself (the environment's own values win); a cluster
takes them from its nodes' environment."""


def start_ray_and_serve(args: AppArgs, address: str | None = None) -> None:
    """Join the Ray cluster at ``address``, or start an embedded local Ray when there is none
    (bound to loopback unless ``args.host`` serves a network); then Serve without proxies: the
    serving replicas hold the client ports themselves (``transports.listeners``). What every
    replica needs travels in the job's runtime_env (``app.runtime_env``)."""
    import ray
    from ray import serve
    from ray.serve.schema import LoggingConfig

    from serve_app.launch.app import runtime_env

    if not ray.is_initialized():
        if address:
            ray.init(
                address=address,
                namespace="serve",
                logging_level=logging.WARNING,
                runtime_env=runtime_env(args),
            )
        else:
            if args.loopback:
                from serve_app.ray_patches import keep_embedded_ray_on_loopback

                keep_embedded_ray_on_loopback()
            for key, value in EMBEDDED_RAY_ENV.items():  # Ray's processes inherit them
                os.environ.setdefault(key, value)
            ray.init(
                address="local",
                namespace="serve",
                include_dashboard=False,
                logging_level=logging.WARNING,
                runtime_env=runtime_env(args),
            )
    serve.start(
        proxy_location="Disabled",
        logging_config=LoggingConfig(enable_access_log=args.access_log),
    )


def serve_config(args: AppArgs, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The Serve config (``ServeDeploySchema``) that deploys ``args`` with ``serve deploy`` or
    ``serve run``: the same typed arguments the CLI and the builder use, paths made absolute."""
    values = args.model_dump(mode="json", exclude_defaults=True, exclude={"models"})
    if args.model_config_file:
        values["model_config_file"] = str(Path(args.model_config_file).resolve())
        values.pop("model_name", None)
        values.pop("model_base_path", None)
    else:
        values["model_name"] = args.model_name
        values["model_base_path"] = absolute(args.model_base_path)
    from serve_app.launch.app import runtime_env

    return {
        "proxy_location": "Disabled",
        "applications": [
            {
                "name": APP_NAME,
                "import_path": "serve_app:app",
                "route_prefix": None,
                "runtime_env": runtime_env(args, environ),
                "args": values,
            }
        ],
    }


def serve_config_yaml(raw: Mapping[str, str], environ: Mapping[str, str] = os.environ) -> str:
    """The Serve config of ``serve run``'s ``key=value`` arguments, as YAML (``main``)."""
    import yaml

    return yaml.safe_dump(serve_config(parse_cli_args(dict(raw)), environ), sort_keys=False)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m serve_app.launch key=value ...``: print the Serve config deploying those
    arguments (what ``ray-tfserving --print_serve_config`` prints for its flags), for
    ``serve run`` or ``serve deploy``; 2 for an argument that is not ``key=value`` or not valid."""
    from pydantic import ValidationError

    raw = {}
    for arg in sys.argv[1:] if argv is None else argv:
        key, sep, value = arg.partition("=")
        if not (key and sep):
            print(f"ray-tfserving: expected key=value, got {arg!r}", file=sys.stderr)
            return 2
        raw[key] = value
    try:
        print(serve_config_yaml(raw), end="")
    except ValidationError as e:
        print(f"ray-tfserving: invalid arguments:\n{e}", file=sys.stderr)
        return 2
    return 0


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
    from compat.errors import InvalidArgument, ServingError

    try:
        args = resolve_models(args)
        for m in args.models:
            check_model_path(m)
        if args.grpc_socket_path:  # the replicas bind it: a relative path is ours, not theirs
            socket_path = Path(args.grpc_socket_path).resolve()
            if not socket_path.parent.is_dir():
                raise InvalidArgument(
                    f"grpc_socket_path {socket_path}: directory {socket_path.parent} not found"
                )
            args = args.model_copy(update={"grpc_socket_path": str(socket_path)})
        if args.ssl_config_file:  # the replicas read it when they bind: fail here, not there
            from compat.text_configs import read_ssl_config

            read_ssl_config(args.ssl_config_file)
    except (ModelPathError, ServingError) as e:
        raise SystemExit(fail(e)) from None
    return args, initial_plan(args)


def application_from_cli_args(raw: dict[str, Any]) -> Any:
    """What ``serve run serve_app:app key=value ...`` and a Serve config's ``serve_app:app``
    build. Pure: no ``ray.init``, no ``serve.start``, no environment writes, since on a cluster
    Serve's controller runs it."""
    from pydantic import ValidationError

    from serve_app.launch.app import build_app

    try:
        args = parse_cli_args(raw)
    except ValidationError as e:
        print(f"ray-tfserving: invalid arguments:\n{e}", file=sys.stderr)
        raise SystemExit(2) from None
    args, plan = prepare(args)
    return build_app(args, plan)


if __name__ == "__main__":
    raise SystemExit(main())
