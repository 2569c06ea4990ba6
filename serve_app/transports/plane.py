"""What a transport needs of the data plane (``Plane``), and the gRPC services and methods the
client ports answer (``SERVICES``).

Every transport (``listeners``' gRPC and HTTP servers, ``rest``, ``open_inference``, ``health``)
takes the data plane through this Protocol only; ``serve_app.runtime.dataplane.DataPlane`` is
the one that serves. A new transport is a new module over a ``Plane``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from compat.routing import RoutingTable
from serve_app.calls import ModelCall, ModelReply

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
HEALTH_SERVICE = "grpc.health.v1.Health"
INFERENCE_SERVICE = "inference.GRPCInferenceService"
"""KServe's Open Inference Protocol (V2), beside TF Serving's API on the same port."""

SERVICES: dict[str, tuple[str, ...]] = {
    PREDICTION_SERVICE: ("Classify", "Regress", "Predict", "MultiInference", "GetModelMetadata"),
    MODEL_SERVICE: ("GetModelStatus", "HandleReloadConfigRequest"),
    HEALTH_SERVICE: ("Check",),
    INFERENCE_SERVICE: (
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    ),
}
"""Every RPC we answer: TF Serving's on the ``Plane``, the others on their transport's own
object (``health.Health``, ``open_inference.OpenInference``); each a coroutine of the method's
name, ``(raw, deadline) -> ModelReply`` (``RpcFunction``)."""

RpcFunction = Callable[[bytes, float | None], Awaitable[ModelReply]]


class Plane(Protocol):
    """The data plane of a serving replica, as the transports see it."""

    @property
    def table(self) -> RoutingTable:
        """The routing table held now (V2's readiness and metadata read it)."""
        ...

    @property
    def cors(self) -> bool:
        """TF Serving's CORS headers on REST answers (``--rest_api_enable_cors_support``)."""
        ...

    @property
    def rest_timeout_s(self) -> float | None:
        """A REST request's deadline, from its arrival (``--rest_api_timeout_in_ms``)."""
        ...

    @property
    def max_request_bytes(self) -> int:
        """The largest REST body taken, decoded (``max_request_bytes``)."""
        ...

    @property
    def prometheus_path(self) -> str | None:
        """The metrics page's path on the REST port (``prometheus_path``); None: no page."""
        ...

    async def call_model(self, call: ModelCall) -> ModelReply:
        """Resolve the call's ModelSpec and answer it from the version; errors as a reply."""
        ...

    async def ready(self) -> bool:
        """Every model's newest version AVAILABLE (and not draining); a ``ServingError`` when
        the version manager cannot answer."""
        ...

    async def model_status(self, raw: bytes) -> ModelReply:
        """GetModelStatus for a serialized request; a ``ServingError`` when the version
        manager cannot answer."""
        ...

    async def set_label_weight(self, model: str, label: str, weight: float) -> ModelReply:
        """A label's share of ``latest`` (the admin port); ``ServingError`` as ``ready``."""
        ...

    async def rollout(self, model: str, action: str = "") -> ModelReply:
        """A model's rollout report, after ``promote`` or ``abort`` (the admin port)."""
        ...

    async def metrics_text(self) -> tuple[bytes, str]:
        """The metrics page and its content type; ``ServingError`` as ``ready``."""
        ...

    # --- TF Serving's RPCs: (request bytes, deadline) -> ModelReply ---------------------------

    async def Predict(self, raw: bytes, deadline: float | None) -> ModelReply: ...

    async def Classify(self, raw: bytes, deadline: float | None) -> ModelReply: ...

    async def Regress(self, raw: bytes, deadline: float | None) -> ModelReply: ...

    async def GetModelMetadata(self, raw: bytes, deadline: float | None) -> ModelReply: ...

    async def MultiInference(self, raw: bytes, deadline: float | None) -> ModelReply: ...

    async def GetModelStatus(self, raw: bytes, deadline: float | None) -> ModelReply: ...

    async def HandleReloadConfigRequest(self, raw: bytes, deadline: float | None) -> ModelReply: ...
