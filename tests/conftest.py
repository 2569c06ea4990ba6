"""Shared fixtures: real servers (``serve run serve_app:app ...``) on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

REPO = Path(__file__).resolve().parents[1]
TESTDATA = (REPO.parent / "shared" / "testdata" / "tfserving").resolve()
SERVE = str(Path(sys.executable).with_name("serve"))
BOOT_TIMEOUT_S = 240.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running ray-tfserving: its ports, channel and log."""

    grpc_port: int
    http_port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    tmpdir: Path
    channel: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def processes(self) -> list[tuple[int, int, str]]:
        """(pid, RSS in KB, command line) of every process of this server: its session holds
        Ray's gcs, raylet and workers, and nothing of any other server on the machine."""
        out = subprocess.run(
            ["ps", "-eo", "pid=,sid=,rss=,args="], capture_output=True, text=True, check=True
        ).stdout
        rows = []
        for line in out.splitlines():
            pid, sid, rss, args = line.split(None, 3)
            if int(sid) == self.process.pid:
                rows.append((int(pid), int(rss), args))
        return rows

    def replicas(self, deployment: str) -> list[tuple[int, int]]:
        """(pid, RSS in KB) of the live replica processes of one deployment of this server."""
        name = f"ray::ServeReplica:default:{deployment}"
        return [(pid, rss) for pid, rss, args in self.processes() if args.split()[0] == name]

    def prediction_stub(self):  # type: ignore[no-untyped-def]
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        return prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def model_stub(self):  # type: ignore[no-untyped-def]
        from tensorflow_serving.apis import model_service_pb2_grpc

        return model_service_pb2_grpc.ModelServiceStub(self.channel)

    def wait_available(
        self, model: str, version: int | None = None, timeout: float = BOOT_TIMEOUT_S
    ) -> None:
        """Block until GetModelStatus shows ``version`` (or the newest) AVAILABLE."""
        from tensorflow_serving.apis import get_model_status_pb2

        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}:\n{self.log()[-4000:]}"
                )
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = model
            if version is not None:
                request.model_spec.version.value = version
            try:
                response = self.model_stub().GetModelStatus(request, timeout=5)
                states = [s for s in response.model_version_status]
                if states and states[0].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE:
                    return
                last = str(response)
            except grpc.RpcError as e:
                last = f"{e.code()}: {e.details()}"
            time.sleep(0.5)
        raise TimeoutError(
            f"{model} not AVAILABLE after {timeout}s (last: {last})\n{self.log()[-4000:]}"
        )

    def stop(self) -> None:
        self.channel.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=60)
        # anything of ours still alive in the session: Ray's gcs, raylet, workers
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if not os.environ.get("RTFS_KEEP_SERVER_LOGS"):  # keep them to debug a failure
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def start_server(*args: str, wait_for: tuple[str, ...] = (), cwd: Path = REPO) -> Server:
    """``serve run serve_app:app`` with ``args``, its own RAY_TMPDIR and free ports."""
    grpc_port, http_port = free_port(), free_port()
    tmpdir = Path(tempfile.mkdtemp(prefix="rtfs-"))
    log_path = tmpdir / "server.log"
    env = dict(os.environ, RAY_TMPDIR=str(tmpdir), PYTHONUNBUFFERED="1")
    command = [
        SERVE,
        "run",
        "serve_app:app",
        f"grpc_port={grpc_port}",
        f"http_port={http_port}",
        *args,
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(grpc_port, http_port, process, log_path, tmpdir)
    try:
        for model in wait_for:
            server.wait_available(model)
    except BaseException:
        print(server.log()[-6000:])
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def testdata() -> Path:
    assert TESTDATA.is_dir(), f"TF Serving test models not found at {TESTDATA}"
    return TESTDATA


@pytest.fixture(scope="session")
def deeplab_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DeepLab export (version 1), made once per test session."""
    from export.savedmodel import export_model

    base = tmp_path_factory.mktemp("deeplab")
    export_model(base, 1, steps=40, size=32, seed=0)
    return base


@pytest.fixture(scope="session")
def deeplab_training(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """The default DeepLab training (about a minute on 2 cores), once per session: the base
    path of its export (version 1) and its TrainStats."""
    from export.deeplab import train
    from export.savedmodel import save

    base = tmp_path_factory.mktemp("deeplab-full")
    model, stats = train(seed=0)
    save(model, base, 1)
    return base, stats


@pytest.fixture(scope="session")
def deeplab_trained(deeplab_training: tuple[Path, Any]) -> Path:
    """Base path of the fully trained default model."""
    return deeplab_training[0]


@pytest.fixture
def server_factory() -> Iterator:  # type: ignore[type-arg]
    started: list[Server] = []

    def factory(*args: str, wait_for: tuple[str, ...] = ()) -> Server:
        server = start_server(*args, wait_for=wait_for)
        started.append(server)
        return server

    yield factory
    for s in started:
        s.stop()
