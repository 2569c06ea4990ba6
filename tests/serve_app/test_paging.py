"""200 models under a memory budget (``--model_memory_budget_mb``, ``runtime.paging``) against
one live server with two serving replicas: copies of TF Serving's test models (their version
directories linked) and exports made here whose variables are tens of MB, one of them larger
than the budget. A Zipf-distributed load over the models gets every answer right (0 failed
requests) while each replica pages versions in and out within its budget (the metrics page's
bytes per replica, its peak included), evictions happen, the pinned model is never evicted,
calls for versions a replica does not hold go one hop to one that does, the hot model (then
asked for alone) is held by both replicas,
the model beyond the budget is RESOURCE_EXHAUSTED naming the budget, and GetModelStatus says
AVAILABLE for every version, resident or not.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import (
    get_model_status_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.harness import TESTDATA, Server, start_server

BUDGET_MB = 48
MODELS = 200
REQUESTS = 300
PATH = "/monitoring/prometheus/metrics"
PREFIX = "ray_tfserving_"
SMALL = {  # TF Serving's test model -> what it adds to 0.5 x
    "saved_model_half_plus_two_cpu": 2.0,
    "saved_model_half_plus_three": 3.0,
}
BIG = {"big_a": 6_000_000, "big_b": 5_000_000}
"""Exports made here: float32 variables of this many elements (24 and 20 MB)."""
TOO_BIG = ("too_big", 12_000_000)
"""48 MB of variables (58 MB counted): more than the budget."""
PINNED = "pinned"
HOT = "hot"
HOT_BURST = 64
"""Calls to the hot model alone after the Zipf load, four on each connection."""


class Big(tf.Module):
    """y = 0.5 x + 2, beside a large variable (its first element is 0.5)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.w = tf.Variable(tf.fill([size], 0.5))

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": x * self.w[0] + 2.0}


def export_big(base: Path, size: int) -> None:
    module = Big(size)
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.serve})


def zipf_order(names: list[str]) -> list[str]:
    """Requests over ``names`` by a Zipf law (rank 1, the first name, the most asked)."""
    rng = np.random.default_rng(27)
    ranks = rng.zipf(1.3, size=REQUESTS * 4)
    return [names[r - 1] for r in ranks if r <= len(names)][:REQUESTS]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """The model config file, and each model -> what it adds to 0.5 x."""
    root = tmp_path_factory.mktemp("paging")
    adds: dict[str, float] = {}
    small = list(SMALL)
    names = [HOT, PINNED] + [f"m{i:03d}" for i in range(MODELS - 2 - len(BIG) - 1)]
    for i, name in enumerate(names):
        data = small[i % len(small)]
        (root / name).mkdir()
        (root / name / "1").symlink_to(TESTDATA / data / "00000123")
        adds[name] = SMALL[data]
    for name, size in [*BIG.items(), TOO_BIG]:
        export_big(root / name, size)
        adds[name] = 2.0
    entries = "".join(
        f'  config {{ name: "{m}" base_path: "{root / m}" model_platform: "tensorflow"'
        f"{' pinned: true' if m == PINNED else ''} }}\n"
        for m in adds
    )
    config = root / "models.config"
    config.write_text(f"model_config_list {{\n{entries}}}\n")
    assert len(adds) == MODELS
    return config, adds


@pytest.fixture(scope="module")
def server(models: tuple[Path, dict[str, float]]) -> Iterator[Server]:
    config, _ = models
    s = start_server(
        f"model_config_file={config}",
        f"model_memory_budget_mb={BUDGET_MB}",
        f"prometheus_path={PATH}",
        wait_for=(HOT, PINNED, TOO_BIG[0]),
        env={"RAY_metrics_report_interval_ms": "1000"},
    )
    yield s
    s.stop()


def request(name: str, x: float) -> predict_pb2.PredictRequest:
    r = predict_pb2.PredictRequest()
    r.model_spec.name = name
    r.inputs["x"].CopyFrom(tf.make_tensor_proto([[x]], dtype=tf.float32))
    return r


def scrape(server: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    import urllib.request

    with urllib.request.urlopen(server.http_base + PATH, timeout=30) as r:
        text = r.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith(PREFIX)
    }


def series(samples: dict, name: str, **labels: str) -> dict[frozenset, float]:  # type: ignore[type-arg]
    want = set(labels.items())
    return {ls: v for (n, ls), v in samples.items() if n == PREFIX + name and want <= ls}


def test_a_zipf_load_over_200_models_pages_them_within_the_budget(
    server: Server, models: tuple[Path, dict[str, float]]
) -> None:
    _, adds = models
    names = [HOT, *BIG, *(n for n in adds if n not in BIG and n not in (HOT, TOO_BIG[0]))]
    order = zipf_order(names)
    own = [("grpc.use_local_subchannel_pool", 1)]  # a connection each: both replicas are reached
    channels = [grpc.insecure_channel(server.grpc_target, options=own) for _ in range(16)]
    stubs = [prediction_service_pb2_grpc.PredictionServiceStub(c) for c in channels]
    stub = server.prediction_stub()

    def one(i_name: tuple[int, str]) -> str:
        i, name = i_name
        x = float(i % 7)
        try:
            response = stubs[i % len(stubs)].Predict(request(name, x), 60.0)
        except grpc.RpcError as e:
            return f"{name}: {e.code()} {e.details()}"
        y = tf.make_ndarray(response.outputs["y"]).ravel()[0]
        return "" if y == 0.5 * x + adds[name] else f"{name}: {y} for {x}"

    with ThreadPoolExecutor(8) as pool:
        failed = [f for f in pool.map(one, enumerate(order)) if f]
        # Then the hot model alone, on every connection: hot on both replicas, it is held by
        # both (under the Zipf load the two big exports, which cannot both fit, evict it often).
        failed += [f for f in pool.map(one, enumerate([HOT] * HOT_BURST)) if f]
    for channel in channels:
        channel.close()
    assert not failed, failed[:5]
    assert len(set(order)) > 20  # the load reached many models, not only the hot ones

    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(request(TOO_BIG[0], 1.0), 30.0)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"model memory budget of {BUDGET_MB} MB" in (e.value.details() or "")

    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    for name in adds:  # resident or not, every version can be served
        status = get_model_status_pb2.GetModelStatusRequest()
        status.model_spec.name = name
        (version,) = server.model_stub().GetModelStatus(status, 10.0).model_version_status
        assert version.state == available, name

    deadline = time.monotonic() + 30
    while True:  # the replicas' figures reach the page within Ray's report interval (1 s here)
        samples = scrape(server)
        peaks = series(samples, "replica_model_bytes_peak")
        evictions = sum(series(samples, "model_evictions_total").values())
        hot = sum(series(samples, "model_resident", model=HOT).values())
        if len(peaks) == 2 and evictions and series(samples, "model_page_ins_total") and hot == 2:
            break
        assert time.monotonic() < deadline, (peaks, evictions, hot, sorted({n for n, _ in samples}))
        time.sleep(1.0)
    held = series(samples, "replica_model_bytes")
    assert len(held) == 2 and all(0 < v <= BUDGET_MB << 20 for v in held.values()), held
    assert all(0 < v <= BUDGET_MB << 20 for v in peaks.values()), peaks
    assert not sum(series(samples, "model_evictions_total", model=PINNED).values())
    assert sum(series(samples, "model_hops_total").values())  # calls went one hop to a holder
    assert sum(series(samples, "model_resident", model=HOT).values()) == 2  # hot: held by both
    assert sum(series(samples, "model_resident", model=PINNED).values()) == 2  # both replicas
    assert not sum(series(samples, "model_resident", model=TOO_BIG[0]).values())
    cold = series(samples, "model_cold_start_seconds_count")
    assert sum(cold.values()) == sum(series(samples, "model_page_ins_total").values())
