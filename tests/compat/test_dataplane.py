"""``compat.dataplane``: Predict and GetModelMetadata checks as TF Serving's ``predict_util.cc``,
``saved_model::GetInputValues`` and ``get_model_metadata_impl.cc`` make them, on the signatures
of TF Serving's own half_plus_two test model (its meta graph only; nothing is run)."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf

from compat import dataplane
from compat.errors import FailedPrecondition, Internal, InvalidArgument
from compat.protos import get_model_metadata_pb2, predict_pb2
from compat.servable import Servable, read_meta_graph
from compat.signatures import Signature, TensorSpec, signatures_of


@pytest.fixture(scope="module")
def servable(testdata: Path) -> Servable:
    """half_plus_two's signatures in a Servable with no session (``Servable.signature`` and
    ``meta_graph`` are all the data plane reads)."""
    meta_graph = read_meta_graph(testdata / "saved_model_half_plus_two_cpu" / "00000123")
    s = Servable.__new__(Servable)
    s.meta_graph = meta_graph
    s.signatures = signatures_of(meta_graph)
    return s


def request(signature: str = "", output_filter: tuple[str, ...] = (), **inputs: object):
    r = predict_pb2.PredictRequest()
    r.model_spec.name = "half_plus_two"
    r.model_spec.signature_name = signature
    for alias, value in inputs.items():
        r.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    r.output_filter.extend(output_filter)
    return r


TWO = Signature(
    key="two",
    method_name="tensorflow/serving/predict",
    inputs={
        "a": TensorSpec("a:0", 1, (-1,)),
        "b": TensorSpec("b:0", 1, (-1,)),
    },
    outputs={"y": TensorSpec("y:0", 1, (-1,)), "z": TensorSpec("z:0", 1, (-1,))},
)


def test_an_empty_signature_name_is_serving_default(servable: Servable) -> None:
    assert dataplane.signature_name("") == "serving_default"
    assert dataplane.signature_name("regress_x_to_y") == "regress_x_to_y"
    call = dataplane.prepare_predict(servable, request(x=np.array([[1.0]], np.float32)))
    assert call.signature_name == "serving_default"
    assert call.signature.inputs["x"].name == "x:0"
    assert call.inputs["x"].tolist() == [[1.0]]
    assert call.output_aliases == ["y"]


def test_an_unknown_signature_is_failed_precondition(servable: Servable) -> None:
    with pytest.raises(FailedPrecondition) as e:
        dataplane.prepare_predict(servable, request("nope", x=[1.0]))
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.message == 'Serving signature key "nope" not found.'


def test_the_method_name_check_is_off_unless_asked_for(servable: Servable) -> None:
    """TF Serving's ``--enable_signature_method_name_check``: classify and regress signatures
    pass Predict's check; any other method name passes only while it is off (the default)."""
    call = dataplane.prepare_predict(servable, request("regress_x2_to_y3", inputs=[[1.0]]), True)
    assert call.output_aliases == ["outputs"]
    odd = Signature(key="k", method_name="my/method", inputs={}, outputs={})
    fake = Servable.__new__(Servable)
    fake.signatures = {"k": odd}
    assert dataplane.check_predict_signature(fake, "k") is odd
    with pytest.raises(Internal) as e:
        dataplane.check_predict_signature(fake, "k", check_method_name=True)
    assert e.value.code == grpc.StatusCode.INTERNAL
    assert e.value.message == (
        "Expected prediction signature method_name to be one of {tensorflow/serving/predict, "
        "tensorflow/serving/classify, tensorflow/serving/regress}. Was: my/method"
    )


def test_a_missing_input_is_a_size_mismatch(servable: Servable) -> None:
    with pytest.raises(InvalidArgument) as e:
        dataplane.prepare_predict(servable, request())
    assert e.value.message == (
        "input size does not match signature: 0!=1 len({}) != len({x}). "
        "Sent extra: {}. Missing but required: {x}."
    )


def test_an_extra_input_is_a_size_mismatch_naming_it(servable: Servable) -> None:
    with pytest.raises(InvalidArgument) as e:
        dataplane.prepare_predict(servable, request(x=[1.0], w=[2.0], b=[3.0]))
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.message == (
        "input size does not match signature: 3!=1 len({b,w,x}) != len({x}). "
        "Sent extra: {b,w}. Missing but required: {}."
    )


def test_as_many_inputs_but_a_wrong_alias_is_get_input_values_message() -> None:
    with pytest.raises(InvalidArgument) as e:
        dataplane.check_inputs(TWO, ["a", "c"])
    assert e.value.message == (
        "Signature input alias: b(feed name: b:0) not found in request and no default value "
        "provided. Inputs expected to be in the request {a,c}, or default input alias set: "
    )
    dataplane.check_inputs(TWO, ["b", "a"])  # any order


def test_an_undecodable_tensor_is_a_parsing_error(servable: Servable) -> None:
    r = request(x=[1.0])
    r.inputs["x"].tensor_content = b"\x00\x00"  # 2 bytes for one float
    with pytest.raises(InvalidArgument) as e:
        dataplane.prepare_predict(servable, r)
    assert e.value.message == "tensor parsing error: x"


def test_output_filter_selects_in_order_and_refuses_unknown_or_repeated() -> None:
    assert dataplane.output_aliases(TWO, []) == ["y", "z"]
    assert dataplane.output_aliases(TWO, ["z", "y"]) == ["z", "y"]
    assert dataplane.output_aliases(TWO, ["z"]) == ["z"]
    with pytest.raises(InvalidArgument) as e:
        dataplane.output_aliases(TWO, ["y", "w"])
    assert e.value.message == (
        "output tensor alias not found in signature: w Outputs expected to be in the set {y,z}."
    )
    with pytest.raises(InvalidArgument) as e:
        dataplane.output_aliases(TWO, ["y", "y"])
    assert e.value.message == "duplicate output tensor alias: y"


def test_prepare_predict_carries_the_output_filter(servable: Servable) -> None:
    call = dataplane.prepare_predict(servable, request(output_filter=("y",), x=[[1.0]]))
    assert call.output_aliases == ["y"]
    with pytest.raises(InvalidArgument) as e:
        dataplane.prepare_predict(servable, request(output_filter=("x",), x=[[1.0]]))
    assert e.value.message.startswith("output tensor alias not found in signature: x")


def test_prepare_predict_arrays_checks_as_grpc_does(servable: Servable) -> None:
    x = np.array([[1.0], [2.0]], np.float32)
    call = dataplane.prepare_predict_arrays(servable, "", {"x": x}, ["y"])
    assert call.signature_name == "serving_default"
    assert call.inputs["x"] is x
    assert call.output_aliases == ["y"]
    with pytest.raises(InvalidArgument) as e:
        dataplane.prepare_predict_arrays(servable, "", {"x": x, "x2": x})
    assert e.value.message.startswith("input size does not match signature: 2!=1")
    with pytest.raises(FailedPrecondition):
        dataplane.prepare_predict_arrays(servable, "missing", {"x": x})


def test_finish_predict_echoes_name_version_and_signature(servable: Servable) -> None:
    """TF Serving's ``MakeModelSpec``: the request's name, the resolved version and the
    signature name used (serving_default for an empty one); outputs as typed fields."""
    call = dataplane.prepare_predict(servable, request(x=[[1.0], [2.0]]))
    call.outputs = {"y": np.array([[2.5], [3.0]], np.float32)}
    response = dataplane.finish_predict(call, "half_plus_two", 123)
    assert response.model_spec.name == "half_plus_two"
    assert response.model_spec.version.value == 123
    assert response.model_spec.signature_name == "serving_default"
    assert list(response.outputs) == ["y"]
    y = response.outputs["y"]
    assert y.dtype == tf.float32.as_datatype_enum
    assert [d.size for d in y.tensor_shape.dim] == [2, 1]
    assert list(y.float_val) == [2.5, 3.0]
    assert tf.make_ndarray(y).tolist() == [[2.5], [3.0]]


@pytest.mark.parametrize("version", [123, 0, -1])
@pytest.mark.parametrize("signature", ["serving_default", ""])
def test_predict_response_bytes_is_finish_predict_serialized(
    servable: Servable, version: int, signature: str
) -> None:
    """What the gRPC Predict answers: the same message as ``finish_predict``'s, every output in
    its map, the model spec's presence included."""
    call = dataplane.prepare_predict(servable, request(x=[[1.0], [2.0]]))
    call.signature_name = signature
    call.output_aliases = ["y", "ids", "names"]
    call.outputs = {
        "y": np.array([[2.5], [3.0]], np.float32),
        "ids": np.arange(-3, 200, dtype=np.int64).reshape(1, -1),
        "names": np.array([b"a", b"\xff"], dtype=object),
    }
    written = predict_pb2.PredictResponse.FromString(
        dataplane.predict_response_bytes(call, "half_plus_two", version)
    )
    assert written == dataplane.finish_predict(call, "half_plus_two", version)
    assert written.HasField("model_spec") and written.model_spec.HasField("version")
    assert tf.make_ndarray(written.outputs["ids"]).tolist() == [list(range(-3, 200))]


def test_predict_response_bytes_in_tensor_content(servable: Servable) -> None:
    """--enable_serialization_as_tensor_content: the same outputs, numeric ones as raw bytes."""
    call = dataplane.prepare_predict(servable, request(x=[[1.0], [2.0]]))
    call.output_aliases = ["y", "names"]
    call.outputs = {
        "y": np.array([[2.5], [3.0]], np.float32),
        "names": np.array([b"a", b"\xff"], dtype=object),
    }
    written = predict_pb2.PredictResponse.FromString(
        dataplane.predict_response_bytes(call, "half_plus_two", 123, tensor_content=True)
    )
    y = written.outputs["y"]
    assert not y.float_val and y.tensor_content == np.array([2.5, 3.0], "<f4").tobytes()
    assert tf.make_ndarray(y).tolist() == [[2.5], [3.0]]
    assert list(written.outputs["names"].string_val) == [b"a", b"\xff"]
    assert written.model_spec.version.value == 123


def test_metadata_is_the_signature_def_map(servable: Servable) -> None:
    r = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    response = dataplane.metadata(servable, r, "half_plus_two", 123)
    assert response.model_spec.name == "half_plus_two"
    assert response.model_spec.version.value == 123
    assert not response.model_spec.signature_name
    assert list(response.metadata) == ["signature_def"]
    any_ = response.metadata["signature_def"]
    assert any_.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert any_.Unpack(sig_map)
    assert set(sig_map.signature_def) == {
        "classify_x_to_y",
        "regress_x2_to_y3",
        "regress_x_to_y",
        "regress_x_to_y2",
        "serving_default",
    }
    for key, signature_def in servable.meta_graph.signature_def.items():
        assert sig_map.signature_def[key] == signature_def


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ([], "GetModelMetadataRequest must specify at least one metadata_field"),
        (["signature_def", "tags"], "Metadata field tags is not supported"),
    ],
)
def test_metadata_fields_other_than_signature_def_are_refused(
    servable: Servable, fields: list[str], message: str
) -> None:
    r = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
    with pytest.raises(InvalidArgument) as e:
        dataplane.metadata(servable, r, "half_plus_two", 123)
    assert e.value.message == message
