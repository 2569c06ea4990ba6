"""Autoscaling, backpressure and deadlines of models in deployments of their own
(``colocate=false``), against live servers (no timing asserts)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from tests.harness import Server, start_server


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise TimeoutError(what)


def half_plus_two_request() -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[2.0]], dtype=tf.float32))
    return request


def test_autoscaling_goes_up_under_load_and_back(testdata: Path) -> None:
    server = start_server(
        "colocate=false",
        "model_name=half_plus_two",
        f"model_base_path={testdata / 'saved_model_half_plus_two_cpu'}",
        "scaling.num_replicas=None",
        "scaling.min_replicas=1",
        "scaling.max_replicas=2",
        "scaling.target_ongoing_requests=1",
        "scaling.upscale_delay_s=1",
        "scaling.downscale_delay_s=2",
        wait_for=("half_plus_two",),
    )
    try:
        assert len(server.replicas("half_plus_two-v123")) == 1
        stop = threading.Event()
        failures: list[str] = []

        def client() -> None:
            stub = server.prediction_stub()
            for _ in range(100_000):
                if stop.is_set():
                    return
                try:
                    stub.Predict(half_plus_two_request(), 30.0)
                except grpc.RpcError as e:
                    failures.append(str(e.code()))

        threads = [threading.Thread(target=client, daemon=True) for _ in range(12)]
        for t in threads:
            t.start()
        try:
            wait_for(
                lambda: len(server.replicas("half_plus_two-v123")) == 2,
                120,
                "no upscale to 2 replicas",
            )
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        assert failures == []
        wait_for(
            lambda: len(server.replicas("half_plus_two-v123")) == 1,
            120,
            "no downscale to 1 replica",
        )
    finally:
        server.stop()


@pytest.fixture(scope="module")
def slow_server(deeplab_base: Path) -> Server:  # type: ignore[misc]
    s = start_server(
        "colocate=false",
        "model_name=deeplab",
        f"model_base_path={deeplab_base}",
        "scaling.max_ongoing_requests=1",
        "scaling.max_queued_requests=2",
        "rest_api_timeout_in_ms=300",
        wait_for=("deeplab",),
    )
    yield s
    s.stop()


BIG = 384


def big_request(size: int = BIG) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "deeplab"
    image = np.random.default_rng(1).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(image))
    return request


def test_overload_answers_resource_exhausted_and_stays_healthy(slow_server: Server) -> None:
    stub = slow_server.prediction_stub()

    def call(size: int) -> grpc.StatusCode:
        try:
            stub.Predict(big_request(size), 120.0)
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            return e.code()

    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(call, [BIG] * 12))
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert grpc.StatusCode.OK in codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    # REST says 429 for the same condition: while big gRPC calls hold the replica and its
    # queue, a small REST body (parsed at once, whatever the machine's load) is refused.
    small = json.dumps({"instances": np.zeros((1, 16, 16, 3)).tolist()}).encode()

    def rest() -> int:
        req = urllib.request.Request(
            f"{slow_server.http_base}/v1/models/deeplab:predict", data=small
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    statuses: list[int] = []
    deadline = time.monotonic() + 90
    with ThreadPoolExecutor(3) as pool:  # seconds of work each: the only slot and the queue
        held = [pool.submit(call, 1024) for _ in range(3)]
        while 429 not in statuses and len(statuses) < 500 and time.monotonic() < deadline:
            # Kept full: a big call that ended (a slow machine may let all three end between
            # two REST calls) is replaced, so the slot and the queue stay held while REST asks.
            held = [pool.submit(call, 1024) if f.done() else f for f in held]
            statuses.append(rest())
    assert set(statuses) <= {200, 429, 504}, statuses
    assert 429 in statuses
    # Still healthy: a small request afterwards succeeds.
    assert stub.Predict(big_request(16), 60.0).model_spec.version.value == 1


def test_expired_deadline_is_deadline_exceeded(slow_server: Server) -> None:
    stub = slow_server.prediction_stub()
    small = big_request(16)
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(stub.Predict, big_request(1024), 120.0)  # will occupy the only slot
        # The 12 MB request may still be on its way when a small one overtakes it and succeeds;
        # once it runs, every small call waits behind it until its deadline passes.
        codes = []
        while not busy.done() and len(codes) < 200:
            try:
                stub.Predict(small, 0.2)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    break
        busy.result()
    assert codes and codes[-1] == grpc.StatusCode.DEADLINE_EXCEEDED, codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}, codes
    # REST: the server's own deadline (rest_api_timeout_in_ms=300) ends a slow request with 504.
    body = json.dumps({"instances": np.zeros((1, 640, 640, 3)).tolist()}).encode()
    req = urllib.request.Request(f"{slow_server.http_base}/v1/models/deeplab:predict", data=body)
    with pytest.raises(urllib.error.HTTPError) as http_info:
        urllib.request.urlopen(req, timeout=120)
    assert http_info.value.code == 504
    assert json.loads(http_info.value.read())["error"] == "Deadline Exceeded"
    assert stub.Predict(big_request(16), 60.0).model_spec.version.value == 1
