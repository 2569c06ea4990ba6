"""``direct_ingress=true``: the ingress replica itself serves the client ports, over loopback.

The server also lowers Serve's message limit between deployments to 8 MB, so that a failure
between the ingress and a model replica can be provoked for real."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from tests.conftest import Server, start_server

MODEL = "half_plus_two"


@pytest.fixture(scope="module")
def server(testdata: Path) -> Iterator[Server]:
    s = start_server(
        f"model_name={MODEL}",
        f"model_base_path={testdata / 'saved_model_half_plus_two_cpu'}",
        "direct_ingress=true",
        wait_for=(MODEL,),
        env={"RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(8 * 2**20)},
    )
    yield s
    s.stop()


def test_the_ingress_replica_listens_on_the_client_ports(server: Server) -> None:
    (ingress,) = server.replicas("Ingress")
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    for port in (server.grpc_port, server.http_port):
        (line,) = [row for row in out.splitlines() if row.split()[3].endswith(f":{port}")]
        assert f"pid={ingress[0]}," in line  # not the proxy
        assert line.split()[3] in (f"127.0.0.1:{port}", f"[::ffff:127.0.0.1]:{port}")


def test_predict_over_grpc_and_rest(server: Server) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[2.0]], dtype=tf.float32))
    response = server.prediction_stub().Predict(request, 10.0)
    assert response.outputs["y"].float_val == [3.0]
    assert response.model_spec.version.value == 123
    body = json.dumps({"instances": [1.0, 2.0]}).encode()
    url = f"{server.http_base}/v1/models/{MODEL}:predict"
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as r:
        assert json.loads(r.read()) == {"predictions": [2.5, 3.0]}


def test_errors_keep_tf_servings_codes(server: Server) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "missing"
    with pytest.raises(grpc.RpcError) as info:
        server.prediction_stub().Predict(request, 10.0)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "Servable not found for request: Latest(missing)"


def test_a_failure_between_deployments_is_a_clean_status(server: Server) -> None:
    """The ingress's call to the model fails (message over the lowered limit): the client gets
    gRPC's own code and message, no Ray traceback, and the server keeps serving."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.zeros((3 * 2**20, 1), np.float32)))
    with pytest.raises(grpc.RpcError) as info:
        server.prediction_stub().Predict(request, 30.0)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Received message larger than max" in info.value.details()
    assert "Traceback" not in info.value.details()
    test_predict_over_grpc_and_rest(server)
