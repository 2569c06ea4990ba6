"""serve_app.metrics.paging without Ray: what the residency reports lands in gauges, counters and
the cold-start histogram per model version, hops too, the replica's bytes and peak; ``refresh``
sets the gauges of what is resident again (Ray's agent drops a gauge not set for two intervals)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from serve_app.metrics import paging

pytestmark = pytest.mark.unit


class Recorded:
    """A gauge, counter or histogram that keeps every value it is given."""

    def __init__(self) -> None:
        self.values: list[tuple[dict[str, str], float]] = []

    def set(self, value: float, tags: dict[str, str]) -> None:
        self.values.append((tags, value))

    inc = observe = set

    def last(self, **tags: str) -> float | None:
        found = [v for t, v in self.values if t == tags]
        return found[-1] if found else None


@pytest.fixture
def families(monkeypatch: pytest.MonkeyPatch) -> Any:
    names = ("resident", "bytes", "page_ins", "evictions", "cold_start", "hops")
    fake = SimpleNamespace(**{n: Recorded() for n in (*names, "replica_bytes", "replica_peak")})
    monkeypatch.setattr(paging, "_families", lambda: fake)
    return fake


def test_what_the_residency_reports_is_recorded_per_version_and_replica(families: Any) -> None:
    m = paging.PagingMetrics("app#Ingress#r1")
    m.resident("a", 1, 3 << 20)
    m.held(3 << 20)
    m.paged_in("a", 1, 0.2)
    m.evicted("b", 2)
    m.resident("b", 2, 0)
    m.held(1 << 20)
    m.forwarded("c", 1)
    assert families.resident.last(model="a", version="1") == 1.0
    assert families.bytes.last(model="a", version="1") == 3 << 20
    assert families.resident.last(model="b", version="2") == 0.0
    assert families.page_ins.last(model="a", version="1") == 1.0
    assert families.cold_start.last(model="a", version="1") == 0.2
    assert families.evictions.last(model="b", version="2") == 1.0
    assert families.hops.last(model="c", version="1") == 1.0
    assert families.replica_bytes.last(replica="app#Ingress#r1") == 1 << 20
    assert families.replica_peak.last(replica="app#Ingress#r1") == 3 << 20


def test_refresh_sets_the_gauges_of_what_is_resident_again(families: Any) -> None:
    m = paging.PagingMetrics("r")
    m.resident("a", 1, 5)
    m.resident("b", 1, 7)
    m.resident("b", 1, 0)  # evicted
    m.held(5)
    families.resident.values.clear()
    families.replica_bytes.values.clear()
    m.refresh()
    assert families.resident.values == [({"model": "a", "version": "1"}, 1.0)]
    assert families.replica_bytes.last(replica="r") == 5


def test_a_recording_error_never_reaches_the_residency(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Any:
        raise RuntimeError("no Ray here")

    monkeypatch.setattr(paging, "_families", broken)
    m = paging.PagingMetrics("r")
    m.resident("a", 1, 5)
    m.held(5)
    m.refresh()
