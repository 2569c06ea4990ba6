"""Shared fixtures: real servers (``serve run serve_app:app ...``) on free loopback ports."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import grpc
import pytest

from loadtests.launcher import REPO, ServerProcess, free_ports
from loadtests.launcher import start_server as launch

__all__ = ["REPO", "TESTDATA", "Server", "free_ports", "start_server"]

TESTDATA = (REPO.parent / "shared" / "testdata" / "tfserving").resolve()


@dataclass
class Server(ServerProcess):
    """A running ray-tfserving (``loadtests.launcher``) with the official stubs and a view of
    its own processes, for tests."""

    @functools.cached_property
    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.grpc_target)

    def prediction_stub(self):  # type: ignore[no-untyped-def]
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        return prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def model_stub(self):  # type: ignore[no-untyped-def]
        from tensorflow_serving.apis import model_service_pb2_grpc

        return model_service_pb2_grpc.ModelServiceStub(self.channel)

    def processes(self) -> list[tuple[int, int, str]]:
        """(pid, RSS in KB, command line) of every process of this server: its session holds
        Ray's gcs, raylet and workers, and nothing of any other server on the machine."""
        out = subprocess.run(
            ["ps", "-wweo", "pid=,sid=,rss=,args="], capture_output=True, text=True, check=True
        ).stdout
        rows = []
        for line in out.splitlines():
            pid, sid, rss, args = line.split(None, 3)
            if int(sid) == self.process.pid:
                rows.append((int(pid), int(rss), args))
        return rows

    def replicas(self, deployment: str) -> list[tuple[int, int]]:
        """(pid, RSS in KB) of the live replica processes of one deployment of this server.
        Ray retitles a replica with the method it is running (``...:Ingress.handle_request``),
        so a busy replica's title has the deployment and then a dot."""
        name = f"ray::ServeReplica:default:{deployment}"
        return [
            (pid, rss)
            for pid, rss, args in self.processes()
            if (title := args.split()[0]) == name or title.startswith(name + ".")
        ]

    def stop(self) -> None:
        if "channel" in self.__dict__:
            self.channel.close()
        super().stop()


def start_server(
    *args: str, wait_for: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> Server:
    """``serve run serve_app:app`` with ``args``, its own RAY_TMPDIR and free loopback ports;
    ``env`` is added to its environment."""
    launched = launch(*args, env=env)
    server = Server(**{f.name: getattr(launched, f.name) for f in fields(ServerProcess)})
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


@pytest.fixture(scope="module")
def deeplab_copy(deeplab_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of ``deeplab_base`` for one test module (``<tmp>/deeplab/1``), for tests
    that publish, break or remove versions."""
    import shutil

    root = tmp_path_factory.mktemp("copy") / "deeplab"
    shutil.copytree(deeplab_base / "1", root / "1")
    return root


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
