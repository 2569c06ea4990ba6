"""Limits on a live server: request size (``max_request_bytes``) and requests in flight
(``max_concurrent_requests``), on both ports.

A gRPC message beyond the size limit is RESOURCE_EXHAUSTED (gRPC's own check, before the message
is parsed); a REST body beyond it is 413, whether it says so in Content-Length, arrives chunked,
or is a gzip body that would inflate beyond it. Under a flood far beyond what the server can
answer, requests beyond the in-flight bound are answered at once with RESOURCE_EXHAUSTED (REST
429), the serving processes' memory stays bounded, health keeps answering, and the server is
correct afterwards. A REST body that does not arrive within ``rest_body_timeout_s`` is 408, and
clients that trickle bodies hold no request slot meanwhile. Every load loop is bounded in time
and count.
"""

from __future__ import annotations

import gzip
import http.client
import json
import select
import socket
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from tests.harness import Server, start_server

LIMIT = 64 << 10
IN_FLIGHT = 8
"""max_concurrent_requests per serving replica (two replicas)."""
FLOOD_S = 15.0
BODY_TIMEOUT_S = 3.0
"""rest_body_timeout_s: a body still incomplete after this is 408."""


@pytest.fixture(scope="module")
def server(testdata: Path) -> Server:  # type: ignore[misc]
    base = testdata / "saved_model_half_plus_two_cpu"
    s = start_server(
        "model_name=half_plus_two",
        f"model_base_path={base}",
        f"max_request_bytes={LIMIT}",
        f"max_concurrent_requests={IN_FLIGHT}",
        f"rest_body_timeout_s={BODY_TIMEOUT_S}",
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


def rss_mb(server: Server) -> dict[int, float]:
    import psutil

    return {
        pid: psutil.Process(pid).memory_info().rss / 2**20 for pid, _ in server.replicas("Ingress")
    }


def test_a_grpc_flood_is_refused_at_once_and_costs_no_memory(server: Server) -> None:
    """512 calls kept in flight for FLOOD_S seconds, against a bound of 2 x IN_FLIGHT."""
    import asyncio

    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.full((4, 1), 2.0, np.float32)))
    before = rss_mb(server)
    outcomes: dict[grpc.StatusCode, list[float]] = {}
    health: list[int] = []

    async def flood() -> None:
        channels = [
            grpc.aio.insecure_channel(
                server.grpc_target, options=[("grpc.use_local_subchannel_pool", 1)]
            )
            for _ in range(8)
        ]
        stubs = [prediction_service_pb2_grpc.PredictionServiceStub(c) for c in channels]
        end = asyncio.get_running_loop().time() + FLOOD_S

        async def client(i: int) -> None:
            loop = asyncio.get_running_loop()
            for _ in range(100_000):  # bounded; the clock ends it first
                if loop.time() > end:
                    return
                started = loop.time()
                try:
                    await stubs[i % len(stubs)].Predict(request, timeout=10)
                    code = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as e:
                    code = e.code()
                outcomes.setdefault(code, []).append(loop.time() - started)

        async def watch() -> None:
            stub = health_pb2_grpc.HealthStub(channels[0])
            loop = asyncio.get_running_loop()
            while loop.time() < end:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                health.append(reply.status)
                await asyncio.sleep(0.5)

        await asyncio.gather(watch(), *(client(i) for i in range(512)))
        for c in channels:
            await c.close()

    asyncio.run(flood())
    after = rss_mb(server)
    ok = outcomes.get(grpc.StatusCode.OK, [])
    refused = outcomes.get(grpc.StatusCode.RESOURCE_EXHAUSTED, [])
    assert set(outcomes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, {
        k: len(v) for k, v in outcomes.items()
    }
    # refused at the bound, not queued: every call was answered (OK or RESOURCE_EXHAUSTED)
    # before the deadline it set, none ran out of it
    assert ok and refused
    refused_p99 = sorted(refused)[int(len(refused) * 0.99)]
    ok_p99 = sorted(ok)[int(len(ok) * 0.99)]
    assert health and set(health) == {health_pb2.HealthCheckResponse.SERVING}
    assert set(after) == set(before)  # no serving replica died
    growth = max(after[pid] - before[pid] for pid in before)
    assert growth < 150, (before, after)
    assert list(predict(server, 1).outputs["y"].float_val) == [3.0]
    print(
        f"\ngRPC flood, {FLOOD_S:.0f}s of 512 calls in flight: {len(ok)} OK (p99 {ok_p99:.3f}s), "
        f"{len(refused)} RESOURCE_EXHAUSTED (p99 {refused_p99:.3f}s), "
        f"RSS growth {growth:+.0f} MiB, health SERVING throughout"
    )


def test_a_rest_flood_is_429_at_once(server: Server) -> None:
    """h2load: 64 connections for FLOOD_S seconds, against a bound of 2 x IN_FLIGHT: only 200
    and 429, and at least twice as many calls offered as answered (the excess is refused at
    once, not queued: a queued call would be answered)."""
    from loadtests import h2load

    if not h2load.available():
        pytest.fail("h2load not installed: make system-deps")
    body = json.dumps({"instances": [2.0, 3.0]}).encode()
    url = f"{server.http_base}/v1/models/half_plus_two:predict"
    result = h2load.run(
        url, body, grpc=False, concurrency=64, seconds=FLOOD_S, warmup_s=1, check=lambda: None
    )
    assert result.requests > 0
    # refused, and nothing else failed; h2load logs status 0 for the calls it cuts off when its
    # window ends (at most one per connection)
    assert set(result.statuses) - {0} == {429}, result.statuses
    assert result.statuses.get(0, 0) <= 64, result.statuses
    p99 = sorted(result.latencies_ms)[int(len(result.latencies_ms) * 0.99)]
    assert post(server, json.dumps({"instances": [2.0]}).encode(), {})[0] == 200
    offered = (result.requests + result.errors) / result.requests
    assert result.statuses[429] > 0 and offered >= 2.0, (result.requests, result.statuses)
    print(
        f"\nREST flood, {FLOOD_S:.0f}s: {result.requests} OK, {result.statuses[429]} 429 "
        f"(offered {offered:.1f}x what was answered), p99 {p99:.1f} ms"
    )


def slow_client(server: Server, answers: list[bytes]) -> None:
    """Headers, then a body that trickles (a byte each 0.5 s for 1.5 s) and stalls, far short
    of its Content-Length; what the server sends until it closes (15 s at most), to
    ``answers``."""
    host, port = server.http_base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(
            b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )
        for _ in range(3):
            time.sleep(0.5)
            sock.sendall(b" ")
        answer = b""
        ends = time.monotonic() + 15
        while time.monotonic() < ends:  # the server closes the connection after its answer
            if select.select([sock], [], [], 0.5)[0]:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        answers.append(answer)


def test_slow_bodies_get_408_and_hold_no_request_slot(server: Server) -> None:
    """4 x IN_FLIGHT clients per replica's bound trickle their bodies (slowloris): each is
    answered exactly 408 once ``rest_body_timeout_s`` has passed, and meanwhile normal REST and
    gRPC requests are all answered (they would be 429 if the slow ones held the slots)."""
    answers: list[bytes] = []
    slow = [
        threading.Thread(target=slow_client, args=(server, answers), daemon=True)
        for _ in range(4 * IN_FLIGHT)
    ]
    for t in slow:
        t.start()
    time.sleep(0.5)  # every slow client has sent its headers
    body = json.dumps({"instances": [2.0, 3.0]}).encode()
    failed: list[str] = []
    answered = 0
    while any(t.is_alive() for t in slow) and answered < 60:
        status, text = post(server, body, {"Content-Type": "application/json"})
        if status != 200 or json.loads(text) != {"predictions": [3.0, 3.5]}:
            failed.append(f"REST {status}: {text[:200]}")
        try:
            assert list(predict(server, 1).outputs["y"].float_val) == [3.0]
        except grpc.RpcError as e:
            failed.append(f"gRPC {e.code()}: {e.details()}")
        answered += 2
        time.sleep(0.05)
    for t in slow:
        t.join(20)
    assert not failed, failed[:5]
    assert answered >= 4
    statuses = [a.split(b"\r\n", 1)[0] for a in answers]
    assert statuses == [b"HTTP/1.1 408 Request Timeout"] * len(slow), statuses
    assert all(b"did not arrive within 3s" in a for a in answers)
    print(f"\n{len(slow)} slow bodies: all 408; {answered} normal requests meanwhile, 0 failed")
