"""The model-version deployment's batch queue, in-process (the class Serve runs, no Ray): TF
Serving's queue bounds and ``num_batch_threads`` over a real SavedModel."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from serve_app.calls import Api, ModelCall, ModelReply
from serve_app.runtime.model import ModelVersion


@pytest.fixture
def model(testdata: Path) -> Iterator[ModelVersion]:
    path = testdata / "saved_model_half_plus_two_cpu" / "00000123"
    m = ModelVersion("half_plus_two", 123, str(path), session={})
    assert m.load_state().ok
    yield m
    m.servable.close()  # type: ignore[union-attr]


def request(rows: int, deadline: float | None = None) -> ModelCall:
    r = predict_pb2.PredictRequest()
    r.model_spec.name = "half_plus_two"
    r.inputs["x"].CopyFrom(tf.make_tensor_proto(np.full((rows, 1), 2.0, np.float32)))
    return ModelCall(Api.PREDICT, r.model_spec, r, deadline=deadline)


def batching(**knobs: Any) -> dict[str, Any]:
    """A ``user_config`` with batching on: one batch thread unless ``knobs`` say otherwise (0,
    the default, would be one per core of this machine)."""
    return {"batching": {"enabled": True, "num_batch_threads": 1, **knobs}}


def y(reply: ModelReply) -> np.ndarray:
    response = predict_pb2.PredictResponse.FromString(reply.raise_for_status())
    return tf.make_ndarray(response.outputs["y"])


async def gather(m: ModelVersion, *sizes: int) -> list[ModelReply]:
    return await asyncio.gather(*(m.call(request(n)) for n in sizes))


def hold_model_runs(model: ModelVersion) -> tuple[list[int], threading.Event, threading.Event]:
    """Every model run records its batch size, sets ``started`` and waits for ``release``."""
    servable = model.servable
    assert servable is not None
    run = servable.run
    sizes: list[int] = []
    started, release = threading.Event(), threading.Event()

    def held_run(signature: Any, inputs: dict[str, np.ndarray], aliases: Any) -> Any:
        sizes.append(len(inputs["x"]))
        started.set()
        assert release.wait(20)
        return run(signature, inputs, aliases)

    servable.run = held_run  # type: ignore[method-assign]
    return sizes, started, release


def test_task_larger_than_a_batch_is_invalid_argument(model: ModelVersion) -> None:
    model.reconfigure(batching(max_batch_size=2))
    (reply,) = asyncio.run(gather(model, 3))
    assert reply.code == grpc.StatusCode.INVALID_ARGUMENT
    assert reply.message == "Task size 3 is larger than maximum input batch size 2"


def test_full_batch_queue_is_unavailable_with_tf_servings_message(model: ModelVersion) -> None:
    """One batch of two may wait: the third row needs a second batch and is refused at once;
    the two queued ones still run, as one batch."""
    model.reconfigure(
        batching(max_batch_size=2, batch_timeout_micros=10**6, max_enqueued_batches=1)
    )
    first, second, third = asyncio.run(gather(model, 1, 1, 1))
    np.testing.assert_array_equal(y(first), [[3.0]])
    np.testing.assert_array_equal(y(second), [[3.0]])
    assert third.code == grpc.StatusCode.UNAVAILABLE
    assert third.message == (
        "The batch scheduling queue to which this task was submitted is full; "
        "currently 1 batches enqueued and max_enqueued_batches is 1"
    )
    # The queue drained: the bound admits again.
    assert [y(r).tolist() for r in asyncio.run(gather(model, 2))] == [[[3.0], [3.0]]]


def test_num_batch_threads_changes_at_runtime(model: ModelVersion) -> None:
    """Raised from 1 to 2 while the replica serves: two one-row batches then meet at a barrier
    inside the model run (with one batch thread the second would wait and the barrier break)."""
    servable = model.servable
    assert servable is not None
    run = servable.run
    barrier = threading.Barrier(2, timeout=20)

    def meeting_run(*args: Any, **kwargs: Any) -> Any:
        barrier.wait()
        return run(*args, **kwargs)

    model.reconfigure(batching(max_batch_size=1, batch_timeout_micros=0))

    async def scenario() -> list[ModelReply]:
        assert [y(r).tolist() for r in await gather(model, 1)] == [[[3.0]]]  # one thread runs
        model.reconfigure(batching(max_batch_size=1, batch_timeout_micros=0, num_batch_threads=2))
        servable.run = meeting_run  # type: ignore[method-assign]
        return await gather(model, 1, 1)

    replies = asyncio.run(scenario())
    assert [y(r).tolist() for r in replies] == [[[3.0]], [[3.0]]]
    assert not barrier.broken


def test_batch_fills_while_the_model_is_busy(model: ModelVersion) -> None:
    """TF Serving's queue: with every batch thread busy, arrivals wait in one open batch (even
    with a zero timeout) and run together once the thread is free."""
    sizes, started, release = hold_model_runs(model)
    model.reconfigure(batching(max_batch_size=8, batch_timeout_micros=0))

    async def scenario() -> list[ModelReply]:
        first = asyncio.ensure_future(model.call(request(1)))
        await asyncio.to_thread(started.wait, 20)  # the only batch thread is busy
        rest = [asyncio.ensure_future(model.call(request(1))) for _ in range(5)]
        await asyncio.sleep(0)  # each reaches the queue
        release.set()
        return await asyncio.gather(first, *rest)

    replies = asyncio.run(scenario())
    assert [y(r).tolist() for r in replies] == [[[3.0]]] * 6
    assert sizes == [1, 5]


def test_a_call_whose_deadline_passes_in_the_queue_is_not_run(model: ModelVersion) -> None:
    """Queued behind a busy batch thread until its caller's deadline passes: DEADLINE_EXCEEDED,
    and the model never sees its rows; a call without a deadline queued with it still runs."""
    sizes, started, release = hold_model_runs(model)
    model.reconfigure(batching(max_batch_size=8, batch_timeout_micros=0))

    async def scenario() -> list[ModelReply]:
        first = asyncio.ensure_future(model.call(request(1)))
        await asyncio.to_thread(started.wait, 20)
        late = asyncio.ensure_future(model.call(request(1, deadline=time.time() + 0.2)))
        patient = asyncio.ensure_future(model.call(request(2)))
        await asyncio.sleep(0.4)  # the deadline passes while both wait in the queue
        release.set()
        return await asyncio.gather(first, late, patient)

    first, late, patient = asyncio.run(scenario())
    assert y(first).tolist() == [[3.0]]
    assert late.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert late.message == "Deadline Exceeded"
    assert y(patient).tolist() == [[3.0], [3.0]]
    assert sizes == [1, 2]


def concurrent_runs(model: ModelVersion, calls: int) -> int:
    """The most model runs under way at once while ``calls`` unbatched calls are answered."""
    servable = model.servable
    assert servable is not None
    run = servable.run
    lock, now, most = threading.Lock(), [0], [0]

    def counted_run(*args: Any) -> Any:
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        time.sleep(0.05)  # long enough for every free pool thread to start one
        try:
            return run(*args)
        finally:
            with lock:
                now[0] -= 1

    servable.run = counted_run  # type: ignore[method-assign]
    replies = asyncio.run(gather(model, *[1] * calls))
    assert all(y(r).tolist() == [[3.0]] for r in replies)
    return most[0]


@pytest.mark.parametrize(
    ("session", "most"),
    [
        ({}, 4),  # TF's inter-op pool spreads the ops of four runs at once
        ({"intra_op_parallelism": 1, "inter_op_parallelism": -1}, 1),  # ops inline: one core
        ({"intra_op_parallelism": 2, "inter_op_parallelism": -1}, 2),
    ],
)
def test_runs_at_once_outside_batching(testdata: Path, session: dict[str, int], most: int) -> None:
    path = testdata / "saved_model_half_plus_two_cpu" / "00000123"
    m = ModelVersion("half_plus_two", 123, str(path), session=session)
    try:
        assert concurrent_runs(m, 8) == most
    finally:
        m.servable.close()  # type: ignore[union-attr]


def test_no_batch_threads_given_is_the_sessions_threads(testdata: Path) -> None:
    """``num_batch_threads`` 0 (TF Serving's default: every core) becomes the session's intra-op
    threads: a serving replica's share of the node."""
    path = testdata / "saved_model_half_plus_two_cpu" / "00000123"
    m = ModelVersion("half_plus_two", 123, str(path), session={"intra_op_parallelism": 3})
    try:
        assert m.batching.num_batch_threads == 3
        m.reconfigure({"batching": {"enabled": True, "num_batch_threads": 0}})
        assert m.batching.num_batch_threads == 3
        m.reconfigure({"batching": {"enabled": True, "num_batch_threads": 5}})
        assert m.batching.num_batch_threads == 5
    finally:
        m.servable.close()  # type: ignore[union-attr]


FREED_AFTER_UNLOAD = """
import gc, sys, weakref
from serve_app.runtime.model import ModelVersion
for path in sys.argv[1:]:
    version = ModelVersion("m", 1, path, session={"intra_op_parallelism": 1})
    assert version.load_state().ok
    servable = weakref.ref(version.servable)
    del version
    gc.collect()
    print("freed" if servable() is None else "pinned")
"""


def test_the_first_version_a_process_loads_is_freed_once_unloaded(testdata: Path) -> None:
    """``gc.freeze`` happens before the first version exists: frozen with it, its graph and
    session stayed in memory after its unload, for the process's life. A new process loads a
    TF2 model first, then a TF1 one: each is freed once unloaded."""
    import subprocess
    import sys

    models = ("saved_model_half_plus_two_tf2_cpu", "saved_model_half_plus_two_cpu")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            FREED_AFTER_UNLOAD,
            *(str(testdata / m / "00000123") for m in models),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["freed", "freed"], done.stdout


@pytest.fixture
def version_dir(testdata: Path, tmp_path: Path) -> Path:
    """A writable copy of half_plus_two's version 123."""
    import shutil

    path = tmp_path / "half_plus_two" / "123"
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu" / "00000123", path)
    return path


def test_a_versions_batching_params_file_sets_its_batching(version_dir: Path) -> None:
    """--enable_per_model_batching_parameters: the version's batching_params.pbtxt replaces the
    server's knobs, but for num_batch_threads (TF Serving's shared pool); a batch larger than
    the file's max_batch_size is refused as any oversized batch is."""
    (version_dir / "batching_params.pbtxt").write_text(
        "max_batch_size { value: 4 } batch_timeout_micros { value: 123 } "
        "num_batch_threads { value: 9 } allowed_batch_sizes: 2 allowed_batch_sizes: 4"
    )
    m = ModelVersion("half_plus_two", 123, str(version_dir), session={}, per_model_batching=True)
    try:
        assert m.load_state().ok
        m.reconfigure(batching(max_batch_size=32, num_batch_threads=2))
        knobs = m.batching
        assert (knobs.max_batch_size, knobs.batch_timeout_micros) == (4, 123)
        assert (knobs.allowed_batch_sizes, knobs.num_batch_threads) == ([2, 4], 2)
        assert knobs.max_enqueued_batches == 10  # unset in the file: TF Serving's default
        (reply,) = asyncio.run(gather(m, 5))
        assert reply.code == grpc.StatusCode.INVALID_ARGUMENT
        assert reply.message == "Task size 5 is larger than maximum input batch size 4"
        assert y(asyncio.run(gather(m, 3))[0]).tolist() == [[3.0]] * 3
        m.reconfigure({"batching": {"enabled": False}})  # no batching: the file is not used
        assert not m.batching.enabled
    finally:
        m.servable.close()  # type: ignore[union-attr]
    plain = ModelVersion("half_plus_two", 123, str(version_dir), session={})
    try:
        plain.reconfigure(batching(max_batch_size=32))
        assert plain.batching.max_batch_size == 32  # without the flag the file is not read
    finally:
        plain.servable.close()  # type: ignore[union-attr]


def test_a_batching_params_file_that_does_not_parse_fails_the_load(version_dir: Path) -> None:
    (version_dir / "batching_params.pbtxt").write_text("max_batch_size: {{")
    m = ModelVersion("half_plus_two", 123, str(version_dir), session={}, per_model_batching=True)
    state = m.load_state()
    assert not state.ok and "Invalid protobuf file" in state.message
    (version_dir / "batching_params.pbtxt").write_text(
        "max_batch_size { value: 4 } allowed_batch_sizes: 2"
    )
    m = ModelVersion("half_plus_two", 123, str(version_dir), session={}, per_model_batching=True)
    state = m.load_state()
    assert not state.ok and "must equal max_batch_size" in state.message


def test_predict_outputs_in_tensor_content(testdata: Path) -> None:
    """--enable_serialization_as_tensor_content: gRPC Predict's outputs as raw bytes."""
    path = testdata / "saved_model_half_plus_two_cpu" / "00000123"
    m = ModelVersion("half_plus_two", 123, str(path), session={}, tensor_content=True)
    try:
        (reply,) = asyncio.run(gather(m, 2))
        out = predict_pb2.PredictResponse.FromString(reply.raise_for_status()).outputs["y"]
        assert not out.float_val and out.tensor_content
        assert tf.make_ndarray(out).tolist() == [[3.0], [3.0]]
    finally:
        m.servable.close()  # type: ignore[union-attr]


def test_warmup_iterations_reach_the_replay(
    testdata: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--num_request_iterations_for_warmup: each record replayed that many times (0: once);
    ``compat.warmup``'s tests hold what an iteration does."""
    from serve_app.runtime import model as model_module

    seen: list[int] = []

    def replay(*args: Any, iterations: int = 1) -> int:
        seen.append(iterations)
        return 0

    monkeypatch.setattr(model_module, "replay_warmup", replay)
    path = str(testdata / "saved_model_half_plus_two_cpu" / "00000123")
    for given in (0, 1, 3):
        m = ModelVersion("half_plus_two", 123, path, session={}, warmup_iterations=given)
        m.servable.close()  # type: ignore[union-attr]
    assert seen == [1, 1, 3]
