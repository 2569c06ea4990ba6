"""Models in deployments of their own (``colocate=false``): the serving replicas forward each
request's bytes to the version's replicas, and a failure between the two is a clean status.

The server lowers Serve's message limit between deployments to 8 MB, so that such a failure can
be provoked for real."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from tests.harness import Server, start_server

MODEL = "half_plus_two"


@pytest.fixture(scope="module")
def server(testdata: Path) -> Iterator[Server]:
    s = start_server(
        f"model_name={MODEL}",
        f"model_base_path={testdata / 'saved_model_half_plus_two_cpu'}",
        "colocate=false",
        wait_for=(MODEL,),
        env={"RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(8 * 2**20)},
    )
    yield s
    s.stop()


def predict(server: Server, x: np.ndarray) -> predict_pb2.PredictResponse:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    return server.prediction_stub().Predict(request, 30.0)


def test_the_version_runs_in_its_own_deployment(server: Server) -> None:
    assert len(server.replicas(f"{MODEL}-v123")) == 1
    response = predict(server, np.array([[2.0]], np.float32))
    assert response.outputs["y"].float_val == [3.0]
    assert response.model_spec.version.value == 123


def test_a_failure_between_deployments_is_a_clean_status(server: Server) -> None:
    """The serving replica's call to the model fails (message over the lowered limit): the
    client gets gRPC's own code and message, no Ray traceback, and the server keeps serving."""
    with pytest.raises(grpc.RpcError) as info:
        predict(server, np.zeros((3 * 2**20, 1), np.float32))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Received message larger than max" in info.value.details()
    assert "Traceback" not in info.value.details()
    test_the_version_runs_in_its_own_deployment(server)
