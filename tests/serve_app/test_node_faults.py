"""Faults of a real multi-node Ray cluster under steady gRPC load (Ray's ``cluster_utils.Cluster``
on this machine, loopback only): a head with no GPU whose GCS keeps its state in a real Redis
server (Ray's GCS fault tolerance, ``RAY_REDIS_ADDRESS``), and two worker nodes declaring one GPU
each, so that each runs one of the two serving replicas ``ray-tfserving --accelerator=gpu
--num_gpus=1`` asks for.

- The head's GCS killed and restarted: no call fails (clients talk to the serving replicas,
  the data path never touches the GCS), and the cluster carries on (the server stops cleanly).
- A worker node removed: only the calls on the connections its replica held fail, each client
  that lost one succeeds on its next call (a new connection, to the surviving replica).

The clients run in a process of their own (``CLIENT_PROCESS``), as clients do.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from tensorflow_serving.apis import predict_pb2

from tests.harness import TESTDATA, established, free_ports, loopback_head, row_pids
from tests.serve_app.launch.test_cli import Cli, predict, predict_request, run_cli
from tests.serve_app.test_cluster import MODEL, flags, parent
from tests.serve_app.test_serving_path import listeners

CLIENTS = 8
DEADLINE_S = 5.0
MAX_CALLS_PER_CLIENT = 50_000
GCS_DOWN_S = 3.0
"""How long the GCS stays dead under load."""


@dataclass
class Faulty:
    cluster: Any  # ray.cluster_utils.Cluster
    workers: list[Any]  # its worker nodes (ray._private.node.Node)
    port: int
    cli: Cli


def raylet(node: Any) -> int:
    import ray._private.ray_constants as ray_constants

    return int(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    """A real Redis server of this module's own (Debian's ``redis-server``), nothing persisted."""
    redis = shutil.which("redis-server")
    if redis is None:
        pytest.fail("redis-server not installed: make system-deps")
    (port,) = free_ports(1)
    workdir = tempfile.mkdtemp(prefix="rtfs-redis-")
    process = subprocess.Popen(
        [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not listeners(port) and time.monotonic() < deadline:
            assert process.poll() is None, "redis-server exited"
            time.sleep(0.1)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def faulty(redis_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faulty]:
    import ray._private.ray_constants as ray_constants
    from ray.cluster_utils import Cluster

    base = tmp_path_factory.mktemp("faults") / MODEL
    shutil.copytree(TESTDATA / "saved_model_half_plus_two_cpu" / "00000123", base / "123")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback: see test_cluster
    ray_constants.ENABLE_RAY_CLUSTER = False
    temp = tempfile.mkdtemp(prefix="rtfs-faults-")
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_REDIS_ADDRESS")}
    os.environ["RAY_TMPDIR"] = temp
    # Ray's GCS fault tolerance: the head's GCS stores its tables in this Redis.
    os.environ["RAY_REDIS_ADDRESS"] = f"127.0.0.1:{redis_port}"
    os.makedirs(os.path.join(temp, "ray"))
    (gcs_port,) = free_ports(1)
    cluster = Cluster(
        initialize_head=True,
        # the GCS port fixed: the restarted GCS comes back on it
        head_node_args=loopback_head(temp, gcs_port),
    )
    cli = None
    try:
        workers = [
            cluster.add_node(num_cpus=1, num_gpus=1, node_ip_address="127.0.0.1") for _ in "ab"
        ]
        cluster.wait_for_nodes()
        port, rest_port = free_ports(2)
        cli = run_cli(
            *[f for f in flags(port, rest_port, base, cluster.address) if "num_gpus" not in f],
            "--num_gpus=1",  # one serving replica per worker node
        )
        cli.wait_ready()
        yield Faulty(cluster, workers, port, cli)
        # The cluster still works after the faults: the server stops cleanly through it.
        assert cli.stop() == 0, cli.output[-4000:]
    finally:
        if cli is not None and cli.process.poll() is None:
            cli.stop()
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(temp, ignore_errors=True)


def serving_replicas(faulty: Faulty) -> dict[int, int]:
    """pid -> raylet of each serving replica listening on the gRPC port."""
    return {pid: parent(pid) for pid in listeners(faulty.port)}


PREDICT = "/tensorflow.serving.PredictionService/Predict"
CLIENT_PROCESS = """
import sys, threading, time, grpc
port, clients, deadline_s, calls, method, request, expected = sys.argv[1:8]
request, expected = bytes.fromhex(request), bytes.fromhex(expected)
stop, lock = threading.Event(), threading.Lock()

def run(i):
    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own
    with grpc.insecure_channel("127.0.0.1:" + port, options=options) as channel:
        predict = channel.unary_unary(method)
        for _ in range(int(calls)):
            if stop.is_set():
                return
            started = time.monotonic()
            try:
                code = "OK" if predict(request, timeout=float(deadline_s)) == expected else "WRONG"
            except grpc.RpcError as e:
                code = e.code().name
                time.sleep(0.01)  # a failing client does not spin
            with lock:
                print(i, started, time.monotonic(), code, flush=True)

threads = [threading.Thread(target=run, args=(i,)) for i in range(int(clients))]
for t in threads:
    t.start()
sys.stdin.read()  # until the test closes it
stop.set()
for t in threads:
    t.join()
"""
"""The load's clients, in a process of their own as clients are: the test process then runs no
gRPC thread when Ray forks a process from it (the restarted GCS): gRPC's fork handlers and
threads in a call do not mix."""


@dataclass
class Clients:
    """``CLIENTS`` clients, each with a connection of its own, calling Predict in a loop (bounded
    in calls) from a process of their own; every call's (start, end, code) per client, on the
    monotonic clock all processes share."""

    port: int
    calls: list[list[tuple[float, float, str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.calls = [[] for _ in range(CLIENTS)]
        request = predict_request(MODEL).SerializeToString()
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            # What every call must answer, byte for byte: y = [3.0].
            expected = channel.unary_unary(PREDICT)(request, timeout=DEADLINE_S)
        assert list(predict_pb2.PredictResponse.FromString(expected).outputs["y"].float_val) == [
            3.0
        ]
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CLIENT_PROCESS,
                str(self.port),
                str(CLIENTS),
                str(DEADLINE_S),
                str(MAX_CALLS_PER_CLIENT),
                PREDICT,
                request.hex(),
                expected.hex(),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            i, start, end, code = line.split()
            self.calls[int(i)].append((float(start), float(end), code))

    def __enter__(self) -> Clients:
        self.reader.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()  # the clients stop after their call in flight
        try:
            self.process.wait(timeout=DEADLINE_S + 30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        self.reader.join(timeout=30)

    def ok_after(self, t0: float) -> int:
        return sum(1 for calls in self.calls for s, _, c in calls if s >= t0 and c == "OK")

    def wait_ok_after(self, t0: float, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.ok_after(t0) < count:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise TimeoutError(f"fewer than {count} successful calls after {t0}")
            time.sleep(0.05)

    def failed(self) -> list[tuple[int, float, float, str]]:
        return [
            (i, s, e, c) for i, calls in enumerate(self.calls) for s, e, c in calls if c != "OK"
        ]


def test_gcs_restart_under_load_fails_no_call(faulty: Faulty) -> None:
    head = faulty.cluster.head_node
    import ray._private.ray_constants as ray_constants

    gcs = head.all_processes[ray_constants.PROCESS_TYPE_GCS_SERVER][0].process
    with Clients(faulty.port) as load:
        load.wait_ok_after(time.monotonic(), 100)
        killed = time.monotonic()
        head.kill_gcs_server()
        assert gcs.poll() is not None  # really gone
        time.sleep(GCS_DOWN_S)
        served_without_gcs = load.ok_after(killed)
        head.start_gcs_server()
        restarted = time.monotonic()
        load.wait_ok_after(restarted, 100)
        # The restarted GCS took its state back from Redis: every node alive in its table.
        faulty.cluster.wait_for_nodes(60)
    assert load.failed() == []
    assert served_without_gcs > 0
    total = sum(len(c) for c in load.calls)
    print(
        f"\nGCS down {restarted - killed:.1f} s under {CLIENTS} clients: {served_without_gcs} "
        f"calls served meanwhile, {total} in all, 0 failed"
    )


def test_a_worker_node_removed_under_load_costs_only_its_connections(faulty: Faulty) -> None:
    replicas = serving_replicas(faulty)
    raylets = {raylet(w): w for w in faulty.workers}
    victims = [pid for pid, r in replicas.items() if r in raylets]
    assert len(victims) >= 1 and len(replicas) >= 2, replicas  # a survivor to move to
    victim = victims[0]
    node = raylets[replicas[victim]]
    with Clients(faulty.port) as load:
        load.wait_ok_after(time.monotonic(), 100)
        # The connections each replica holds: every client has one, on one replica.
        held = {pid: len(connections(faulty.port, pid)) for pid in replicas}
        assert sum(held.values()) == CLIENTS, held
        removed = time.monotonic()
        faulty.cluster.remove_node(node)
        deadline = time.monotonic() + 60
        while victim in listeners(faulty.port):
            assert time.monotonic() < deadline, "the removed node's replica still listens"
            time.sleep(0.1)
        gone = time.monotonic()
        load.wait_ok_after(gone, 200)
    faulty.workers.remove(node)
    failed = load.failed()
    # Only clients whose connection was on the lost node's replica saw a failure, each one
    # once (the call in flight on it): the next call connects to the survivor and succeeds.
    hit = {i for i, *_ in failed}
    assert len(hit) <= held[victim], (held, failed)
    assert len(failed) == len(hit), failed
    assert {c for *_, c in failed} <= {"UNAVAILABLE"}, failed  # no wrong answer either
    for i in hit:
        after = [c for s, e, c in load.calls[i] if s > max(f[2] for f in failed if f[0] == i)]
        assert after and all(c == "OK" for c in after)
    assert all(s >= removed - DEADLINE_S for _, s, _, _ in failed)
    assert list(predict(faulty.port, MODEL).outputs["y"].float_val) == [3.0]
    total = sum(len(c) for c in load.calls)
    print(
        f"\nworker node removed under {CLIENTS} clients: its replica held {held[victim]} "
        f"connections, {len(failed)} calls failed ({len(hit)} clients, once each), "
        f"{total} calls in all; replica gone {gone - removed:.1f} s after the removal"
    )


def connections(port: int, pid: int) -> list[str]:
    """The established connections ``pid`` accepted on ``port`` (``ss``)."""
    return [row for row in established(port) if pid in row_pids(row)]
