"""What operators need, on a live ``ray-tfserving`` started as they would start it: TLS and
mutual TLS from ``--ssl_config_file`` on both ports, gRPC reflection, request logging from a
model config's ``logging_config`` (sampled, off the request path, an unwritable directory failing
nothing), and warmup built from the logged traffic and replayed by a new version's load.

Certificates come from a CA made for the test (``tests.pki``); a second CA stands for a
stranger.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc

from tests.harness import REPO, TESTDATA, free_ports
from tests.pki import Pem, Pki, make_pki
from tests.serve_app.launch.test_cli import Cli, run_cli

HALF_PLUS_TWO = TESTDATA / "saved_model_half_plus_two_cpu"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def ssl_config(path: Path, pki: Pki, client_verify: bool) -> Path:
    """TF Serving's SSLConfig text file."""
    text = (
        f"server_key: {json.dumps(pki.server.key)}\n"
        f"server_cert: {json.dumps(pki.server.cert)}\n"
        f"custom_ca: {json.dumps(pki.ca)}\n"
        f"client_verify: {'true' if client_verify else 'false'}\n"
    )
    path.write_text(text)
    return path


# --- clients ------------------------------------------------------------------------------


def grpc_channel(port: int, ca: str | None, client: Pem | None = None) -> grpc.Channel:
    """A TLS channel trusting ``ca`` (presenting ``client``), or plaintext when ``ca`` is None."""
    target = f"127.0.0.1:{port}"
    if ca is None:
        return grpc.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(
        ca.encode(),
        client.key.encode() if client else None,
        client.cert.encode() if client else None,
    )
    return grpc.secure_channel(target, credentials)


def predict(channel: grpc.Channel, model: str = "half_plus_two", x: float = 2.0) -> float:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([x], np.float32)))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    return float(stub.Predict(request, 15.0).outputs["y"].float_val[0])


def https(
    port: int, pki: Pki, client: Pem | None, path: str, body: dict | None = None, ca: str = ""
) -> tuple[int, str]:
    context = ssl.create_default_context(cadata=ca or pki.ca)
    if client is not None:
        keyfile = Path(os.environ.get("TMPDIR", "/tmp"), f"rtfs-client-{os.getpid()}.pem")
        keyfile.write_text(client.key + client.cert)
        try:
            context.load_cert_chain(keyfile)
        finally:
            keyfile.unlink()
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=15, context=context)
    try:
        if body is None:
            connection.request("GET", path)
        else:
            connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        answer = connection.getresponse()
        return answer.status, answer.read().decode()
    finally:
        connection.close()


def refused_plaintext_http(port: int) -> bool:
    """A plaintext HTTP request to a TLS port gets no HTTP answer at all."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        connection.request("GET", "/v1/models/half_plus_two")
        connection.getresponse()
        return False
    except (http.client.HTTPException, OSError):
        return True
    finally:
        connection.close()


# --- the server ---------------------------------------------------------------------------


@dataclass
class Server:
    cli: Cli
    port: int
    rest_port: int
    logs: Path
    """Where the request logs go."""
    base: Path
    """A copy of half_plus_two's base path, served as ``warm`` (new versions go here)."""


MODELS = """model_config_list {{
  config {{ name: "half_plus_two" base_path: "{hpt}" model_platform: "tensorflow"
    logging_config {{
      log_collector_config {{ type: "tfrecord" filename_prefix: "{logs}/all/hpt" }}
      sampling_config {{ sampling_rate: 1.0 }} }} }}
  config {{ name: "sampled" base_path: "{hpt}" model_platform: "tensorflow"
    logging_config {{
      log_collector_config {{ type: "tfrecord" filename_prefix: "{logs}/sampled/hpt" }}
      sampling_config {{ sampling_rate: 0.1 }} }} }}
  config {{ name: "unwritable" base_path: "{hpt}" model_platform: "tensorflow"
    logging_config {{
      log_collector_config {{ type: "tfrecord" filename_prefix: "{readonly}/hpt" }}
      sampling_config {{ sampling_rate: 1.0 }} }} }}
  config {{ name: "warm" base_path: "{base}" model_platform: "tensorflow" }}
}}
"""


@pytest.fixture(scope="module")
def server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("operations")
    base = root / "warm"
    shutil.copytree(HALF_PLUS_TWO / "00000123", base / "123")
    # No process can write under a regular file, root included, and no privilege is needed.
    readonly = root / "readonly"
    readonly.write_text("a file: the unwritable model's request log cannot be created under it")
    config = root / "models.config"
    config.write_text(
        MODELS.format(hpt=HALF_PLUS_TWO, logs=root / "logs", readonly=readonly, base=base)
    )
    port, rest_port = free_ports(2)
    cli = run_cli(
        f"--port={port}",
        f"--rest_api_port={rest_port}",
        f"--model_config_file={config}",
        f"--ssl_config_file={ssl_config(root / 'ssl.config', pki, client_verify=True)}",
        "--file_system_poll_wait_seconds=1",
        "--model_config_file_poll_wait_seconds=1",
        "--serving_replicas=1",
        f"--monitoring_config_file={TESTDATA / 'monitoring_config.txt'}",
    )
    try:
        cli.wait_ready()
        yield Server(cli, port, rest_port, root / "logs", base)
    finally:
        cli.stop()


# --- TLS ----------------------------------------------------------------------------------


def test_mutual_tls_serves_a_client_of_the_ca_on_both_ports(server: Server, pki: Pki) -> None:
    with grpc_channel(server.port, pki.ca, pki.client) as channel:
        assert predict(channel, "warm") == 3.0
    status, text = https(
        server.rest_port, pki, pki.client, "/v1/models/warm:predict", {"instances": [2.0]}
    )
    assert (status, json.loads(text)) == (200, {"predictions": [3.0]})


@pytest.mark.parametrize("who", ["plaintext", "no certificate", "a stranger's certificate"])
def test_mutual_tls_refuses_everyone_else_on_grpc(server: Server, pki: Pki, who: str) -> None:
    ca, client = {
        "plaintext": (None, None),
        "no certificate": (pki.ca, None),
        "a stranger's certificate": (pki.ca, pki.stranger),
    }[who]
    with grpc_channel(server.port, ca, client) as channel, pytest.raises(grpc.RpcError) as e:
        predict(channel, "warm")
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_everyone_else_on_rest(server: Server, pki: Pki) -> None:
    assert refused_plaintext_http(server.rest_port)
    for client in (None, pki.stranger):
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            https(server.rest_port, pki, client, "/v1/models/warm")


def test_a_client_that_does_not_trust_the_server_s_ca_refuses_it(server: Server, pki: Pki) -> None:
    with (
        grpc_channel(server.port, pki.stranger_ca, pki.client) as channel,
        pytest.raises(grpc.RpcError) as e,
    ):
        predict(channel, "warm")
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(ssl.SSLCertVerificationError):
        https(server.rest_port, pki, pki.client, "/v1/models/warm", ca=pki.stranger_ca)


def test_the_startup_line_says_tls(server: Server) -> None:
    assert (
        f"on gRPC 127.0.0.1:{server.port} (TLS) and REST 127.0.0.1:{server.rest_port} (TLS)"
        in server.cli.output
    )


# --- reflection ---------------------------------------------------------------------------


def test_reflection_lists_tf_serving_s_services(server: Server, pki: Pki) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc_channel(server.port, pki.ca, pki.client) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {
            "tensorflow.serving.PredictionService",
            "tensorflow.serving.ModelService",
            "grpc.health.v1.Health",
        } <= services
        # the descriptors themselves: a tool can build a Predict from them
        from google.protobuf.descriptor_pool import DescriptorPool

        pool = DescriptorPool(database)
        service = pool.FindServiceByName("tensorflow.serving.PredictionService")
        assert {m.name for m in service.methods} >= {"Predict", "Classify", "GetModelMetadata"}
        predict_method = service.FindMethodByName("Predict")
        assert predict_method.input_type.full_name == "tensorflow.serving.PredictRequest"
        # grpc.reflection.v1 (what grpcurl asks first) answers the same: its messages are
        # v1alpha's on the wire
        from grpc_reflection.v1alpha import reflection_pb2

        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        (answer,) = list(
            call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=15)
        )
        names = {s.name for s in answer.list_services_response.service}
        assert "tensorflow.serving.PredictionService" in names
        assert "grpc.reflection.v1.ServerReflection" in names


# --- request logging and warmup -----------------------------------------------------------


def read_records(directory: Path) -> list[prediction_log_pb2.PredictionLog]:
    return [
        prediction_log_pb2.PredictionLog.FromString(record)
        for path in sorted(directory.glob("*.tfrecord"))
        for record in tf.compat.v1.io.tf_record_iterator(str(path))
    ]


def log_traffic(server: Server, pki: Pki, xs: list[float]) -> None:
    """A [1]-shaped Predict over gRPC for each of ``xs``, then a [2]-shaped one over REST."""
    with grpc_channel(server.port, pki.ca, pki.client) as channel:
        for x in xs:
            assert predict(channel, "half_plus_two", x) == x / 2 + 2
    for x in xs:
        status, text = https(
            server.rest_port,
            pki,
            pki.client,
            "/v1/models/half_plus_two:predict",
            {"instances": [x, x]},
        )
        assert (status, json.loads(text)) == (200, {"predictions": [x / 2 + 2] * 2})


def records_of(server: Server, xs: list[float], count: int) -> list:
    """The logged records of ``half_plus_two`` whose input starts with one of ``xs`` (other
    tests log theirs beside them), once ``count`` are there or after 30 s."""
    deadline = time.monotonic() + 30.0
    while True:
        directory = server.logs / "all"
        records = [
            r
            for r in (read_records(directory) if directory.exists() else [])
            if tf.make_ndarray(r.predict_log.request.inputs["x"]).flat[0] in xs
        ]
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def test_every_request_is_logged_with_its_response(server: Server, pki: Pki) -> None:
    xs = [101.0, 102.0, 103.0, 104.0, 105.0]  # this test's own: no other sends these
    log_traffic(server, pki, xs)
    records = records_of(server, xs, 10)
    assert len(records) == 10
    seen: dict[tuple[float, tuple[int, ...]], int] = {}
    for record in records:
        assert record.WhichOneof("log_type") == "predict_log"
        assert record.log_metadata.model_spec.name == "half_plus_two"
        assert record.log_metadata.model_spec.version.value == 123
        assert record.log_metadata.sampling_config.sampling_rate == 1.0
        x = tf.make_ndarray(record.predict_log.request.inputs["x"])
        y = tf.make_ndarray(record.predict_log.response.outputs["y"])
        np.testing.assert_allclose(y, x / 2 + 2)
        assert record.predict_log.response.model_spec.version.value == 123
        key = (float(x.flat[0]), x.shape)
        seen[key] = seen.get(key, 0) + 1
    # each request once: [1] over gRPC, [2] over REST
    assert seen == {**{(x, (1,)): 1 for x in xs}, **{(x, (2,)): 1 for x in xs}}


def test_sampling_keeps_about_its_share(server: Server, pki: Pki) -> None:
    calls = 1000
    with grpc_channel(server.port, pki.ca, pki.client) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "sampled"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([2.0], np.float32)))
        futures = [stub.Predict.future(request, 30.0) for _ in range(calls)]
        assert all(f.result().outputs["y"].float_val[0] == 3.0 for f in futures)
    time.sleep(2.0)  # the writer thread is off the request path
    logged = len(read_records(server.logs / "sampled"))
    # Binomial(1000, 0.1): mean 100, sd 9.5; 60..140 is beyond 4 sd either way
    assert 60 <= logged <= 140, logged


def test_an_unwritable_log_directory_fails_no_request(server: Server, pki: Pki) -> None:
    with grpc_channel(server.port, pki.ca, pki.client) as channel:
        for _ in range(50):
            assert predict(channel, "unwritable") == 3.0
    deadline = time.monotonic() + 30
    while "Request log of unwritable" not in server.cli.output and time.monotonic() < deadline:
        time.sleep(0.2)
    warning = [line for line in server.cli.lines if "Request log of unwritable" in line]
    assert warning and "records are dropped" in warning[0], server.cli.output[-3000:]
    # ... and in the metrics, beside those written (Ray reports every 10 s)
    deadline = time.monotonic() + 60
    while True:
        counts = request_log_counts(server, pki)
        if counts.get(("unwritable", "dropped"), 0) >= 50 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert counts.get(("unwritable", "dropped"), 0) >= 50, counts
    assert ("unwritable", "written") not in counts
    assert counts.get(("half_plus_two", "written"), 0) >= 10, counts


def request_log_counts(server: Server, pki: Pki) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    status, text = https(server.rest_port, pki, pki.client, "/monitoring/prometheus/metrics")
    assert status == 200, text
    return {
        (s.labels["model"], s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "ray_tfserving_request_log_records"
        for s in family.samples
        if s.name.endswith("_total")
    }


def test_warmup_from_the_logs_is_replayed_by_the_next_version(server: Server, pki: Pki) -> None:
    xs = [201.0, 202.0, 203.0]  # logged by this test, whatever ran before it
    log_traffic(server, pki, xs)
    assert len(records_of(server, xs, 6)) == 6
    version = server.base / "124"
    staging = server.base.parent / "staging-124"
    shutil.copytree(server.base / "123", staging)
    out = staging / "assets.extra" / "tf_serving_warmup_requests"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "compat.warmup_from_logs",
            "--out",
            str(out),
            "--max_records",
            "5",
            *map(str, sorted((server.logs / "all").glob("*.tfrecord"))),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    # two shapes were logged ([1] over gRPC, [2] over REST): both are in the sample
    assert "wrote 5 warmup records (2 distinct" in done.stdout, done.stdout
    written = [
        prediction_log_pb2.PredictionLog.FromString(r)
        for r in tf.compat.v1.io.tf_record_iterator(str(out))
    ]
    shapes = {tuple(tf.make_ndarray(r.predict_log.request.inputs["x"]).shape) for r in written}
    assert shapes == {(1,), (2,)}
    staging.rename(version)  # the version appears whole
    with grpc_channel(server.port, pki.ca, pki.client) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "warm"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([2.0], np.float32)))
        deadline = time.monotonic() + 90
        while stub.Predict(request, 15.0).model_spec.version.value != 124:
            assert time.monotonic() < deadline, "version 124 never served"
            time.sleep(0.5)
    # the server tells the version's load, its warmup included
    deadline = time.monotonic() + 30
    told = "ray-tfserving: warm version 124 is AVAILABLE (loaded in "
    while not (lines := [line for line in server.cli.lines if line.startswith(told)]):
        assert time.monotonic() < deadline, server.cli.output[-3000:]
        time.sleep(0.2)
    assert lines[0].endswith("s, 5 warmup records replayed)"), lines


# --- where request logs may go ------------------------------------------------------------


def test_a_reload_may_not_put_request_logs_outside_the_allowed_directories(
    server: Server, pki: Pki
) -> None:
    """Allowed: the startup config's request-log directories (no --request_log_allowed_dirs
    here). A ReloadConfig whose ``logging_config`` writes elsewhere, by path, by ``..`` or
    through a symlink, is INVALID_ARGUMENT with the reason; the served models stay as they were
    and nothing is written there."""
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
    from tensorflow_serving.config import model_server_config_pb2

    root = server.logs.parent
    elsewhere = root / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    (server.logs / "all").mkdir(parents=True, exist_ok=True)
    link = server.logs / "all" / "out"
    if not link.is_symlink():
        link.symlink_to(elsewhere)
    allowed = f"{server.logs / 'all'}, {server.logs / 'sampled'}, {root / 'readonly'}"
    models = MODELS.format(
        hpt=HALF_PLUS_TWO, logs=server.logs, readonly=root / "readonly", base=server.base
    )
    for prefix in (
        f"{elsewhere}/hpt",
        f"{server.logs}/all/../../elsewhere/hpt",
        f"{link}/hpt",
    ):
        request = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(
            models.replace(f"{server.logs}/all/hpt", prefix),
            request.config,
        )
        assert isinstance(request.config, model_server_config_pb2.ModelServerConfig)
        with grpc_channel(server.port, pki.ca, pki.client) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            with pytest.raises(grpc.RpcError) as e:
                stub.HandleReloadConfigRequest(request, 60.0)
        assert (e.value.code(), e.value.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Model half_plus_two: request log filename_prefix {prefix!r} is in {elsewhere}, "
            f"outside the directories allowed at startup ({allowed}): those of the startup "
            "config's request logs and --request_log_allowed_dirs",
        )
    with grpc_channel(server.port, pki.ca, pki.client) as channel:
        assert predict(channel, "half_plus_two") == 3.0  # logged where it was
        assert predict(channel, "warm") == 3.0
    time.sleep(1.0)  # a record would be written off the request path
    assert not any(elsewhere.iterdir())


def test_a_re_read_config_file_may_not_put_request_logs_elsewhere_either(
    server: Server, pki: Pki
) -> None:
    """The config file, re-read every second here, is ignored with the reason logged while it
    logs outside the allowed directories; the served models stay as they were."""
    root = server.logs.parent
    config = root / "models.config"
    elsewhere = root / "elsewhere-polled"
    elsewhere.mkdir(exist_ok=True)
    original = config.read_text()
    prefix = f"{elsewhere}/hpt"
    why = f"request log filename_prefix {prefix!r} is in {elsewhere}, outside the directories"
    config.write_text(original.replace(f"{server.logs}/all/hpt", prefix))
    try:
        deadline = time.monotonic() + 30
        while not any(why in line for line in server.cli.lines):
            assert time.monotonic() < deadline, server.cli.output[-3000:]
            time.sleep(0.2)
        with grpc_channel(server.port, pki.ca, pki.client) as channel:
            assert predict(channel, "half_plus_two") == 3.0
    finally:
        config.write_text(original)
    time.sleep(1.0)  # a record would be written off the request path
    assert not any(elsewhere.iterdir())


# --- TLS without client certificates -----------------------------------------------------


def test_tls_without_client_verify_serves_any_client_and_refuses_plaintext(
    pki: Pki, tmp_path: Path
) -> None:
    port, rest_port = free_ports(2)
    cli = run_cli(
        f"--port={port}",
        f"--rest_api_port={rest_port}",
        "--model_name=half_plus_two",
        f"--model_base_path={HALF_PLUS_TWO}",
        f"--ssl_config_file={ssl_config(tmp_path / 'ssl.config', pki, client_verify=False)}",
        "--serving_replicas=1",
    )
    try:
        cli.wait_ready()
        with grpc_channel(port, pki.ca) as channel:
            assert predict(channel) == 3.0
        with grpc_channel(port, None) as channel, pytest.raises(grpc.RpcError) as e:
            predict(channel)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        status, text = https(
            rest_port, pki, None, "/v1/models/half_plus_two:predict", {"instances": [2.0]}
        )
        assert (status, json.loads(text)) == (200, {"predictions": [3.0]})
        assert refused_plaintext_http(rest_port)
    finally:
        assert cli.stop() == 0


def test_a_bad_ssl_config_fails_startup_clearly(pki: Pki, tmp_path: Path) -> None:
    from tests.serve_app.launch.test_cli import run_to_exit

    config = tmp_path / "ssl.config"
    config.write_text(
        f"server_key: {json.dumps(pki.client.key)}\nserver_cert: {json.dumps(pki.server.cert)}\n"
    )
    code, output = run_to_exit(
        "--model_name=half_plus_two",
        f"--model_base_path={HALF_PLUS_TWO}",
        f"--ssl_config_file={config}",
    )
    assert code == 1
    assert (
        "server_key and server_cert are no PEM key and certificate that belong together" in output
    )
