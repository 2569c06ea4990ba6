"""Paging versions in and out under a memory budget (``runtime.residency``), on fake versions
whose loads take the bytes a test gives them: least recently used by bytes is evicted first, a
version with calls in flight and a pinned one never are, concurrent requests share one load, a
version that cannot fit is RESOURCE_EXHAUSTED naming the budget, and the bytes are TF Serving's
estimate corrected by the measured load (the RSS's growth or, on a GPU, the card's bytes in use,
whichever grew more)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from compat.errors import ResourceExhausted, StatusCode, Unavailable
from serve_app.runtime import residency
from serve_app.runtime.residency import Residency, corrected, estimate_bytes

pytestmark = pytest.mark.unit

MB = 1 << 20


class Fake:
    def __init__(self, target: str) -> None:
        self.target = target
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Loads:
    """The loader: each target's bytes; counts loads; a gate holds loads while closed."""

    def __init__(self, sizes: dict[str, int], fail: set[str] | None = None) -> None:
        self.sizes = sizes
        self.fail = fail or set()
        self.count: dict[str, int] = {}
        self.gate = threading.Event()
        self.gate.set()
        self.make: type[Fake] = Fake

    def __call__(self, target: str) -> tuple[Fake, int]:
        self.gate.wait(5)
        self.count[target] = self.count.get(target, 0) + 1
        if target in self.fail:
            raise Unavailable(f"cannot load {target}")
        return self.make(target), self.sizes[target]


class Listener:
    """Records what a ``residency.Listener`` is told."""

    def __init__(self) -> None:
        self.evictions: list[str] = []
        self.page_ins: list[str] = []
        self.bytes: dict[str, int] = {}
        self.totals: list[int] = []

    def resident(self, model: str, version: int, nbytes: int) -> None:
        self.bytes[model] = nbytes

    def paged_in(self, model: str, version: int, seconds: float) -> None:
        self.page_ins.append(model)

    def evicted(self, model: str, version: int) -> None:
        self.evictions.append(model)

    def held(self, total: int) -> None:
        self.totals.append(total)


def paging(budget_mb: int, sizes: dict[str, int]) -> tuple[Residency[Fake], Loads]:
    loads = Loads(sizes)
    return Residency(budget_mb * MB, loads), loads


def admit_all(r: Residency[Fake], loads: Loads, pinned: frozenset[str] = frozenset()) -> list[bool]:
    return [r.admit(t, t, 1, Fake(t), loads.sizes[t], t in pinned) for t in loads.sizes]


async def call(r: Residency[Fake], target: str) -> str:
    async with r.use(target) as v:
        return v.target


def test_rollout_keeps_what_fits_and_evicts_the_least_recently_used_by_bytes() -> None:
    async def run() -> None:
        r, loads = paging(10, {"a": 4 * MB, "b": 4 * MB, "c": 4 * MB, "d": 1 * MB})
        assert admit_all(r, loads) == [True, True, True, True]  # c evicted a: 4+4 ... 9 MB
        assert set(r.resident()) == {"b", "c", "d"} and r.held_bytes == 9 * MB
        assert await call(r, "b") == "b"  # b used: c is now the least recently used
        assert await call(r, "a") == "a"  # paged in again, evicting c (4 MB is enough)
        assert set(r.resident()) == {"a", "b", "d"} and loads.count == {"a": 1}
        assert r.held_bytes <= r.budget

    asyncio.run(run())


def test_a_version_with_calls_in_flight_is_never_evicted() -> None:
    async def run() -> None:
        r, loads = paging(8, {"a": 4 * MB, "b": 4 * MB, "c": 4 * MB})
        admit_all(r, loads)  # c evicted a
        released = asyncio.Event()

        async def hold_b() -> None:
            async with r.use("b"):
                await released.wait()

        async def hold_c() -> None:
            async with r.use("c"):
                await released.wait()

        holders = [asyncio.create_task(hold_b()), asyncio.create_task(hold_c())]
        await asyncio.sleep(0)
        waiting = asyncio.create_task(call(r, "a"))  # fits only once b or c is done
        await asyncio.sleep(0.05)
        assert not waiting.done() and set(r.resident()) == {"b", "c"}
        released.set()
        assert await waiting == "a"
        await asyncio.gather(*holders)
        assert r.held_bytes <= r.budget and "a" in r.resident()

    asyncio.run(run())


def test_pinned_versions_stay_and_one_that_cannot_fit_is_resource_exhausted() -> None:
    async def run() -> None:
        r, loads = paging(10, {"p": 6 * MB, "a": 3 * MB, "big": 5 * MB})
        assert admit_all(r, loads, pinned=frozenset({"p"})) == [True, True, False]  # big: 6+5 > 10
        with pytest.raises(ResourceExhausted) as e:
            await call(r, "big")
        assert e.value.code == StatusCode.RESOURCE_EXHAUSTED
        assert "model memory budget of 10 MB" in e.value.message
        assert "--model_memory_budget_mb" in e.value.message
        for _ in range(3):
            assert await call(r, "a") == "a"
        assert "p" in r.resident() and "big" not in loads.count

    asyncio.run(run())


def test_concurrent_requests_for_a_version_share_one_load() -> None:
    async def run() -> None:
        r, loads = paging(4, {"a": 3 * MB, "b": 3 * MB})
        admit_all(r, loads)  # b evicted a
        loads.gate.clear()
        calls = [asyncio.create_task(call(r, "a")) for _ in range(5)]
        await asyncio.sleep(0.05)
        loads.gate.set()
        assert await asyncio.gather(*calls) == ["a"] * 5
        assert loads.count == {"a": 1}

    asyncio.run(run())


def test_a_caller_that_gives_up_leaves_the_load_for_the_next() -> None:
    async def run() -> None:
        r, loads = paging(4, {"a": 3 * MB, "b": 3 * MB})
        admit_all(r, loads)
        loads.gate.clear()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(call(r, "a"), 0.05)  # its deadline passes during the load
        loads.gate.set()
        assert await call(r, "a") == "a"
        assert loads.count == {"a": 1}

    asyncio.run(run())


def test_a_failed_page_in_answers_its_error_and_is_tried_again() -> None:
    async def run() -> None:
        r, loads = paging(4, {"a": 3 * MB, "b": 3 * MB})
        admit_all(r, loads)
        loads.fail.add("a")
        with pytest.raises(Unavailable):
            await call(r, "a")
        loads.fail.clear()
        assert await call(r, "a") == "a" and loads.count == {"a": 2}

    asyncio.run(run())


def test_dropped_versions_close_once_their_last_call_ends() -> None:
    async def run() -> None:
        r, loads = paging(10, {"a": 1 * MB, "b": 1 * MB})
        admit_all(r, loads)
        a, b = r.resident()["a"], r.resident()["b"]
        async with r.use("a"):
            r.drop(keep={"b"})
            assert not a.closed
        assert a.closed and not b.closed and set(r.entries) == {"b"}

    asyncio.run(run())


def test_the_listener_sees_residency_page_ins_evictions_and_bytes() -> None:
    async def run() -> None:
        listener = Listener()
        loads = Loads({"a": 3 * MB, "b": 3 * MB})
        r: Residency[Fake] = Residency(4 * MB, loads, listener)
        admit_all(r, loads)
        await call(r, "a")
        assert listener.evictions == ["a", "b"]
        assert listener.page_ins == ["a"]
        assert listener.bytes == {"a": 3 * MB, "b": 0}
        assert max(listener.totals) <= 4 * MB

    asyncio.run(run())


def test_bytes_are_tf_servings_estimate_corrected_by_the_load(tmp_path: Path) -> None:
    (tmp_path / "variables").mkdir()
    (tmp_path / "saved_model.pb").write_bytes(b"x" * 1000)
    (tmp_path / "variables" / "variables.data-00000-of-00001").write_bytes(b"x" * 9000)
    assert estimate_bytes(tmp_path) == 12000  # 10,000 bytes of files x 1.2
    assert corrected(12000, 0) == 12000  # never below the estimate
    assert corrected(12000, 5 * MB) == 5 * MB  # what the load took
    cap = 12000 * residency.MEASURED_FACTOR + residency.MEASURED_PAD
    assert corrected(12000, 1 << 40) == cap  # bounded: another thread's growth is not its
    assert residency.rss_bytes() > 0


def test_a_page_in_that_measures_more_stays_within_the_budget_and_counts_more_next_time() -> None:
    async def run() -> None:
        r, loads = paging(10, {"a": 4 * MB, "b": 4 * MB})
        admit_all(r, loads)
        r._close(r.entries["a"])  # as if evicted
        loads.sizes["a"] = 7 * MB  # its page-in measures more than the 4 MB made room for
        async with r.use("b"):
            assert await call(r, "a") == "a"
            assert r.entries["a"].nbytes == 4 * MB and r.held_bytes <= r.budget
        r._close(r.entries["a"])
        assert await call(r, "a") == "a"  # counted 7 MB now: b is evicted for it
        assert r.entries["a"].nbytes == 7 * MB and set(r.resident()) == {"a"}

    asyncio.run(run())


def test_a_pinned_version_admitted_into_a_full_budget_evicts_for_its_room() -> None:
    r, loads = paging(10, {"a": 5 * MB, "b": 5 * MB, "p": 2 * MB})
    assert admit_all(r, loads, pinned=frozenset({"p"})) == [True, True, True]
    assert set(r.resident()) == {"b", "p"} and r.held_bytes <= r.budget


def test_victims_name_what_a_page_in_would_evict_without_evicting_it() -> None:
    r, loads = paging(10, {"a": 4 * MB, "b": 4 * MB, "c": 4 * MB})
    assert admit_all(r, loads) == [True, True, True]  # a evicted for c
    assert r.victims("b") == [] and r.victims("c") == []  # held: nothing to evict
    assert r.victims("a") == ["b"]  # least recently used first, only as many as it needs
    r.entries["a"].measured = 9 * MB  # its last load measured more: it counts that
    assert r.victims("a") == ["b", "c"]
    r.entries["a"].measured = 11 * MB
    assert r.victims("a") is None  # cannot fit at all
    assert set(r.resident()) == {"b", "c"}  # nothing was evicted


def test_a_version_admitted_without_eviction_is_kept_only_into_free_room() -> None:
    r, _ = paging(10, {})
    assert r.admit("a", "a", 1, Fake("a"), 4 * MB, False, evict=False)
    assert r.admit("b", "b", 1, Fake("b"), 4 * MB, False, evict=False)
    c = Fake("c")
    assert not r.admit("c", "c", 1, c, 4 * MB, False, evict=False) and c.closed
    assert set(r.resident()) == {"a", "b"}
    assert r.admit("p", "p", 1, Fake("p"), 4 * MB, True, evict=False)  # pinned: evicts for it
    assert set(r.resident()) == {"b", "p"}


def test_a_load_counts_what_grew_more_its_rss_or_on_a_gpu_the_cards_bytes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "variables").write_bytes(b"\0" * 1000)  # estimated at 1200 bytes
    readings = {"rss": iter([100 * MB, 103 * MB]), "card": iter([0, 9 * MB])}
    monkeypatch.setattr(residency, "rss_bytes", lambda: next(readings["rss"]))
    monkeypatch.setattr(residency, "device_bytes", lambda: next(readings["card"]))
    value, nbytes = residency.measured(lambda: "v", lambda v: tmp_path)
    assert value == "v" and nbytes == 9 * MB  # the card grew more than the host
    readings = {"rss": iter([100 * MB, 103 * MB]), "card": iter([0, 0])}
    assert residency.measured(lambda: "v", lambda v: tmp_path)[1] == 3 * MB  # no GPU


def test_the_cards_bytes_are_tfs_allocator_in_use_and_none_without_a_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys
    from types import SimpleNamespace

    def tf(devices: list[str]) -> SimpleNamespace:
        info = {"current": 7 * MB, "peak": 9 * MB}
        experimental = SimpleNamespace(get_memory_info=lambda device: info)
        config = SimpleNamespace(
            list_logical_devices=lambda kind: devices, experimental=experimental
        )
        return SimpleNamespace(config=config)

    try:
        for devices, expected in ((["/device:GPU:0"], 7 * MB), ([], 0)):
            monkeypatch.setitem(sys.modules, "tensorflow", tf(devices))
            residency._gpu.cache_clear()
            assert residency.device_bytes() == expected
        monkeypatch.delitem(sys.modules, "tensorflow")
        residency._gpu.cache_clear()
        assert residency.device_bytes() == 0  # TF not imported: no version on a card
    finally:
        residency._gpu.cache_clear()
