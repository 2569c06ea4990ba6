"""Placement under a memory budget (``runtime.placement``), on a fake clock: owners by a stable
hash, spread over the replicas; each version's calls decayed by their half-life; a call for a
version not held here pages it in only into free room or when it is hot here and hotter than
every version it would evict, and always on a replica that is alone."""

from __future__ import annotations

import pytest

from serve_app.runtime.placement import HALF_LIFE_S, HOT_CALLS, Load, Placement, owner

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_owners_are_stable_and_spread_over_the_replicas() -> None:
    targets = [f"m{i:03d}-v1" for i in range(200)]
    owners = [owner(t, 2) for t in targets]
    assert owners == [owner(t, 2) for t in targets]  # the same in every process: no salted hash
    assert 70 <= owners.count(0) <= 130  # both replicas own a share
    assert {owner(t, 1) for t in targets} == {0}
    assert {owner(t, 0) for t in targets} == {0}  # an unknown count is one replica
    placement = Placement(rank=1, replicas=2)
    assert [placement.owns(t) for t in targets] == [o == 1 for o in owners]


def test_a_versions_calls_halve_every_half_life() -> None:
    clock = Clock()
    load = Load(clock=clock)
    assert load.calls("a") == 0.0
    assert load.record("a") == 1.0 and load.record("a") == 2.0
    clock.now += HALF_LIFE_S
    assert load.calls("a") == pytest.approx(1.0)
    assert load.record("a") == pytest.approx(2.0)
    load.forget(keep={"b"})
    assert load.calls("a") == 0.0


def test_a_version_is_paged_in_here_into_free_room_or_when_hot_and_hotter_than_victims() -> None:
    clock = Clock()
    placement = Placement(rank=0, replicas=2, load=Load(clock=clock))
    hot = int(HOT_CALLS)

    def record(target: str, times: int) -> None:
        for _ in range(times):
            placement.load.record(target)

    assert placement.keep_here("new", [])  # free room: no one loses
    assert not placement.keep_here("new", None)  # cannot fit now: a holder may answer
    record("new", hot - 1)
    assert not placement.keep_here("new", ["cold"])  # not hot yet: a hop costs less
    record("new", 1)
    assert placement.keep_here("new", ["cold"])  # hot, and its victim has no calls
    record("busy", hot + 1)
    assert not placement.keep_here("new", ["cold", "busy"])  # it would evict a hotter one
    clock.now += 3 * HALF_LIFE_S  # every count is an eighth of what it was
    assert not placement.keep_here("new", ["cold"])  # cooled down
    record("new", hot)
    assert placement.keep_here("new", ["cold", "busy"])


def test_a_replica_alone_answers_every_call_itself() -> None:
    placement = Placement(rank=0, replicas=1)
    assert placement.alone
    assert placement.keep_here("new", None) and placement.keep_here("new", ["a"])
