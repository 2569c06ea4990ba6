"""The REST transport: TF Serving's REST API over the same routing and versions as gRPC.

Paths, messages and status codes follow ``http_server.cc`` (only ``(?i)/v1/.*`` is the API;
gRPC code -> HTTP status through the one table in ``compat.errors``), ``http_rest_api_util.cc``
(the two path regexes, percent-decoded model names and labels, version parsing) and
``http_rest_api_handler.cc`` (dispatch: a path that parses but names no known method stays
``Malformed request: <METHOD> <path>``, 400). Bodies are JSON, gzip-encoded when the request says
so (``compat.http_codec``); the client port reads each whole before the request is admitted
(``transports.http.whole_body``: 408 for one that does not arrive within
``rest_body_timeout_s``). The body is parsed here, once, into a ``ModelCall`` (``rest_call``);
the version decodes Predict's tensors against its signature and writes the JSON answer. The
JSON this module writes (status, metadata, errors) is ``compat.json_codec``'s.

``RestApi`` answers over the serving replica's data plane (``transports.plane.Plane``): its
``call_model`` (resolve the call's ModelSpec and answer it from the version, errors as a reply
with a gRPC code), readiness, model status and label weights; its ``rest_timeout_s`` is the
REST deadline (``--rest_api_timeout_in_ms``).
"""

from __future__ import annotations

import re
import time
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response

from compat import json_codec
from compat.errors import (
    HTTP_STATUS,
    InvalidArgument,
    ServingError,
    StatusCode,
    truncate,
)
from compat.http_codec import TooLarge
from compat.json_codec import error_text, metadata_json, status_json
from compat.protos import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    regression_pb2,
)
from serve_app import metrics
from serve_app.calls import Api, ModelCall, Wire
from serve_app.transports.http import read_body, read_decoded_body, rest_deadline
from serve_app.transports.plane import Plane

#: HttpRestApiHandler::kPathRegex: everything else is not the REST API (404, no JSON).
_API_PATH = re.compile(r"(?i)/v1/.*", re.ASCII | re.DOTALL)
#: kPredictionApiGegex and kModelStatusApiRegex (http_rest_api_util.cc), verbatim.
_PREDICTION = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)",
    re.ASCII,
)
_MODEL_STATUS = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?"
    r"(?:/(metadata))?",
    re.ASCII,
)
_INFERENCE_VERBS = ("classify", "regress", "predict")
#: ray-tfserving's own route (beyond TF Serving), served only on the admin port (``admin_port``,
#: off by default): a label's share of the traffic for ``latest``, e.g.
#: ``POST /admin/models/deeplab/labels/canary/weight {"weight": 0.1}``.
_LABEL_WEIGHT = re.compile(r"/admin/models/([^/:]+)/labels/([^/:]+)/weight", re.ASCII)
#: A model's rollout (its ``rollout`` block): ``GET`` its report, ``POST .../promote`` or
#: ``.../abort`` it.
_ROLLOUT = re.compile(r"/admin/models/([^/:]+)/rollout(?:/(promote|abort))?", re.ASCII)
_INT64_MAX = 2**63 - 1


#: What TF Serving's REST server adds with ``--rest_api_enable_cors_support``
#: (``AddCORSHeaders``, http_rest_api_util.cc).
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET",
    "Access-Control-Allow-Headers": "Content-Type",
}


class RestApi:
    """Maps TF Serving's REST paths onto the backend; JSON in, JSON out."""

    def __init__(self, backend: Plane) -> None:
        self.backend = backend

    async def handle(self, request: Request) -> Response:
        """One REST request. With the backend's ``cors`` set (``--rest_api_enable_cors_support``)
        every API answer carries TF Serving's CORS headers and a preflight (``OPTIONS`` on an
        API path) is answered 200 with them and no body."""
        path = request_path(request)
        cors = self.backend.cors and _API_PATH.fullmatch(path) is not None
        if cors and request.method == "OPTIONS":
            return Response(status_code=200, headers=CORS_HEADERS)
        response = await self._handle(request, path)
        if cors:
            response.headers.update(CORS_HEADERS)
        return response

    async def _handle(self, request: Request, path: str) -> Response:
        try:
            if path in ("/healthz", "/readyz"):
                return await self._health(path)
            if not _API_PATH.fullmatch(path):
                return Response("Not Found", status_code=404, media_type="text/plain")
            return await self._dispatch(request, request.method, path)
        except ServingError as e:  # the backend's errors too (a replica it could not reach)
            return error_response(e.code, e.message)

    async def handle_admin(self, request: Request) -> Response:
        """The admin port: ray-tfserving's runtime routes (``admin_port``), nothing else."""
        path = request_path(request)
        try:
            if (m := _LABEL_WEIGHT.fullmatch(path)) and request.method in ("POST", "PUT"):
                return await self._label_weight(request, unquote(m[1]), unquote(m[2]))
            if (m := _ROLLOUT.fullmatch(path)) and request.method == ("POST" if m[2] else "GET"):
                reply = await self.backend.rollout(unquote(m[1]), m[2] or "")
                if not reply.ok:
                    return error_response(reply.code, reply.message)
                return Response(reply.payload, status_code=200, media_type="application/json")
            return Response("Not Found", status_code=404, media_type="text/plain")
        except ServingError as e:
            return error_response(e.code, e.message)
        except TooLarge as e:
            return _json(error_text(str(e)), 413)

    async def _label_weight(self, request: Request, model: str, label: str) -> Response:
        doc = json_codec.parse_json(await read_body(request, 1 << 20))
        weight = doc.get("weight")
        if not isinstance(weight, int | float) or isinstance(weight, bool):
            raise InvalidArgument("'weight' must be a number between 0 and 1")
        reply = await self.backend.set_label_weight(model, label, float(weight))
        if not reply.ok:
            return error_response(reply.code, reply.message)
        return Response(reply.payload, status_code=200, media_type="application/json")

    async def _dispatch(self, request: Request, method: str, path: str) -> Response:
        """HttpRestApiHandler::ProcessRequest()."""
        malformed = InvalidArgument(f"Malformed request: {method} {path}")
        if method == "POST":
            m = _PREDICTION.fullmatch(path)
            if m is None:
                raise malformed
            name, version, label, verb = m.groups()
            spec = model_spec(name, version, label)
            if verb not in _INFERENCE_VERBS:  # the regex is case-blind, the dispatch is not
                raise malformed
            return await self._infer(request, spec, verb)
        if method == "GET":
            m = _MODEL_STATUS.fullmatch(path)
            if m is None:
                raise malformed
            name, version, label, subresource = m.groups()
            spec = model_spec(name or "", version, label)
            if not spec.name:
                raise InvalidArgument("Missing model name in request.")
            if subresource == "metadata":
                return await self._metadata(spec)
            return await self._status(spec)
        raise malformed

    async def _infer(self, request: Request, spec: model_pb2.ModelSpec, verb: str) -> Response:
        """The body is parsed here, once, before the model is looked up (TF Serving's
        ``FillPredictRequestFromJson`` parses and checks ``signature_name`` before
        ``GetServableHandle``; the classify/regress fillers convert the whole body first): a
        malformed body wins over an unknown model. Predict's tensors are decoded by the
        version, against its signature."""
        started = time.perf_counter()
        try:
            body = await read_decoded_body(request, self.backend)
        except TooLarge as e:
            return _json(error_text(str(e)), 413)
        deadline = rest_deadline(self.backend)
        try:
            call = rest_call(Api(verb), spec, body, deadline)
        except ServingError as e:
            labels = metrics.RequestLabels.unparsed(spec, Api(verb), Wire.REST, e.code)
            metrics.record_request(labels, time.perf_counter() - started)
            raise
        reply = await self.backend.call_model(call)
        if not reply.ok:
            return error_response(reply.code, reply.message)
        return Response(reply.payload, status_code=200, media_type="application/json")

    async def _status(self, spec: model_pb2.ModelSpec) -> Response:
        raw = get_model_status_pb2.GetModelStatusRequest(model_spec=spec).SerializeToString()
        reply = await self.backend.model_status(raw)
        if not reply.ok:
            return error_response(reply.code, reply.message)
        response = get_model_status_pb2.GetModelStatusResponse.FromString(reply.payload)
        return _json(status_json(response))

    async def _metadata(self, spec: model_pb2.ModelSpec) -> Response:
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=spec, metadata_field=["signature_def"]
        )
        reply = await self.backend.call_model(ModelCall(Api.METADATA, spec, request, Wire.REST))
        if not reply.ok:
            return error_response(reply.code, reply.message)
        response = get_model_metadata_pb2.GetModelMetadataResponse.FromString(reply.payload)
        return _json(metadata_json(response))

    async def _health(self, path: str) -> Response:
        """Liveness (the ingress answers) and readiness (every model's newest version is
        AVAILABLE): not TF Serving routes, for load balancers and Kubernetes probes."""
        if path == "/healthz":
            return _json('{"status": "alive"}')
        if await self.backend.ready():
            return _json('{"status": "ready"}')
        return _json('{"status": "not ready"}', 503)


def request_path(request: Request) -> str:
    """The path as the client sent it, still percent-encoded (TF Serving matches ``uri_path()``,
    then decodes the model name and label)."""
    raw = request.scope.get("raw_path")
    if raw:
        return bytes(raw).split(b"?", 1)[0].decode("latin-1")
    return request.url.path


def model_spec(name: str, version: str | None, label: str | None) -> model_pb2.ModelSpec:
    """ParseModelInfo() and FillModelSpecWithNameVersionAndLabel()."""
    spec = model_pb2.ModelSpec(name=unquote(name) if name else "")
    if version:
        number = int(version)
        if number > _INT64_MAX:  # absl::SimpleAtoi into int64
            raise InvalidArgument(f"Failed to convert version: {version} to numeric.")
        spec.version.value = number
    elif label:
        spec.version_label = unquote(label)
    return spec


def rest_call(
    api: Api, spec: model_pb2.ModelSpec, body: bytes, deadline: float | None
) -> ModelCall:
    """A ``:predict``, ``:classify`` or ``:regress`` body as a call (errors: json_tensor.cc's).
    Classify and Regress become the gRPC request messages, so both transports run one path."""
    if api is Api.PREDICT:
        doc = json_codec.parse_predict_json(body)
        json_codec.signature_name(doc)
        return ModelCall(api, spec, doc, Wire.REST, deadline)
    doc = json_codec.parse_json(body)
    signature = json_codec.signature_name(doc)
    examples = json_codec.decode_examples_request(doc)
    message = (
        classification_pb2.ClassificationRequest
        if api is Api.CLASSIFY
        else regression_pb2.RegressionRequest
    )(model_spec=spec, input=examples)
    message.model_spec.signature_name = signature
    return ModelCall(api, message.model_spec, message, Wire.REST, deadline)


def error_response(code: StatusCode, message: str) -> Response:
    """``MakeJsonFromStatus`` (rapidjson's PrettyWriter) with ``ToHTTPStatusCode``'s status.
    A message beyond 1024 characters (one that quotes a request's names) is cut as the gRPC
    edge cuts it (``compat.errors.truncate``): an answer never grows with the request."""
    return _json(error_text(truncate(message)), HTTP_STATUS.get(code, 500))


def _json(text: str, status: int = 200) -> Response:
    return Response(text, status_code=status, media_type="application/json")
