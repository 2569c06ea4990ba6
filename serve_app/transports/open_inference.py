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

Errors are ``{"error": "..."}`` with the HTTP status of their gRPC code.
"""

from __future__ import annotations

import json
import re
from importlib.metadata import version as package_version
from typing import Any
from urllib.parse import unquote

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from compat import json_codec
from compat.errors import (
    HTTP_STATUS,
    InvalidArgument,
    NotFound,
    ServingError,
    StatusCode,
    from_code,
    truncate,
)
from compat.open_inference import (
    BY_NAME,
    count_elements,
    datatype,
    from_raw,
    pack_bytes,
    parse_version,
    pb,
)
from serve_app.calls import Api, ModelCall, ModelReply, Wire, parse_request, v2_spec
from serve_app.transports.plane import Plane
from serve_app.transports.rest import TooLarge, read_decoded_body, rest_deadline

SERVER_NAME = "ray-tfserving"
EXTENSIONS = ["binary_tensor_data"]
"""The protocol extensions served (REST's binary tensors)."""
HEADER_LENGTH = "Inference-Header-Content-Length"

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
        return infer_response(pb.ModelInferResponse.FromString(reply.payload), wanted)


# --- REST <-> messages ---------------------------------------------------------------------


def _parameter_dict(item: dict[str, Any], what: str) -> dict[str, Any]:
    """A copy of an object's ``parameters`` (none: empty), which must be a JSON object."""
    given = item.get("parameters")
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise InvalidArgument(f"{what}: 'parameters' must be an object")
    return dict(given)


def _parameters(target: Any, given: dict[str, Any], what: str) -> None:
    for key, value in given.items():
        parameter = target[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            parameter.int64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        elif isinstance(value, str):
            parameter.string_param = value
        else:
            raise InvalidArgument(f"{what}: parameter '{key}' must be a bool, number or string")


def infer_request(
    body: bytes, header_length: str | None, name: str, version: str
) -> tuple[Any, dict[str, bool]]:
    """A REST infer body (JSON, then binary tensors) -> a ModelInferRequest with every input
    raw, and which outputs want binary data."""
    if header_length is not None:
        if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(
            body
        ):
            raise InvalidArgument(f"{HEADER_LENGTH} {header_length!r} does not fit the body")
        header, binary = body[: int(header_length)], memoryview(body)[int(header_length) :]
    else:
        header, binary = body, memoryview(b"")
    doc = json_codec.parse_json(bytes(header))  # bounded depth, rapidjson's messages
    if not isinstance(doc.get("inputs"), list):
        raise InvalidArgument("The request must be a JSON object with an 'inputs' list")
    message = pb.ModelInferRequest(model_name=name, model_version=version)
    if isinstance(doc.get("id"), str):
        message.id = doc["id"]
    _parameters(message.parameters, _parameter_dict(doc, "request"), "request")
    offset = 0
    for i, item in enumerate(doc["inputs"]):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidArgument(f"input {i} must be an object with a 'name'")
        what = f"input '{item['name']}'"
        kind = datatype(item.get("datatype"), what)
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and -(2**63) <= d < 2**63 for d in shape
        ):
            raise InvalidArgument(f"{what} needs a 'shape' list of integers")
        count = count_elements(shape, what)
        tensor = message.inputs.add(name=item["name"], datatype=kind.name, shape=shape)
        parameters = _parameter_dict(item, what)
        size = parameters.pop("binary_data_size", None)
        _parameters(tensor.parameters, parameters, what)
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidArgument(f"{what}: binary_data_size {size} does not fit the body")
            raw = bytes(binary[offset : offset + size])
            offset += size
            from_raw(raw, kind, shape, what)  # checked here, with the input's name
        else:
            raw = _json_data(item.get("data"), kind, shape, count, what)
        message.raw_input_contents.append(raw)
    if offset != len(binary):
        raise InvalidArgument(f"{len(binary) - offset} bytes of binary data belong to no input")
    wanted = _binary_outputs(doc, message)
    return message, wanted


def _json_data(data: Any, datatype: Any, shape: list[int], count: int, what: str) -> bytes:
    """An input's JSON ``data`` as raw bytes (only the values given are ever allocated; their
    count must be the shape's)."""
    if data is None:
        raise InvalidArgument(f"{what} has neither 'data' nor binary_data_size")
    if datatype.name == "BYTES":
        flat = list(_flatten(data))
        if not all(isinstance(v, str) for v in flat):
            raise InvalidArgument(f"{what}: BYTES data must be strings")
        values: Any = flat
    else:
        try:
            array = np.asarray(data, dtype=datatype.numpy)
        except (ValueError, TypeError, OverflowError) as e:
            raise InvalidArgument(f"{what}: data is not {datatype.name}: {e}") from None
        if datatype.name == "BOOL" and not all(isinstance(v, bool) for v in _flatten(data)):
            raise InvalidArgument(f"{what}: BOOL data must be true or false")
        values = array.ravel()
    if len(values) != count:
        raise InvalidArgument(f"{what} has {len(values)} values, but shape {shape} holds {count}")
    if datatype.name == "BYTES":
        return pack_bytes(v.encode() for v in values)
    return np.ascontiguousarray(values).tobytes()


def _flatten(data: Any) -> Any:
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def _binary_outputs(doc: dict[str, Any], message: Any) -> dict[str, bool]:
    """Output name -> binary or JSON; "" is the default for outputs not named."""
    everything = bool(_parameter_dict(doc, "request").get("binary_data_output", False))
    wanted = {"": everything}
    for i, item in enumerate(doc.get("outputs") or []):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidArgument(f"output {i} must be an object with a 'name'")
        parameters = _parameter_dict(item, f"output '{item['name']}'")
        wanted[item["name"]] = bool(parameters.pop("binary_data", everything))
        requested = message.outputs.add(name=item["name"])
        _parameters(requested.parameters, parameters, f"output '{item['name']}'")
    return wanted


def infer_response(response: Any, wanted: dict[str, bool]) -> Response:
    """A ModelInferResponse (raw outputs) -> JSON, and binary data where it was asked for."""
    header: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": [],
    }
    if response.id:
        header["id"] = response.id
    chunks: list[bytes] = []
    for i, tensor in enumerate(response.outputs):
        shape = list(tensor.shape)
        raw = response.raw_output_contents[i]
        out: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": shape}
        if wanted.get(tensor.name, wanted[""]):
            out["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            array = from_raw(raw, BY_NAME[tensor.datatype], shape, f"output '{tensor.name}'")
            if tensor.datatype == "BYTES":
                out["data"] = [v.decode(errors="replace") for v in array.ravel()]
            else:
                out["data"] = array.ravel().tolist()
        header["outputs"].append(out)
    text = json.dumps(header, separators=(",", ":")).encode()
    if not chunks:
        return Response(text, media_type="application/json")
    return Response(
        b"".join([text, *chunks]),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(text))},
    )


def metadata_json(response: Any) -> dict[str, Any]:
    """ModelMetadataResponse as the protocol's REST JSON (shapes as numbers)."""

    def tensors(items: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {
        "name": response.name,
        "versions": list(response.versions),
        "platform": response.platform,
        "inputs": tensors(response.inputs),
        "outputs": tensors(response.outputs),
    }


def _json(doc: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(doc, separators=(",", ":")), status_code=status, media_type="application/json"
    )


def error(code: StatusCode, message: str, status: int | None = None) -> Response:
    """The protocol's error body, with the HTTP status of the gRPC code; a message beyond 1024
    characters is cut as the gRPC edge cuts it."""
    return _json({"error": truncate(message)}, status or HTTP_STATUS.get(code, 500))
