"""grpc.health.v1.Health/Check, answered per service name as gRPC's health protocol specifies:
SERVING when the data plane is ready (every model's newest version AVAILABLE, not draining)."""

from __future__ import annotations

from grpc_health.v1 import health_pb2

from compat.errors import InvalidArgument, NotFound, ServingError
from serve_app.calls import ModelReply
from serve_app.transports.plane import SERVICES, Plane

#: "" is the whole server; the others are the services we register, by their full names and by
#: the short names TF Serving's health service knows them by (server.cc).
KNOWN_SERVICES = {"", *SERVICES, "ModelService", "PredictionService"}


class Health:
    """The ``grpc.health.v1.Health`` service over a data plane."""

    def __init__(self, plane: Plane) -> None:
        self.plane = plane

    async def Check(self, raw: bytes, deadline: float | None) -> ModelReply:
        try:
            request = health_pb2.HealthCheckRequest.FromString(raw)
        except Exception:
            return ModelReply.error(InvalidArgument("Could not parse HealthCheckRequest"))
        if request.service not in KNOWN_SERVICES:
            return ModelReply.error(NotFound(f"Unknown service: {request.service}"))
        try:
            ready = await self.plane.ready()
        except ServingError:  # the version manager cannot answer: not serving
            ready = False
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        return ModelReply(payload=health_pb2.HealthCheckResponse(status=status).SerializeToString())
