"""Beyond TF Serving: a canary (a label's share of ``latest`` traffic, changed at runtime),
shadow traffic (our model config's ``shadow`` block: half_plus_three, shadowing half_plus_two
under steady load, differs on every mirrored request while every client gets half_plus_two's
answer, the figures on the metrics page), and safe rollouts (our ``rollout`` block: four
versions rolled out at once under load, caught in the shadow, rolled back at the first canary
step, promoted with no one acting, and aborted then promoted by an operator on the admin
port)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import get_model_status_pb2, predict_pb2

from compat.replay import plot_rollout
from tests.harness import Server, free_ports, start_server

CALLS = 200
ROLLOUTS = {
    # half_plus_three: differs on its first mirrored request, rolled back in the shadow
    "caught": "shadow_requests: 10 atol: 0.001 canary_weights: 0.5 canary_requests: 5",
    # a sleep of half a second in its graph: answers as half_plus_two, rolled back at its first
    # canary step
    "slow": "shadow_requests: 0 canary_weights: 0.25 canary_weights: 0.5 canary_requests: 3 "
    "max_p99_ratio: 3",
    # half_plus_two again: promoted through every stage (a shadow ended by time; a loose latency
    # gate: few requests)
    "good": "shadow_requests: 0 shadow_seconds: 1 min_stage_requests: 5 atol: 0.001 "
    "canary_weights: 0.25 canary_weights: 0.5 canary_requests: 4 max_p99_ratio: 1000",
    # half_plus_two again, in a shadow that cannot end on its own: aborted, then its next
    # version promoted, by an operator on the admin port
    "held": "shadow_requests: 1000000 atol: 0.001",
}
"""Models with a rollout block (our model config's), each given its version 2 by
``test_rollouts_under_load``."""
BASES: dict[str, Path] = {}
"""Their base paths."""
METRICS = "/monitoring/prometheus/metrics"
ADMIN_PORT = free_ports(1)[0]
State = get_model_status_pb2.ModelVersionStatus.State


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
    staged = ""
    for name, block in ROLLOUTS.items():  # version 1: half_plus_two; the tests add version 2
        BASES[name] = config.parent / name
        shutil.copytree(testdata / "saved_model_half_plus_two_cpu/00000123", BASES[name] / "1")
        staged += f" config {{ name: '{name}' base_path: '{BASES[name]}' rollout {{ {block} }} }}"
    config.write_text(f"model_config_list {{ config {{ {entry} }} config {{ {shadow} }}{staged} }}")
    s = start_server(
        f"model_config_file={config}",
        f"admin_port={ADMIN_PORT}",
        f"prometheus_path={METRICS}",
        # no probe process per new version (test_probe's): the rollouts' five loads in a row
        # take a second each instead of several
        "load_probe_timeout_s=0",
        wait_for=("hp2", "shadowed", *ROLLOUTS),
    )
    yield s
    s.stop()


def admin(
    path: str, body: object = None, post: bool = False, base: str = "", timeout: float = 120
) -> tuple[int, dict]:
    """One call to ``/admin/models/{path}`` on the admin port (or ``base``): its status and JSON
    body (``{"text": ...}`` for an error that is not JSON). A ``body`` is POSTed as JSON."""
    request = urllib.request.Request(
        f"{base or f'http://127.0.0.1:{ADMIN_PORT}'}/admin/models/{path}",
        data=None if body is None else json.dumps(body).encode(),
        method="POST" if post or body is not None else "GET",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        text = e.read()
        return e.code, json.loads(text) if e.headers.get_content_type() == "application/json" else {
            "text": text.decode()
        }


def set_weight(
    server: Server, label: str, weight: object, model: str = "hp2", base: str = ""
) -> tuple[int, dict]:
    """``POST /admin/models/{model}/labels/{label}/weight``."""
    return admin(f"{model}/labels/{label}/weight", {"weight": weight}, base=base)


def versions_seen(server: Server, model: str = "hp2", **spec: object) -> Counter[int]:
    stub = server.prediction_stub()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
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
    for action in ("", "promote", "abort"):  # nor a rollout's routes on the REST port
        assert rollout("hp2", action, base=server.http_base) == (404, {"text": "Not Found"})


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


def export_slow(path: Path, seconds: float) -> None:
    """half_plus_two's signature and answers, with a sleep op (tf.data's) in its graph."""
    from tensorflow.python.data.experimental.ops.testing import sleep

    class Slow(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            slept = tf.data.Dataset.from_tensors(x).apply(sleep(int(seconds * 1e6)))
            return {"y": slept.get_single_element() * 0.5 + 2.0}

    module = Slow()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def publish(source: Path, base: Path, version: int = 2) -> None:
    """``source`` as ``version`` of ``base``, at once (copied aside, then renamed)."""
    shutil.copytree(source, base / f".{version}")
    os.rename(base / f".{version}", base / str(version))


def rollout(model: str, action: str = "", base: str = "") -> tuple[int, dict]:
    """``GET /admin/models/{model}/rollout``, or ``POST .../{action}``."""
    return admin(
        f"{model}/rollout" + (f"/{action}" if action else ""),
        post=bool(action),
        base=base,
        timeout=60,
    )


def version_status(server: Server, model: str) -> dict[int, tuple[str, str]]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    response = server.model_stub().GetModelStatus(request, 10.0)
    return {
        s.version: (State.Name(s.state), s.status.error_message)
        for s in response.model_version_status
    }


def operate(server: Server, testdata: Path) -> dict[str, object]:
    """An operator on the admin port, while ``held`` gets its version 2 under load: reads the
    rollout in its shadow, aborts it, publishes version 3 and promotes that. What each step
    answered, by name."""
    half_plus_two = testdata / "saved_model_half_plus_two_cpu/00000123"
    seen: dict[str, object] = {}

    def shadowing(candidate: int) -> dict:
        """The report once ``candidate`` is in its shadow with a few compared (bounded)."""
        report: dict = {}
        deadline = time.monotonic() + 90.0
        while time.monotonic() < deadline:
            code, report = rollout("held")
            running = code == 200 and report["candidate"] == candidate and not report["outcome"]
            if running and report["figures"]["compared"] >= 3:
                return report
            time.sleep(0.25)
        return report

    publish(half_plus_two, BASES["held"])
    seen["shadow 2"] = shadowing(2)
    seen["abort"] = rollout("held", "abort")
    seen["after abort"] = version_status(server, "held")
    publish(half_plus_two, BASES["held"], 3)
    seen["shadow 3"] = shadowing(3)
    seen["promote"] = rollout("held", "promote")
    return seen


def test_rollouts_under_load(server: Server, testdata: Path, tmp_path: Path) -> None:
    """Steady load on four models with a rollout block while each gets a version 2: the one
    answering differently (half_plus_three) is caught in the shadow and never answers a client;
    the slow one is rolled back at its first canary step; the good one is promoted through every
    stage with no one acting; the held one (a shadow that cannot end on its own) is aborted by
    an operator, and its version 3 promoted. Every client call succeeds with half_plus_two's
    answer."""
    export_slow(tmp_path / "slow", 0.5)
    stub = server.prediction_stub()
    stop = threading.Event()
    answers: dict[str, list[tuple[int, float]]] = {m: [] for m in ROLLOUTS}
    failures: list[str] = []

    def client(model: str) -> None:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        deadline = time.monotonic() + 90.0
        for i in range(5000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            x = float(i % 100)
            request.inputs["x"].CopyFrom(tf.make_tensor_proto([[x]], dtype=tf.float32))
            try:
                response = stub.Predict(request, 30.0)
            except grpc.RpcError as e:
                failures.append(f"{model}: {e.code()} {e.details()}")
                continue
            y = float(tf.make_ndarray(response.outputs["y"])[0][0])
            answers[model].append((response.model_spec.version.value, y - (0.5 * x + 2)))
            time.sleep(0.01)

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(m,)) for m in ROLLOUTS]
    for t in threads:
        t.start()
    operator = ThreadPoolExecutor(1)
    operated = operator.submit(operate, server, testdata)
    publish(testdata / "saved_model_half_plus_three/00000123", BASES["caught"])
    publish(tmp_path / "slow", BASES["slow"])
    publish(testdata / "saved_model_half_plus_two_cpu/00000123", BASES["good"])
    reports: dict[str, dict] = {}
    try:
        deadline = time.monotonic() + 120.0
        while len(reports) < 3 and time.monotonic() < deadline:
            for model in ("caught", "slow", "good"):
                code, report = rollout(model)
                if code == 200 and report["outcome"]:
                    reports[model] = report
            time.sleep(0.5)
        held = operated.result(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        operator.shutdown()
    print(f"rollouts took {time.monotonic() - started:.1f} s:", json.dumps(reports, indent=1))
    print("held:", json.dumps(held, indent=1, default=str))
    assert failures == []
    assert set(reports) == {"caught", "slow", "good"}, reports
    for model, seen in answers.items():
        assert len(seen) >= 10, model
        assert max(abs(off) for _, off in seen) < 1e-3, model  # half_plus_two's, every one

    caught, slow, good = (reports[m] for m in ("caught", "slow", "good"))
    assert (caught["outcome"], caught["stage"]) == ("rolled_back", "rolled_back")
    assert caught["reason"].startswith("shadow: "), caught
    assert [s["stage"] for s in caught["stages"]] == ["shadow"]
    assert {v for v, _ in answers["caught"]} == {1}  # half_plus_three never answered
    assert version_status(server, "caught")[2] == ("END", f"Rolled back: {caught['reason']}")

    # the slow version is caught at the first canary step, the first that routes it requests
    assert slow["outcome"] == "rolled_back"
    assert [(s["stage"], s["weight"]) for s in slow["stages"]] == [("canary", 0.25)]
    assert slow["reason"].startswith("canary at 0.25: p99 latency"), slow
    assert slow["stages"][0]["figures"]["candidate_requests"] >= 3
    assert version_status(server, "slow")[2] == ("END", f"Rolled back: {slow['reason']}")

    assert good["outcome"] == "promoted" and good["stage"] == "full"
    assert [(s["stage"], s["weight"], s["verdict"]) for s in good["stages"]] == [
        ("shadow", 0.0, "passed"),
        ("canary", 0.25, "passed"),
        ("canary", 0.5, "passed"),
    ]
    # its shadow ended by time (shadow_seconds: 1), on at least min_stage_requests compared
    assert good["stages"][0]["seconds"] >= 1.0
    assert good["stages"][0]["figures"]["compared"] >= 5
    assert good["stages"][0]["figures"]["differed"] == 0
    assert all(s["figures"]["candidate_requests"] >= 4 for s in good["stages"][1:])

    # held: the operator read its shadow, aborted it, then promoted its next version
    for version in (2, 3):
        shadow = held[f"shadow {version}"]
        assert (shadow["stage"], shadow["weight"], shadow["current"]) == ("shadow", 0.0, 1)
        assert shadow["figures"]["compared"] >= 3 and shadow["figures"]["differed"] == 0
    code, aborted = held["abort"]
    assert (code, aborted["candidate"], aborted["outcome"]) == (200, 2, "rolled_back")
    assert aborted["reason"] == "aborted by an operator"
    aborted_status = ("END", "Rolled back: aborted by an operator")
    assert held["after abort"] == {2: aborted_status, 1: ("AVAILABLE", "")}
    code, promoted = held["promote"]
    assert (code, promoted["candidate"], promoted["outcome"]) == (200, 3, "promoted")
    assert promoted["stages"][-1]["verdict"] == "promoted by an operator"
    assert {v for v, _ in answers["held"]} <= {1, 3}  # version 2 never answered a client
    assert version_status(server, "held") == {
        3: ("AVAILABLE", ""),
        2: aborted_status,
        1: ("END", ""),
    }

    plot_rollout([caught, slow, good], tmp_path / "rollout.png")  # the report's plot
    assert (tmp_path / "rollout.png").read_bytes()[:4] == b"\x89PNG"

    # After: the rolled back keep serving version 1, the promoted serve their new version only.
    assert versions_seen(server, model="caught") == Counter({1: CALLS})
    assert versions_seen(server, model="slow") == Counter({1: CALLS})
    assert versions_seen(server, model="good") == Counter({2: CALLS})
    assert versions_seen(server, model="held") == Counter({3: CALLS})
    assert version_status(server, "good") == {2: ("AVAILABLE", ""), 1: ("END", "")}
    assert rollout("good", "promote")[0] == 400  # nothing in progress any more
    assert rollout("held", "abort")[0] == 400
    assert rollout("missing")[0] == 404
