"""Predict and GetModelMetadata over real gRPC against a live server, with the official stubs."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.harness import Server, shared_server

MODEL = "half_plus_two"


pytestmark = pytest.mark.shares_server("half_plus_two")


@pytest.fixture(scope="module")
def server() -> Server:
    return shared_server("half_plus_two")


def _request(x: list[float], **spec: object) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = str(spec.get("name", MODEL))
    if "signature" in spec:
        request.model_spec.signature_name = str(spec["signature"])
    if "version" in spec:
        request.model_spec.version.value = int(spec["version"])  # type: ignore[call-overload]
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x, dtype=tf.float32, shape=[len(x), 1]))
    return request


def _error(call, request) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(request, 10.0)
    return info.value.code(), info.value.details()


def test_predict_half_plus_two_like_tf_serving_test(server: Server) -> None:
    response = server.prediction_stub().Predict(_request([2.0]), 10.0)
    assert response.model_spec.name == MODEL
    assert response.model_spec.version.value == 123
    assert response.model_spec.signature_name == "serving_default"
    assert len(response.outputs["y"].float_val) == 1
    assert response.outputs["y"].float_val[0] == 3.0
    assert not response.outputs["y"].tensor_content


def test_predict_future_and_output_filter(server: Server) -> None:
    request = _request([2.0, 3.0, 4.0])
    request.output_filter.append("y")
    response = server.prediction_stub().Predict.future(request, 10.0).result()
    assert np.allclose(tf.make_ndarray(response.outputs["y"]).ravel(), [3.0, 3.5, 4.0])
    assert list(response.outputs) == ["y"]


def test_predict_beyond_grpcs_default_4mb(server: Server) -> None:
    """24 MB each way through the serving replica (TF Serving accepts up to 2 GB)."""
    x = np.arange(6 * 2**20, dtype=np.float32).reshape(-1, 1)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    assert request.ByteSize() > 24 * 2**20
    options = [("grpc.max_receive_message_length", 2**31 - 1)]
    with grpc.insecure_channel(server.grpc_target, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, 60.0)
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["y"]), 0.5 * x + 2.0)


def test_predict_by_version(server: Server) -> None:
    response = server.prediction_stub().Predict(_request([0.0], version=123), 10.0)
    assert response.outputs["y"].float_val[0] == 2.0


@pytest.mark.parametrize(
    ("mutate", "code", "message"),
    [
        (
            lambda r: r.ClearField("model_spec"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Missing ModelSpec",
        ),
        (
            lambda r: setattr(r.model_spec, "name", "nope"),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Latest(nope)",
        ),
        (
            lambda r: r.model_spec.version.__setattr__("value", 7),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Specific(half_plus_two, 7)",
        ),
        (
            lambda r: setattr(r.model_spec, "version_label", "stable"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unrecognized servable version label: stable",
        ),
        (
            lambda r: setattr(r.model_spec, "signature_name", "nope"),
            grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "nope" not found.',
        ),
        (
            lambda r: r.inputs.clear(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input size does not match signature: 0!=1 len({}) != len({x}). Sent extra: {}. "
            "Missing but required: {x}.",
        ),
        (
            lambda r: r.inputs["z"].CopyFrom(r.inputs["x"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input size does not match signature: 2!=1 len({x,z}) != len({x}). Sent extra: {z}. "
            "Missing but required: {}.",
        ),
        (
            lambda r: (r.inputs["z"].CopyFrom(r.inputs["x"]), r.inputs.pop("x")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Signature input alias: x(feed name: x:0) not found in request and no default value "
            "provided. Inputs expected to be in the request {z}, or default input alias set: ",
        ),
        (
            lambda r: r.inputs["x"].CopyFrom(tf.make_tensor_proto([True], dtype=tf.bool)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Expects arg[0] to be float but bool is provided",
        ),
        (
            lambda r: r.output_filter.append("nope"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "output tensor alias not found in signature: nope "
            "Outputs expected to be in the set {y}.",
        ),
        (
            lambda r: r.output_filter.extend(["y", "y"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "duplicate output tensor alias: y",
        ),
        (
            lambda r: setattr(r.inputs["x"], "tensor_content", b"\x00\x01\x02"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "tensor parsing error: x",
        ),
    ],
    ids=[
        "no-model-spec",
        "unknown-model",
        "unknown-version",
        "unknown-label",
        "unknown-signature",
        "no-inputs",
        "extra-input",
        "wrong-input-name",
        "wrong-dtype",
        "unknown-output-filter",
        "duplicate-output-filter",
        "bad-tensor",
    ],
)
def test_predict_errors_match_tf_serving(server: Server, mutate, code, message) -> None:  # type: ignore[no-untyped-def]
    request = _request([2.0])
    mutate(request)
    assert _error(server.prediction_stub().Predict, request) == (code, message)


def test_long_messages_are_truncated_like_tf_serving(server: Server) -> None:
    request = _request([2.0])
    for i in range(150):
        request.inputs[f"extra_input_{i:03d}"].CopyFrom(request.inputs["x"])
    code, details = _error(server.prediction_stub().Predict, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("input size does not match signature: 151!=1")
    assert len(details) == 1024 + len("...TRUNCATED") and details.endswith("...TRUNCATED")


def test_server_survives_errors(server: Server) -> None:
    stub = server.prediction_stub()
    for _ in range(3):
        request = _request([2.0])
        request.inputs["x"].tensor_content = b"\x01"
        _error(stub.Predict, request)
    assert stub.Predict(_request([2.0]), 10.0).outputs["y"].float_val[0] == 3.0


def test_metadata_equals_tf_serving(server: Server) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    response = server.prediction_stub().GetModelMetadata(request, 10.0)
    assert response.model_spec.name == MODEL
    assert response.model_spec.version.value == 123
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sig_map)
    assert set(sig_map.signature_def) == {
        "serving_default",
        "classify_x_to_y",
        "regress_x_to_y",
        "regress_x_to_y2",
        "regress_x2_to_y3",
    }
    assert sig_map.signature_def["serving_default"].inputs["x"].name == "x:0"


def test_metadata_requires_a_field(server: Server) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = MODEL
    assert _error(server.prediction_stub().GetModelMetadata, request) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "GetModelMetadataRequest must specify at least one metadata_field",
    )


def test_undefined_rpc_is_unimplemented(server: Server) -> None:
    call = server.channel.unary_unary("/tensorflow.serving.SessionService/SessionRun")
    with pytest.raises(grpc.RpcError) as info:
        call(b"", timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_grpc_health_check(server: Server) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(server.channel)
    assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == (
        health_pb2.HealthCheckResponse.SERVING
    )
    ps = health_pb2.HealthCheckRequest(service="tensorflow.serving.PredictionService")
    assert stub.Check(ps, timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as info:
        stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_every_port_is_loopback(server: Server) -> None:
    """Ray's servers and both of ours listen on loopback only (``ss -ltnp``)."""
    import subprocess

    pids = {str(pid) for pid, _, _ in server.processes()}
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    ours = [line for line in out.splitlines() if any(f"pid={p}," in line for p in pids)]
    assert any(f":{server.grpc_port} " in line for line in ours)
    assert any(f":{server.http_port} " in line for line in ours)
    assert len(ours) > 5  # gcs, raylet, workers, replicas: Ray's listeners are ours too
    for line in ours:
        local = line.split()[3]
        assert local.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")), line


def test_a_serve_config_boot_starts_each_serving_replica_once(server: Server) -> None:
    """The harness boots ``serve run`` of the Serve config: its deployments run under the
    config's code version, and the version manager's first redeploy keeps the serving replicas
    it finds built as its own would be (``Applier.adopt_running``) instead of starting every one
    again; the version manager adopts its own running version too. Serve's controller logs
    each replica it adds: two serving replicas and one manager, once each."""
    import re

    def added(deployment: str) -> int:
        pattern = rf"Adding (\d+) replicas? to Deployment\(name='{deployment}'"
        return sum(int(n) for n in re.findall(pattern, server.log()))

    assert added("Ingress") == len(server.replicas("Ingress")) == 2, server.log()[-3000:]
    assert added("VersionManager") == len(server.replicas("VersionManager")) == 1
