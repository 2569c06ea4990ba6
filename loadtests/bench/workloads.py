"""The workloads: one request shape against one served model, and the benchmark's constants."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadtests import launcher

REPO = launcher.REPO
HALF_PLUS_TWO = launcher.HALF_PLUS_TWO
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
MODEL_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
SYSTEMS = ("inprocess", "plain", "ray-grpc", "ray-rest", "ray-v2")
RAY_SYSTEMS = ("ray-grpc", "ray-rest", "ray-v2")
WORKLOADS = ("half_plus_two", "deeplab128")
BATCHING_ON = ("batching.max_batch_size=16", "batching.batch_timeout_micros=2000")
DEEPLAB_SIZE = 128
MAX_REQUESTS = 200_000
"""Upper bound on requests recorded per cell (each cell is also bounded in time)."""


@dataclass
class Workload:
    """One request shape against one served model."""

    name: str
    model: str
    base_path: Path
    signature: str
    example: dict[str, np.ndarray]
    """One request's inputs (batch dimension 1)."""
    rest_instance: Any
    """The same request as one REST ``instances`` row."""

    def batch(self, n: int) -> dict[str, np.ndarray]:
        return {k: np.concatenate([v] * n) for k, v in self.example.items()}

    def grpc_payload(self) -> bytes:
        from compat.protos import predict_pb2
        from compat.tensors import from_numpy

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model
        request.model_spec.signature_name = self.signature
        for alias, value in self.example.items():
            request.inputs[alias].CopyFrom(from_numpy(value, tensor_content=True))
        return request.SerializeToString()

    def v2_payload(self) -> bytes:
        """The same request as a V2 ModelInferRequest, every tensor raw."""
        from compat import open_inference

        request = open_inference.pb.ModelInferRequest(model_name=self.model)
        request.parameters[open_inference.SIGNATURE_PARAMETER].string_param = self.signature
        for alias, value in self.example.items():
            kind = open_inference.BY_NUMPY[value.dtype]
            request.inputs.add(name=alias, datatype=kind.name, shape=value.shape)
            request.raw_input_contents.append(open_inference.to_raw(value))
        return request.SerializeToString()

    def rest_body(self) -> bytes:
        doc = {"signature_name": self.signature, "instances": [self.rest_instance]}
        return json.dumps(doc, separators=(",", ":")).encode()


def half_plus_two() -> Workload:
    return Workload(
        name="half_plus_two",
        model="half_plus_two",
        base_path=HALF_PLUS_TWO,
        signature="serving_default",
        example={"x": np.array([[1.0]], dtype=np.float32)},
        rest_instance=[1.0],
    )


def deeplab128(base_path: Path) -> Workload:
    from export.synthetic import make_batch

    image = np.round(make_batch(1, DEEPLAB_SIZE, seed=7)[0])  # [1, 128, 128, 3], whole numbers
    size = np.array([DEEPLAB_SIZE], dtype=np.int32)
    return Workload(
        name="deeplab128",
        model="deeplab",
        base_path=base_path,
        signature="predict_images",
        example={"images": image, "height": size, "width": size.copy()},
        rest_instance={
            "images": image[0].astype(int).tolist(),
            "height": DEEPLAB_SIZE,
            "width": DEEPLAB_SIZE,
        },
    )
