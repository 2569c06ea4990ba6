"""Canary beyond TF Serving: a label's share of ``latest`` traffic, changed at runtime."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from tests.harness import Server, free_ports, start_server

CALLS = 200
ADMIN_PORT = free_ports(1)[0]


@pytest.fixture(scope="module")
def server(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Server:  # type: ignore[misc]
    config = tmp_path_factory.mktemp("canary") / "models.config"
    base = testdata / "saved_model_half_plus_two_2_versions"
    entry = (
        f"name: 'hp2' base_path: '{base}' model_platform: 'tensorflow' "
        "model_version_policy { all {} } version_labels { key: 'canary' value: 123 }"
    )
    config.write_text(f"model_config_list {{ config {{ {entry} }} }}")
    s = start_server(f"model_config_file={config}", f"admin_port={ADMIN_PORT}", wait_for=("hp2",))
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
