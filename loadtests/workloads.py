"""The synthetic workloads, one set for the locust users (``loadtests.payloads``) and the benchmark
(``loadtests.bench``): one request's inputs against one served model, as a gRPC ``PredictRequest``
and V2 ``ModelInferRequest`` and as a REST body (row-format ``instances``).

* ``half_plus_two``: ``batch`` scalars ``x`` (float ``[batch, 1]``: 1, 2, 3, ...), through the
  server's default signature;
* ``deeplab``: ``batch`` synthetic images (``export.synthetic.make_batch``) of ``size`` x ``size``
  pixels, rounded to whole numbers (short JSON that parses to the same float32), through
  ``predict_images`` (``images``, ``height``, ``width``) or another signature (``images`` only).

Tensors are packed by TensorFlow itself (``tf.make_tensor_proto``), as a client packs them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compat.protos import predict_pb2

WORKLOADS = ("deeplab", "half_plus_two")
"""The synthetic workloads by kind (locust's ``--payload``)."""
DEEPLAB_SIGNATURE = "predict_images"


@dataclass(frozen=True)
class Workload:
    """One request's inputs against one served model."""

    name: str
    """What reports call it (``half_plus_two``, ``deeplab128``)."""
    model: str
    """The model name (``model_spec.name`` and the REST path)."""
    signature: str
    """The signature name; empty means the server's default (``serving_default``)."""
    inputs: dict[str, np.ndarray]
    """The request's tensors, by input alias, the batch dimension first."""
    instances: list[Any]
    """The same tensors as REST row-format ``instances``, one per example."""
    base_path: Path | None = None
    """Where a benchmark serves the model from (None: wherever the server has it)."""

    def batch(self, n: int) -> dict[str, np.ndarray]:
        """The inputs repeated ``n`` times along the batch dimension."""
        return {k: np.concatenate([v] * n) for k, v in self.inputs.items()}

    def predict_request(self) -> predict_pb2.PredictRequest:
        """The gRPC Predict, model spec included."""
        import tensorflow as tf

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model
        if self.signature:
            request.model_spec.signature_name = self.signature
        for alias, value in self.inputs.items():
            request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
        return request

    def grpc_payload(self) -> bytes:
        return self.predict_request().SerializeToString()

    def v2_payload(self) -> bytes:
        """The same request as a V2 ModelInferRequest, every tensor raw."""
        from compat import open_inference

        request = open_inference.pb.ModelInferRequest(model_name=self.model)
        if self.signature:
            request.parameters[open_inference.SIGNATURE_PARAMETER].string_param = self.signature
        for alias, value in self.inputs.items():
            kind = open_inference.BY_NUMPY[value.dtype]
            request.inputs.add(name=alias, datatype=kind.name, shape=value.shape)
            request.raw_input_contents.append(open_inference.to_raw(value))
        return request.SerializeToString()

    def rest_body(self) -> bytes:
        """The TF Serving JSON body: ``{"signature_name"?, "instances": [...]}``."""
        doc: dict[str, Any] = {"instances": self.instances}
        if self.signature:
            doc = {"signature_name": self.signature, **doc}
        return json.dumps(doc, separators=(",", ":")).encode()


def half_plus_two(batch: int = 1) -> Workload:
    x = (np.arange(batch, dtype=np.float32) + 1.0).reshape(batch, 1)
    return Workload("half_plus_two", "half_plus_two", "", {"x": x}, x.tolist())


def deeplab(
    size: int = 64, batch: int = 1, seed: int = 7, signature: str = DEEPLAB_SIGNATURE
) -> Workload:
    from export.synthetic import make_batch

    images = np.round(make_batch(batch, size, seed)[0])  # float32, whole numbers
    pixels = images.astype(int).tolist()
    if signature == DEEPLAB_SIGNATURE:
        sizes = np.full([batch], size, dtype=np.int32)
        inputs = {"images": images, "height": sizes, "width": sizes.copy()}
        rows: list[Any] = [{"images": p, "height": size, "width": size} for p in pixels]
    else:
        inputs, rows = {"images": images}, pixels
    return Workload(f"deeplab{size}", "deeplab", signature, inputs, rows)


def synthetic(
    kind: str, *, size: int = 64, batch: int = 1, seed: int = 7, signature: str = ""
) -> Workload:
    """The workload ``kind`` (one of ``WORKLOADS``); an empty ``signature`` is the kind's own."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if kind == "half_plus_two":
        w = half_plus_two(batch)
        return dataclasses.replace(w, signature=signature) if signature else w
    if kind == "deeplab":
        return deeplab(size, batch, seed, signature or DEEPLAB_SIGNATURE)
    raise ValueError(f"unknown payload {kind!r}; expected one of {WORKLOADS}")
