"""A real multi-node Ray cluster on this machine (Ray's ``cluster_utils.Cluster``): a head with no
GPU and a worker node that declares one, every listener on loopback. ``ray-tfserving`` joins it
with TF Serving's flags plus ``--ray_address`` and ``--accelerator=gpu``; then the same server
is deployed again with ``serve deploy`` of the config it generates.

Which node a replica runs on is read from its process: Ray's raylet of that node started it.
TensorFlow falls back to the CPU (the GPU is only declared), as the developers' guide describes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.harness import REPO, TESTDATA, free_ports, loopback_head
from tests.serve_app.launch.test_cli import predict, run_cli
from tests.serve_app.test_serving_path import Load, listeners

MODEL = "half_plus_two"  # the name test_serving_path.Load asks for
SERVE = str(Path(sys.executable).with_name("serve"))
CLI = str(Path(sys.executable).with_name("ray-tfserving"))


@dataclass
class RayCluster:
    address: str
    dashboard: str
    head_raylet: int
    worker_raylet: int


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    import ray
    import ray._private.ray_constants as ray_constants
    from ray.cluster_utils import Cluster

    # Loopback only: Ray keeps 127.0.0.1 only when it believes it is a single-machine install
    # (the same switch as serve_app/launch/boot.py); its node processes read the variable.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    temp = tempfile.mkdtemp(prefix="rtfs-cluster-")
    previous_tmpdir = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp  # Ray's address file and sessions: this cluster's own
    os.makedirs(os.path.join(temp, "ray"))
    dashboard_port, gcs_port = free_ports(2)
    cluster = Cluster(
        initialize_head=True,
        head_node_args=loopback_head(
            temp,
            gcs_port,
            include_dashboard=True,  # serve deploy talks to the dashboard's REST API
            dashboard_host="127.0.0.1",
            dashboard_port=dashboard_port,
        ),
    )
    worker = cluster.add_node(num_cpus=2, num_gpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    assert cluster.head_node is not None

    def raylet(node: Any) -> int:
        return int(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)

    try:
        yield RayCluster(
            cluster.address,
            f"http://127.0.0.1:{dashboard_port}",
            raylet(cluster.head_node),
            raylet(worker),
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        if previous_tmpdir is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = previous_tmpdir
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def base_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cluster") / "half_plus_two"
    shutil.copytree(TESTDATA / "saved_model_half_plus_two_cpu" / "00000123", root / "123")
    return root


def flags(port: int, rest_port: int, base: Path, address: str) -> list[str]:
    return [
        f"--port={port}",
        f"--rest_api_port={rest_port}",
        f"--model_name={MODEL}",
        f"--model_base_path={base}",
        "--accelerator=gpu",
        "--num_gpus=0.5",
        "--file_system_poll_wait_seconds=0.5",
        f"--ray_address={address}",
    ]


def replica_pids(cluster: RayCluster) -> list[int]:
    """The serving replicas of this cluster: started by one of its raylets (another Ray's on
    the machine are not counted)."""
    out = subprocess.run(["ps", "-wweo", "pid=,args="], capture_output=True, text=True).stdout
    raylets = {cluster.head_raylet, cluster.worker_raylet}
    return [
        pid
        for line in out.splitlines()
        if line.split()[1].startswith("ray::ServeReplica:default:Ingress")
        and parent(pid := int(line.split()[0])) in raylets
    ]


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def publish(base: Path, version: int) -> None:
    tmp = base / f".tmp-{version}"
    shutil.copytree(base / "123", tmp)
    os.rename(tmp, base / str(version))


def wait_version(port: int, version: int, timeout: float = 180.0) -> None:
    from tensorflow_serving.apis import get_model_status_pb2

    from tests.serve_app.launch.test_cli import model_status

    state = get_model_status_pb2.ModelVersionStatus
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            statuses = {s.version: s.state for s in model_status(port, MODEL).model_version_status}
            last = statuses
            if statuses.get(version) == state.AVAILABLE and all(
                s == state.END for v, s in statuses.items() if v != version
            ):
                return
        except grpc.RpcError as e:
            last = e.code()
        time.sleep(0.25)
    raise TimeoutError(f"version {version} not the only one AVAILABLE: {last}")


@dataclass
class _Server:
    """What ``Load`` needs of a server."""

    grpc_target: str


def rollout_under_load(port: int, base: Path, version: int) -> int:
    """Publish ``version`` under load; the calls answered (every one must succeed)."""
    with Load(_Server(f"127.0.0.1:{port}")) as load:  # type: ignore[arg-type]
        try:
            load.wait_ok_after(time.monotonic(), 50)
        except TimeoutError:
            raise AssertionError(f"no load: {sorted({c[2] for c in load.calls})}") from None
        publish(base, version)
        wait_version(port, version)
        load.wait_ok_after(time.monotonic(), 50)
    failed = [c for c in load.calls if c[2] != grpc.StatusCode.OK]
    assert failed == [] and load.wrong == []
    return len(load.calls)


def test_the_cli_joins_the_cluster_and_puts_gpu_replicas_on_the_worker(
    cluster: RayCluster, base_path: Path
) -> None:
    port, rest_port = free_ports(2)
    # --verbose: the replicas' own INFO lines say where Ray put them
    cli = run_cli(
        *flags(port, rest_port, base_path, cluster.address),
        "--verbose",
        env={"RAY_DEDUP_LOGS": "0"},
    )
    try:
        cli.wait_ready()
        pids = replica_pids(cluster)
        assert len(pids) == 2, cli.output[-3000:]
        # Both serving replicas ask for half a GPU: the worker, the only node with one, runs
        # both, and Ray hands both the same card.
        assert {parent(p) for p in pids} == {cluster.worker_raylet}
        # Each replica says what Ray gave it: both the same (the only) GPU.
        pattern = re.compile(r"replica (\w+), node \w+, GPUs (\[[^]]*\])")
        deadline = time.monotonic() + 30  # Ray forwards replica logs to the driver in batches
        while len(dict(pattern.findall(cli.output))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        gpus = dict(pattern.findall(cli.output))
        assert len(gpus) == 2 and len(set(gpus.values())) == 1, cli.output[-3000:]
        assert set(gpus.values()) in ({"[0]"}, {"['0']"})
        # Every listener on loopback; the replicas hold the client ports.
        for p in (port, rest_port):
            held = listeners(p)
            assert set(held) == set(pids)
            addresses = [a for held_by_one in held.values() for a in held_by_one]
            assert all(a.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:")) for a in addresses)
        assert list(predict(port, MODEL).outputs["y"].float_val) == [3.0]
        calls = rollout_under_load(port, base_path, 124)
        print(f"\nCLI on the cluster: rollout 123 -> 124 under load, {calls} calls, 0 failed")
    finally:
        assert cli.stop() == 0, cli.output[-4000:]


def test_serve_deploy_of_the_generated_config(cluster: RayCluster, base_path: Path) -> None:
    port, rest_port = free_ports(2)
    generated = subprocess.run(
        [CLI, *flags(port, rest_port, base_path, cluster.address), "--print_serve_config"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert generated.returncode == 0, generated.stderr
    config = Path(tempfile.mkdtemp(prefix="rtfs-deploy-")) / "serve.yaml"
    config.write_text(generated.stdout)
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    deploy = subprocess.run(
        [SERVE, "deploy", str(config), "--address", cluster.dashboard],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    try:
        wait_version(port, max(int(p.name) for p in base_path.iterdir() if p.name.isdigit()))
        pids = replica_pids(cluster)
        assert len(pids) == 2 and {parent(p) for p in pids} == {cluster.worker_raylet}
        assert list(predict(port, MODEL).outputs["y"].float_val) == [3.0]
        calls = rollout_under_load(port, base_path, 125)
        print(f"\nserve deploy on the cluster: rollout to 125 under load, {calls} calls, 0 failed")
    finally:
        subprocess.run(
            [SERVE, "shutdown", "-y", "--address", cluster.dashboard],
            capture_output=True,
            timeout=120,
            env=env,
        )
