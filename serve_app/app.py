"""``build_app(args, plan) -> Application``: the only place ``.bind()`` is called.

The application: the serving replicas (``Ingress``, each holding the client ports and, by
default, every served version), the version manager, and, for ``colocate=false``, one
deployment per (model, version).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from ray import serve
from ray.serve import Application

from serve_app.args import AppArgs
from serve_app.grpc_services import GRPC_HOST_ENV
from serve_app.ingress import Ingress
from serve_app.model import ModelVersion
from serve_app.plan import Plan, deployment_name
from serve_app.rollout import VersionManager

#: Bumped with the package: replicas of an older build are replaced on redeploy.
CODE_VERSION = "0.1.0"


def _version(*parts: Any) -> str:
    """A stable internal deployment version: equal inputs keep replicas running across redeploys."""
    blob = json.dumps([CODE_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _session_options(args: AppArgs) -> dict[str, Any]:
    return {
        "intra_op_parallelism": args.intra_op_parallelism,
        "inter_op_parallelism": args.inter_op_parallelism,
        "per_process_gpu_memory_fraction": args.per_process_gpu_memory_fraction,
        "allow_gpu": args.scaling.accelerator != "cpu",
    }


def _model_deployment_options(args: AppArgs, num_gpus: float) -> dict[str, Any]:
    s = args.scaling
    options: dict[str, Any] = {
        "ray_actor_options": {
            "num_cpus": s.num_cpus,
            "num_gpus": num_gpus,
            "runtime_env": runtime_env(args),
        },
        "max_ongoing_requests": s.max_ongoing_requests,
        "max_queued_requests": s.max_queued_requests,
        "user_config": {"batching": args.batching.model_dump()},
        "health_check_period_s": 5,
        "graceful_shutdown_timeout_s": 30,
        "logging_config": _logging(args),
    }
    if s.num_replicas is None:
        options["autoscaling_config"] = {
            "min_replicas": s.min_replicas,
            "max_replicas": s.max_replicas,
            "target_ongoing_requests": s.target_ongoing_requests,
            "upscale_delay_s": s.upscale_delay_s,
            "downscale_delay_s": s.downscale_delay_s,
        }
    else:
        options["num_replicas"] = s.num_replicas
    return options


def _logging(args: AppArgs) -> dict[str, Any]:
    return {"enable_access_log": args.access_log}


#: Ray Serve settings every replica needs (read when its process starts).
RAY_SERVE_ENV = {
    # Calls between deployments (serving replica -> version manager, or -> a model in its own
    # deployment) over Serve's gRPC transport instead of Ray actor calls: measured 1.6-1.8x
    # the throughput, payloads never go through plasma.
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    # ... and as large as TF Serving accepts (INT_MAX), not gRPC's 4 MB default.
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(2**31 - 1),
}


def runtime_env(args: AppArgs) -> dict[str, Any]:
    """What every replica's process needs, wherever Ray starts it: carried the Ray way, in the
    deployment's runtime_env (the environment of the process that deploys wins for Ray's own
    settings, e.g. a lowered message limit in a test). On a loopback-only server, Serve's
    inter-deployment gRPC servers are rebound from every interface to loopback
    (``grpc_services.bind_grpc_to_host``); on a network they keep Ray's binding, which other
    nodes must reach."""
    env = {k: os.environ.get(k, v) for k, v in RAY_SERVE_ENV.items()}
    env["TF_CPP_MIN_LOG_LEVEL"] = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")
    result: dict[str, Any] = {"env_vars": env}
    if args.loopback:
        env[GRPC_HOST_ENV] = args.host
        result["worker_process_setup_hook"] = "serve_app.grpc_services.bind_grpc_to_host"
    return result


def num_gpus_per_replica(args: AppArgs) -> float:
    """GPUs each model replica asks for: ``gpu`` always; ``auto`` when the Ray cluster has one
    (known once connected: a builder that runs before ``ray.init``, as ``serve run``'s does,
    deploys on CPU and the version manager redeploys on GPUs if the cluster has them)."""
    import ray

    accelerator = args.scaling.accelerator
    if accelerator == "cpu":
        return 0.0
    if accelerator == "auto" and not (ray.is_initialized() and ray.cluster_resources().get("GPU")):
        return 0.0
    return args.scaling.num_gpus


def build_app(args: AppArgs, plan: Plan) -> Application:
    """The application for a plan: one deployment per deployed (model, version), the version
    manager, and the ingress whose routing table is its ``user_config``."""
    session = _session_options(args)
    num_gpus = num_gpus_per_replica(args)
    model_options = _model_deployment_options(args, num_gpus)
    version_args = {
        "warmup": args.enable_model_warmup,
        "max_load_retries": args.max_load_retries,
        "check_method_name": args.enable_signature_method_name_check,
    }
    versions = []
    for model, deployed in sorted(plan.deployed.items()):
        for version, path in sorted(deployed.items()):
            if args.colocate:
                continue  # the ingress loads them (its user_config's "local")
            versions.append(
                serve.deployment(ModelVersion)
                .options(
                    name=deployment_name(model, version),
                    version=_version(
                        model, version, path, session, model_options["ray_actor_options"]
                    ),
                    _internal=True,
                    **model_options,
                )
                .bind(model, version, path, session, **version_args)
            )
    manager = (
        serve.deployment(VersionManager)
        .options(
            name="VersionManager",
            num_replicas=1,
            version=_version("manager"),
            _internal=True,
            ray_actor_options={"num_cpus": 0.05, "runtime_env": runtime_env(args)},
            max_ongoing_requests=1000,
            logging_config=_logging(args),
        )
        .bind(args.model_dump(mode="json"), plan.model_dump(mode="json"), _versions=versions)
    )
    user_config: dict[str, Any] = {
        "routing": plan.routing.model_dump(mode="json"),
        "rest_api_timeout_in_ms": args.rest_api_timeout_in_ms,
        "prometheus_path": args.prometheus_path,
    }
    actor_options: dict[str, Any] = {
        "num_cpus": args.serving_num_cpus,
        "runtime_env": runtime_env(args),
    }
    local_options = None
    if args.colocate:
        user_config["local"] = {
            deployment_name(m, v): [m, v, path]
            for m, deployed in sorted(plan.deployed.items())
            for v, path in sorted(deployed.items())
        }
        user_config["batching"] = args.batching.model_dump()
        actor_options = model_options["ray_actor_options"]
        local_options = {"session": session, **version_args}
    listen = {
        "host": args.host,
        "grpc_port": args.grpc_port,
        "http_port": args.http_port,
        "shutdown_grace_s": args.shutdown_grace_s,
        "replicas": args.ingress_replicas,
    }
    return (
        serve.deployment(Ingress)
        .options(
            name="Ingress",
            num_replicas=args.ingress_replicas,
            version=_version("ingress", args.colocate, actor_options, local_options, listen),
            _internal=True,
            ray_actor_options=actor_options,
            max_ongoing_requests=1000,
            # Serve's own wait after __del__: our listeners drain within shutdown_grace_s.
            graceful_shutdown_timeout_s=args.shutdown_grace_s + 5,
            health_check_period_s=5,
            logging_config=_logging(args),
            user_config=user_config,
        )
        .bind(manager, local_options, listen)
    )
