"""The load tests' requests without a server: the shared workloads send the same tensors over gRPC
and REST, and recorded requests are decoded by TensorFlow (``tf.make_ndarray``), as TF Serving
reads its REST API, never by the server's own codec."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from compat.protos import types_pb2
from loadtests import payloads, recorded, workloads

FLOAT, INT32, STRING = types_pb2.DT_FLOAT, types_pb2.DT_INT32, types_pb2.DT_STRING


def arrays(tensors: dict) -> dict[str, np.ndarray]:  # type: ignore[type-arg]
    return {alias: tf.make_ndarray(t) for alias, t in tensors.items()}


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for alias, value in want.items():
        assert got[alias].dtype == value.dtype and got[alias].shape == value.shape, alias
        assert np.array_equal(got[alias], value), alias


def test_row_format_stacks_one_value_or_named_inputs_per_example() -> None:
    single = recorded.decode_json({"instances": [[1.0], [2.5]]}, {"x": FLOAT})
    assert_same(arrays(single), {"x": np.array([[1.0], [2.5]], np.float32)})
    rows = [
        {"s": {"b64": base64.b64encode(b"\x00ab").decode()}, "n": [1, 2]},
        {"s": "text", "n": [3, 4]},
    ]
    named = arrays(recorded.decode_json({"instances": rows}, {"s": STRING, "n": INT32}))
    assert_same(
        named, {"s": np.array([b"\x00ab", b"text"], object), "n": np.int32([[1, 2], [3, 4]])}
    )


def test_columnar_takes_one_value_or_an_object_of_named_inputs() -> None:
    bare = recorded.decode_json({"inputs": [[1, 2, 3]]}, {"x": FLOAT})
    assert_same(arrays(bare), {"x": np.float32([[1, 2, 3]])})
    named = recorded.decode_json(
        {"inputs": {"a": 7, "b": [[{"b64": "AA=="}]]}}, {"a": INT32, "b": STRING}
    )
    assert_same(arrays(named), {"a": np.int32(7), "b": np.array([[b"\x00"]], object)})


@pytest.mark.parametrize(
    ("doc", "dtypes", "message"),
    [
        ({"instances": [1.0], "inputs": [1.0]}, {"x": FLOAT}, "exactly one of"),
        ({"signature_name": "s"}, {"x": FLOAT}, "exactly one of"),
        ({"instances": []}, {"x": FLOAT}, "non-empty list"),
        ({"instances": [1.0]}, {"x": FLOAT, "y": FLOAT}, "a signature with one input"),
        ({"instances": [{"x": 1.0}, {"y": 1.0}]}, {"x": FLOAT, "y": FLOAT}, "the same inputs"),
        ({"inputs": {"z": 1.0}}, {"x": FLOAT}, "not in the signature"),
        ({"inputs": [1]}, {"x": STRING}, "a string input takes"),
        ([1.0], {"x": FLOAT}, "a JSON object"),
    ],
)
def test_bodies_tf_serving_refuses_are_refused(doc: object, dtypes: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=message):
        recorded.decode_json(doc, dtypes)


@pytest.mark.parametrize(
    "workload",
    [
        workloads.half_plus_two(batch=3),
        workloads.deeplab(size=8, batch=2),
        workloads.deeplab(size=8, signature="serving_default"),
    ],
    ids=["half_plus_two", "deeplab-predict_images", "deeplab-serving_default"],
)
def test_a_workloads_rest_body_holds_its_grpc_tensors(workload: workloads.Workload) -> None:
    request = workload.predict_request()
    dtypes = {alias: t.dtype for alias, t in request.inputs.items()}
    doc = json.loads(workload.rest_body())
    assert doc.get("signature_name", "") == workload.signature == request.model_spec.signature_name
    assert_same(arrays(recorded.decode_json(doc, dtypes)), arrays(dict(request.inputs)))
    assert_same(arrays(dict(request.inputs)), workload.inputs)


def test_a_recorded_request_and_its_columnar_twin(tmp_path: Path) -> None:
    request = workloads.half_plus_two(batch=2).predict_request()
    request.model_spec.signature_name = "serving_default"
    request.inputs["s"].CopyFrom(tf.make_tensor_proto(np.array([b"\xff", b"b"], object)))
    (tmp_path / "r.pbtxt").write_text(text_format.MessageToString(request))
    (tmp_path / "r.pb").write_bytes(request.SerializeToString())
    for name in ("r.pb", "r.pbtxt"):
        payload = payloads.build(request_file=str(tmp_path / name))
        assert payload.request == request and payload.model == "half_plus_two"
        doc = json.loads(payload.body)
        assert doc == {
            "signature_name": "serving_default",
            "inputs": {"x": [[1.0], [2.0]], "s": [{"b64": "/w=="}, {"b64": "Yg=="}]},
        }
        dtypes = {alias: t.dtype for alias, t in request.inputs.items()}
        assert_same(arrays(recorded.decode_json(doc, dtypes)), arrays(dict(request.inputs)))


def test_synthetic_payloads_take_the_options() -> None:
    p = payloads.build("deeplab", image_size=16, batch=2, model="other")
    assert p.model == "other" == p.request.model_spec.name and p.signature == "predict_images"
    assert p.rest_path == "/v1/models/other:predict"
    assert "images[2, 16, 16, 3]" in p.description and "height[2]" in p.description
    with pytest.raises(ValueError, match="unknown payload"):
        payloads.build("nope")
    with pytest.raises(ValueError, match="batch must be"):
        payloads.build("half_plus_two", batch=0)
