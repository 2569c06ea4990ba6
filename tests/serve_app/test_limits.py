"""Request-size limits on a live server: ``max_request_bytes`` on both ports.

A gRPC message beyond the limit is RESOURCE_EXHAUSTED (gRPC's own check, before the message is
parsed); a REST body beyond it is 413, whether it says so in Content-Length, arrives chunked, or
is a gzip body that would inflate beyond it. Requests within the limit are served, and the
server answers correctly afterwards.
"""

from __future__ import annotations

import gzip
import http.client
import json
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from tests.conftest import Server, start_server

LIMIT = 64 << 10


@pytest.fixture(scope="module")
def server(testdata: Path) -> Server:  # type: ignore[misc]
    base = testdata / "saved_model_half_plus_two_cpu"
    s = start_server(
        "model_name=half_plus_two",
        f"model_base_path={base}",
        f"max_request_bytes={LIMIT}",
        wait_for=("half_plus_two",),
    )
    yield s
    s.stop()


def predict(server: Server, rows: int) -> predict_pb2.PredictResponse:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.full((rows, 1), 2.0, np.float32)))
    return server.prediction_stub().Predict(request, 30.0)


def post(server: Server, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    host, port = server.http_base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("POST", "/v1/models/half_plus_two:predict", body=body, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read().decode()
    finally:
        connection.close()


def test_grpc_message_beyond_the_limit_is_resource_exhausted(server: Server) -> None:
    assert list(predict(server, 100).outputs["y"].float_val) == [3.0] * 100
    with pytest.raises(grpc.RpcError) as e:
        predict(server, 20_000)  # 80 KB of tensor_content
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (e.value.details() or "")
    assert list(predict(server, 1).outputs["y"].float_val) == [3.0]


def test_rest_body_beyond_the_limit_is_413(server: Server) -> None:
    small = json.dumps({"instances": [2.0] * 100}).encode()
    assert post(server, small, {"Content-Type": "application/json"})[0] == 200
    big = json.dumps({"instances": [2.0] * 20_000}).encode()
    assert len(big) > LIMIT
    status, text = post(server, big, {"Content-Type": "application/json"})
    assert status == 413
    assert json.loads(text) == {
        "error": f"Request body of {len(big)} bytes is larger than the limit of {LIMIT} bytes "
        "(max_request_bytes)"
    }


def test_chunked_body_beyond_the_limit_is_413(server: Server) -> None:
    big = json.dumps({"instances": [2.0] * 20_000}).encode()
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(big[i : i + 4096]), big[i : i + 4096])
        for i in range(0, len(big), 4096)
    )
    status, text = post(
        server,
        chunked + b"0\r\n\r\n",
        {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )
    assert status == 413, text
    assert "larger than the limit" in json.loads(text)["error"]


def test_gzip_body_that_inflates_beyond_the_limit_is_413(server: Server) -> None:
    body = json.dumps({"instances": [2.0] * 100}).encode()
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    status, text = post(server, gzip.compress(body), headers)
    assert (status, json.loads(text)) == (200, {"predictions": [3.0] * 100})
    bomb = gzip.compress(b" " * (4 << 20) + body)  # 4 MiB of whitespace in a few KB
    assert len(bomb) < LIMIT
    status, text = post(server, bomb, headers)
    assert status == 413
    assert "inflates beyond the limit" in json.loads(text)["error"]
    assert post(server, body, {"Content-Type": "application/json"})[0] == 200
