"""The default serving path: every serving replica holds the client ports (SO_REUSEPORT), runs
the model in its own process, and a replica killed under load costs only its own connections.
The same server serves gRPC on a Unix socket too (``grpc_socket_path``, TF Serving's
testPredictUDS), which survives the replica that published it.

No timing asserts: the kill test checks codes (a call on a killed process fails UNAVAILABLE at
once, never DEADLINE_EXCEEDED at its deadline) and that everything after the recovery
succeeds; it prints the failure window it measured.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.harness import Server, established, row_pids, start_server

MODEL = "half_plus_two"
DEADLINE_S = 5.0
CLIENTS = 8
MAX_CALLS_PER_CLIENT = 50_000
RECOVERY_TIMEOUT_S = 180.0


@pytest.fixture(scope="module")
def socket_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("uds") / "tf-serving.sock"


@pytest.fixture(scope="module")
def server(testdata: Path, socket_path: Path) -> Iterator[Server]:
    s = start_server(
        f"model_name={MODEL}",
        f"model_base_path={testdata / 'saved_model_half_plus_two_cpu'}",
        f"grpc_socket_path={socket_path}",
        wait_for=(MODEL,),
    )
    yield s
    s.stop()
    assert not socket_path.exists()  # the last replica to stop removed the path


def unix_listeners(path: Path) -> dict[int, str]:
    """pid -> the Unix socket path it listens on, for the sockets beside ``path``."""
    out = subprocess.run(["ss", "-lxpH"], capture_output=True, text=True, check=True).stdout
    held = {}
    for row in out.splitlines():
        cols = row.split()
        if cols[4].startswith(str(path.parent)) and "pid=" in row:
            held[int(row.split("pid=")[1].split(",")[0])] = cols[4]
        # ss shows the path a socket was bound to: each replica's own, never the link
    return held


def unix_channel(path: Path) -> grpc.Channel:
    return grpc.insecure_channel(f"unix:{path}", options=[("grpc.use_local_subchannel_pool", 1)])


def predict_request(x: float = 2.0, model: str = MODEL) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[x]], dtype=tf.float32))
    return request


def listeners(port: int) -> dict[int, list[str]]:
    """pid -> the local addresses it listens on at ``port`` (``ss``)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    held: dict[int, list[str]] = {}
    for row in out.splitlines():
        cols = row.split()
        if cols[3].rsplit(":", 1)[1] != str(port):
            continue
        for part in cols[-1].split("pid=")[1:]:
            held.setdefault(int(part.split(",")[0]), []).append(cols[3])
    return held


def connected_pids(port: int) -> set[int]:
    """Processes holding established connections accepted on ``port``."""
    return {pid for row in established(port) for pid in row_pids(row)}


def own_connection(server: Server) -> grpc.Channel:
    """A channel with a connection of its own: gRPC shares one connection between channels to
    the same target with the same arguments (its global subchannel pool)."""
    return grpc.insecure_channel(
        server.grpc_target, options=[("grpc.use_local_subchannel_pool", 1)]
    )


def serving_pids(server: Server) -> set[int]:
    return {pid for pid, _ in server.replicas("Ingress")}


def wait_listening(server: Server, count: int, timeout: float = RECOVERY_TIMEOUT_S) -> set[int]:
    """Wait until ``count`` serving replicas listen on both ports; their pids."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = serving_pids(server)
        grpc_held, http_held = set(listeners(server.grpc_port)), set(listeners(server.http_port))
        if len(pids) == count and pids <= grpc_held and pids <= http_held:
            return pids
        time.sleep(0.2)
    raise TimeoutError(f"{count} serving replicas never listened: {server.log()[-3000:]}")


def test_every_serving_replica_listens_on_both_client_ports(server: Server) -> None:
    pids = wait_listening(server, 2)
    for port in (server.grpc_port, server.http_port):
        held = listeners(port)
        assert set(held) == pids  # the serving replicas, and nothing else (no Ray proxy)
        for addresses in held.values():
            assert set(addresses) <= {f"127.0.0.1:{port}", f"[::ffff:127.0.0.1]:{port}"}


def test_predict_over_grpc_and_rest(server: Server) -> None:
    response = server.prediction_stub().Predict(predict_request(), 10.0)
    assert response.outputs["y"].float_val == [3.0]
    assert response.model_spec.version.value == 123
    body = json.dumps({"instances": [1.0, 2.0]}).encode()
    url = f"{server.http_base}/v1/models/{MODEL}:predict"
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as r:
        assert json.loads(r.read()) == {"predictions": [2.5, 3.0]}


def test_predict_over_the_unix_socket(server: Server, socket_path: Path) -> None:
    """TF Serving's testPredictUDS: Predict over ``unix:<grpc_socket_path>``. Each serving
    replica listens on a socket of its own beside the path; the path is one of them."""
    pids = wait_listening(server, 2)
    with unix_channel(socket_path) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(predict_request(), 10.0)
    assert response.outputs["y"].float_val == [3.0]
    assert response.model_spec.version.value == 123
    held = unix_listeners(socket_path)
    assert set(held) == pids
    published = socket_path.stat().st_ino
    assert [pid for pid, own in held.items() if Path(own).stat().st_ino == published]


def test_errors_keep_tf_servings_codes(server: Server) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "missing"
    with pytest.raises(grpc.RpcError) as info:
        server.prediction_stub().Predict(request, 10.0)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "Servable not found for request: Latest(missing)"
    with pytest.raises(grpc.RpcError) as info:
        server.channel.unary_unary("/tensorflow.serving.PredictionService/Predict")(
            b"\xff\xff\xff", timeout=10.0
        )
    # bytes that are no PredictRequest: INTERNAL, as C++ gRPC's deserializer answers in TF Serving
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == "Could not parse request as tensorflow.serving.PredictRequest"


def test_both_serving_replicas_take_connections_on_one_port(server: Server) -> None:
    """32 channels (connections) to the one gRPC port: the kernel hands them to both replicas
    (all on one of two has a chance of 2 in 2**32), and each is answered."""
    pids = wait_listening(server, 2)
    channels = [own_connection(server) for _ in range(32)]
    try:
        for channel in channels:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            assert stub.Predict(predict_request(), 10.0).outputs["y"].float_val == [3.0]
        assert connected_pids(server.grpc_port) == pids
    finally:
        for channel in channels:
            channel.close()


@dataclass
class Load:
    """Client threads, a channel each, calling Predict with a deadline (bounded in calls)."""

    server: Server
    connect: Callable[[], grpc.Channel] | None = None
    """A new channel of a client's own (default: one to the gRPC port)."""
    clients: int = CLIENTS
    model: str = MODEL
    """The model called (any half_plus_two export: the answer is checked)."""
    calls: list[tuple[float, float, grpc.StatusCode]] = field(default_factory=list)
    """(start, end, code) of every call, monotonic seconds."""
    stop: threading.Event = field(default_factory=threading.Event)
    wrong: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.threads = [
            threading.Thread(target=self._run, daemon=True) for _ in range(self.clients)
        ]

    def _run(self) -> None:
        with (self.connect or (lambda: own_connection(self.server)))() as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_request(model=self.model)
            for _ in range(MAX_CALLS_PER_CLIENT):
                if self.stop.is_set():
                    return
                started = time.monotonic()
                try:
                    y = stub.Predict(request, DEADLINE_S).outputs["y"].float_val
                    code = grpc.StatusCode.OK
                    if list(y) != [3.0]:
                        self.wrong.append(str(y))
                except grpc.RpcError as e:
                    code = e.code()
                    time.sleep(0.01)  # a failing client does not spin
                self.calls.append((started, time.monotonic(), code))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def wait_ok_after(self, t0: float, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(1 for s, _, c in self.calls if s >= t0 and c == grpc.StatusCode.OK) >= count:
                return
            time.sleep(0.05)
        raise TimeoutError(f"fewer than {count} successful calls after the recovery")


def test_sigkill_of_each_serving_process_under_load(server: Server, socket_path: Path) -> None:
    """Kill one serving replica, wait until Serve's replacement listens, kill the other: each
    kill fails only calls that were on the dead process's connections, at once and with
    UNAVAILABLE, and every call after the recovery succeeds, on the gRPC port and on the Unix
    socket (whose path the survivor publishes when its publisher dies). Runs last."""
    pids = wait_listening(server, 2)
    report = []
    healthy: list[tuple[float, float]] = []  # from a recovery to the next kill
    unix = Load(server, connect=lambda: unix_channel(socket_path), clients=2)
    with Load(server) as load, unix:
        load.wait_ok_after(time.monotonic(), 200)
        unix.wait_ok_after(time.monotonic(), 50)
        for victim in sorted(pids):
            killed = time.monotonic()
            if healthy:
                healthy[-1] = (healthy[-1][0], killed)
            os.kill(victim, signal.SIGKILL)
            survivors = wait_listening(server, 2)  # the replacement loaded and bound the ports
            assert victim not in survivors
            recovered = time.monotonic()
            healthy.append((recovered, float("inf")))
            load.wait_ok_after(recovered, 400)
            unix.wait_ok_after(recovered, 100)
            failed = [c for c in load.calls if killed <= c[1] and c[2] != grpc.StatusCode.OK]
            lost = [c for c in unix.calls if killed <= c[1] and c[2] != grpc.StatusCode.OK]
            window = max((c[1] for c in failed), default=killed) - killed
            unix_window = max((c[1] for c in lost), default=killed) - killed
            report.append(
                f"pid {victim}: {len(failed)} failed calls over {window:.2f} s "
                f"({len(lost)} on the Unix socket, over {unix_window:.2f} s); "
                f"replacement listening after {recovered - killed:.1f} s"
            )
            pids = survivors
        load.wait_ok_after(time.monotonic(), 400)
        unix.wait_ok_after(time.monotonic(), 100)
    failures = [(s, e, c) for s, e, c in load.calls + unix.calls if c != grpc.StatusCode.OK]
    # In-flight calls on a killed process end at once with UNAVAILABLE, none waits out its
    # deadline (DEADLINE_EXCEEDED)
    assert {c for _, _, c in failures} <= {grpc.StatusCode.UNAVAILABLE}, failures[:5]
    # After each recovery (until the next kill) every call succeeds.
    for start, end in healthy:
        for calls in (load.calls, unix.calls):
            assert all(c == grpc.StatusCode.OK for s, e, c in calls if start <= s and e < end)
    assert load.wrong == [] and unix.wrong == []
    ok = sum(1 for *_, c in load.calls if c == grpc.StatusCode.OK)
    print(f"\n{ok} calls OK, {len(failures)} UNAVAILABLE; " + "; ".join(report))
