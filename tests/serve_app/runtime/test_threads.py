"""How many TF threads a serving replica takes (``dataplane.share_cores``, ``share_threads``),
how many model runs a version starts at once (``model.runs_at_once``), and how many versions
it loads at once (``dataplane.load_all``)."""

from __future__ import annotations

import pytest

from serve_app.runtime import dataplane
from serve_app.runtime.model import RUNS_AT_ONCE, runs_at_once
from serve_app.runtime.replica_config import SessionConfig, VersionOptions


def options(**session: int) -> VersionOptions:
    return VersionOptions(
        session=SessionConfig(**session),
        warmup=True,
        max_load_retries=0,
        load_retry_interval_s=0.0,
        check_method_name=False,
        warmup_iterations=0,
        tensor_content=False,
        per_model_batching=False,
        object_store_cache_max_mb=10240,
    )


def planned(cores: int, replicas: int, gpu: bool = False, **session: int) -> tuple[int, int]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dataplane, "usable_cores", lambda: cores)
        shared = dataplane.share_cores(options(**session), replicas, gpu)
    assert shared is not None
    return shared.session.intra_op_parallelism, shared.session.inter_op_parallelism


def test_a_one_core_share_runs_ops_inline() -> None:
    assert planned(2, 2) == (1, dataplane.INLINE_OPS)
    assert planned(1, 2) == (1, dataplane.INLINE_OPS)  # at least one thread each
    assert planned(4, 2, intra_op_parallelism=1) == (1, dataplane.INLINE_OPS)


def test_a_larger_share_keeps_an_inter_op_pool_of_its_share() -> None:
    assert planned(16, 2) == (8, 8)
    assert planned(2, 1) == (2, 2)
    assert planned(16, 8) == (2, 2)
    assert planned(16, 2, intra_op_parallelism=6) == (3, 3)


def test_a_gpu_replica_keeps_tfs_inter_op_pool() -> None:
    assert planned(2, 2, gpu=True) == (1, 0)


def test_what_the_arguments_set_is_the_nodes_shared_out() -> None:
    """TF Serving's thread flags are for its one process, the node: each serving replica takes
    an equal part, at least one; a negative inter-op count (ops inline) is kept."""
    assert planned(2, 2, inter_op_parallelism=6) == (1, 3)
    assert planned(16, 2, intra_op_parallelism=6, inter_op_parallelism=-1) == (3, -1)
    assert planned(16, 2, gpu=True, intra_op_parallelism=6) == (3, 0)
    assert planned(16, 4, intra_op_parallelism=2) == (1, dataplane.INLINE_OPS)  # at least one
    assert planned(16, 1, intra_op_parallelism=3, inter_op_parallelism=5) == (3, 5)
    assert dataplane.share_cores(None, 2, False) is None


def test_share_threads() -> None:
    assert dataplane.share_threads(2, 2) == 1  # the batching file: 2 batch threads, 2 cores
    assert dataplane.share_threads(8, 2) == 4
    assert dataplane.share_threads(7, 2) == 3
    assert dataplane.share_threads(1, 2) == 1
    assert dataplane.share_threads(16, 1) == 16
    assert dataplane.share_threads(0, 2) == 0  # TF's default: filled in later (the cores' share)
    assert dataplane.share_threads(-1, 2) == -1  # TF's marker: ops inline


def test_versions_load_load_threads_at_once() -> None:
    """--num_load_threads: the loads run off the event loop, at most that many at once; 0, as
    TF Serving's, one at a time. Every target gets its own version back."""
    import asyncio
    import threading

    def run(threads: int, targets: list[str]) -> tuple[dict[str, object], int]:
        lock, running, most = threading.Lock(), [0], [0]
        started = threading.Barrier(min(max(1, threads), len(targets)), timeout=10)

        def load(target: str) -> object:
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            started.wait()  # the first ones meet: that many did run at once
            with lock:
                running[0] -= 1
            return f"loaded {target}"

        loaded = asyncio.run(dataplane.load_all(targets, load, threads))  # type: ignore[arg-type]
        return loaded, most[0]

    targets = ["a", "b", "c", "d"]
    loaded, most = run(4, targets)
    assert loaded == {t: f"loaded {t}" for t in targets} and most == 4
    assert run(2, targets)[1] == 2
    assert run(0, targets)[1] == 1
    assert run(3, [])[0] == {}


def test_runs_at_once() -> None:
    assert runs_at_once(SessionConfig()) == RUNS_AT_ONCE
    assert runs_at_once(SessionConfig(intra_op_parallelism=1, inter_op_parallelism=3)) == 4
    assert runs_at_once(SessionConfig(intra_op_parallelism=1, inter_op_parallelism=-1)) == 1
    assert runs_at_once(SessionConfig(intra_op_parallelism=6, inter_op_parallelism=-1)) == 6
