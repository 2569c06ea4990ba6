"""The test harness: live ray-tfserving servers for tests (``loadtests.launcher`` boots them;
the Serve config is written here in-process with ``serve_app.launch.boot``, the same function that
``python -m serve_app.launch`` prints with), the official stubs on them, a view of their own
processes, and the test data the suite needs (``require_test_data``)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, fields

import grpc

from loadtests.launcher import REPO, TESTDATA, ServerProcess, free_ports
from loadtests.launcher import start_server as launch

__all__ = [
    "REPO",
    "SHARED",
    "TESTDATA",
    "Server",
    "established",
    "free_ports",
    "loopback_head",
    "require_test_data",
    "row_pids",
    "shared_server",
    "start_server",
    "stop_shared",
]

REQUIRED_TESTDATA = (
    "saved_model_half_plus_two_cpu/00000123/saved_model.pb",
    "saved_model_half_plus_two_2_versions/00000123/saved_model.pb",
    "saved_model_half_plus_two_2_versions/00000124/saved_model.pb",
    "saved_model_half_plus_two_tf2_cpu/00000123/saved_model.pb",
    "saved_model_half_plus_three/00000123/saved_model.pb",
    "saved_model_counter/00000123/saved_model.pb",
    "bad_half_plus_two/00000123",
    "good_model_config.txt",
    "bad_model_config.txt",
    "batching_config.txt",
    "monitoring_config.txt",
    "half_plus_two_model_metadata.json",
)
"""What the tests read of TF Serving's test data, under ``TESTDATA``."""


def require_test_data() -> str | None:
    """None when every file of ``REQUIRED_TESTDATA`` is there, else what is missing and how to
    get it."""
    missing = [name for name in REQUIRED_TESTDATA if not (TESTDATA / name).exists()]
    if not missing:
        return None
    return (
        f"TF Serving's test models are missing under {TESTDATA}: {', '.join(missing)}. "
        "Copy tensorflow_serving/servables/tensorflow/testdata from "
        "https://github.com/tensorflow/serving (Apache-2.0) there, beside this repository "
        "(../shared/testdata/tfserving): the suite fails rather than skip what needs them."
    )


def _serve_config(app_args: Mapping[str, str], environ: Mapping[str, str]) -> str:
    """What ``python -m serve_app.launch`` prints, without the subprocess (seconds per boot)."""
    from serve_app.launch.boot import serve_config_yaml

    return serve_config_yaml(app_args, environ)


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
    """``serve run`` of the Serve config deploying ``args``, its own RAY_TMPDIR and free
    loopback ports; ``env`` is added to its environment."""
    launched = launch(*args, wait_for=wait_for, env=env, write_config=_serve_config)
    return Server(**{f.name: getattr(launched, f.name) for f in fields(ServerProcess)})


SHARED = {
    "half_plus_two": (
        ("half_plus_two", "saved_model_half_plus_two_cpu"),
        ("default", "saved_model_half_plus_two_cpu"),
    ),
}
"""Servers that several test modules share, by name: (model name, TF Serving test model) pairs
served from one model config file with the default flags. A module marked
``pytest.mark.shares_server(NAME)`` takes ``shared_server(NAME)``; ``tests/conftest.py`` runs
the modules sharing one together and stops their server after the last of them (a boot is
half a minute)."""

_running: dict[str, tuple[Server, str]] = {}


def shared_server(name: str) -> Server:
    """The shared server ``name`` of ``SHARED``, started on its first use."""
    if name not in _running:
        root = tempfile.mkdtemp(prefix=f"shared-{name}-")
        entries = "".join(
            f'  config {{ name: "{model}" base_path: "{TESTDATA / data}" '
            'model_platform: "tensorflow" }\n'
            for model, data in SHARED[name]
        )
        config = f"{root}/models.config"
        with open(config, "w") as f:
            f.write(f"model_config_list {{\n{entries}}}\n")
        try:
            server = start_server(
                f"model_config_file={config}", wait_for=tuple(m for m, _ in SHARED[name])
            )
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        _running[name] = (server, root)
    return _running[name][0]


def stop_shared(name: str | None = None) -> None:
    """Stop the shared server ``name`` (every one, for None) if it runs."""
    for key in [name] if name is not None else list(_running):
        server, root = _running.pop(key, (None, ""))
        if server is not None:
            try:
                server.stop()
            finally:
                shutil.rmtree(root, ignore_errors=True)


def established(port: int) -> list[str]:
    """``ss`` rows of the established connections accepted on loopback ``port``, each with its
    process (``users:(("name",pid=N,fd=M))``)."""
    return subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()


def row_pids(row: str) -> list[int]:
    """The pids an ``established`` row names."""
    return [int(p.split(",")[0]) for p in row.split("pid=")[1:]]


def loopback_head(temp: str, gcs_port: int, **extra: object) -> dict[str, object]:
    """``ray.cluster_utils.Cluster``'s ``head_node_args`` for a head on 127.0.0.1 with no CPU
    of its own to spare (1) and no GPU, its files under ``temp/ray`` and its GCS on
    ``gcs_port``; ``extra`` adds or overrides."""
    return {
        "num_cpus": 1,
        "num_gpus": 0,
        "node_ip_address": "127.0.0.1",
        "temp_dir": os.path.join(temp, "ray"),
        "gcs_server_port": gcs_port,
        **extra,
    }
