"""The Open Inference Protocol (KServe V2) transport: its gRPC service and its REST routes, thin
translators onto the same calls as TF Serving's API.

``ModelInfer`` and ``ModelMetadata`` become ``ModelCall``s (``Api.MODEL_INFER`` /
``MODEL_METADATA``) that go through the routing table, the versions (batching queue included),
deadlines and metrics like a Predict; readiness reads the routing table (the AVAILABLE versions)
and the version manager. REST's ``/v2/...`` requests are translated to the protocol's messages,
so both wires run one path:

- ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``;
- ``GET /v2/models/{m}[/versions/{v}]`` and ``.../ready``;
- ``POST /v2/models/{m}[/versions/{v}]/infer``: JSON tensors, and the binary tensor data
  extension (``Inference-Header-Content-Length``; ``binary_data_size`` on inputs,
  ``binary_data`` on outputs or ``binary_data_output`` on the request), which tritonclient uses
  by default.

The JSON <-> message translation is ``compat.open_inference_json``'s; bodies are read and
decoded by ``transports.http``. Errors are ``{"error": "..."}`` with the HTTP status of their
gRPC code.
"""

from __future__ import annotations

import json
import re
from importlib.metadata import version as package_version
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response

from compat.errors import (
    HTTP_STATUS,
    InvalidArgument,
    NotFound,
    ServingError,
    StatusCode,
    from_code,
    truncate,
)
from compat.http_codec import TooLarge
from compat.open_inference import parse_version, pb
from compat.open_inference_json import (
    HEADER_LENGTH,
    infer_request,
    infer_response,
    metadata_json,
)
from serve_app.calls import Api, ModelCall, ModelReply, Wire, parse_request, v2_spec
from serve_app.transports.http import read_decoded_body, rest_deadline
from serve_app.transports.plane import Plane

SERVER_NAME = "ray-tfserving"
EXTENSIONS = ["binary_tensor_data"]
"""The protocol extensions served (REST's binary tensors)."""

_MODEL = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer)?", re.ASCII)


def _reply(message: Any) -> ModelReply:
    return ModelReply(payload=message.SerializeToString())


class OpenInference:
    """``inference.GRPCInferenceService`` and ``/v2`` over the serving replica's data plane; its
    ``max_request_bytes`` and ``rest_timeout_s`` bound REST bodies and deadlines as for TF
    Serving's REST API."""

    def __init__(self, backend: Plane) -> None:
        self.backend = backend

    # --- shared --------------------------------------------------------------------------

    async def _ready(self) -> bool:
        try:
            return bool(await self.backend.ready())
        except ServingError:
            return False

    def _model_ready(self, name: str, version: str) -> bool:
        spec = pb.ModelReadyRequest(name=name, version=version)
        try:
            self.backend.table.resolve(v2_spec(spec))
        except ServingError:
            return False
        return True

    def _server_metadata(self) -> Any:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=package_version("ray-tfserving"), extensions=EXTENSIONS
        )

    async def _model_metadata(self, request: Any, wire: Wire, deadline: float | None) -> Any:
        """The version's metadata, with every AVAILABLE version of the model."""
        spec = v2_spec(request)
        reply = await self.backend.call_model(
            ModelCall(Api.MODEL_METADATA, spec, request, wire, deadline)
        )
        if not reply.ok:
            raise from_code(reply.code, reply.message)
        response = pb.ModelMetadataResponse.FromString(reply.payload)
        routes = self.backend.table.models.get(spec.name)
        if routes is not None:
            del response.versions[:]
            response.versions.extend(str(v) for v in sorted(routes.versions))
        return response

    # --- gRPC: (request bytes, deadline) -> ModelReply -----------------------------------

    async def ServerLive(self, raw: bytes, deadline: float | None) -> ModelReply:
        return _reply(pb.ServerLiveResponse(live=True))

    async def ServerReady(self, raw: bytes, deadline: float | None) -> ModelReply:
        return _reply(pb.ServerReadyResponse(ready=await self._ready()))

    async def ModelReady(self, raw: bytes, deadline: float | None) -> ModelReply:
        try:
            request = parse_request(pb.ModelReadyRequest, raw)
            if not request.name:
                raise InvalidArgument("Missing model name in request.")
            ready = self._model_ready(request.name, request.version)
        except ServingError as e:
            return ModelReply.error(e)
        return _reply(pb.ModelReadyResponse(ready=ready))

    async def ServerMetadata(self, raw: bytes, deadline: float | None) -> ModelReply:
        return _reply(self._server_metadata())

    async def ModelMetadata(self, raw: bytes, deadline: float | None) -> ModelReply:
        try:
            request = parse_request(pb.ModelMetadataRequest, raw)
            return _reply(await self._model_metadata(request, Wire.GRPC, deadline))
        except ServingError as e:
            return ModelReply.error(e)

    async def ModelInfer(self, raw: bytes, deadline: float | None) -> ModelReply:
        try:
            request = parse_request(pb.ModelInferRequest, raw)
            call = ModelCall(Api.MODEL_INFER, v2_spec(request), request, Wire.GRPC, deadline)
        except ServingError as e:
            return ModelReply.error(e)
        return await self.backend.call_model(call)

    # --- REST ----------------------------------------------------------------------------

    async def handle(self, request: Request, path: str) -> Response:
        """One ``/v2...`` request."""
        try:
            return await self._dispatch(request, path)
        except ServingError as e:
            return error(e.code, e.message)

    async def _dispatch(self, request: Request, path: str) -> Response:
        method = request.method
        if path == "/v2" and method == "GET":
            server = self._server_metadata()
            return _json({"name": server.name, "version": server.version, "extensions": EXTENSIONS})
        if path == "/v2/health/live" and method == "GET":
            return _json({"live": True})
        if path == "/v2/health/ready" and method == "GET":
            ready = await self._ready()
            return _json({"ready": ready}, 200 if ready else 400)
        m = _MODEL.fullmatch(path)
        if m is None:
            raise NotFound(f"Not a route of the Open Inference Protocol: {method} {path}")
        name, version, action = unquote(m[1]), unquote(m[2] or ""), m[3]
        if action is None and method == "GET":
            metadata = pb.ModelMetadataRequest(name=name, version=version)
            response = await self._model_metadata(metadata, Wire.REST, rest_deadline(self.backend))
            return _json(metadata_json(response))
        if action == "/ready" and method == "GET":
            parse_version(version)
            ready = self._model_ready(name, version)
            return _json({"name": name, "ready": ready}, 200 if ready else 400)
        if action == "/infer" and method == "POST":
            return await self._infer(request, name, version)
        raise NotFound(f"Not a route of the Open Inference Protocol: {method} {path}")

    async def _infer(self, request: Request, name: str, version: str) -> Response:
        try:
            body = await read_decoded_body(request, self.backend, deflate=True)
        except TooLarge as e:
            return error(StatusCode.RESOURCE_EXHAUSTED, str(e), 413)
        header_length = request.headers.get(HEADER_LENGTH.lower())
        message, wanted = infer_request(body, header_length, name, version)
        call = ModelCall(
            Api.MODEL_INFER, v2_spec(message), message, Wire.REST, rest_deadline(self.backend)
        )
        reply = await self.backend.call_model(call)
        if not reply.ok:
            return error(reply.code, reply.message)
        answer = infer_response(pb.ModelInferResponse.FromString(reply.payload), wanted)
        if answer.header_length is None:
            return Response(answer.content, media_type="application/json")
        return Response(
            answer.content,
            media_type="application/octet-stream",
            headers={HEADER_LENGTH: str(answer.header_length)},
        )


def _json(doc: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(doc, separators=(",", ":")), status_code=status, media_type="application/json"
    )


def error(code: StatusCode, message: str, status: int | None = None) -> Response:
    """The protocol's error body, with the HTTP status of the gRPC code; a message beyond 1024
    characters is cut as the gRPC edge cuts it."""
    return _json({"error": truncate(message)}, status or HTTP_STATUS.get(code, 500))
