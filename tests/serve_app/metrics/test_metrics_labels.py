"""serve_app.metrics.labels without a server: a request's labels come from the typed call (its
spec, API, wire and parsed body), the resolved version and the reply's status."""

from __future__ import annotations

import grpc
import pytest

from compat.protos import get_model_metadata_pb2, inference_pb2, model_pb2, predict_pb2
from serve_app.calls import Api, ModelCall, ModelReply, Wire, grpc_call
from serve_app.metrics.labels import REQUEST_LABELS, RequestLabels
from serve_app.transports.rest import rest_call


def test_the_labels_are_the_exported_ones_in_order() -> None:
    assert REQUEST_LABELS == ("model", "version", "signature", "api", "protocol", "status")


def test_a_grpc_calls_labels_come_from_its_spec_and_the_replys_status() -> None:
    spec = model_pb2.ModelSpec(name="m", signature_name="s")
    raw = predict_pb2.PredictRequest(model_spec=spec).SerializeToString()
    reply = ModelReply(code=grpc.StatusCode.OK)
    labels = RequestLabels.of_call(grpc_call(Api.PREDICT, raw, None), 3, reply.code)
    assert labels == RequestLabels("m", "3", "s", "predict", "grpc", "OK")
    assert not labels.error
    assert labels.tags() == {
        "model": "m",
        "version": "3",
        "signature": "s",
        "api": "predict",
        "protocol": "grpc",
        "status": "OK",
    }


def test_an_unresolved_call_has_no_version_and_its_error_status() -> None:
    call = ModelCall(Api.REGRESS, model_pb2.ModelSpec(name="m"), None, Wire.REST)
    labels = RequestLabels.of_call(call, None, grpc.StatusCode.NOT_FOUND)
    assert labels == RequestLabels("m", "", "serving_default", "regress", "rest", "NOT_FOUND")
    assert labels.error


@pytest.mark.parametrize(
    ("body", "signature"),
    [
        # the name inside a tensor's value is no signature: the body is parsed, not searched
        (b'{"instances": ["signature_name"], "signature_name" :"a\\"b"}', 'a"b'),
        (b'{"instances": [1.0]}', "serving_default"),
        (b'{"signature_name": "", "instances": [1.0]}', "serving_default"),
    ],
)
def test_a_rest_predicts_signature_comes_from_its_parsed_body(body: bytes, signature: str) -> None:
    call = rest_call(Api.PREDICT, model_pb2.ModelSpec(name="m"), body, None)
    labels = RequestLabels.of_call(call, 1, grpc.StatusCode.OK)
    assert (labels.signature, labels.protocol) == (signature, "rest")


@pytest.mark.parametrize(
    "call",
    [
        ModelCall(
            Api.METADATA,
            model_pb2.ModelSpec(name="m", signature_name="s"),
            get_model_metadata_pb2.GetModelMetadataRequest(),
        ),
        ModelCall(
            Api.MULTI_INFERENCE,
            model_pb2.ModelSpec(name="m", signature_name="s"),
            inference_pb2.MultiInferenceRequest(),
        ),
    ],
)
def test_metadata_and_multi_inference_carry_no_signature(call: ModelCall) -> None:
    assert RequestLabels.of_call(call, 1, grpc.StatusCode.OK).signature == ""


def test_a_body_that_did_not_parse_is_labelled_from_the_path() -> None:
    spec = model_pb2.ModelSpec(name="m", signature_name="ignored")
    labels = RequestLabels.unparsed(spec, Api.PREDICT, Wire.REST, grpc.StatusCode.INVALID_ARGUMENT)
    assert labels == RequestLabels("m", "", "", "predict", "rest", "INVALID_ARGUMENT")
    assert labels.error
