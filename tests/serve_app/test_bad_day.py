"""A bad day costs nothing, live: storage that blinks, a config file half-written, a stray
directory, versions that hang or run out of memory while loading, each under steady Predict
load (``test_serving_path.Load``: 8 clients, a channel each) that must see 0 failed calls.

One server, its model config file polled every second, serving two models: one on a local base
path, one on a real S3 endpoint (moto's server) behind a proxy that fails on demand
(``tests.faultproxy``). Every wait is bounded; nothing asserts how fast anything is."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    get_model_status_pb2,
    prediction_log_pb2,
)

from compat.errors import StatusCode
from tests.faultproxy import FaultProxy
from tests.harness import TESTDATA, Server, free_ports, start_server
from tests.serve_app.storage.test_store import CREDENTIALS, PREFIX, client, upload
from tests.serve_app.test_serving_path import Load

State = get_model_status_pb2.ModelVersionStatus
MODEL = "half_plus_two"
STORED = "stored"
"""The model on S3 (a copy of half_plus_two)."""
SOURCE = TESTDATA / "saved_model_half_plus_two_cpu" / "00000123"
CONFIG = """model_config_list {{
{models}
}}"""
ENTRY = '  config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow" }}'
PROBE_TIMEOUT_S = 15
METRICS = "/monitoring/prometheus/metrics"
BAD_DAY_BUCKET = "bad-day"
"""Moto's servers in one process share their buckets: this module keeps to its own."""


def status(server: Server, model: str = MODEL) -> dict[int, tuple[int, int, str]]:
    """version -> (state, error code, error message)."""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    response = server.model_stub().GetModelStatus(request, 10.0)
    return {
        s.version: (s.state, s.status.error_code, s.status.error_message)
        for s in response.model_version_status
    }


def wait_state(
    server: Server, version: int, state: int, model: str = MODEL, timeout: float = 180.0
) -> tuple[int, int, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            now = status(server, model).get(version)
        except grpc.RpcError:
            now = None
        if now is not None and now[0] == state:
            return now
        time.sleep(0.1)
    raise TimeoutError(f"{model} {version} never {State.State.Name(state)}: {status(server)}")


def serving(server: Server) -> bool:
    stub = health_pb2_grpc.HealthStub(server.channel)
    answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def hold(server: Server, seconds: float, version: int, model: str = MODEL) -> None:
    """For ``seconds``: ``version`` stays AVAILABLE and the server says it is SERVING."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert status(server, model)[version][0] == State.AVAILABLE
        assert serving(server)
        time.sleep(0.25)


def publish(base: Path, version: int | str, source: Path = SOURCE) -> None:
    """A version directory appears whole (copied aside, then renamed in)."""
    staging = base.parent / f".staging-{base.name}-{version}"
    shutil.copytree(source, staging)
    staging.rename(base / str(version))


# --- versions that cannot be served: made here, as a user's export would be -----------------


class _Looping(tf.Module):
    """y = x / 2 + 2, after counting up to x[0] (a warmup record with a huge x never ends)."""

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32)])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        n = tf.cast(x[0, 0], tf.int64)
        done = tf.while_loop(lambda i: i < n, lambda i: i + 1, [tf.constant(0, tf.int64)])
        return {"y": x / 2 + 2 + tf.cast(done[0] * 0, tf.float32)}


class _Hungry(tf.Module):
    """y = x / 2 + 2, after filling x[0] floats (a warmup record asks for gigabytes)."""

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32)])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        filled = tf.fill(tf.cast(x[0:1, 0], tf.int64), 1.0)
        return {"y": x / 2 + 2 + 0 * tf.reduce_sum(filled)}


def export_with_warmup(module: tf.Module, path: Path, x: float) -> Path:
    """A SavedModel whose warmup file holds one Predict of ``[[x]]``."""
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    log = prediction_log_pb2.PredictionLog()
    request = log.predict_log.request
    request.model_spec.name = MODEL
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[x]], np.float32)))
    (path / "assets.extra").mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path / "assets.extra" / "tf_serving_warmup_requests")) as w:
        w.write(log.SerializeToString())
    return path


# --- one server: a local base path and a store, in a polled model config file --------------


@dataclass
class BadDay:
    server: Server
    base: Path
    """The local model's base path."""
    config: Path
    """The model config file, polled every second."""
    admin_port: int
    proxy: FaultProxy
    """Between the server and the S3 endpoint: fails on demand."""

    def entries(self, *extra: str) -> str:
        """The config file's text: both models, and ``extra`` entries."""
        store = f"s3://{BAD_DAY_BUCKET}/{PREFIX}"
        models = [ENTRY.format(name=MODEL, path=self.base), ENTRY.format(name=STORED, path=store)]
        return CONFIG.format(models="\n".join([*models, *extra]))


@pytest.fixture(scope="module")
def bad_day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BadDay]:
    from moto.server import ThreadedMotoServer

    (port, admin) = free_ports(2)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{port}"
    client(endpoint).create_bucket(Bucket=BAD_DAY_BUCKET)
    upload(endpoint, "1", bucket=BAD_DAY_BUCKET)
    proxy = FaultProxy(endpoint)
    root = tmp_path_factory.mktemp("bad-day")
    base = root / MODEL
    base.mkdir()
    publish(base, 123)
    day = BadDay(None, base, root / "models.config", admin, proxy)  # type: ignore[arg-type]
    day.config.write_text(day.entries())
    env = {
        **CREDENTIALS,
        "AWS_ENDPOINT_URL_S3": proxy.url,
        "AWS_MAX_ATTEMPTS": "2",
        "RAY_TFSERVING_CACHE": str(root / "cache"),
    }
    try:
        day.server = start_server(
            f"model_config_file={day.config}",
            f"admin_port={admin}",
            f"prometheus_path={METRICS}",
            "model_config_file_poll_wait_seconds=1",
            "file_system_poll_wait_seconds=0.5",
            f"load_probe_timeout_s={PROBE_TIMEOUT_S}",
            "load_probe_memory_mb=256",
            "grpc_health_service=true",
            wait_for=(MODEL, STORED),
            env=env,
        )
        yield day
        day.server.stop()
    finally:
        proxy.stop()
        moto.stop()


def test_a_base_path_that_vanishes_for_seconds_unloads_nothing(bad_day: BadDay) -> None:
    """An NFS blip: the base path is gone for 4 s. A failed poll changes nothing (TF Serving's
    FileSystemStoragePathSource): the version keeps serving, readiness answers from state, and
    the cause is logged once, not at every poll, and counted at every one. Then the served
    version's graph file vanishes for 3 s while its directory stays: it keeps serving."""
    server, base = bad_day.server, bad_day.base
    version = max(status(server))
    with Load(server) as load:
        away = base.with_name(base.name + ".away")
        base.rename(away)
        try:
            hold(server, 4.0, version)
        finally:
            away.rename(base)
        hold(server, 1.0, version)
        # The served version's files vanish while its directory stays: it serves from memory.
        graph = base / str(version) / "saved_model.pb"
        graph.rename(graph.with_name("moved-away"))
        try:
            hold(server, 3.0, version)
        finally:
            graph.with_name("moved-away").rename(graph)
    assert load.calls and all(c == grpc.StatusCode.OK for _, _, c in load.calls)
    assert load.wrong == []
    log = server.log()
    assert log.count(f"failed: Could not find base path {base}") == 1
    assert log.count(f"works again (was: Could not find base path {base})") == 1
    assert lifecycle_errors(server, 2, step="scan", model=MODEL) >= 2  # one per failed poll


def lifecycle_errors(server: Server, at_least: int, **labels: str) -> float:
    """``ray_tfserving_lifecycle_errors_total`` with ``labels``, once Ray's agent shows
    ``at_least`` (it reports every 10 s: polled, bounded)."""
    from tests.serve_app.test_metrics import WAIT_S, scrape, total

    deadline = time.monotonic() + WAIT_S
    while True:
        count = total(scrape(server), "ray_tfserving_lifecycle_errors_total", **labels)
        if count >= at_least or time.monotonic() > deadline:
            return count
        time.sleep(1.0)


def test_a_stray_directory_stops_no_rollout(bad_day: BadDay) -> None:
    """``²`` passes ``str.isdigit`` and breaks ``int()``; a name past int64 is no version
    either. Both are ignored as TF Serving ignores them, and a new version still rolls out."""
    server, base = bad_day.server, bad_day.base
    (base / "²").mkdir()
    (base / "99999999999999999999").mkdir()
    newest = max(status(server)) + 1
    with Load(server) as load:
        publish(base, newest)
        wait_state(server, newest, State.AVAILABLE)
        wait_state(server, newest - 1, State.END)
    assert load.calls and all(c == grpc.StatusCode.OK for _, _, c in load.calls)
    assert load.wrong == []
    assert set(status(server)) <= {123, 124, 125}


def test_a_bad_config_file_keeps_the_last_good_one(bad_day: BadDay) -> None:
    """A non-UTF-8 byte, then an unparsable file: the served models stay, and the file is read
    again at the next poll: fixed to add a model, that model is served. A file emptied for a
    moment (a truncate-then-write) unloads nothing."""
    server, config = bad_day.server, bad_day.config
    good = config.read_text()
    version = max(status(server))
    with Load(server) as load:
        config.write_bytes(good.encode() + b"\n\xff\xfe")
        hold(server, 2.5, version)
        config.write_text("model_config_list { config { name: ")
        hold(server, 2.5, version)
        three = TESTDATA / "saved_model_half_plus_three"
        both = bad_day.entries(ENTRY.format(name="half_plus_three", path=three))
        config.write_text(both)
        wait_state(server, 123, State.AVAILABLE, model="half_plus_three")
        config.write_text("")
        time.sleep(0.3)
        config.write_text(both)
        hold(server, 3.0, version)
        hold(server, 0.5, 123, model="half_plus_three")
        config.write_text(good)
    assert load.calls and all(c == grpc.StatusCode.OK for _, _, c in load.calls)
    assert load.wrong == []
    assert server.log().count(f"config_file failed: {config}") == 2  # once per cause


def label_weight(admin_port: int) -> tuple[int, str]:
    """The admin port's label-weight call (it takes the version manager's lock): an unknown
    label is refused with TF Serving's message."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{admin_port}/admin/models/{MODEL}/labels/stable/weight",
        data=json.dumps({"weight": 0.5}).encode(),
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def probers(
    server: Server, other_than: frozenset[int] | set[int] = frozenset(), timeout: float = 60.0
) -> set[int]:
    """The pids of the server's probe processes once there is exactly one (the spare, waiting)
    and it is none of ``other_than`` (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = {pid for pid, _, args in server.processes() if args.startswith("ray::Prober")}
        if (len(pids) == 1 and not pids & other_than) or time.monotonic() > deadline:
            return pids
        time.sleep(0.5)


def test_a_version_that_hangs_or_runs_out_of_memory_never_reaches_the_replicas(
    bad_day: BadDay, tmp_path: Path
) -> None:
    """A version whose warmup never ends is stopped after ``load_probe_timeout_s`` in a
    process of its own (DEADLINE_EXCEEDED); one whose warmup wants 2 GB, with 256 MB to spare,
    fails there with RESOURCE_EXHAUSTED. Meanwhile the manager answers status and a reload, and
    the served version answers every call. Each probe has a process of its own (the spare an
    earlier probe left, if any), ended with its load; after them one new spare waits."""
    server, base = bad_day.server, bad_day.base
    spare = {pid for pid, _, args in server.processes() if args.startswith("ray::Prober")}
    assert len(spare) <= 1
    serving_now = max(v for v, s in status(server).items() if s[0] == State.AVAILABLE)
    looping = export_with_warmup(_Looping(), tmp_path / "looping", 1e15)
    hungry = export_with_warmup(_Hungry(), tmp_path / "hungry", 5e8)
    with Load(server) as load:
        publish(base, 200, looping)
        wait_state(server, 200, State.LOADING)
        code, body = label_weight(bad_day.admin_port)  # answered while it probes
        assert (code, "Unrecognized servable version label: stable" in body) == (400, True)
        assert status(server)[200][0] == State.LOADING
        _, code, message = wait_state(server, 200, State.END, timeout=PROBE_TIMEOUT_S + 120)
        assert code == StatusCode.DEADLINE_EXCEEDED.value[0]
        assert "load_probe_timeout_seconds" in message
        hold(server, 1.0, serving_now)
        publish(base, 201, hungry)
        _, code, message = wait_state(server, 201, State.END)
        assert code == StatusCode.RESOURCE_EXHAUSTED.value[0], message
        assert "256 MB" in message
        hold(server, 1.0, serving_now)
    assert len(after := probers(server, other_than=spare)) == 1 and not after & spare
    assert load.calls and all(c == grpc.StatusCode.OK for _, _, c in load.calls)
    assert load.wrong == []
    assert "ServeReplica" not in "".join(
        line for line in server.log().splitlines() if "died" in line.lower()
    )


# --- a store that fails on demand ------------------------------------------------------------


@pytest.mark.parametrize("fault", ["403", "503", "reset"])
def test_a_store_that_fails_for_seconds_unloads_nothing(bad_day: BadDay, fault: str) -> None:
    """Expired credentials (403), an overloaded store (503), an unreachable one (connections
    reset), each for 4 s: every listing fails, the served version keeps serving."""
    server, proxy = bad_day.server, bad_day.proxy
    version = max(v for v, s in status(server, STORED).items() if s[0] == State.AVAILABLE)
    with Load(server, model=STORED) as load:
        proxy.mode = fault
        try:
            hold(server, 4.0, version, STORED)
        finally:
            proxy.mode = "pass"
        hold(server, 1.0, version, STORED)
    assert proxy.requests[fault] > 0  # the fault was met
    assert load.calls and all(c == grpc.StatusCode.OK for _, _, c in load.calls)
    assert load.wrong == []
