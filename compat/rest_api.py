"""TF Serving's REST API over the same routing and replicas as gRPC (http_rest_api_handler.cc).

``RestApi`` needs a backend with two awaitables: ``call_model(spec, method, *args) -> Reply`` (resolve
a ModelSpec and call a model-version replica) and ``call_manager(method, *args)``. Replies carry a
gRPC code; the HTTP status comes from the one table in ``compat.errors``.
"""

from __future__ import annotations

import gzip
import time
import json
import re
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response

from compat import json_codec
from compat.errors import HTTP_STATUS, CODE_NAMES, InvalidArgument, NotFound, ServingError
from compat.protos import get_model_metadata_pb2, get_model_status_pb2, model_pb2

_MODEL = r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
_INFER = re.compile(rf"(?i){_MODEL}:(?P<verb>classify|regress|predict)")
_STATUS = re.compile(rf"(?i){_MODEL}(?P<metadata>/metadata)?")


class Backend(Protocol):
    async def call_model(
        self, spec: Any, method: str, *args: Any, deadline: float | None = None
    ) -> Any: ...

    async def call_manager(self, method: str, *args: Any) -> Any: ...


class RestApi:
    """Maps TF Serving's REST paths onto the backend; JSON in, JSON out."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def handle(self, request: Request) -> Response:
        path = request.url.path
        try:
            if path in ("/healthz", "/readyz"):
                return await self._health(path)
            if request.method == "POST" and (m := _INFER.fullmatch(path)):
                body = await request.body()
                if request.headers.get("content-encoding", "").lower() == "gzip":
                    body = _gunzip(body)
                spec = _spec(m)
                timeout = getattr(self.backend, "rest_timeout_s", None)
                deadline = time.time() + timeout if timeout else None
                reply = await self.backend.call_model(
                    spec, "rest", m["verb"].lower(), body, deadline=deadline
                )
                return _json_reply(reply)
            if request.method == "GET" and (m := _STATUS.fullmatch(path)):
                spec = _spec(m)
                return await (self._metadata(spec) if m["metadata"] else self._status(spec))
            raise InvalidArgument(f"Malformed request: {request.method} {path}")
        except ServingError as e:
            return _error(e.code.value[0], e.message)

    async def _status(self, spec: model_pb2.ModelSpec) -> Response:
        raw = get_model_status_pb2.GetModelStatusRequest(model_spec=spec).SerializeToString()
        reply = await self.backend.call_manager("get_status", raw)
        if reply.code:
            return _error(reply.code, reply.message)
        response = get_model_status_pb2.GetModelStatusResponse.FromString(reply.payload)
        return _json(json_codec.encode_json_message(response))

    async def _metadata(self, spec: model_pb2.ModelSpec) -> Response:
        raw = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=spec, metadata_field=["signature_def"]
        ).SerializeToString()
        reply = await self.backend.call_model(spec, "metadata", raw)
        if reply.code:
            return _error(reply.code, reply.message)
        response = get_model_metadata_pb2.GetModelMetadataResponse.FromString(reply.payload)
        return _json(json_codec.encode_json_message(response))

    async def _health(self, path: str) -> Response:
        if path == "/healthz":
            return _json('{"status": "alive"}')
        ready = await self.backend.call_manager("ready")
        if ready:
            return _json('{"status": "ready"}')
        return Response('{"status": "not ready"}', status_code=503, media_type="application/json")


def _spec(m: re.Match[str]) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=m["name"])
    if m["version"] is not None:
        try:
            spec.version.value = int(m["version"])
        except ValueError:
            raise InvalidArgument(
                f"Failed to convert version: {m['version']} to numeric."
            ) from None
    elif m["label"] is not None:
        spec.version_label = m["label"]
    return spec


def _gunzip(body: bytes) -> bytes:
    try:
        return gzip.decompress(body)
    except (OSError, EOFError):
        raise InvalidArgument("Failed to decompress gzip request body") from None


def _json(text: str, status: int = 200) -> Response:
    return Response(text, status_code=status, media_type="application/json")


def _json_reply(reply: Any) -> Response:
    if reply.code:
        return _error(reply.code, reply.message)
    return Response(reply.payload, status_code=200, media_type="application/json")


def _error(code: int, message: str) -> Response:
    status = HTTP_STATUS.get(CODE_NAMES.get(code, NotFound.code), 500)
    return _json(json.dumps({"error": message}), status)
