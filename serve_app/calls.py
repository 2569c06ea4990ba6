"""The typed contract between the transports and a model version: ``ModelCall`` in,
``ModelReply`` out.

A transport (gRPC in ``serve_app.transports.listeners`` / ``serve_app.runtime.dataplane``, REST in
``transports.rest``) parses the request once into a ``ModelCall``: which API, the parsed request,
the wire format the answer goes back in, and the caller's deadline. The model spec is read once,
from the parsed request. The version (``serve_app.runtime.model.ModelVersion.call``) answers a
``ModelReply``: the response already encoded for that wire, or a status. Status travels as data,
never as an exception: an exception that crosses a Ray call costs a traceback, and status is
converted to gRPC or HTTP only at the edge (``compat.errors``).

Both are plain picklable values, so the same call goes to a version held in the serving replica
or to one in a deployment of its own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from compat.errors import ServingError, from_code
from compat.inference import multi_inference_model_spec
from compat.open_inference import parse_version
from compat.open_inference import pb as open_inference
from compat.protos import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
)


class Api(enum.StrEnum):
    """The model RPCs of PredictionService and of the Open Inference Protocol (the value is the
    metrics' ``api`` label)."""

    PREDICT = "predict"
    CLASSIFY = "classify"
    REGRESS = "regress"
    METADATA = "metadata"
    MULTI_INFERENCE = "multi_inference"
    MODEL_INFER = "model_infer"
    """V2 ``ModelInfer`` (gRPC, or REST's ``/v2/.../infer`` translated to its message)."""
    MODEL_METADATA = "model_metadata"
    """V2 ``ModelMetadata``."""


class Wire(enum.StrEnum):
    """How the reply's payload is encoded (and the metrics' ``protocol`` label)."""

    GRPC = "grpc"
    """The serialized response message."""
    REST = "rest"
    """TF Serving's REST JSON (``compat.json_codec``); GetModelMetadata answers its message
    either way (``compat.json_codec.metadata_json`` prints it as TF Serving does)."""


#: The request message of each API; a gRPC request's bytes parse into it.
REQUEST_TYPES: dict[Api, Any] = {
    Api.PREDICT: predict_pb2.PredictRequest,
    Api.CLASSIFY: classification_pb2.ClassificationRequest,
    Api.REGRESS: regression_pb2.RegressionRequest,
    Api.METADATA: get_model_metadata_pb2.GetModelMetadataRequest,
    Api.MULTI_INFERENCE: inference_pb2.MultiInferenceRequest,
    Api.MODEL_INFER: open_inference.ModelInferRequest,
    Api.MODEL_METADATA: open_inference.ModelMetadataRequest,
}


@dataclass
class ModelCall:
    """One parsed call to a model version."""

    api: Api
    spec: model_pb2.ModelSpec
    """The model spec, read once from the request (MultiInference: its tasks' common spec)."""
    request: Any
    """The request message of ``api``. REST Predict carries the parsed JSON document instead
    (``compat.json_codec.parse_predict_json``: its tensors are decoded against the signature,
    which only the version has); REST Classify and Regress carry the request message built
    from the JSON's examples."""
    wire: Wire = Wire.GRPC
    deadline: float | None = None
    """Wall-clock time (``time.time()``) after which the caller no longer waits."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """A request message travels as its bytes (the Open Inference Protocol's generated
        classes cannot be pickled by reference: their module is no importable name)."""
        if isinstance(self.request, Message) and type(self.request) is REQUEST_TYPES.get(self.api):
            return (
                _call_from_bytes,
                (self.api, self.spec, self.request.SerializeToString(), self.wire, self.deadline),
            )
        return (ModelCall, (self.api, self.spec, self.request, self.wire, self.deadline))

    @property
    def signature(self) -> str:
        """The requested signature name ("" for the default), for the metrics."""
        if self.wire is Wire.REST and self.api is Api.PREDICT:
            name = self.request.get("signature_name", "")
            return name if isinstance(name, str) else ""
        return str(self.spec.signature_name)


def _call_from_bytes(
    api: Api, spec: model_pb2.ModelSpec, raw: bytes, wire: Wire, deadline: float | None
) -> ModelCall:
    return ModelCall(api, spec, REQUEST_TYPES[api].FromString(raw), wire, deadline)


def parse_request(message_type: Any, raw: bytes) -> Any:
    """A gRPC request's bytes as its message. Bytes that are no such message are INTERNAL, as
    TF Serving's gRPC server (C++ gRPC's deserializer) answers them."""
    from compat.errors import Internal

    try:
        return message_type.FromString(raw)
    except Exception:
        raise Internal(f"Could not parse request as {message_type.DESCRIPTOR.full_name}") from None


def grpc_call(api: Api, raw: bytes, deadline: float | None) -> ModelCall:
    """A gRPC request's bytes as a call; TF Serving's errors for what does not parse."""
    from compat.errors import InvalidArgument

    request = parse_request(REQUEST_TYPES[api], raw)
    if api in (Api.MODEL_INFER, Api.MODEL_METADATA):
        return ModelCall(api, v2_spec(request), request, Wire.GRPC, deadline)
    if api is Api.MULTI_INFERENCE:
        spec = multi_inference_model_spec(request)
    elif not request.HasField("model_spec"):
        raise InvalidArgument("Missing ModelSpec")
    else:
        spec = request.model_spec
    return ModelCall(api, spec, request, Wire.GRPC, deadline)


def v2_spec(request: Any) -> model_pb2.ModelSpec:
    """The ModelSpec a V2 request stands for: its model name and version ("" the latest, a
    number, or a version label), and for ModelInfer the signature in its ``signature_name``
    parameter."""
    from compat.errors import InvalidArgument
    from compat.open_inference import signature_name

    infer = isinstance(request, open_inference.ModelInferRequest)
    name, version = (
        (request.model_name, request.model_version) if infer else (request.name, request.version)
    )
    if not name:
        raise InvalidArgument("Missing model name in request.")
    spec = model_pb2.ModelSpec(name=name)
    wanted = parse_version(version)
    if isinstance(wanted, int):
        spec.version.value = wanted
    elif wanted is not None:
        spec.version_label = wanted
    if infer:
        spec.signature_name = signature_name(request)
    return spec


@dataclass(frozen=True)
class ModelReply:
    """An encoded response (proto bytes or JSON) or a status with TF Serving's message."""

    payload: bytes = b""
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""

    @classmethod
    def error(cls, e: ServingError) -> ModelReply:
        return cls(code=e.code, message=e.message)

    @property
    def ok(self) -> bool:
        return self.code is grpc.StatusCode.OK

    def raise_for_status(self) -> bytes:
        if not self.ok:
            raise from_code(self.code, self.message)
        return self.payload
