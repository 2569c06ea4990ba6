"""Prometheus metrics at ``prometheus_path`` against a live server: the page parses, carries
TF Serving's "# TYPE" lines (its own test checks that), and the counters, histograms and version
states move with real gRPC and REST traffic.

Replicas hand their metrics to Ray's per-node agent, which takes up to
``metrics_report_interval_ms`` (10 s) to show them: the checks poll, bounded.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import predict_pb2

from tests.harness import TESTDATA, Server, start_server

MODEL = "half_plus_two"
PATH = "/monitoring/prometheus/metrics"
PREFIX = "ray_tfserving_"
WAIT_S = 90.0
REPORT_S = 10.0
"""Ray's ``metrics_report_interval_ms``: how late a replica's figures may reach the page."""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = start_server(
        f"model_name={MODEL}",
        f"model_base_path={TESTDATA / 'saved_model_half_plus_two_cpu'}",
        f"prometheus_path={PATH}",
        "batching.enabled=true",
        "batching.batch_timeout_micros=20000",
        wait_for=(MODEL,),
    )
    yield s
    s.stop()


def get(server: Server, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(server.http_base + path, timeout=60) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def post(server: Server, path: str, body: object) -> int:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(server.http_base + path, data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def scrape(server: Server) -> Samples:
    status, _, text = get(server, PATH)
    assert status == 200, text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def wait_until(server: Server, check: Callable[[Samples], bool], what: str) -> Samples:
    deadline = time.monotonic() + WAIT_S
    samples = scrape(server)
    while not check(samples):
        if time.monotonic() > deadline:
            ours = {k: v for k, v in samples.items() if k[0].startswith(PREFIX)}
            raise AssertionError(f"{what} within {WAIT_S}s; last scrape: {ours}")
        time.sleep(1.0)
        samples = scrape(server)
    return samples


def settled(server: Server, *names: str) -> Samples:
    """A scrape once the series ``names`` of ``MODEL`` have held still for longer than
    ``REPORT_S``: whatever earlier tests sent is on the page, and nothing of theirs lands
    after it."""
    deadline = time.monotonic() + WAIT_S
    samples = scrape(server)
    while True:
        time.sleep(REPORT_S + 1.0)
        again = scrape(server)
        if all(total(again, n, model=MODEL) == total(samples, n, model=MODEL) for n in names):
            return again
        assert time.monotonic() < deadline, f"{names} never held still for {REPORT_S}s"
        samples = again


def grpc_predict(server: Server, xs: list[float], **spec: object) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    if "signature" in spec:
        request.model_spec.signature_name = str(spec["signature"])
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(xs, dtype=tf.float32, shape=[len(xs), 1]))
    server.prediction_stub().Predict(request, 30.0)


def test_page_parses_and_has_tf_servings_type_lines(server: Server) -> None:
    status, content_type, text = get(server, PATH)
    assert status == 200
    assert content_type.startswith("text/plain")
    assert "# TYPE" in text  # tensorflow_model_server_test.py's testPrometheusEndpoint
    families = {f.name: f for f in text_string_to_metric_families(text)}
    state = families[PREFIX + "model_version_state"]
    assert state.type == "gauge"
    assert [(s.labels, s.value) for s in state.samples] == [
        ({"model": MODEL, "version": "123", "state": "AVAILABLE"}, 1.0)
    ]


def test_model_load_latency_is_recorded(server: Server) -> None:
    name = PREFIX + "model_load_latency_seconds_count"
    samples = wait_until(
        server,
        lambda s: total(s, name, model=MODEL, version="123", status="OK") >= 1,
        "no model load recorded",
    )
    assert total(samples, PREFIX + "model_load_latency_seconds_sum", model=MODEL) > 0


def test_batch_size_histogram(server: Server) -> None:
    """With batching on, every Predict is part of a batch: 16 requests of 5 rows add 80
    examples, in at most 16 batches (fewer when concurrent requests were merged). Counted from
    a page that has settled, so no earlier test's Predict lands in the difference."""
    count, examples = PREFIX + "batch_size_count", PREFIX + "batch_size_sum"
    before = settled(server, count, examples)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: grpc_predict(server, [1.0, 2.0, 3.0, 4.0, 5.0]), range(16)))

    def delta(s: Samples, name: str) -> float:
        return total(s, name, model=MODEL, version="123") - total(
            before, name, model=MODEL, version="123"
        )

    # Exact: Ray alone would report bucket midpoints (5 rows fall in (4, 8]: 6 each).
    after = wait_until(server, lambda s: delta(s, examples) == 80, "80 batched examples")
    assert 1 <= delta(after, count) <= 16


def test_request_counters_move_with_traffic(server: Server) -> None:
    requests, errors = PREFIX + "requests_total", PREFIX + "request_errors_total"
    latency = PREFIX + "request_latency_seconds_count"
    rest_ok = dict(model=MODEL, version="123", api="predict", protocol="rest", status="OK")
    grpc_ok = dict(model=MODEL, version="123", api="predict", protocol="grpc", status="OK")
    classify = dict(
        model=MODEL, signature="classify_x_to_y", api="classify", protocol="rest", status="OK"
    )
    not_found = dict(model=MODEL, version="", protocol="rest", status="NOT_FOUND")
    # a body that does not parse fails before any version is resolved (as in TF Serving)
    bad_json = dict(model=MODEL, version="", protocol="rest", status="INVALID_ARGUMENT")
    before = scrape(server)

    for _ in range(5):
        assert post(server, f"/v1/models/{MODEL}:predict", {"instances": [1.0, 2.0]}) == 200
    for _ in range(3):
        grpc_predict(server, [1.0])
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    assert post(server, f"/v1/models/{MODEL}:classify", body) == 200
    assert post(server, f"/v1/models/{MODEL}/versions/7:predict", {"instances": [1.0]}) == 404
    assert post(server, f"/v1/models/{MODEL}:predict", b"{") == 400

    def moved(s: Samples, name: str, labels: dict[str, str], n: int) -> bool:
        return total(s, name, **labels) - total(before, name, **labels) >= n

    after = wait_until(
        server,
        lambda s: (
            moved(s, requests, rest_ok, 5)
            and moved(s, requests, grpc_ok, 3)
            and moved(s, requests, classify, 1)
            and moved(s, errors, not_found, 1)
            and moved(s, errors, bad_json, 1)
        ),
        "request counters did not move",
    )
    assert moved(after, latency, rest_ok, 5)
    assert moved(after, latency, grpc_ok, 3)
    assert total(after, requests, **grpc_ok, signature="serving_default") >= 3
    assert total(after, errors, **rest_ok) == 0  # successes are not errors
    assert total(after, PREFIX + "request_latency_seconds_sum", **rest_ok) > 0


def test_made_up_model_names_add_no_series(server: Server) -> None:
    """40 requests naming 40 models that do not exist (gRPC and REST): they are counted under
    ``model="__unknown__"``, and no series carries any of their names."""
    import grpc

    requests = PREFIX + "requests_total"
    unknown = dict(model="__unknown__", version="", status="NOT_FOUND")
    before = scrape(server)
    for i in range(20):
        assert post(server, f"/v1/models/made-up-{i}:predict", {"instances": [1.0]}) == 404
        request = predict_pb2.PredictRequest()
        request.model_spec.name = f"made-up-grpc-{i}"
        with pytest.raises(grpc.RpcError) as e:
            server.prediction_stub().Predict(request, 30.0)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    after = wait_until(
        server,
        lambda s: total(s, requests, **unknown) - total(before, requests, **unknown) >= 40,
        "made-up models not counted as __unknown__",
    )
    models = {dict(labels).get("model", "") for _, labels in after}
    assert not [m for m in models if m.startswith("made-up")], models
    assert models >= {MODEL, "__unknown__"}
