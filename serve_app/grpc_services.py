"""Ray worker setup: Serve's inter-deployment gRPC servers bind the serving host, not every
interface.

With ``RAY_SERVE_USE_GRPC_BY_DEFAULT`` each replica runs a gRPC server for calls from other
deployments (serving replica -> version manager, or -> a model in its own deployment); Ray 2.60
binds it to ``[::]``. ``bind_grpc_to_host`` rebinds it to ``$RAY_TFSERVING_GRPC_HOST``.
"""

from __future__ import annotations

import os

#: Environment variable naming the address the gRPC proxy binds to (see ``bind_grpc_to_host``).
GRPC_HOST_ENV = "RAY_TFSERVING_GRPC_HOST"


def bind_grpc_to_host() -> None:
    """Ray worker setup hook: make Serve's gRPC servers bind ``$RAY_TFSERVING_GRPC_HOST``.

    Ray 2.60 binds ``[::]:<port>`` (every interface) for the gRPC proxy and for each replica's
    inter-deployment server, with no option to change it; we bind loopback by default. Runs as
    the job's worker setup hook (the CLI) and whenever ``serve_app`` is imported in a worker
    whose runtime_env set the variable (a Serve config's application).
    """
    host = os.environ.get(GRPC_HOST_ENV)
    if not host:  # not set: a network server, or not a worker of ours
        return
    from ray.serve._private import default_impl, replica

    bracketed = f"[{host}]" if ":" in host else host

    def rebind(original):  # type: ignore[no-untyped-def]
        if getattr(original, "_rtfs_patched", False):
            return original

        def bind(server, address: str):  # type: ignore[no-untyped-def]
            return original(server, address.replace("[::]", bracketed, 1))

        bind._rtfs_patched = True  # type: ignore[attr-defined]
        return bind

    default_impl.add_grpc_address = rebind(default_impl.add_grpc_address)
    replica.add_port_to_grpc_server = rebind(replica.add_port_to_grpc_server)
