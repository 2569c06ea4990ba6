"""The request a load test sends, built once from options: a PredictRequest and its REST twin.

Three sources, all sending the same tensors over gRPC and REST:

* ``deeplab``: ``batch`` synthetic images (``export.synthetic.make_batch``) at ``image_size``,
  through ``predict_images`` (``images``, ``height``, ``width``) or ``serving_default``
  (``images`` only); pixel values rounded to 2 decimals so the JSON is short and exact;
* ``half_plus_two``: ``batch`` scalars ``x`` (float ``[batch, 1]``);
* a recorded request file: a ``PredictRequest`` (binary, or text format for ``.pbtxt`` /
  ``.textproto`` / ``.txt``), turned into columnar REST JSON; or a REST JSON body (``.json``),
  decoded for gRPC with the signature that the server's GetModelMetadata reports (as the
  server itself decodes it, :func:`compat.json_codec.decode_predict_request`).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from compat import json_codec, tensors
from compat.protos import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    types_pb2,
)
from compat.signatures import DEFAULT_SIGNATURE, Signature

PAYLOADS = ("deeplab", "half_plus_two")
"""The synthetic workloads (``--payload``)."""
DEFAULT_MODELS = {"deeplab": "deeplab", "half_plus_two": "half_plus_two"}
DEFAULT_SIGNATURES = {"deeplab": "predict_images", "half_plus_two": ""}
_TEXT_SUFFIXES = {".pbtxt", ".textproto", ".txt"}


@dataclass(frozen=True)
class Payload:
    """What one user sends on every task: the same inputs over gRPC and over REST."""

    model: str
    """The model name (``model_spec.name`` and the REST path)."""
    signature: str
    """The signature name; empty means the server's default (``serving_default``)."""
    request: predict_pb2.PredictRequest
    """The gRPC request, model spec included."""
    body: bytes
    """The REST request body (TF Serving JSON)."""

    @property
    def rest_path(self) -> str:
        """``/v1/models/<model>:predict``, the model name percent-encoded."""
        return f"/v1/models/{quote(self.model, safe='')}:predict"

    @property
    def description(self) -> str:
        """A one-line summary for logs."""
        shapes = ", ".join(
            f"{alias}{list(tensors.shape_of(t))}"
            for alias, t in sorted(self.request.inputs.items())
        )
        return (
            f"model={self.model} signature={self.signature or DEFAULT_SIGNATURE} "
            f"inputs: {shapes}; gRPC {self.request.ByteSize()} B, REST {len(self.body)} B"
        )


def build(
    payload: str = "deeplab",
    *,
    model: str = "",
    signature: str = "",
    image_size: int = 64,
    batch: int = 1,
    seed: int = 7,
    request_file: str = "",
    grpc_target: str = "127.0.0.1:8500",
) -> Payload:
    """Build the payload the options describe. ``request_file`` wins over ``payload``; empty
    ``model`` / ``signature`` mean the payload's own (a recorded request's model spec, or
    ``deeplab`` / ``predict_images``, ``half_plus_two`` / default). ``grpc_target`` is only
    contacted for a JSON request file (to read the signature's input dtypes)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if request_file:
        return _from_file(Path(request_file), model, signature, grpc_target)
    if payload not in PAYLOADS:
        raise ValueError(f"unknown payload {payload!r}; expected one of {PAYLOADS}")
    model = model or DEFAULT_MODELS[payload]
    signature = signature or DEFAULT_SIGNATURES[payload]
    if payload == "deeplab":
        inputs, instances = _deeplab_inputs(signature, image_size, batch, seed)
    else:
        x = (np.arange(batch, dtype=np.float32) + 1.0).reshape(batch, 1)
        inputs, instances = {"x": x}, x.tolist()
    request = _request(model, signature, inputs)
    doc: dict[str, Any] = {"instances": instances}
    if signature:
        doc = {"signature_name": signature, **doc}
    return Payload(model, signature, request, json.dumps(doc).encode())


def _deeplab_inputs(
    signature: str, size: int, batch: int, seed: int
) -> tuple[dict[str, np.ndarray], list[Any]]:
    """DeepLab's inputs as arrays (gRPC) and as row-format instances (REST)."""
    from export.synthetic import make_batch

    # rounded in float64, so that JSON prints 2 decimals and parses to the same float32
    rounded = np.round(make_batch(batch, size, seed)[0].astype(np.float64), 2)
    images = rounded.astype(np.float32)
    if signature == "predict_images":
        sizes = np.full([batch], size, dtype=np.int32)
        rows = [{"images": image.tolist(), "height": size, "width": size} for image in rounded]
        return {"images": images, "height": sizes, "width": sizes}, rows
    return {"images": images}, rounded.tolist()


def _request(
    model: str, signature: str, inputs: dict[str, np.ndarray]
) -> predict_pb2.PredictRequest:
    """A PredictRequest with numeric inputs packed as ``tensor_content`` (as
    ``tf.make_tensor_proto`` does)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if signature:
        request.model_spec.signature_name = signature
    for alias, array in inputs.items():
        request.inputs[alias].CopyFrom(tensors.from_numpy(array, tensor_content=True))
    return request


def _from_file(path: Path, model: str, signature: str, grpc_target: str) -> Payload:
    """A payload from a recorded PredictRequest or REST JSON body."""
    data = path.read_bytes()
    if path.suffix == ".json":
        doc = json.loads(data)
        if not model:
            raise ValueError("a JSON request file needs --model (the body does not name one)")
        signature = signature or json_codec.signature_name(doc)
        if signature:
            doc["signature_name"] = signature
        body = json.dumps(doc).encode()
        sig = fetch_signature(grpc_target, model, signature or DEFAULT_SIGNATURE)
        decoded, _ = json_codec.decode_predict_request(body, sig)
        request = _request(model, signature, {})
        for alias, array in decoded.items():
            request.inputs[alias].CopyFrom(
                tensors.from_numpy(array, sig.inputs[alias].dtype, tensor_content=True)
            )
        return Payload(model, signature, request, body)
    request = _parse_request(data, text=path.suffix in _TEXT_SUFFIXES)
    if model:
        request.model_spec.name = model
    if signature:
        request.model_spec.signature_name = signature
    if not request.model_spec.name:
        raise ValueError(f"{path} names no model; pass --model")
    return Payload(
        request.model_spec.name,
        request.model_spec.signature_name,
        request,
        json.dumps(columnar_json(request)).encode(),
    )


def _parse_request(data: bytes, text: bool) -> predict_pb2.PredictRequest:
    """A PredictRequest from its binary or text encoding (binary first, unless ``text``)."""
    request = predict_pb2.PredictRequest()
    if not text:
        try:
            request.ParseFromString(data)
            return request
        except DecodeError:
            request.Clear()
    text_format.Parse(data.decode("utf-8"), request)
    return request


def columnar_json(request: predict_pb2.PredictRequest) -> dict[str, Any]:
    """The REST body equivalent to ``request``: ``{"signature_name"?, "inputs": {alias: ...}}``,
    strings as ``{"b64": ...}``."""
    inputs: dict[str, Any] = {}
    for alias, proto in request.inputs.items():
        array = tensors.to_numpy(proto)
        if proto.dtype == types_pb2.DT_STRING:
            flat = [{"b64": base64.b64encode(bytes(v)).decode()} for v in array.ravel()]
            inputs[alias] = np.array(flat, dtype=object).reshape(array.shape).tolist()
        else:
            inputs[alias] = array.tolist()
    doc: dict[str, Any] = {"inputs": inputs}
    if request.model_spec.signature_name:
        doc = {"signature_name": request.model_spec.signature_name, **doc}
    return doc


def fetch_signature(
    grpc_target: str, model: str, signature: str, timeout: float = 30.0
) -> Signature:
    """The signature ``signature`` of ``model``, read from the server's GetModelMetadata."""
    import grpc

    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = model
    request.metadata_field.append("signature_def")
    with grpc.insecure_channel(grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.GetModelMetadata(request, timeout)
    defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(defs)
    if signature not in defs.signature_def:
        raise ValueError(f"{model} has no signature {signature!r}: {sorted(defs.signature_def)}")
    return Signature.from_proto(signature, defs.signature_def[signature])
