"""The cluster follows the replicas: Ray's autoscaler on this machine, with Ray's fake multi-node
node provider (``FakeMultiNodeProvider``: each node it "launches" is a real raylet on loopback,
started the way ``ray start`` starts a worker). The head offers no GPU; ``ray-tfserving
--accelerator=gpu`` asks for two serving replicas of one GPU each, which do not fit: the
autoscaler adds GPU worker nodes of the generated ``cluster.yaml``'s GPU worker type (its
config, with the fake provider for AWS's and a short idle timeout), the replicas start there and
serve; once the server is gone, the idle nodes are removed after the idle timeout.

Ray's ``AutoscalingCluster`` would do the same but runs ``ray stop --force`` (every Ray on the
machine), so the head is a ``cluster_utils.Cluster`` given the autoscaling config, as
``ray start --head --autoscaling-config`` gives it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from serve_app.launch import manifests
from tests.harness import TESTDATA, free_ports, loopback_head
from tests.serve_app.launch.test_cli import predict, run_cli
from tests.serve_app.test_cluster import MODEL, flags, parent
from tests.serve_app.test_serving_path import listeners

IDLE_TIMEOUT_MINUTES = 0.1
"""Short here (6 s); the cluster files say ``manifests.CLUSTER_SCALING``'s 10 minutes."""
MAX_GPU_WORKERS = 3


@dataclass
class Autoscaling:
    cluster: Any  # ray.cluster_utils.Cluster
    monitor: int  # the autoscaler's process: the fake provider starts nodes from it


def autoscaling_config(gcs_port: int) -> dict[str, Any]:
    """The generated ``cluster.yaml``'s config (``manifests.cluster_config``) with this machine's
    scale: none to ``MAX_GPU_WORKERS`` GPU workers and a short idle timeout; the fake provider
    in place of AWS, and the head the fake provider knows (``ray.head.default``, no GPU)."""
    scaling = manifests.ClusterScaling(
        min_gpu_workers=0,
        max_gpu_workers=MAX_GPU_WORKERS,
        idle_timeout_s=round(IDLE_TIMEOUT_MINUTES * 60),
    )
    config = manifests.cluster_config(scaling)
    config.pop("docker")  # the fake provider's nodes are processes here, not containers
    config["file_mounts"] = {}  # nothing to copy: every node is on this machine
    gpu_worker = config["available_node_types"]["gpu_worker"]
    gpu_worker["node_config"] = {}  # no cloud instance to describe
    config["available_node_types"] = {
        "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
        "gpu_worker": gpu_worker,
    }
    config["head_node_type"] = "ray.head.default"
    for key in ("initialization_commands", "head_setup_commands", "worker_setup_commands"):
        config.setdefault(key, [])  # the keys Ray's defaults for a cloud provider would add
    config.setdefault("cluster_synced_files", [])
    config.setdefault("file_mounts_sync_continuously", False)
    # "external": the provider by module (the wheel lacks the defaults file that type
    # "fake_multinode" reads); one IP for every node, so nodes are told apart by their IDs; no
    # setup to run on a node (the commands are ray up's, for real machines).
    config["provider"] = {
        "type": "external",
        "module": "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider",
        "use_node_id_as_ip": True,
        "disable_node_updaters": True,
        "disable_launch_config_check": True,
        "gcs_address": f"127.0.0.1:{gcs_port}",
    }
    return config


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (ended ones it has not reaped are not counted)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            except (OSError, IndexError, ValueError):
                continue
            if int(ppid) == pid and state != "Z":
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def autoscaling() -> Iterator[Autoscaling]:
    import ray._private.ray_constants as ray_constants
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID
    from ray.cluster_utils import Cluster

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback: see test_cluster
    ray_constants.ENABLE_RAY_CLUSTER = False
    temp = tempfile.mkdtemp(prefix="rtfs-autoscaling-")
    env = {
        "RAY_TMPDIR": temp,
        "RAY_FAKE_CLUSTER": "1",  # the fake provider refuses to run without it
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",  # the autoscaler's round, 5 s by default
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    os.makedirs(os.path.join(temp, "ray"))
    (gcs_port,) = free_ports(1)
    config = Path(temp) / "autoscaling.json"
    config.write_text(json.dumps(autoscaling_config(gcs_port)))
    cluster = Cluster(
        initialize_head=True,
        head_node_args=loopback_head(
            temp,
            gcs_port,
            autoscaling_config=str(config),
            # The ID the fake provider gives the head (as ``ray start`` does under
            # RAY_FAKE_CLUSTER): the autoscaler finds the head by it.
            env_vars={"RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID},
        ),
    )
    assert cluster.head_node is not None
    monitor = cluster.head_node.all_processes[ray_constants.PROCESS_TYPE_MONITOR][0].process
    try:
        yield Autoscaling(cluster, monitor.pid)
    finally:
        # Nodes the autoscaler started and has not removed: their processes are the monitor's
        # children (a node's workers die with its raylet).
        for pid in children(monitor.pid):
            os.kill(pid, signal.SIGKILL)
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(temp, ignore_errors=True)


def gpu_nodes(autoscaling: Autoscaling) -> int:
    """GPU nodes alive in the GCS's node table."""
    table = autoscaling.cluster.global_state.node_table()
    return sum(1 for n in table if n["Alive"] and n["Resources"].get("GPU", 0) > 0)


def wait_gpu_nodes(autoscaling: Autoscaling, count: int, timeout: float) -> float:
    """Seconds until exactly ``count`` GPU nodes are alive."""
    start = time.monotonic()
    while (alive := gpu_nodes(autoscaling)) != count:
        assert time.monotonic() - start < timeout, f"{alive} GPU nodes, not {count}"
        time.sleep(0.5)
    return time.monotonic() - start


def test_replicas_that_do_not_fit_add_nodes_and_idle_nodes_go(
    autoscaling: Autoscaling, tmp_path: Path
) -> None:
    assert gpu_nodes(autoscaling) == 0
    base = tmp_path / MODEL
    shutil.copytree(TESTDATA / "saved_model_half_plus_two_cpu" / "00000123", base / "123")
    port, rest_port = free_ports(2)
    cli = run_cli(
        *[f for f in flags(port, rest_port, base, autoscaling.cluster.address) if "gpus" not in f],
        "--num_gpus=1",  # a whole GPU each: one serving replica per node
    )
    started = time.monotonic()
    try:
        cli.wait_ready()
        ready = time.monotonic() - started
        # The autoscaler added one GPU node per replica (no more: the bound is 3), each runs one.
        assert gpu_nodes(autoscaling) == 2
        pids = list(listeners(port))
        assert len(pids) == 2
        raylets = {parent(p) for p in pids}
        assert len(raylets) == 2 and set(children(autoscaling.monitor)) >= raylets
        assert list(predict(port, MODEL).outputs["y"].float_val) == [3.0]
    finally:
        assert cli.stop() == 0, cli.output[-4000:]
    # No replica left: the nodes are idle, and removed once the idle timeout is over.
    gone = wait_gpu_nodes(autoscaling, 0, timeout=IDLE_TIMEOUT_MINUTES * 60 + 60)
    deadline = time.monotonic() + 30  # their raylets end too
    while set(children(autoscaling.monitor)) & raylets:
        assert time.monotonic() < deadline, set(children(autoscaling.monitor)) & raylets
        time.sleep(0.2)
    print(
        f"\nautoscaler: 0 -> 2 GPU nodes, server ready {ready:.0f} s after its start; "
        f"2 -> 0 nodes {gone:.0f} s after it stopped (idle timeout "
        f"{IDLE_TIMEOUT_MINUTES * 60:.0f} s)"
    )
