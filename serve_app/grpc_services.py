"""Servicer registration for Ray Serve's gRPC proxy that forwards raw bytes.

Ray's proxy replaces every handler with its own and calls the ingress method named after the
RPC. Registering TF Serving's generated ``add_*Servicer_to_server`` would make the proxy
deserialize each request with TF Serving's protos, importing all of TensorFlow (~500 MB) into
the proxy and parsing every payload twice. These registrations declare the same services and
methods with identity (de)serializers: the proxy stays at ~140 MB and hands the ingress the bytes.
Methods not listed here (e.g. SessionService) are answered UNIMPLEMENTED by gRPC itself.
"""

from __future__ import annotations

import os
import time

import grpc

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
HEALTH_SERVICE = "grpc.health.v1.Health"

SERVICES: dict[str, tuple[str, ...]] = {
    PREDICTION_SERVICE: ("Classify", "Regress", "Predict", "MultiInference", "GetModelMetadata"),
    MODEL_SERVICE: ("GetModelStatus", "HandleReloadConfigRequest"),
    HEALTH_SERVICE: ("Check",),
}


def _unimplemented(request: bytes, context: grpc.ServicerContext) -> bytes:
    # Never called: Ray's proxy swaps in its own behaviour for every registered method.
    context.set_code(grpc.StatusCode.UNIMPLEMENTED)
    return b""


def _add(service: str, server: grpc.Server) -> None:
    handlers = {
        method: grpc.unary_unary_rpc_method_handler(
            _unimplemented, request_deserializer=None, response_serializer=None
        )
        for method in SERVICES[service]
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))


def add_PredictionServiceServicer_to_server(servicer: object, server: grpc.Server) -> None:
    """Register tensorflow.serving.PredictionService (raw bytes)."""
    _add(PREDICTION_SERVICE, server)


def add_ModelServiceServicer_to_server(servicer: object, server: grpc.Server) -> None:
    """Register tensorflow.serving.ModelService (raw bytes)."""
    _add(MODEL_SERVICE, server)


def add_HealthServicer_to_server(servicer: object, server: grpc.Server) -> None:
    """Register grpc.health.v1.Health/Check (raw bytes)."""
    _add(HEALTH_SERVICE, server)


SERVICER_FUNCTIONS = [
    f"{__name__}.add_PredictionServiceServicer_to_server",
    f"{__name__}.add_ModelServiceServicer_to_server",
    f"{__name__}.add_HealthServicer_to_server",
]

#: Environment variable naming the address the gRPC proxy binds to (see ``bind_grpc_to_host``).
GRPC_HOST_ENV = "RAY_TFSERVING_GRPC_HOST"


def bind_grpc_to_host() -> None:
    """Ray worker setup hook: make Serve's gRPC servers bind ``$RAY_TFSERVING_GRPC_HOST``.

    Ray 2.60 binds ``[::]:<port>`` (every interface) for the gRPC proxy and for each replica's
    inter-deployment server, with no option to change it; we bind loopback by default. Runs in
    every Ray worker process before any Serve code.
    """
    host = os.environ.get(GRPC_HOST_ENV)
    if not host:
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
    carry_client_deadline()


def carry_client_deadline() -> None:
    """Record the gRPC client's deadline on the context Ray's proxy sends to the ingress.

    ``RayServegRPCContext`` copies code, details and metadata of the proxy's context but not its
    deadline (gRPC strips ``grpc-timeout`` from metadata), so without this a replica could not
    tell that a queued request's caller has already given up.
    """
    from ray.serve import grpc_util

    cls = grpc_util.RayServegRPCContext
    if getattr(cls.__init__, "_rtfs_patched", False):
        return
    original = cls.__init__

    def __init__(self, grpc_context):  # type: ignore[no-untyped-def]
        original(self, grpc_context)
        remaining = grpc_context.time_remaining()
        self.rtfs_deadline = time.time() + remaining if remaining is not None else None

    __init__._rtfs_patched = True  # type: ignore[attr-defined]
    cls.__init__ = __init__
