"""Every use of Ray's private API and every Ray setting we rely on, each checked against the one
Ray version they were written for (``RAY_VERSION``, the pin in pyproject.toml).

Private patches (Ray has no option for what they do). At another Ray version they refuse with
``RayPatchError``, naming the supported version and what the patch does, instead of patching
something that may have changed: both keep a loopback-only server off the network, and a patch
that silently did nothing would expose it. A target that is missing raises the same error:

- ``bind_grpc_to_host``: with ``RAY_SERVE_USE_GRPC_BY_DEFAULT`` each replica runs a gRPC server
  for calls from other deployments (serving replica -> version manager, or -> a model in its
  own deployment), and Serve's gRPC proxy is one too; Ray 2.60 binds both to ``[::]`` (every
  interface). We rebind them to ``$RAY_TFSERVING_GRPC_HOST`` (the server's loopback host), by
  wrapping ``ray.serve._private.replica.add_port_to_grpc_server`` and
  ``ray.serve._private.default_impl.add_grpc_address``. It runs as the job's worker setup hook
  (``app.runtime_env``) and whenever ``serve_app`` is imported in a worker whose runtime_env set
  the variable (a Serve config's application): a replica imports ``serve_app`` while unpickling
  its deployment, before Serve binds its inter-deployment server.
- ``keep_embedded_ray_on_loopback``: Ray swaps a loopback node address for the machine's
  network address unless it believes it is a single-machine install
  (``ray._private.ray_constants.ENABLE_RAY_CLUSTER`` false, read by
  ``ray._private.services.get_node_ip_address``); then every Ray server binds 127.0.0.1. Ray's
  child processes read ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``. The CLI's embedded Ray
  (``launch.start_ray_and_serve``).

Settings (``SERVE_ENV``, environment variables Serve reads when a replica's process starts):
at another Ray version they are still set and a warning is logged once (``serve_env``), since
Ray ignoring one costs throughput or the message limit between deployments, not exposure.

Developer APIs (public, not declared stable) the server relies on, not patched:
``serve.run_many`` and ``serve.RunTarget`` (the CLI's deploy, the version manager's redeploys),
``serve.get_deployment_handle``, ``serve.get_replica_context``; every live test exercises them.

Private calls, not patches: ``replica_names`` and ``deployed_version`` read Serve's replica ids
and deployed code versions; ``advertise_models`` tells Serve's routers which versions a replica
holds under a memory budget (tests/serve_app/test_paging.py sends calls one hop by it).
Tests use the same private switch directly: tests/serve_app/test_cluster.py (a two-node cluster)
and loadtests/launcher.py (the environment variable).

Tested by tests/serve_app/launch/test_ray_patches.py (unit, real Ray: targets, signatures and call
sites, the rebinding on real gRPC servers, the guard, the settings as Ray parses them) and live
by test_every_port_is_loopback in tests/serve_app/test_predict.py (``serve run`` of the Serve
config) and tests/serve_app/launch/test_cli.py (the CLI's embedded Ray): every listener of a running
server, the replicas' inter-deployment gRPC servers among them, is on loopback.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import ray

logger = logging.getLogger("ray.serve")

RAY_VERSION = "2.60.0"
"""The Ray version every patch and setting here was checked against (pyproject.toml's pin)."""

GRPC_HOST_ENV = "RAY_TFSERVING_GRPC_HOST"
"""The address Serve's gRPC servers are rebound to (``bind_grpc_to_host``); unset: Ray's own."""

BIND_GRPC_HOOK = "serve_app.ray_patches.bind_grpc_to_host"
"""``bind_grpc_to_host`` as a runtime_env's ``worker_process_setup_hook``."""

ENABLE_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's ``ENABLE_RAY_CLUSTERS_ENV_VAR``: ``0`` makes each of its processes a single-machine
install (loopback)."""

GRPC_BIND = "rebinds Serve's inter-deployment gRPC servers from [::] to $" + GRPC_HOST_ENV
LOOPBACK_RAY = "keeps an embedded Ray on 127.0.0.1 (ray_constants.ENABLE_RAY_CLUSTER = False)"

SERVE_ENV = {
    # Calls between deployments (serving replica -> version manager, or -> a model in its own
    # deployment) over Serve's gRPC transport instead of Ray actor calls: measured 1.6-1.8x
    # the throughput, payloads never go through plasma.
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    # ... and as large as TF Serving accepts (INT_MAX), not gRPC's 4 MB default.
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(2**31 - 1),
    # One event loop per replica: our code and Serve's handles on the replica's own loop.
    # Every loop in a process that made a grpc.aio server or channel is bound to gRPC's one
    # completion-queue poller, and each completion wakes every bound loop (they race to read
    # its socket; a loser takes the GIL for nothing, a winner forwards the other loops' events
    # with call_soon_threadsafe). Three loops were bound in a serving replica: ours (the client
    # ports), the replica's (Serve's inter-deployment server) and the handles' router. With
    # one loop half_plus_two serves more, DeepLab the same (measured as in the README's
    # "Benchmark").
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}
"""Ray Serve settings every replica needs (read when its process starts)."""

AddPort = Callable[[Any, str], Any]
"""Ray's ``(grpc server, "host:port") -> whatever gRPC's add_*_port returns`` helpers."""


class RayPatchError(RuntimeError):
    """A private patch cannot apply: another Ray version, or its target has gone."""


def require_ray(patch: str, version: str = ray.__version__) -> None:
    """Refuse ``patch`` (what it does, in words) unless Ray is ``RAY_VERSION``."""
    if version != RAY_VERSION:
        raise RayPatchError(
            f"ray-tfserving {patch}, a patch of Ray's private API written for Ray {RAY_VERSION} "
            f"only; this is Ray {version}. Install ray[serve]=={RAY_VERSION}, or check the "
            "patch in serve_app/ray_patches.py against this Ray and move RAY_VERSION."
        )


def target(module: str, name: str, patch: str) -> Any:
    """Ray's ``module.name`` that ``patch`` replaces or reads; ``RayPatchError`` if it is gone."""
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise RayPatchError(
            f"ray-tfserving {patch}, but Ray {ray.__version__} has no {module}.{name} ({e})"
        ) from e
    return found


def rebound(original: AddPort, host: str) -> AddPort:
    """``original`` binding ``host`` where Ray asks for ``[::]`` (every interface); idempotent."""
    if getattr(original, "_rtfs_patched", False):
        return original
    bracketed = f"[{host}]" if ":" in host else host

    def bind(server: Any, address: str) -> Any:
        return original(server, address.replace("[::]", bracketed, 1))

    bind._rtfs_patched = True  # type: ignore[attr-defined]
    return bind


#: (module, function) that Ray calls with ``"[::]:<port>"``: the replica's inter-deployment
#: server, the gRPC proxy. Both are looked up at call time, so replacing them here works.
GRPC_BINDERS = (
    ("ray.serve._private.replica", "add_port_to_grpc_server"),
    ("ray.serve._private.default_impl", "add_grpc_address"),
)


def bind_grpc_to_host() -> None:
    """Ray worker setup hook: Serve's gRPC servers bind ``$RAY_TFSERVING_GRPC_HOST``.

    Not set (a network server, or not a worker of ours): nothing. Set, at another Ray version
    or with a target gone: ``RayPatchError``, the worker does not start.
    """
    host = os.environ.get(GRPC_HOST_ENV)
    if not host:
        return
    require_ray(GRPC_BIND)
    for module, name in GRPC_BINDERS:
        original = target(module, name, GRPC_BIND)
        setattr(importlib.import_module(module), name, rebound(original, host))


def keep_embedded_ray_on_loopback() -> None:
    """Before ``ray.init(address="local")``: every Ray server of this node binds 127.0.0.1.

    At another Ray version, or without ``ENABLE_RAY_CLUSTER``: ``RayPatchError`` (setting a
    module attribute that Ray no longer reads would succeed and do nothing).
    """
    require_ray(LOOPBACK_RAY)
    target("ray._private.ray_constants", "ENABLE_RAY_CLUSTER", LOOPBACK_RAY)
    import ray._private.ray_constants as ray_constants

    os.environ[ENABLE_CLUSTER_ENV] = "0"  # Ray's child processes (raylet, workers) read it
    ray_constants.ENABLE_RAY_CLUSTER = False


def serve_env(
    environ: Mapping[str, str] = os.environ, version: str = ray.__version__
) -> dict[str, str]:
    """``SERVE_ENV``, each overridden by ``environ`` (e.g. a lowered message limit in a test);
    at another Ray ``version`` a warning, once, that Ray may read them differently."""
    if version != RAY_VERSION:
        _warn_settings(version)
    return {k: environ.get(k, v) for k, v in SERVE_ENV.items()}


@functools.cache
def _warn_settings(version: str) -> None:
    logger.warning(
        "ray-tfserving sets %s as Ray %s reads them; this is Ray %s, which may ignore them "
        "(Serve's calls between deployments then fall back to actor calls or gRPC's 4 MB limit)",
        ", ".join(SERVE_ENV),
        RAY_VERSION,
        version,
    )


def versioned(version: str) -> dict[str, Any]:
    """``Deployment.options`` keywords that pin a deployment's code version, so that a redeploy
    leaves a deployment whose version is unchanged running (no restart). Ray 2.60 removed
    ``version`` from the public options; it still takes it with ``_internal=True``
    (``ray.serve.deployment.Deployment.options``), which is what Serve itself passes."""
    return {"version": version, "_internal": True}


def replica_names() -> tuple[str, str]:
    """This replica's full id (``app#deployment#id``, unique in the cluster: the heartbeat's
    key) and its short id (for the log), from ``serve.get_replica_context().replica_id``: a
    ``ReplicaID`` of Serve's private ``_private.common``."""
    from ray import serve

    replica_id = serve.get_replica_context().replica_id
    return replica_id.to_full_id_str(), replica_id.unique_id


def deployed_version(app_name: str, deployment: str) -> str | None:
    """The code version ``deployment`` of ``app_name`` runs under now (None: no such
    deployment, or the controller could not say), read from Serve's controller
    (``ServeControllerClient.get_deployment_info``, private: Serve's status does not show
    versions). A deployment of a Serve config (``serve deploy``) runs under the config's code
    version, not ours."""
    from ray.serve.context import _get_global_client

    try:
        info, _ = _get_global_client().get_deployment_info(deployment, app_name)
    except Exception:  # KeyError (as Ray's task error): no such deployment
        return None
    return str(info.version) if info.version is not None else None


def advertise_models(targets: list[str]) -> None:
    """Tell Serve's routers which model versions this replica holds, as multiplexed model ids:
    a handle call made with ``options(multiplexed_model_id=...)`` then goes to a replica that
    holds it (``runtime.paging``'s one hop). Serve's own ``@serve.multiplexed`` does this
    (``ray.serve.multiplex._ModelMultiplexWrapper._push_model_ids_info``) for models it loads
    and evicts by count; ours are paged by bytes, so the same private call
    (``ServeControllerClient.record_request_routing_info``, a ``RequestRoutingInfo`` of
    ``_private.common``) sends our list. Non-blocking: it is one message to the controller."""
    from ray import serve
    from ray.serve._private.common import RequestRoutingInfo
    from ray.serve.context import _get_global_client

    replica_id = serve.get_replica_context().replica_id
    info = RequestRoutingInfo(replica_id=replica_id, multiplexed_model_ids=list(targets))
    _get_global_client().record_request_routing_info(info)
