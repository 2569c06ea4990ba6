"""Version lifecycle with each version in deployments of its own (``colocate=false``): new
versions roll out blue/green under load with zero failed requests (the default path, versions
inside the serving replicas, is ``test_colocate``)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_status_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.harness import Server, start_server

State = get_model_status_pb2.ModelVersionStatus
MODEL = "deeplab"
CLIENTS = 4
MAX_CALLS_PER_CLIENT = 20000


def publish_version(base: Path, source: int, version: int) -> None:
    """Copy a version into place atomically (write a hidden dir, then rename), like the exporter."""
    tmp = base / f".tmp-{version}"
    shutil.copytree(base / str(source), tmp)
    os.rename(tmp, base / str(version))


def publish_broken(base: Path, version: int) -> None:
    """Publish a version whose saved_model.pb is not a SavedModel (atomically, as above)."""
    tmp = base / f".tmp-{version}"
    tmp.mkdir()
    (tmp / "saved_model.pb").write_bytes(b"not a SavedModel")
    os.rename(tmp, base / str(version))


def replica_processes(server: Server, version: int) -> int:
    return len(server.replicas(f"{MODEL}-v{version}"))


def wait_replicas_gone(server: Server, version: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while replica_processes(server, version) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert replica_processes(server, version) == 0, f"replica of version {version} still running"


def status(server: Server) -> dict[int, tuple[int, str]]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    response = server.model_stub().GetModelStatus(request, 10.0)
    return {s.version: (s.state, s.status.error_message) for s in response.model_version_status}


def wait_state(server: Server, version: int, state: int, timeout: float = 180.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if status(server).get(version, (None,))[0] == state:
            return time.monotonic()
        time.sleep(0.1)
    raise TimeoutError(
        f"version {version} never reached {State.State.Name(state)}: {status(server)}"
    )


@dataclass
class Load:
    """Client threads calling Predict until stopped (bounded in calls and time)."""

    server: Server
    seen: list[list[tuple[float, int]]] = field(
        default_factory=lambda: [[] for _ in range(CLIENTS)]
    )
    failures: list[str] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(CLIENTS)
        ]

    def _run(self, index: int) -> None:
        # A channel (connection) per client, so that every serving replica gets some of them.
        options = [("grpc.use_local_subchannel_pool", 1)]  # not one shared connection
        with grpc.insecure_channel(self.server.grpc_target, options=options) as channel:
            self._calls(index, prediction_service_pb2_grpc.PredictionServiceStub(channel))

    def _calls(self, index: int, stub: prediction_service_pb2_grpc.PredictionServiceStub) -> None:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        request.model_spec.signature_name = "predict_images"
        image = np.random.default_rng(index).uniform(0, 255, (1, 16, 16, 3)).astype(np.float32)
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(image))
        request.inputs["height"].CopyFrom(tf.make_tensor_proto([16], dtype=tf.int32))
        request.inputs["width"].CopyFrom(tf.make_tensor_proto([16], dtype=tf.int32))
        for _ in range(MAX_CALLS_PER_CLIENT):
            if self.stop.is_set():
                return
            started = time.monotonic()
            try:
                response = stub.Predict(request, 30.0)
            except grpc.RpcError as e:
                self.failures.append(f"{e.code()}: {e.details()}")
                continue
            done = time.monotonic()
            self.latencies.append((done, done - started))
            self.seen[index].append((done, response.model_spec.version.value))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def versions_after(self, t0: float, timeout: float = 60.0) -> set[int]:
        """The versions answered from ``t0`` on, once every client has had an answer then
        (bounded), so that a slow moment of the machine cannot leave the window empty."""
        deadline = max(t0, time.monotonic()) + timeout
        while time.monotonic() < deadline and not all(
            calls and calls[-1][0] >= t0 for calls in self.seen
        ):
            time.sleep(0.05)
        return {v for calls in self.seen for (t, v) in calls if t >= t0}


def rss_mb_of_replicas(server: Server) -> float:
    rows = [rss for _, rss, args in server.processes() if f"ServeReplica:default:{MODEL}-v" in args]
    return sum(rows) / 1024


def test_blue_green_rollout_and_rollback_under_load(deeplab_copy: Path) -> None:
    base = deeplab_copy
    server = start_server(
        f"model_name={MODEL}",
        f"model_base_path={base}",
        "file_system_poll_wait_seconds=0.5",
        "colocate=false",
        wait_for=(MODEL,),
    )
    try:
        peak = [0.0]
        watching = threading.Event()

        def watch_memory() -> None:
            while not watching.is_set():
                peak[0] = max(peak[0], rss_mb_of_replicas(server))
                time.sleep(0.2)

        watcher = threading.Thread(target=watch_memory, daemon=True)
        watcher.start()
        with Load(server) as load:
            assert load.versions_after(time.monotonic()) == {1}
            timings = {}
            for version in (2, 3):
                started = time.monotonic()
                publish_version(base, 1, version)
                available = wait_state(server, version, State.AVAILABLE)
                wait_state(server, version - 1, State.END)
                timings[version] = time.monotonic() - started
                assert load.versions_after(time.monotonic() + 0.5) == {version}
                # whoever saw the new version saw it only after it was AVAILABLE
                first_new = min(t for calls in load.seen for (t, v) in calls if v == version)
                assert first_new >= available - 1.0  # status polled every 0.1 s
                wait_replicas_gone(server, version - 1)  # blue is gone
            # A version that fails to load is never routed to; blue keeps serving.
            publish_broken(base, 4)
            wait_state(server, 4, State.END)
            assert status(server)[4][1]  # its error is shown
            assert status(server)[3][0] == State.AVAILABLE
            shutil.rmtree(base / "4")
            # Removing the newest version rolls back to the previous one.
            rollback = time.monotonic()
            shutil.rmtree(base / "3")
            wait_state(server, 2, State.AVAILABLE)
            wait_state(server, 3, State.END)
            assert load.versions_after(time.monotonic() + 0.5) == {2}
            rollback_s = time.monotonic() - rollback
        watching.set()
        assert load.failures == []
        for calls in load.seen:  # versions only move forward, except the explicit rollback
            before = [v for t, v in calls if t < rollback]
            assert before == sorted(before)
            assert all(v in (2, 3) for t, v in calls if t >= rollback)
        worst = max(lat for _, lat in load.latencies)
        total = sum(len(c) for c in load.seen)
        print(
            f"\navailability_preserving: {total} calls, 0 failed; rollout 1->2 {timings[2]:.1f}s, "
            f"2->3 {timings[3]:.1f}s, rollback {rollback_s:.1f}s; "
            f"worst latency {worst * 1000:.0f} ms; peak replica RSS {peak[0]:.0f} MB"
        )
    finally:
        server.stop()


def test_resource_preserving_unloads_first(deeplab_base: Path, tmp_path: Path) -> None:
    root = tmp_path / MODEL
    shutil.copytree(deeplab_base / "1", root / "1")
    server = start_server(
        f"model_name={MODEL}",
        f"model_base_path={root}",
        "rollout=resource_preserving",
        "file_system_poll_wait_seconds=0.5",
        "colocate=false",
        wait_for=(MODEL,),
    )
    try:
        both_alive = False
        peak = 0.0
        with Load(server) as load:
            time.sleep(1)
            started = time.monotonic()
            publish_version(root, 1, 2)
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                peak = max(peak, rss_mb_of_replicas(server))
                states = status(server)
                # v2 is created only after v1's deployment is gone (v1 END)
                both_alive |= 2 in states and states[1][0] != State.END
                if status(server).get(2, (0,))[0] == State.AVAILABLE and not replica_processes(
                    server, 1
                ):
                    break
                time.sleep(0.1)
            rollout_s = time.monotonic() - started
            recent = load.versions_after(time.monotonic() + 0.5)
        assert status(server)[1][0] == State.END
        assert status(server)[2][0] == State.AVAILABLE
        assert not both_alive  # never two versions deployed at once
        # The documented gap: while no version is loaded, requests get NOT_FOUND, nothing else.
        assert set(load.failures) <= {
            f"StatusCode.NOT_FOUND: Servable not found for request: Latest({MODEL})"
        }
        assert recent == {2}
        worst = max(lat for _, lat in load.latencies)
        print(
            f"\nresource_preserving: rollout 1->2 {rollout_s:.1f}s; "
            f"{sum(len(c) for c in load.seen)} calls ok, {len(load.failures)} refused in the gap; "
            f"worst latency {worst * 1000:.0f} ms; peak replica RSS {peak:.0f} MB"
        )
    finally:
        server.stop()
