"""Classify, Regress, MultiInference and GetModelMetadata over real gRPC, as TF Serving's own
``tensorflow_model_server_test.py`` calls them: model ``default`` served from
``saved_model_half_plus_two_cpu``, official stubs, exact codes and messages."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import json_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    input_pb2,
    regression_pb2,
)

from tests.harness import TESTDATA, Server, shared_server

MODEL = "default"
VERSION = 123
CLASSIFY, REGRESS = "tensorflow/serving/classify", "tensorflow/serving/regress"


pytestmark = pytest.mark.shares_server("half_plus_two")


@pytest.fixture(scope="module")
def server() -> Server:
    """The shared server: ``default`` is ``saved_model_half_plus_two_cpu``."""
    return shared_server("half_plus_two")


def _examples(model_input: input_pb2.Input, *xs: float) -> None:
    for x in xs:
        model_input.example_list.examples.add().features.feature["x"].float_list.value.append(x)


def _classify(signature: str, *xs: float, name: str = MODEL):  # type: ignore[no-untyped-def]
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    _examples(request.input, *xs)
    return request


def _regress(signature: str, *xs: float, name: str = MODEL):  # type: ignore[no-untyped-def]
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    _examples(request.input, *xs)
    return request


def _multi(*tasks: tuple[str, str, str], xs: tuple[float, ...] = (2.0,)):  # type: ignore[no-untyped-def]
    """``tasks``: (model name, signature, method name)."""
    request = inference_pb2.MultiInferenceRequest()
    for name, signature, method in tasks:
        task = request.tasks.add()
        task.model_spec.name = name
        task.model_spec.signature_name = signature
        task.method_name = method
    _examples(request.input, *xs)
    return request


def _error(call, request) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(request, 10.0)
    return info.value.code(), info.value.details()


def _check_spec(spec, signature: str) -> None:  # type: ignore[no-untyped-def]
    """TF Serving's _VerifyModelSpec: name, signature as requested, resolved version."""
    assert (spec.name, spec.signature_name, spec.version.value) == (MODEL, signature, VERSION)


# --- the calls of TF Serving's own test -------------------------------------------------------


def test_classify_like_tf_serving(server: Server) -> None:
    result = server.prediction_stub().Classify(_classify("classify_x_to_y", 2.0), 10.0)
    assert len(result.result.classifications) == 1
    assert len(result.result.classifications[0].classes) == 1
    assert result.result.classifications[0].classes[0].score == 3.0
    assert result.result.classifications[0].classes[0].label == ""
    _check_spec(result.model_spec, "classify_x_to_y")


def test_regress_like_tf_serving(server: Server) -> None:
    result = server.prediction_stub().Regress(_regress("regress_x_to_y", 2.0), 10.0)
    assert len(result.result.regressions) == 1
    assert result.result.regressions[0].value == 3.0
    _check_spec(result.model_spec, "regress_x_to_y")


def test_multi_inference_like_tf_serving(server: Server) -> None:
    request = _multi((MODEL, "regress_x_to_y", REGRESS), (MODEL, "classify_x_to_y", CLASSIFY))
    result = server.prediction_stub().MultiInference(request, 10.0)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for i, signature in enumerate(("regress_x_to_y", "classify_x_to_y")):
        _check_spec(result.results[i].model_spec, signature)


def test_several_examples_and_a_context(server: Server) -> None:
    stub = server.prediction_stub()
    result = stub.Regress(_regress("regress_x_to_y2", 0.0, 2.0, 4.0), 10.0)  # y = 0.5x + 3
    assert [r.value for r in result.result.regressions] == [3.0, 4.0, 5.0]
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "regress_x_to_y"
    with_context = request.input.example_list_with_context
    with_context.context.features.feature["x"].float_list.value.append(2.0)
    with_context.examples.add().features.feature["x"].float_list.value.append(6.0)
    with_context.examples.add()  # no x of its own: the context's
    result = stub.Regress(request, 10.0)
    assert [r.value for r in result.result.regressions] == [5.0, 3.0]


def test_by_version_and_future(server: Server) -> None:
    request = _classify("classify_x_to_y", 0.0, 4.0)
    request.model_spec.version.value = VERSION
    result = server.prediction_stub().Classify.future(request, 10.0).result()
    assert [c.classes[0].score for c in result.result.classifications] == [2.0, 4.0]
    _check_spec(result.model_spec, "classify_x_to_y")


# --- errors, with TF Serving's codes and messages ----------------------------------------------

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("rpc", "request_", "code", "message"),
    [
        (
            "Classify",
            _classify("nope", 2.0),
            INVALID,
            "No signature was found with the name: nope",
        ),
        (
            "Regress",
            _regress("nope", 2.0),
            INVALID,
            "No signature was found with the name: nope",
        ),
        ("Classify", _classify("classify_x_to_y"), INVALID, "Input is empty."),
        ("Regress", _regress("regress_x_to_y"), INVALID, "Input is empty."),
        (
            "Classify",
            _classify("classify_x_to_y", 2.0, name="nope"),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Latest(nope)",
        ),
        (
            "MultiInference",
            _multi((MODEL, "regress_x_to_y", REGRESS), ("other", "classify_x_to_y", CLASSIFY)),
            INVALID,
            "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
        ),
        (
            "MultiInference",
            _multi((MODEL, "regress_x_to_y", REGRESS), (MODEL, "regress_x_to_y", REGRESS)),
            INVALID,
            "Duplicate evaluation of signature: regress_x_to_y",
        ),
        (
            "MultiInference",
            _multi((MODEL, "nope", REGRESS)),
            INVALID,
            "Requested signature not found in model graph: nope",
        ),
        (
            "MultiInference",
            _multi((MODEL, "regress_x_to_y", "tensorflow/serving/predict")),
            grpc.StatusCode.UNIMPLEMENTED,
            "Unsupported signature method_name: tensorflow/serving/predict",
        ),
        (
            "MultiInference",
            _multi((MODEL, "regress_x_to_y", REGRESS), xs=()),
            INVALID,
            "Input is empty.",
        ),
        (
            "MultiInference",
            inference_pb2.MultiInferenceRequest(),
            INVALID,
            "ModelSpec has no name specified.",
        ),
    ],
    ids=[
        "classify-unknown-signature",
        "regress-unknown-signature",
        "classify-empty-input",
        "regress-empty-input",
        "classify-unknown-model",
        "multi-different-models",
        "multi-duplicate-signature",
        "multi-unknown-signature",
        "multi-unsupported-method",
        "multi-empty-input",
        "multi-no-tasks",
    ],
)
def test_errors_match_tf_serving(server: Server, rpc: str, request_, code, message) -> None:  # type: ignore[no-untyped-def]
    assert _error(getattr(server.prediction_stub(), rpc), request_) == (code, message)


def test_signature_of_the_wrong_kind(server: Server) -> None:
    """Regress on a classification signature: its outputs are not ``outputs``."""
    code, message = _error(server.prediction_stub().Regress, _regress("classify_x_to_y", 2.0))
    assert code == INVALID
    assert message.startswith("No regression outputs found in SignatureDef: ")
    assert 'key: "scores"' in message
    code, message = _error(server.prediction_stub().Classify, _classify("serving_default", 2.0))
    assert code == INVALID
    assert message.startswith("No classification inputs found in SignatureDef: ")


# --- GetModelMetadata ---------------------------------------------------------------------------


def test_metadata_equals_tf_serving_json(server: Server) -> None:
    """The SignatureDefMap is what TF Serving answers for this model (its REST test's JSON)."""
    expected = json.loads((TESTDATA / "half_plus_two_model_metadata.json").read_text())
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    response = server.prediction_stub().GetModelMetadata(request, 10.0)
    assert (response.model_spec.name, response.model_spec.version.value) == (MODEL, VERSION)
    assert response.model_spec.signature_name == expected["model_spec"]["signature_name"] == ""
    assert list(response.metadata) == ["signature_def"]
    got = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(got)
    want = json_format.ParseDict(
        expected["metadata"]["signature_def"], get_model_metadata_pb2.SignatureDefMap()
    )
    assert got == want


def test_metadata_by_version_and_errors(server: Server) -> None:
    stub = server.prediction_stub()
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    request.model_spec.version.value = VERSION
    assert stub.GetModelMetadata(request, 10.0).model_spec.version.value == VERSION
    request.model_spec.version.value = 7
    assert _error(stub.GetModelMetadata, request) == (
        grpc.StatusCode.NOT_FOUND,
        f"Servable not found for request: Specific({MODEL}, 7)",
    )
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    assert _error(stub.GetModelMetadata, request) == (INVALID, "Missing ModelSpec")
