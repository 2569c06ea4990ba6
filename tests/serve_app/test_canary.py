"""Beyond TF Serving: a canary (a label's share of ``latest`` traffic, changed at runtime), and
shadow traffic (our model config's ``shadow`` block: half_plus_three, shadowing half_plus_two
under steady load, differs on every mirrored request while every client gets half_plus_two's
answer, the figures on the metrics page)."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import predict_pb2

from tests.harness import Server, free_ports, start_server

CALLS = 200
METRICS = "/monitoring/prometheus/metrics"
ADMIN_PORT = free_ports(1)[0]


@pytest.fixture(scope="module")
def server(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Server:  # type: ignore[misc]
    config = tmp_path_factory.mktemp("canary") / "models.config"
    base = testdata / "saved_model_half_plus_two_2_versions"
    entry = (
        f"name: 'hp2' base_path: '{base}' model_platform: 'tensorflow' "
        "model_version_policy { all {} } version_labels { key: 'canary' value: 123 }"
    )
    shadowed = config.parent / "shadowed"  # 1: half_plus_two, 2: half_plus_three (shadowing)
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu/00000123", shadowed / "1")
    shutil.copytree(testdata / "saved_model_half_plus_three/00000123", shadowed / "2")
    shadow = (
        f"name: 'shadowed' base_path: '{shadowed}' model_version_policy {{ all {{}} }} "
        "shadow { sampling_rate: 1 atol: 0.001 }"
    )
    config.write_text(f"model_config_list {{ config {{ {entry} }} config {{ {shadow} }} }}")
    s = start_server(
        f"model_config_file={config}",
        f"admin_port={ADMIN_PORT}",
        f"prometheus_path={METRICS}",
        wait_for=("hp2", "shadowed"),
    )
    yield s
    s.stop()


def set_weight(
    server: Server, label: str, weight: object, model: str = "hp2", base: str = ""
) -> tuple[int, dict]:
    """``POST /admin/models/{model}/labels/{label}/weight`` on the admin port (or ``base``)."""
    request = urllib.request.Request(
        f"{base or f'http://127.0.0.1:{ADMIN_PORT}'}/admin/models/{model}/labels/{label}/weight",
        data=json.dumps({"weight": weight}).encode(),
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        return e.code, json.loads(body) if e.headers.get_content_type() == "application/json" else {
            "text": body.decode()
        }


def versions_seen(server: Server, **spec: object) -> Counter[int]:
    stub = server.prediction_stub()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "hp2"
    if "label" in spec:
        request.model_spec.version_label = str(spec["label"])
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0]], dtype=tf.float32))
    return Counter(stub.Predict(request, 10.0).model_spec.version.value for _ in range(CALLS))


def test_latest_goes_to_newest_without_a_weight(server: Server) -> None:
    assert versions_seen(server) == Counter({124: CALLS})


def test_weight_sends_a_share_to_the_canary_and_back(server: Server) -> None:
    assert set_weight(server, "canary", 0.5) == (
        200,
        {"model": "hp2", "label": "canary", "version": 123, "weight": 0.5},
    )
    seen = versions_seen(server)
    assert set(seen) == {123, 124}
    assert 40 <= seen[123] <= 160  # a share, not all or nothing (binomial, p=0.5, n=200)
    assert versions_seen(server, label="canary") == Counter({123: CALLS})  # labels are exact
    assert set_weight(server, "canary", 1.0)[0] == 200
    assert versions_seen(server) == Counter({123: CALLS})
    assert set_weight(server, "canary", 0)[0] == 200
    assert versions_seen(server) == Counter({124: CALLS})


def test_weight_errors(server: Server) -> None:
    assert set_weight(server, "nope", 0.5) == (
        400,
        {"error": "Unrecognized servable version label: nope"},
    )
    assert set_weight(server, "canary", 2)[0] == 400
    assert set_weight(server, "canary", "half")[0] == 400
    assert set_weight(server, "canary", 0.5, model="missing")[0] == 404
    assert set_weight(server, "canary", 0)[0] == 200


def test_the_admin_routes_are_only_on_the_admin_port(server: Server) -> None:
    """The REST port serves TF Serving's API only: whoever reaches it cannot move traffic."""
    assert set_weight(server, "canary", 0.5, base=server.http_base) == (404, {"text": "Not Found"})
    status, _ = set_weight(server, "canary", 0.5, base=f"http://127.0.0.1:{ADMIN_PORT}/v1")
    assert status == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/v1/models/hp2", timeout=30)
    assert e.value.code == 404  # TF Serving's API is not on the admin port


def test_a_shadow_differing_everywhere_is_caught_and_never_answers(server: Server) -> None:
    """Steady load from four clients (bounded in count and time): every answer is
    half_plus_two's (version 1), none failed; half_plus_three (version 2) got the mirror, and
    the metrics page shows its diff rate (1: every mirrored request differs by 1.0)."""
    stub = server.prediction_stub()

    def client(n: int) -> list[tuple[int, float]]:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "shadowed"
        seen = []
        deadline = time.monotonic() + 30.0
        for i in range(50):
            if time.monotonic() > deadline:
                break
            x = float(n * 100 + i)
            request.inputs["x"].CopyFrom(tf.make_tensor_proto([[x]], dtype=tf.float32))
            response = stub.Predict(request, 30.0)
            y = tf.make_ndarray(response.outputs["y"])[0][0]
            seen.append((response.model_spec.version.value, float(y - (0.5 * x + 2))))
        return seen

    with ThreadPoolExecutor(4) as pool:
        answers = [a for answered in pool.map(client, range(4)) for a in answered]
    assert len(answers) >= 40
    assert {version for version, _ in answers} == {1}
    assert max(abs(off) for _, off in answers) < 1e-3  # half_plus_two's answer, every one
    figures: dict[str, float] = {}
    deadline = time.monotonic() + 60.0  # Ray reports a replica's metrics every 10 s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(server.http_base + METRICS, timeout=30) as r:
            text = r.read().decode()
        figures = {
            s.name + "/" + s.labels.get("outcome", ""): s.value
            for family in text_string_to_metric_families(text)
            if family.name.startswith("ray_tfserving_shadow")
            for s in family.samples
            if s.labels.get("model") == "shadowed" and s.labels.get("version") == "2"
        }
        if figures.get("ray_tfserving_shadow_requests_total/differed", 0) >= 20:
            break
        time.sleep(2.0)
    assert figures.get("ray_tfserving_shadow_requests_total/differed", 0) >= 20, figures
    assert "ray_tfserving_shadow_requests_total/same" not in figures
    assert figures["ray_tfserving_shadow_diff_rate/"] == 1.0
    assert figures["ray_tfserving_shadow_max_abs_diff/"] == pytest.approx(1.0)
    assert figures["ray_tfserving_shadow_latency_ratio/"] > 0
