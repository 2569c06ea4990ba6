"""``build_app(args, plan) -> Application``: the only place ``.bind()`` is called.

The application: the serving replicas (``Ingress``, each holding the client ports and, by
default, every served version), the version manager, and one deployment per (model, version)
of the models that run in deployments of their own (``own_deployments``, or every model with
``colocate=false``). What each deployment is handed is typed (``serve_app.runtime.replica_config``):
its constructor arguments as those models, its ``user_config`` as their JSON dump. The version
manager is handed ``build_app`` itself, for its redeploys.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from ray import serve
from ray.serve import Application

from serve_app.config.args import AppArgs, ScalingArgs
from serve_app.deployments import INGRESS, VERSION_MANAGER, deployment_name
from serve_app.lifecycle.plan import Plan
from serve_app.lifecycle.rollout import VersionManager
from serve_app.ray_patches import (
    BIND_GRPC_HOOK,
    GRPC_BIND,
    GRPC_HOST_ENV,
    require_ray,
    serve_env,
    versioned,
)
from serve_app.runtime import autoscaling
from serve_app.runtime.ingress import Ingress
from serve_app.runtime.model import ModelVersion
from serve_app.runtime.replica_config import (
    IngressConfig,
    ListenConfig,
    LocalVersion,
    SessionConfig,
    VersionConfig,
    VersionOptions,
)

logger = logging.getLogger("ray.serve")

#: Bumped with the package: replicas of an older build are replaced on redeploy.
CODE_VERSION = importlib.metadata.version("ray-tfserving")


SHUTDOWN_POLL_S = 0.2
"""How often a stopping serving replica or version manager asks Serve whether calls through
Serve's handles are still under way (Serve's default: every 2 s, a first wait of 2 s even when
none are). Client calls are not Serve's: the serving replica drains its ports in ``__del__``."""


def _version(*parts: Any) -> str:
    """A stable internal deployment version: equal inputs keep replicas running across redeploys."""
    blob = json.dumps([CODE_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _version_options(args: AppArgs, scaling: ScalingArgs) -> VersionOptions:
    """How each version loads (``ModelVersion``'s keyword arguments). The session config
    file's threads count where the flags leave them at 0 (they are the node's, then shared out
    as the flags' are)."""
    from compat.text_configs import session_threads

    intra, inter = session_threads(args.session_config)
    session = SessionConfig(
        intra_op_parallelism=args.intra_op_parallelism or intra,
        inter_op_parallelism=args.inter_op_parallelism or inter,
        per_process_gpu_memory_fraction=args.per_process_gpu_memory_fraction,
        allow_gpu=scaling.accelerator != "cpu",
        tags=args.saved_model_tags,
        config_text=args.session_config,
        mixed_precision=args.mixed_precision,
    )
    return VersionOptions(
        session=session,
        warmup=args.enable_model_warmup,
        max_load_retries=args.max_load_retries,
        load_retry_interval_s=args.load_retry_interval_s,
        check_method_name=args.enable_signature_method_name_check,
        warmup_iterations=args.num_request_iterations_for_warmup,
        tensor_content=args.enable_serialization_as_tensor_content,
        per_model_batching=args.enable_per_model_batching_parameters,
        object_store_cache_max_mb=args.object_store_cache_max_mb,
    )


def version_config(args: AppArgs) -> VersionConfig:
    """The versions' ``user_config``: batching, and the request log of each model that logs."""
    logs = {m.name: m.request_log for m in args.models if m.request_log is not None}
    return VersionConfig(batching=args.batching, request_logs=logs)


def _model_deployment_options(args: AppArgs, s: ScalingArgs) -> dict[str, Any]:
    num_gpus = num_gpus_per_replica(s)
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": s.num_cpus, "num_gpus": num_gpus},
        "max_ongoing_requests": s.max_ongoing_requests,
        "max_queued_requests": s.max_queued_requests,
        "user_config": version_config(args).model_dump(mode="json"),
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


def runtime_env(args: AppArgs, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """What every replica's process needs, wherever Ray starts it, as the job's or the Serve
    application's runtime_env (the CLI's ``ray.init``, the generated Serve config): at that
    level the version manager's own redeploys inherit exactly the same, so Serve never takes a
    rebuilt application for a new version. Ray's settings from the deploying process's
    environment win (e.g. a lowered message limit in a test). On a loopback-only server, Serve's
    inter-deployment gRPC servers are rebound from every interface to loopback
    (``ray_patches.bind_grpc_to_host``; at another Ray version the builder refuses at once with
    ``RayPatchError`` rather than every worker failing); on a network they keep Ray's binding,
    which other nodes must reach. ``environ`` is where those settings are read (the generated
    cluster files pass an empty one: they must not depend on the process that writes them)."""
    env = serve_env(environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = environ.get("TF_CPP_MIN_LOG_LEVEL", "2")
    result: dict[str, Any] = {"env_vars": env}
    if args.loopback:
        require_ray(GRPC_BIND)
        env[GRPC_HOST_ENV] = args.host
        result["worker_process_setup_hook"] = BIND_GRPC_HOOK
    return result


def num_gpus_per_replica(scaling: ScalingArgs) -> float:
    """GPUs each model replica asks for: ``gpu`` always; ``auto`` when the Ray cluster has one
    (known once connected: a builder that runs before ``ray.init``, as ``serve run``'s does,
    deploys on CPU and the version manager redeploys on GPUs if the cluster has them)."""
    import ray

    accelerator = scaling.accelerator
    if accelerator == "cpu":
        return 0.0
    if accelerator == "auto":
        gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0
        if not gpus:
            return 0.0
        _say_auto(gpus, scaling.num_gpus)
    return scaling.num_gpus


@functools.cache
def _say_auto(gpus: float, num_gpus: float) -> None:
    """Logged once per process (the builder runs at every rollout step)."""
    logger.info(
        "accelerator=auto: the Ray cluster has %g GPUs; model replicas ask for %g each",
        gpus,
        num_gpus,
    )


def _serving_replicas(args: AppArgs) -> dict[str, Any]:
    """The serving replicas' count: fixed, or Serve's autoscaler on the load they report
    (``serve_app.runtime.autoscaling``: Serve's handles see none of the clients' requests)."""
    if not args.serving_autoscaled:
        return {"num_replicas": args.ingress_replicas}
    auto = args.serving_autoscaling
    return {
        "autoscaling_config": {
            "min_replicas": auto.min_replicas,
            "max_replicas": auto.max_replicas,
            "target_ongoing_requests": auto.target_in_flight,
            "upscale_delay_s": auto.upscale_delay_s,
            "downscale_delay_s": auto.downscale_delay_s,
            "look_back_period_s": auto.look_back_s,
            "metrics_interval_s": auto.metrics_interval_s,
            "policy": {"policy_function": autoscaling.POLICY},
        }
    }


def build_app(args: AppArgs, plan: Plan, adopt: Mapping[str, str] | None = None) -> Application:
    """The application for a plan: one deployment per deployed (model, version), the version
    manager (handed this builder, for its redeploys), and the ingress whose routing table is
    its ``user_config``. ``adopt``: our version of a deployment (the ingress, a model
    version's) -> the version it runs under (``lifecycle.applier.Applier.adopt_running``)."""
    versions = []
    local: dict[str, LocalVersion] = {}
    pinned = {m.name: m.pinned for m in args.models}
    for model, deployed in sorted(plan.deployed.items()):
        scaling = args.own_scaling(model)
        for version, path in sorted(deployed.items()):
            if scaling is None:  # the serving replicas load it (their user_config's "local")
                local[deployment_name(model, version)] = LocalVersion(
                    model=model, version=version, path=path, pinned=pinned.get(model, False)
                )
                continue
            own = _version_options(args, scaling)
            options = _model_deployment_options(args, scaling)
            session = own.session.model_dump()
            code = _version(model, version, path, session, options["ray_actor_options"])
            versions.append(
                serve.deployment(ModelVersion)
                .options(
                    name=deployment_name(model, version),
                    **versioned((adopt or {}).get(code, code)),
                    **options,
                )
                .bind(model, version, path, build=code, **dict(own))
            )
    manager_code = _version("manager")
    manager = (
        serve.deployment(VersionManager)
        .options(
            name=VERSION_MANAGER,
            num_replicas=1,
            **versioned((adopt or {}).get(manager_code, manager_code)),
            ray_actor_options={"num_cpus": 0.05},
            max_ongoing_requests=1000,
            graceful_shutdown_wait_loop_s=SHUTDOWN_POLL_S,
            logging_config=_logging(args),
        )
        .bind(
            args.model_dump(mode="json"),
            plan.model_dump(mode="json"),
            build_app,
            _versions=versions,
            build=manager_code,
        )
    )
    config = IngressConfig(
        routing=plan.routing,
        rest_api_timeout_in_ms=args.rest_api_timeout_in_ms,
        prometheus_path=args.prometheus_path,
        num_load_threads=args.num_load_threads,
        model_memory_budget_mb=args.model_memory_budget_mb,
        cors=args.rest_api_enable_cors_support,
    )
    actor_options: dict[str, Any] = {"num_cpus": args.serving_num_cpus}
    local_options = None
    if args.colocate:  # the serving replicas hold models: they take the models' resources
        config.local = local
        config.versions = version_config(args)
        actor_options = _model_deployment_options(args, args.scaling)["ray_actor_options"]
        local_options = _version_options(args, args.scaling)
    # The ports' settings have the same names in AppArgs, but for how many replicas share them.
    same = set(ListenConfig.model_fields) - {"replicas"}
    listen = ListenConfig(**args.model_dump(include=same), replicas=args.serving_replicas_most)
    code = _version(
        "ingress",
        args.colocate,
        actor_options,
        local_options.model_dump() if local_options else None,
        listen.model_dump(),
    )
    return (
        serve.deployment(Ingress)
        .options(
            name=INGRESS,
            **_serving_replicas(args),
            **versioned((adopt or {}).get(code, code)),
            ray_actor_options=actor_options,
            max_ongoing_requests=1000,
            # Serve's own wait after __del__: our listeners drain within shutdown_grace_s.
            graceful_shutdown_timeout_s=args.shutdown_grace_s + 5,
            graceful_shutdown_wait_loop_s=SHUTDOWN_POLL_S,
            health_check_period_s=5,
            logging_config=_logging(args),
            user_config=config.model_dump(mode="json"),
        )
        .bind(manager, local_options, listen, build=code)
    )
