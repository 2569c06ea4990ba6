"""serve_app.calls and the transports' translation into it, without a server: how gRPC bytes
and REST bodies become a ModelCall, and how a ModelReply's status reaches each edge."""

from __future__ import annotations

import json
import pickle

import grpc
import pytest

from compat import json_codec
from compat.errors import NotFound, ServingError
from compat.protos import classification_pb2, inference_pb2, model_pb2, predict_pb2
from serve_app.calls import Api, ModelCall, ModelReply, Wire, grpc_call
from serve_app.transports.rest import error_response, rest_call

SPEC = model_pb2.ModelSpec(name="m")


def test_grpc_bytes_become_a_call_with_the_spec_read_once() -> None:
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name="m", signature_name="s")
    )
    call = grpc_call(Api.PREDICT, request.SerializeToString(), 12.5)
    assert (call.api, call.wire, call.deadline) == (Api.PREDICT, Wire.GRPC, 12.5)
    assert call.spec.name == "m" and call.signature == "s"
    assert call.request == request


@pytest.mark.parametrize(
    ("raw", "code", "message"),
    [
        # C++ gRPC's deserializer, in front of TF Serving's handlers, answers INTERNAL
        (
            b"\xff\xff",
            grpc.StatusCode.INTERNAL,
            "Could not parse request as tensorflow.serving.PredictRequest",
        ),
        (b"", grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"),
    ],
)
def test_grpc_bytes_that_are_no_request_get_tf_servings_errors(
    raw: bytes, code: grpc.StatusCode, message: str
) -> None:
    with pytest.raises(ServingError) as e:
        grpc_call(Api.PREDICT, raw, None)
    assert (e.value.code, e.value.message) == (code, message)


def test_multi_inference_takes_its_tasks_common_spec() -> None:
    request = inference_pb2.MultiInferenceRequest()
    for signature in ("a", "b"):
        task = request.tasks.add()
        task.model_spec.name = "m"
        task.model_spec.signature_name = signature
        task.method_name = "tensorflow/serving/classify"
    call = grpc_call(Api.MULTI_INFERENCE, request.SerializeToString(), None)
    assert call.spec.name == "m"


def test_rest_predict_body_is_parsed_once_and_its_signature_read() -> None:
    call = rest_call(Api.PREDICT, SPEC, b'{"signature_name": "s", "instances": [1]}', None)
    assert call.wire is Wire.REST and call.signature == "s"
    assert json_codec.signature_name(call.request) == "s"


@pytest.mark.parametrize(
    ("api", "body", "message"),
    [
        (Api.PREDICT, b"{", "JSON Parse error: Missing a name for object member. at offset: 1"),
        (Api.PREDICT, b"", "JSON Parse error: The document is empty"),
        (Api.CLASSIFY, b'{"examples": 1}', None),
    ],
)
def test_a_malformed_body_fails_before_any_model_is_looked_up(
    api: Api, body: bytes, message: str | None
) -> None:
    with pytest.raises(ServingError) as e:
        rest_call(api, SPEC, body, None)
    assert e.value.code is grpc.StatusCode.INVALID_ARGUMENT
    if message is not None:
        assert e.value.message == message


def test_rest_classify_becomes_the_grpc_request_message() -> None:
    body = b'{"signature_name": "c", "examples": [{"x": 2.0}]}'
    call = rest_call(Api.CLASSIFY, SPEC, body, None)
    assert isinstance(call.request, classification_pb2.ClassificationRequest)
    assert call.request.model_spec.name == "m" and call.signature == "c"
    assert call.request.input.example_list.examples[0].features.feature["x"].float_list.value == [
        2.0
    ]


def test_a_call_to_another_process_carries_the_body_not_the_parsed_lists() -> None:
    body = json.dumps({"instances": [[1, 2, 3]] * 100}).encode()
    call = rest_call(Api.PREDICT, SPEC, body, None)
    wire = pickle.dumps(call)
    assert len(wire) < len(body) + 1000
    again = pickle.loads(wire)
    assert again.request == call.request and again.request.body == body


def test_reply_codes_are_grpc_status_codes() -> None:
    assert ModelReply(payload=b"x").ok
    reply = ModelReply.error(NotFound("gone"))
    assert reply.code is grpc.StatusCode.NOT_FOUND and not reply.ok
    with pytest.raises(NotFound):
        reply.raise_for_status()
    assert pickle.loads(pickle.dumps(reply)) == reply


def test_rest_error_body_is_tf_servings_pretty_json() -> None:
    response = error_response(grpc.StatusCode.NOT_FOUND, 'bad "x"\n')
    assert response.status_code == 404
    assert response.body == b'{\n    "error": "bad \\"x\\"\\n"\n}'


def test_every_api_has_a_request_type_and_a_call_round_trips() -> None:
    from serve_app.calls import REQUEST_TYPES

    assert set(REQUEST_TYPES) == set(Api)
    call = ModelCall(Api.METADATA, SPEC, REQUEST_TYPES[Api.METADATA](model_spec=SPEC))
    assert pickle.loads(pickle.dumps(call)) == call


@pytest.mark.parametrize("api", [Api.MODEL_INFER, Api.MODEL_METADATA, Api.PREDICT])
def test_a_call_pickles_its_request_as_bytes(api: Api) -> None:
    """A call to a version in a deployment of its own crosses processes: the Open Inference
    Protocol's generated classes cannot be pickled by reference."""
    import pickle

    from compat.open_inference import pb

    request = {
        Api.MODEL_INFER: pb.ModelInferRequest(model_name="m", model_version="3", id="r"),
        Api.MODEL_METADATA: pb.ModelMetadataRequest(name="m"),
        Api.PREDICT: predict_pb2.PredictRequest(),
    }[api]
    call = ModelCall(api, model_pb2.ModelSpec(name="m"), request, deadline=12.5)
    again = pickle.loads(pickle.dumps(call))
    assert again.request == request and type(again.request) is type(request)
    assert (again.api, again.spec.name, again.deadline) == (api, "m", 12.5)


def test_rest_error_messages_are_cut_at_1024_characters() -> None:
    """A message quoting a request's names grows with them: cut as the gRPC edge cuts it."""
    response = error_response(grpc.StatusCode.NOT_FOUND, "x" * 100_000)
    error = json.loads(bytes(response.body))["error"]
    assert response.status_code == 404
    assert error == "x" * 1024 + "...TRUNCATED"
    short = error_response(grpc.StatusCode.NOT_FOUND, "Servable not found")
    assert json.loads(bytes(short.body))["error"] == "Servable not found"
