"""Boot ray-tfserving as a user does, in subprocesses on free loopback ports: the
``ray-tfserving`` command with TF Serving's flags (``start_cli``); or the Serve config that the
product prints for ``key=value`` arguments (``python -m serve_app.launch``), served by ``serve
run`` (``start_server``); and the benchmark's plain server (``loadtests.plain_server``). Nothing
of ``serve_app`` is imported here.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from compat import ports

REPO = Path(__file__).resolve().parents[1]
TESTDATA = (REPO.parent / "shared" / "testdata" / "tfserving").resolve()
"""TF Serving's own test models (``../shared/testdata/tfserving`` beside the repository)."""
HALF_PLUS_TWO = TESTDATA / "saved_model_half_plus_two_cpu"
SERVE = str(Path(sys.executable).with_name("serve"))
BOOT_TIMEOUT_S = 240.0


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 now (``compat.ports``)."""
    return ports.free_ports("127.0.0.1", count)


ConfigWriter = Callable[[Mapping[str, str], Mapping[str, str]], str]
"""(``key=value`` app arguments, the server's environment) -> its Serve config as YAML."""


def printed_serve_config(app_args: Mapping[str, str], environ: Mapping[str, str]) -> str:
    """The Serve config that ``python -m serve_app.launch key=value ...`` prints, run in the
    server's environment (Ray's settings in it go into the config's runtime_env)."""
    command = [
        sys.executable,
        "-m",
        "serve_app.launch.boot",
        *(f"{k}={v}" for k, v in app_args.items()),
    ]
    done = subprocess.run(
        command, cwd=REPO, env=dict(environ), capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-4000:]}"
        )
    return done.stdout


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
    timeout: float = BOOT_TIMEOUT_S,
    tmp_prefix: str = "rtfs-",
    write_config: ConfigWriter = printed_serve_config,
) -> ServerProcess:
    """``serve run`` of the Serve config ``write_config`` makes for ``args`` (``key=value``),
    free ports, its own RAY_TMPDIR; ``env`` is added to the environment (Ray's workers inherit
    it). Waits for ``wait_for``.
    """
    grpc_port, http_port = free_ports(2)
    tmpdir = Path(tempfile.mkdtemp(prefix=tmp_prefix))
    full_env = dict(
        os.environ,
        RAY_TMPDIR=str(tmpdir),
        PYTHONUNBUFFERED="1",
        # A single-machine Ray: every Ray server binds loopback (see serve_app.launch.boot).
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        **(env or {}),
    )
    app_args = {"grpc_port": str(grpc_port), "http_port": str(http_port)}
    for arg in args:
        key, _, value = arg.partition("=")
        app_args[key] = value
    config = tmpdir / "serve.yaml"
    config.write_text(write_config(app_args, full_env))
    command = [SERVE, "run", str(config)]
    return _spawn(command, full_env, (grpc_port, http_port), tmpdir, wait_for, timeout)


def start_cli(
    *flags: str,
    wait_for: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = BOOT_TIMEOUT_S,
    tmp_prefix: str = "rtfs-cli-",
) -> ServerProcess:
    """The ``ray-tfserving`` command (TF Serving's flags, its embedded Ray) on free ports, with
    its own RAY_TMPDIR; ``env`` is added to its environment. Waits for ``wait_for``."""
    grpc_port, http_port = free_ports(2)
    tmpdir = Path(tempfile.mkdtemp(prefix=tmp_prefix))
    full_env = dict(os.environ, RAY_TMPDIR=str(tmpdir), PYTHONUNBUFFERED="1", **(env or {}))
    command = [
        str(Path(sys.executable).with_name("ray-tfserving")),
        f"--port={grpc_port}",
        f"--rest_api_port={http_port}",
        *flags,
    ]
    return _spawn(command, full_env, (grpc_port, http_port), tmpdir, wait_for, timeout)


def _default_sigint() -> None:
    """In the server's process, before it runs: SIGINT as a terminal delivers it, whatever this
    process inherited. A parent started in the background by a non-interactive shell (a CI job,
    ``nohup ... &``) ignores SIGINT, and its children would too: ``stop``'s SIGINT would then be
    lost, and every stop wait out its 60 s before the SIGKILL."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _spawn(
    command: list[str],
    env: Mapping[str, str],
    ports: tuple[int, int],
    tmpdir: Path,
    wait_for: Sequence[str],
    timeout: float,
) -> ServerProcess:
    """``command`` as a session leader logging to ``tmpdir/server.log``, once ``wait_for`` are
    AVAILABLE (stopped, its log printed, if they never are)."""
    log_path = tmpdir / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )
    server = ServerProcess(*ports, process, log_path, tmpdir)
    try:
        for model in wait_for:
            server.wait_available(model, timeout=timeout)
    except BaseException:
        print(server.log()[-6000:], file=sys.stderr)
        server.stop()
        raise
    return server


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
