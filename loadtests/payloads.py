"""The request a load test sends, built once from options: a PredictRequest and its REST twin.

Two sources, each sending the same tensors over gRPC and REST:

* a synthetic workload (``loadtests.workloads``: ``deeplab`` or ``half_plus_two``, the
  benchmark's too), at ``image_size`` and ``batch``;
* a recorded request file (``loadtests.recorded``): a ``PredictRequest`` (binary, or text format
  for ``.pbtxt`` / ``.textproto`` / ``.txt``), sent over REST as columnar JSON; or a REST JSON
  body (``.json``), sent over gRPC at the dtypes of the signature that the server's
  GetModelMetadata reports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from compat.protos import predict_pb2
from loadtests import recorded
from loadtests.workloads import WORKLOADS, synthetic

PAYLOADS = WORKLOADS
"""The synthetic workloads (``--payload``)."""
DEFAULT_SIGNATURE = "serving_default"
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
            f"{alias}{[d.size for d in t.tensor_shape.dim]}"
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
    w = synthetic(payload, size=image_size, batch=batch, seed=seed, signature=signature)
    request = w.predict_request()
    if model:
        request.model_spec.name = model
    return Payload(request.model_spec.name, w.signature, request, w.rest_body())


def _from_file(path: Path, model: str, signature: str, grpc_target: str) -> Payload:
    """A payload from a recorded PredictRequest or REST JSON body."""
    data = path.read_bytes()
    if path.suffix == ".json":
        doc = json.loads(data)
        if not isinstance(doc, dict) or not isinstance(doc.get("signature_name", ""), str):
            raise ValueError(f"{path} is no REST Predict body (an object, signature_name a string)")
        if not model:
            raise ValueError("a JSON request file needs --model (the body does not name one)")
        signature = signature or doc.get("signature_name", "")
        if signature:
            doc["signature_name"] = signature
        dtypes = recorded.signature_dtypes(grpc_target, model, signature or DEFAULT_SIGNATURE)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        if signature:
            request.model_spec.signature_name = signature
        for alias, tensor in recorded.decode_json(doc, dtypes).items():
            request.inputs[alias].CopyFrom(tensor)
        return Payload(model, signature, request, json.dumps(doc).encode())
    request = recorded.read_request(data, text=path.suffix in _TEXT_SUFFIXES)
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
        json.dumps(recorded.columnar_json(request)).encode(),
    )
