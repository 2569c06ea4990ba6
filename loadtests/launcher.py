"""Boot ray-tfserving (``serve run <Serve config>``) as a subprocess on free loopback ports.

Each server gets its own ``RAY_TMPDIR`` (so it never joins another local Ray) and its own
session (``start_new_session``), so ``stop`` can end Ray's gcs, raylet and workers with one
signal to the process group without touching anything else on the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TESTDATA = REPO.parent / "shared" / "testdata" / "tfserving"
"""TF Serving's own test models (``../shared/testdata/tfserving`` beside the repository)."""
HALF_PLUS_TWO = TESTDATA / "saved_model_half_plus_two_cpu"
SERVE = str(Path(sys.executable).with_name("serve"))
BOOT_TIMEOUT_S = 240.0


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 now, out of the ranges the kernel and Ray
    pick from (see ``serve_app.launch.free_ports``)."""
    from serve_app.launch import free_ports as pick

    return pick("127.0.0.1", count)


@dataclass
class ServerProcess:
    """A running ray-tfserving: its ports, process (a session leader) and log."""

    grpc_port: int
    http_port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    tmpdir: Path

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_available(
        self, model: str, version: int | None = None, timeout: float = BOOT_TIMEOUT_S
    ) -> None:
        """Block until GetModelStatus shows ``version`` (or the newest) of ``model`` AVAILABLE."""
        import grpc

        from compat.protos import get_model_status_pb2

        available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        deadline = time.monotonic() + timeout
        last = ""
        with grpc.insecure_channel(self.grpc_target) as channel:
            status = channel.unary_unary(
                "/tensorflow.serving.ModelService/GetModelStatus",
                request_serializer=get_model_status_pb2.GetModelStatusRequest.SerializeToString,
                response_deserializer=get_model_status_pb2.GetModelStatusResponse.FromString,
            )
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {self.process.returncode}:\n{self.log()[-4000:]}"
                    )
                try:
                    response = status(request, timeout=5)
                    states = list(response.model_version_status)
                    if states and states[0].state == available:
                        return
                    last = str(response)
                except grpc.RpcError as e:
                    last = f"{e.code()}: {e.details()}"
                time.sleep(0.5)
        raise TimeoutError(
            f"{model} not AVAILABLE after {timeout}s (last: {last})\n{self.log()[-4000:]}"
        )

    def stop(self) -> None:
        """SIGINT (Serve shuts down cleanly), then SIGKILL to whatever is left in the group."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        if not os.environ.get("RTFS_KEEP_SERVER_LOGS"):  # keep them to debug a failure
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def start_server(
    *args: str,
    wait_for: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO,
    timeout: float = BOOT_TIMEOUT_S,
    tmp_prefix: str = "rtfs-",
) -> ServerProcess:
    """``serve run`` of a Serve config deploying ``serve_app:app`` with ``args`` (``key=value``),
    free ports, its own RAY_TMPDIR;
    ``env`` is added to the environment (Ray's workers inherit it). Waits for ``wait_for``.
    """
    import yaml

    grpc_port, http_port = free_ports(2)
    tmpdir = Path(tempfile.mkdtemp(prefix=tmp_prefix))
    log_path = tmpdir / "server.log"
    full_env = dict(
        os.environ,
        RAY_TMPDIR=str(tmpdir),
        PYTHONUNBUFFERED="1",
        # A single-machine Ray: every Ray server binds loopback (see serve_app.launch).
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        **(env or {}),
    )
    app_args = {"grpc_port": str(grpc_port), "http_port": str(http_port)}
    for arg in args:
        key, _, value = arg.partition("=")
        app_args[key] = value
    config = tmpdir / "serve.yaml"
    config.write_text(yaml.safe_dump(serve_config_for(app_args)))
    command = [SERVE, "run", str(config)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServerProcess(grpc_port, http_port, process, log_path, tmpdir)
    try:
        for model in wait_for:
            server.wait_available(model, timeout=timeout)
    except BaseException:
        print(server.log()[-6000:], file=sys.stderr)
        server.stop()
        raise
    return server


def serve_config_for(app_args: Mapping[str, str]) -> dict[str, Any]:
    """A Serve config (what ``ray-tfserving --print_serve_config`` writes) deploying
    ``serve_app:app`` with ``key=value`` arguments, as ``serve deploy`` would."""
    from serve_app.launch import parse_cli_args, serve_config

    config = serve_config(parse_cli_args(dict(app_args)))
    config["applications"][0]["args"] = dict(app_args)  # as given: the builder parses them
    return config


@dataclass
class PlainServerProcess:
    """A running ``loadtests.plain_server`` (a session leader, like ``ServerProcess``)."""

    grpc_port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def start_plain_server(
    models: Mapping[str, str | os.PathLike[str]],
    *args: str,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> PlainServerProcess:
    """``python -m loadtests.plain_server`` on a free port; returns once its models are loaded."""
    import json
    import select

    command = [sys.executable, "-m", "loadtests.plain_server", "--port", "0", *args]
    for name, path in models.items():
        command += ["--model", f"{name}={path}"]
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 1.0)
            if ready:
                line = process.stdout.readline()
                if not line:
                    break  # exited
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    port = int(json.loads(line)["port"])
                    return PlainServerProcess(port, process, log_path)
            elif process.poll() is not None:
                break
        raise RuntimeError(
            f"plain server did not start: {log_path.read_text(errors='replace')[-4000:]}"
        )
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        raise
