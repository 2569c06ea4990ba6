"""grpc.health.v1.Health/Check, answered per service name as gRPC's health protocol specifies."""

from __future__ import annotations

from typing import Any

from grpc_health.v1 import health_pb2

from compat.errors import InvalidArgument, NotFound, ServingError
from serve_app.listeners import SERVICES
from serve_app.replies import Reply

#: "" is the whole server; the others are the services we register.
KNOWN_SERVICES = {"", *SERVICES}


async def check(ingress: Any, raw: bytes) -> Reply:
    try:
        request = health_pb2.HealthCheckRequest.FromString(raw)
    except Exception:
        return Reply.error(InvalidArgument("Could not parse HealthCheckRequest"))
    if request.service not in KNOWN_SERVICES:
        return Reply.error(NotFound(f"Unknown service: {request.service}"))
    try:
        ready = await ingress.call_manager("ready")
    except ServingError:  # the version manager cannot answer: not serving
        ready = False
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if ready
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    return Reply(payload=health_pb2.HealthCheckResponse(status=status).SerializeToString())
