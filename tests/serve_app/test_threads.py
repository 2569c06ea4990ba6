"""How many TF threads a serving replica takes (``ingress._share_cores``) and how many model
runs a version starts at once (``model.runs_at_once``), from what the arguments leave at 0."""

from __future__ import annotations

import pytest

from serve_app import ingress
from serve_app.model import RUNS_AT_ONCE, runs_at_once
from serve_app.replica_config import SessionConfig, VersionOptions

pytestmark = pytest.mark.unit


def options(**session: int) -> VersionOptions:
    return VersionOptions(
        session=SessionConfig(**session),
        warmup=True,
        max_load_retries=0,
        load_retry_interval_s=0.0,
        check_method_name=False,
        object_store_cache_max_mb=10240,
    )


def planned(cores: int, replicas: int, gpu: bool = False, **session: int) -> tuple[int, int]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ingress, "usable_cores", lambda: cores)
        shared = ingress._share_cores(options(**session), replicas, gpu)
    assert shared is not None
    return shared.session.intra_op_parallelism, shared.session.inter_op_parallelism


def test_a_one_core_share_runs_ops_inline() -> None:
    assert planned(2, 2) == (1, ingress.INLINE_OPS)
    assert planned(1, 2) == (1, ingress.INLINE_OPS)  # at least one thread each
    assert planned(4, 2, intra_op_parallelism=1) == (1, ingress.INLINE_OPS)


def test_a_larger_share_keeps_an_inter_op_pool_of_its_share() -> None:
    assert planned(16, 2) == (8, 8)
    assert planned(2, 1) == (2, 2)
    assert planned(16, 8) == (2, 2)
    assert planned(16, 2, intra_op_parallelism=3) == (3, 3)


def test_a_gpu_replica_keeps_tfs_inter_op_pool() -> None:
    assert planned(2, 2, gpu=True) == (1, 0)


def test_what_the_arguments_set_is_kept() -> None:
    assert planned(2, 2, inter_op_parallelism=3) == (1, 3)
    assert planned(16, 2, intra_op_parallelism=3, inter_op_parallelism=-1) == (3, -1)
    assert planned(16, 2, gpu=True, intra_op_parallelism=3) == (3, 0)
    assert ingress._share_cores(None, 2, False) is None


def test_runs_at_once() -> None:
    assert runs_at_once(SessionConfig()) == RUNS_AT_ONCE
    assert runs_at_once(SessionConfig(intra_op_parallelism=1, inter_op_parallelism=3)) == 4
    assert runs_at_once(SessionConfig(intra_op_parallelism=1, inter_op_parallelism=-1)) == 1
    assert runs_at_once(SessionConfig(intra_op_parallelism=6, inter_op_parallelism=-1)) == 6
