"""The ``ray-tfserving`` command, run as a subprocess the way TF Serving's test runs
``tensorflow_model_server``: its flags, its startup line once models are AVAILABLE, its failures.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.harness import REPO, TESTDATA, free_ports

CLI = str(Path(sys.executable).with_name("ray-tfserving"))
READY_LINE = "Running gRPC ModelServer at"
BOOT_TIMEOUT_S = 300.0


@dataclass
class Cli:
    """A running ``ray-tfserving`` with its merged stdout/stderr collected line by line."""

    process: subprocess.Popen[str]
    tmpdir: Path
    lines: list[str] = field(default_factory=list)
    ready_at: int | None = None
    """Index of the READY_LINE in ``lines`` once seen."""

    def __post_init__(self) -> None:
        self._seen = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        """Reads the output until every process holding the pipe (Ray's too) is gone."""
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if READY_LINE in line and self.ready_at is None:
                self.ready_at = len(self.lines) - 1
                self._seen.set()
        self._seen.set()  # EOF: the process is gone

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float = BOOT_TIMEOUT_S) -> str:
        """The READY_LINE, once printed; fails if the process exits first."""
        self._seen.wait(timeout)
        assert self.ready_at is not None, f"never became ready:\n{self.output[-6000:]}"
        return self.lines[self.ready_at]

    def wait_exit(self, timeout: float = BOOT_TIMEOUT_S) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> int | None:
        """Ctrl-C, as a user would; then whatever of its session is left is killed."""
        code = self.process.poll()
        if code is None:
            self.process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.process.wait(timeout=90)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        return code


def run_cli(*flags: str, env: dict[str, str] | None = None) -> Cli:
    """``ray-tfserving <flags>`` with its own RAY_TMPDIR, in its own session."""
    tmpdir = Path(tempfile.mkdtemp(prefix="rtfs-cli-"))
    env = dict(os.environ, RAY_TMPDIR=str(tmpdir), PYTHONUNBUFFERED="1", **(env or {}))
    process = subprocess.Popen(
        [CLI, *flags],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return Cli(process, tmpdir)


def run_to_exit(*flags: str, timeout: float = 120.0) -> tuple[int, str]:
    """Flags that must fail before any server starts: exit status and output."""
    cli = run_cli(*flags)
    try:
        code = cli.wait_exit(timeout)
        cli._seen.wait(10)  # let the reader drain the pipe
        return code, cli.output
    finally:
        cli.stop()


def predict_request(model: str) -> predict_pb2.PredictRequest:
    """TF Serving's VerifyPredictRequest: x = float_val [2.0], shape [1], output_filter y."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    request.output_filter.append("y")
    return request


def predict(port: int | str, model: str) -> predict_pb2.PredictResponse:
    """Predict on ``port``, or on a gRPC target (``unix:<path>``)."""
    target = port if isinstance(port, str) else f"127.0.0.1:{port}"
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return stub.Predict(predict_request(model), 30.0)


def model_status(port: int, model: str) -> get_model_status_pb2.GetModelStatusResponse:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, 30.0)


# --- failures before anything starts ------------------------------------------------------


def test_unknown_flag_prints_usage_and_fails() -> None:
    code, output = run_to_exit("--port=1", "--model_base_path=/x", "--no_such_flag=1")
    assert code != 0
    assert "unknown argument: --no_such_flag=1" in output
    assert "usage: ray-tfserving" in output


def test_missing_model_path_fails_clearly() -> None:
    code, output = run_to_exit("--model_name=m", "--model_base_path=/nonexistent/model")
    assert code != 0
    assert "Failed to start server. Error: INVALID_ARGUMENT" in output
    assert "'/nonexistent/model' does not exist" in output


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            (),
            "Failed to start server. Error: INVALID_ARGUMENT: Both server_options.model_base_path "
            "and server_options.model_config_file are empty!",
        ),
        (
            (
                f"--model_base_path={TESTDATA / 'saved_model_half_plus_two_cpu'}",
                f"--batching_parameters_file={TESTDATA / 'batching_config.txt'}",
            ),
            "Failed to start server. Error: INVALID_ARGUMENT: server_options."
            "batching_parameters_file is set without setting server_options.enable_batching to "
            "true.",
        ),
        (
            (f"--model_config_file={TESTDATA / 'bad_model_config.txt'}",),
            # TF Serving's own test looks for either line (older and newer versions of it).
            f"Invalid protobuf file: '{TESTDATA / 'bad_model_config.txt'}'. Error parsing "
            "text-format tensorflow.serving.ModelServerConfig: 1:1 :",
        ),
        (
            (f"--model_base_path={TESTDATA / 'saved_model_half_plus_two_cpu'}", "--num_replicas=3"),
            "scaling.num_replicas=3 (--num_replicas) sets the replicas of models in deployments "
            "of their own",
        ),
    ],
    ids=["no-model", "batching-file-without-batching", "bad-config-file", "num-replicas-colocated"],
)
def test_invalid_flags_fail_like_tf_serving(flags: tuple[str, ...], message: str) -> None:
    code, output = run_to_exit(*flags)
    assert code != 0
    assert message in output


# --- live servers -------------------------------------------------------------------------


SOCKET_NAME = "tf-serving.sock"
MAX_GRPC_MESSAGE = 1000
"""Set with --grpc_channel_arguments: gRPC's own limit, which then wins over ours."""


@pytest.fixture(scope="module")
def socket_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("uds")


@pytest.fixture(scope="module")
def single_model(socket_dir: Path) -> Iterator[tuple[Cli, int, int]]:
    port, rest_port = free_ports(2)
    cli = run_cli(
        f"--port={port}",
        f"--rest_api_port={rest_port}",
        f"--grpc_socket_path={socket_dir / SOCKET_NAME}",
        f"--grpc_channel_arguments=grpc.max_receive_message_length={MAX_GRPC_MESSAGE}",
        "--model_name=half_plus_two",
        f"--model_base_path={TESTDATA / 'saved_model_half_plus_two_cpu'}",
        f"--monitoring_config_file={TESTDATA / 'monitoring_config.txt'}",
        "--rest_api_timeout_in_ms=5000",
        "--file_system_poll_wait_seconds=1",
        "--rest_api_enable_cors_support",
        "--flush_filesystem_caches",  # a bare boolean, as TF's parser takes it
    )
    try:
        cli.wait_ready()
        yield cli, port, rest_port
    finally:
        cli.stop()


def test_ready_line_only_once_available(single_model: tuple[Cli, int, int]) -> None:
    cli, port, rest_port = single_model
    assert cli.lines[cli.ready_at or 0] == f"{READY_LINE} 127.0.0.1:{port} ..."
    # Checked right after the line: the model was AVAILABLE when it was printed.
    entry = model_status(port, "half_plus_two").model_version_status[0]
    assert (entry.version, entry.state, entry.status.error_code) == (
        123,
        get_model_status_pb2.ModelVersionStatus.AVAILABLE,
        0,
    )
    assert f"Exporting HTTP/REST API at:127.0.0.1:{rest_port} ..." in cli.output


def test_single_model_serves_grpc_and_rest(single_model: tuple[Cli, int, int]) -> None:
    _, port, rest_port = single_model
    result = predict(port, "half_plus_two")
    assert list(result.outputs["y"].float_val) == [3.0]
    assert result.model_spec.version.value == 123
    with urllib.request.urlopen(
        f"http://127.0.0.1:{rest_port}/v1/models/half_plus_two", timeout=30
    ) as response:
        assert json.loads(response.read()) == {
            "model_version_status": [
                {
                    "version": "123",
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
            ]
        }


def test_rest_answers_carry_tf_servings_cors_headers(single_model: tuple[Cli, int, int]) -> None:
    """--rest_api_enable_cors_support: a browser's preflight is answered, and the answer it
    then gets carries TF Serving's CORS headers."""
    _, _, rest_port = single_model
    url = f"http://127.0.0.1:{rest_port}/v1/models/half_plus_two:predict"
    cors = {
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Allow-Methods": "POST, GET",
        "Access-Control-Allow-Headers": "Content-Type",
    }
    preflight = urllib.request.Request(
        url,
        method="OPTIONS",
        headers={"Origin": "http://page.example", "Access-Control-Request-Method": "POST"},
    )
    with urllib.request.urlopen(preflight, timeout=30) as response:
        assert response.status == 200
        assert {k: response.headers[k] for k in cors} == cors
    post = urllib.request.Request(
        url, data=b'{"instances": [2.0]}', headers={"Origin": "http://page.example"}
    )
    with urllib.request.urlopen(post, timeout=30) as response:
        assert json.loads(response.read()) == {"predictions": [3.0]}
        assert {k: response.headers[k] for k in cors} == cors


def test_predict_over_the_unix_socket(single_model: tuple[Cli, int, int], socket_dir: Path) -> None:
    """TF Serving's testPredictUDS: --grpc_socket_path, then Predict over unix:<path>."""
    cli, _, _ = single_model
    path = socket_dir / SOCKET_NAME
    assert f"Running gRPC ModelServer at UNIX socket {path} ..." in cli.output
    result = predict(f"unix:{path}", "half_plus_two")
    assert list(result.outputs["y"].float_val) == [3.0]
    assert result.model_spec.version.value == 123


def test_grpc_channel_arguments_reach_the_grpc_server(single_model: tuple[Cli, int, int]) -> None:
    _, port, _ = single_model
    request = predict_request("half_plus_two")
    request.inputs["x"].float_val.extend([1.0] * 300)
    request.inputs["x"].tensor_shape.dim[0].size = 301
    assert request.ByteSize() > MAX_GRPC_MESSAGE
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.Predict(request, 10.0)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


TF_CPP_LINE = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.]+:\d+\] ")


def test_start_is_quiet_and_says_what_it_serves(
    single_model: tuple[Cli, int, int], socket_dir: Path
) -> None:
    """No TensorFlow C++ line (the cuInit error among them), no Ray or Serve INFO: one line per
    step, then the ports and the models."""
    cli, port, rest_port = single_model
    lines = cli.lines[: (cli.ready_at or 0) + 4]
    assert not [line for line in lines if TF_CPP_LINE.search(line)], cli.output
    assert not [line for line in lines if "absl::InitializeLog" in line or " INFO " in line]
    warned = [line for line in lines if line.startswith("ray-tfserving: no effect here: ")]
    assert warned == [
        "ray-tfserving: no effect here: --flush_filesystem_caches (a memory saving of TF "
        "Serving's loader)"
    ]
    steps = [line for line in lines if line.startswith("ray-tfserving: ") and line not in warned]
    assert steps[0] == "ray-tfserving: starting Ray (embedded, loopback only)", steps
    assert re.fullmatch(r"ray-tfserving: Ray is up \(\d+\.\ds\); deploying", steps[1]), steps
    assert re.fullmatch(
        r"ray-tfserving: half_plus_two version 123 is AVAILABLE "
        r"\(loaded in \d+\.\ds, \d+\.\ds after deploying\)",
        steps[-2],
    ), steps
    assert re.fullmatch(
        f"ray-tfserving: serving half_plus_two \\(version 123\\) on gRPC 127.0.0.1:{port} and "
        f"gRPC unix:{re.escape(str(socket_dir / SOCKET_NAME))} and "
        f"REST 127.0.0.1:{rest_port}; started in \\d+\\.\\ds",
        steps[-1],
    ), steps


def listening(sid: int) -> dict[str, list[str]]:
    """``pid command-line`` -> the addresses it listens on, for each process of session ``sid``
    (the CLI's: the embedded Ray's gcs, raylet and workers, the replicas)."""
    import psutil

    held: dict[str, list[str]] = {}
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):  # gone meanwhile
            if os.getsid(process.pid) == sid:
                held[f"{process.pid} {' '.join(process.cmdline())}"] = [
                    f"{c.laddr.ip}:{c.laddr.port}"
                    for c in process.net_connections(kind="tcp")
                    if c.status == psutil.CONN_LISTEN
                ]
    return held


def test_every_port_is_loopback(single_model: tuple[Cli, int, int]) -> None:
    """The embedded Ray (``ray_patches.keep_embedded_ray_on_loopback``), each replica's
    inter-deployment gRPC server (``ray_patches.bind_grpc_to_host``) and the client ports all
    listen on loopback only."""
    cli, port, rest_port = single_model
    held = listening(cli.process.pid)
    addresses = [a for of_one in held.values() for a in of_one]
    assert {a.rsplit(":", 1)[1] for a in addresses} >= {str(port), str(rest_port)}, held
    replicas = [of_one for title, of_one in held.items() if "ServeReplica" in title]
    assert len(replicas) >= 2, held  # the serving replica and the version manager
    assert all(len(of_one) >= 2 for of_one in replicas), held  # its worker's and Serve's
    assert len(addresses) > 5, held
    loopback = ("127.0.0.1:", "::ffff:127.0.0.1:", "::1:")
    outside = {t: [a for a in of_one if not a.startswith(loopback)] for t, of_one in held.items()}
    assert not {t: a for t, a in outside.items() if a}


def test_ctrl_c_stops_cleanly(single_model: tuple[Cli, int, int]) -> None:
    """Ctrl-C on a server that has served a while: exit 0, the ports closed, and nothing of
    the stop printed as a traceback (the version manager's poll loop ends quietly)."""
    cli, port, _ = single_model
    assert cli.stop() == 0
    cli.reader.join(30)
    assert "Traceback" not in cli.output, cli.output[-4000:]
    with pytest.raises(grpc.RpcError) as info:
        predict(port, "half_plus_two")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_config_file_with_batching_and_polling(tmp_path: Path) -> None:
    """TF Serving's testGoodModelConfig plus --enable_batching with its batching_config.txt;
    --model_base_path is ignored next to --model_config_file, as in TF Serving. With
    --model_config_file_poll_wait_seconds, a rewritten config file is applied (its
    testModelConfigReload), here by dropping half_plus_three. With TF Serving 2.20's flags of
    issue 25: the two models load at once (--num_load_threads), half_plus_three batches by its
    own batching_params.pbtxt, every session takes the session config file, and Predict's
    outputs come in tensor_content."""
    text = (TESTDATA / "good_model_config.txt").read_text()
    text = text.replace(
        "${TEST_HALF_PLUS_TWO_DIR}", str(TESTDATA / "saved_model_half_plus_two_cpu")
    )
    # half_plus_three with its own batching_params.pbtxt (--enable_per_model_batching_parameters)
    three = tmp_path / "half_plus_three"
    shutil.copytree(TESTDATA / "saved_model_half_plus_three", three)
    (three / "00000123" / "batching_params.pbtxt").write_text("max_batch_size { value: 1 }")
    text = text.replace("${TEST_HALF_PLUS_THREE_DIR}", str(three))
    config = tmp_path / "good_model_config.conf"
    config.write_text(text)
    session = tmp_path / "session_config.pbtxt"
    session.write_text("intra_op_parallelism_threads: 2\n")
    (port,) = free_ports(1)
    cli = run_cli(
        f"--port={port}",
        f"--model_config_file={config}",
        "--model_base_path=/ignored/with/a/config/file",
        "--enable_batching",
        f"--batching_parameters_file={TESTDATA / 'batching_config.txt'}",
        "--model_config_file_poll_wait_seconds=1",
        "--num_load_threads=2",
        "--enable_per_model_batching_parameters",
        f"--tensorflow_session_config_file={session}",
        "--enable_serialization_as_tensor_content",
    )
    try:
        cli.wait_ready()
        for model, expected in (("half_plus_two", 3.0), ("half_plus_three", 4.0)):
            result = predict(port, model)
            y = result.outputs["y"]  # --enable_serialization_as_tensor_content
            assert not y.float_val and y.tensor_content, model
            assert tf.make_ndarray(y).tolist() == [expected], model
            assert result.model_spec.version.value == 123
        two_rows = predict_request("half_plus_three")
        two_rows.inputs["x"].float_val.append(3.0)
        two_rows.inputs["x"].tensor_shape.dim[0].size = 2
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            with pytest.raises(grpc.RpcError) as e:  # its own file's max_batch_size
                stub.Predict(two_rows, 30.0)
            assert (e.value.code(), e.value.details()) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "Task size 2 is larger than maximum input batch size 1",
            )
            two_rows.model_spec.name = "half_plus_two"  # the server's file: up to 128
            assert tf.make_ndarray(stub.Predict(two_rows, 30.0).outputs["y"]).tolist() == [
                3.0,
                3.5,
            ]
        config.write_text(
            'model_config_list { config { name: "half_plus_two" '
            f'base_path: "{TESTDATA / "saved_model_half_plus_two_cpu"}" '
            'model_platform: "tensorflow" } }'
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                predict(port, "half_plus_three")
            except grpc.RpcError as e:
                assert (e.code(), e.details()) == (
                    grpc.StatusCode.NOT_FOUND,
                    "Servable not found for request: Latest(half_plus_three)",
                )
                break
            assert time.monotonic() < deadline, "the rewritten config file was not applied"
            time.sleep(0.5)
        assert tf.make_ndarray(predict(port, "half_plus_two").outputs["y"]).tolist() == [3.0]
    finally:
        assert cli.stop() == 0, cli.output[-4000:]


def test_model_that_cannot_load_fails_startup() -> None:
    """As TF Serving: the server does not start when a model never becomes AVAILABLE, and says
    which and why (ServerCore::WaitUntilModelsAvailable's wording)."""
    started = time.monotonic()
    code, output = run_to_exit(
        f"--port={free_ports(1)[0]}",
        f"--model_base_path={TESTDATA / 'bad_half_plus_two'}",
        timeout=BOOT_TIMEOUT_S,
    )
    assert code != 0, output[-4000:]
    path = TESTDATA / "bad_half_plus_two" / "00000123"
    assert (
        "Failed to start server. Error: UNKNOWN: 1 model(s) did not become available: "
        "{{{name: default version: 123} due to error: NOT_FOUND: Could not find SavedModel .pb "
        f"or .pbtxt at supplied export directory path: {path}." in output
    ), output[-4000:]
    assert READY_LINE not in output
    assert time.monotonic() - started < BOOT_TIMEOUT_S


# --- startup faults end, and signals are honoured while starting ----------------------------


def session_processes(cli: Cli) -> list[str]:
    """Command lines of every process still in the CLI's session, or naming its RAY_TMPDIR
    (its Ray included, wherever a process was reparented)."""
    out = subprocess.run(
        ["ps", "-wweo", "sid=,args="], capture_output=True, text=True, check=True
    ).stdout
    rows = [line.strip().split(None, 1) for line in out.splitlines() if line.strip()]
    return [
        row[1]
        for row in rows
        if len(row) == 2 and (int(row[0]) == cli.process.pid or str(cli.tmpdir) in row[1])
    ]


STOP_BOUND_S = 10.0
"""A signal while starting: every process of the server is gone within this."""


def signal_until_gone(cli: Cli, sig: int, exit_within: float = 30.0) -> tuple[int, float]:
    """Send ``sig``: (exit status, seconds until nothing of the CLI's session is left), which
    must be within ``exit_within`` s."""
    signalled = time.monotonic()
    cli.process.send_signal(sig)
    code = cli.wait_exit(exit_within)
    while session_processes(cli) and time.monotonic() - signalled < exit_within:
        time.sleep(0.2)
    assert session_processes(cli) == [], cli.output[-3000:]
    took = time.monotonic() - signalled
    cli.reader.join(10)
    return code, took


def handles_sigterm(pid: int) -> bool:
    """The process has put its own SIGTERM handler in place (``SigCgt`` in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def test_accelerator_gpu_without_a_gpu_fails_startup_and_says_why() -> None:
    """No node has a GPU: the serving replicas can never be placed. The server exits non-zero
    within its bound (--resource_wait_seconds, 60 s by default and 6 s here; the run_to_exit
    timeout of 90 s fails the test past it) and names the problem and what the replicas need."""
    started = time.monotonic()
    code, output = run_to_exit(
        f"--port={free_ports(1)[0]}",
        f"--model_base_path={TESTDATA / 'saved_model_half_plus_two_cpu'}",
        "--accelerator=gpu",
        "--resource_wait_seconds=6",
        timeout=90,
    )
    assert code != 0, output[-3000:]
    assert "Failed to start server. Error: UNAVAILABLE: --accelerator=gpu, but no node" in output
    assert "to be scheduled" in output and "'GPU': 1.0" in output, output[-3000:]
    print(f"\n--accelerator=gpu without a GPU: exit {code} after {time.monotonic() - started:.0f}s")


@pytest.mark.parametrize(
    ("sig", "after"),
    [
        (signal.SIGINT, "imports"),
        (signal.SIGINT, "ray_start"),
        (signal.SIGTERM, "waiting_for_resources"),
        (signal.SIGINT, "loading"),
    ],
)
def test_a_signal_while_starting_stops_everything(sig: int, after: str, tmp_path: Path) -> None:
    """A signal at any moment of the start: while Python imports TensorFlow and Ray, while Ray
    starts, while a replica waits for a GPU that no node has, while a version loads (its load
    hangs: a FIFO for its variables index). The server exits non-zero, within STOP_BOUND_S
    nothing of its session is left (Ray's processes too), and it prints no traceback."""
    (port,) = free_ports(1)
    if after == "loading":
        base = tmp_path / "m"
        shutil.copytree(TESTDATA / "saved_model_half_plus_two_cpu" / "00000123", base / "1")
        (base / "1" / "variables" / "variables.index").unlink()
        os.mkfifo(base / "1" / "variables" / "variables.index")
        cli = run_cli(f"--port={port}", "--model_name=m", f"--model_base_path={base}")
    else:
        cli = run_cli(
            f"--port={port}",
            f"--model_base_path={TESTDATA / 'saved_model_half_plus_two_cpu'}",
            "--accelerator=gpu",
            "--resource_wait_seconds=600",
        )
    try:
        deadline = time.monotonic() + 120
        if after == "imports":  # its handlers are in place, Ray not imported yet
            while not handles_sigterm(cli.process.pid):
                assert time.monotonic() < deadline and cli.process.poll() is None, cli.output
                time.sleep(0.01)
        elif after == "ray_start":
            while not any("gcs_server" in p for p in session_processes(cli)):
                assert time.monotonic() < deadline and cli.process.poll() is None, cli.output
                time.sleep(0.05)
        elif after == "loading":
            while not any("m version 1 is loading" in line for line in cli.lines):
                assert time.monotonic() < deadline and cli.process.poll() is None, cli.output
                time.sleep(0.1)
            time.sleep(1)
        else:
            while not any(
                "ServeReplica:default:VersionManager" in p for p in session_processes(cli)
            ):
                assert time.monotonic() < deadline and cli.process.poll() is None, cli.output
                time.sleep(0.2)
            time.sleep(2)  # the serving replicas are pending: no GPU
        code, took = signal_until_gone(cli, sig, exit_within=STOP_BOUND_S)
        assert code != 0, cli.output[-3000:]
        assert "Traceback" not in cli.output, cli.output[-4000:]
        assert READY_LINE not in cli.output
        print(
            f"\n{signal.Signals(sig).name} during {after}: exit {code}, all gone after {took:.1f}s"
        )
    finally:
        cli.stop()


def test_sigterm_drains_then_lets_calls_in_flight_finish(tmp_path: Path) -> None:
    """SIGTERM under load: gRPC health says NOT_SERVING and ``/readyz`` 503 while calls are
    still answered for --drain_seconds; then the ports close, the calls in flight finish, and
    the server exits 0 with nothing of its session left. Calls take ~0.2 s (a batch waits for
    its timeout), so several are in flight when the ports close."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    batching = tmp_path / "batching.txt"
    batching.write_text(
        "max_batch_size { value: 64 } batch_timeout_micros { value: 200000 } "
        "num_batch_threads { value: 2 }"
    )
    port, rest_port = free_ports(2)
    cli = run_cli(
        f"--port={port}",
        f"--rest_api_port={rest_port}",
        "--model_name=half_plus_two",
        f"--model_base_path={TESTDATA / 'saved_model_half_plus_two_cpu'}",
        "--enable_batching",
        f"--batching_parameters_file={batching}",
        "--drain_seconds=3",
    )
    calls: list[tuple[float, float, grpc.StatusCode]] = []
    health: list[tuple[float, int]] = []
    readyz: list[tuple[float, int]] = []
    done = threading.Event()

    def load() -> None:
        channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        request.inputs["x"].dtype = types_pb2.DT_FLOAT
        request.inputs["x"].tensor_shape.dim.add().size = 1
        request.inputs["x"].float_val.append(2.0)
        deadline = time.monotonic() + 120
        while not done.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                stub.Predict(request, timeout=10)
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                code = e.code()
                time.sleep(0.05)
            calls.append((started, time.monotonic(), code))
        channel.close()

    def watch_health() -> None:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 120
        while not done.is_set() and time.monotonic() < deadline:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status
            except grpc.RpcError:
                status = -1
            health.append((time.monotonic(), status))
            time.sleep(0.1)
        channel.close()

    def watch_readyz() -> None:
        deadline = time.monotonic() + 120
        while not done.is_set() and time.monotonic() < deadline:
            try:
                url = f"http://127.0.0.1:{rest_port}/readyz"
                with urllib.request.urlopen(url, timeout=2) as r:
                    status = r.status
            except urllib.error.HTTPError as e:
                status = e.code
            except OSError:
                status = -1
            readyz.append((time.monotonic(), status))
            time.sleep(0.1)

    threads = [threading.Thread(target=load) for _ in range(4)]
    threads += [threading.Thread(target=watch_health), threading.Thread(target=watch_readyz)]
    try:
        cli.wait_ready()
        for t in threads:
            t.start()
        time.sleep(3)
        assert health and health[-1][1] == health_pb2.HealthCheckResponse.SERVING
        assert readyz and readyz[-1][1] == 200
        signalled = time.monotonic()
        cli.process.send_signal(signal.SIGTERM)
        assert cli.wait_exit(60) == 0, cli.output[-3000:]
        exited = time.monotonic()
        while session_processes(cli) and time.monotonic() - signalled < 40:
            time.sleep(0.2)
        assert session_processes(cli) == [], cli.output[-3000:]
    finally:
        done.set()
        for t in threads:
            if t.is_alive():
                t.join(30)
        cli.stop()
    not_serving = next(
        t for t, s in health if t > signalled and s == health_pb2.HealthCheckResponse.NOT_SERVING
    )
    failed = [c for c in calls if c[2] != grpc.StatusCode.OK]
    assert failed, "no call failed once the ports closed"
    closed = min(start for start, _, _ in failed)
    in_flight = [c for c in calls if c[0] < closed < c[1]]
    served_while_draining = [c for c in calls if c[0] > not_serving and c[1] < closed]
    # said before the ports closed, while calls were still answered (the drain window)
    assert signalled < not_serving < closed
    assert closed - signalled > 2.5  # the drain window lasts --drain_seconds=3
    assert 503 in {s for t, s in readyz if signalled < t < closed}, readyz
    assert served_while_draining and all(c[2] == grpc.StatusCode.OK for c in served_while_draining)
    assert all(c[2] == grpc.StatusCode.OK for c in calls if c[1] < closed)
    assert {c[2] for c in failed} <= {grpc.StatusCode.UNAVAILABLE}
    completed = [c for c in in_flight if c[2] == grpc.StatusCode.OK]
    assert completed, f"in flight at close: {in_flight}"
    print(
        f"\nSIGTERM: NOT_SERVING after {not_serving - signalled:.2f}s, "
        f"{len(served_while_draining)} calls served while draining, ports closed after "
        f"{closed - signalled:.1f}s, {len(completed)} of {len(in_flight)} calls in flight "
        f"completed, exit 0 after {exited - signalled:.1f}s"
    )


def test_a_model_that_never_loads_ends_startup_at_its_bound(tmp_path: Path) -> None:
    """A version whose load never ends (its variables index is a FIFO nobody writes, as a hung
    network file system looks): startup ends at --model_load_timeout_seconds, non-zero, naming
    the model and where it stands, and leaves nothing running."""
    empty = tmp_path / "m"
    shutil.copytree(TESTDATA / "saved_model_half_plus_two_cpu" / "00000123", empty / "1")
    (empty / "1" / "variables" / "variables.index").unlink()
    os.mkfifo(empty / "1" / "variables" / "variables.index")
    started = time.monotonic()
    cli = run_cli(
        f"--port={free_ports(1)[0]}",
        "--model_name=m",
        f"--model_base_path={empty}",
        "--model_load_timeout_seconds=15",
    )
    try:
        code = cli.wait_exit(180)
        cli._seen.wait(10)
        took = time.monotonic() - started
        assert code == 1, cli.output[-3000:]
        assert (
            "Failed to start server. Error: DEADLINE_EXCEEDED: models did not become AVAILABLE "
            "within 15s (--model_load_timeout_seconds): m: version 1 is LOADING"
        ) in cli.output, cli.output[-3000:]
        deadline = time.monotonic() + 30
        while session_processes(cli) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert session_processes(cli) == []
        print(f"\na model that never loads: exit {code} after {took:.0f}s")
    finally:
        cli.stop()


def test_a_signal_while_rolling_out_stops_everything(tmp_path: Path) -> None:
    """A new version is loading (its load hangs: a FIFO for its variables index) when SIGTERM
    comes (it drains first, the longer path): the server exits 0 and within 30 s nothing of its
    session is left. SIGINT (no drain) is sent at the start's moments above and to a serving
    server in test_ctrl_c_stops_cleanly."""
    sig = signal.SIGTERM
    base = tmp_path / "m"
    shutil.copytree(TESTDATA / "saved_model_half_plus_two_cpu" / "00000123", base / "1")
    (port,) = free_ports(1)
    cli = run_cli(
        f"--port={port}",
        "--model_name=m",
        f"--model_base_path={base}",
        "--file_system_poll_wait_seconds=0.5",
        "--drain_seconds=1",
    )
    try:
        cli.wait_ready()
        shutil.copytree(base / "1", base / "2")
        (base / "2" / "variables" / "variables.index").unlink()
        os.mkfifo(base / "2" / "variables" / "variables.index")
        deadline = time.monotonic() + 60
        while True:
            states = {s.version: s.state for s in model_status(port, "m").model_version_status}
            if states.get(2) == get_model_status_pb2.ModelVersionStatus.LOADING:
                break
            assert time.monotonic() < deadline, states
            time.sleep(0.3)
        code, took = signal_until_gone(cli, sig)
        assert code == 0, cli.output[-3000:]
        print(f"\n{signal.Signals(sig).name} while version 2 loads: all gone after {took:.1f}s")
    finally:
        cli.stop()
