"""Paging metrics: what a serving replica under ``--model_memory_budget_mb`` holds, loads and
evicts (``runtime.residency`` tells it, as its ``Listener``).

Per model version: ``tfserving_model_resident`` (1 while the replica holds it; summed over the
replicas on the page: how many hold it), ``tfserving_model_memory_bytes`` (the bytes it is
counted for while resident), ``tfserving_model_page_ins`` (loads for a request: cold starts),
``tfserving_model_evictions``, ``tfserving_model_cold_start_seconds`` (a page-in's time,
waiting for room and warmup included) and ``tfserving_model_hops`` (calls this replica sent one
hop to a replica holding the version, ``runtime.paging``). Per serving replica:
``tfserving_replica_model_bytes`` (all it holds, labelled with the replica's name: each stays
within the budget) and ``tfserving_replica_model_bytes_peak`` (the most it has held). Like every
recording, none fails the request it describes. Ray's agent drops a gauge series that is not
set again within two report intervals, so the serving replica ``refresh``-es them every
second (its heartbeat): a version no longer resident drops out of the page.
"""

from __future__ import annotations

import functools

from serve_app.metrics.labels import LOAD_BUCKETS
from serve_app.metrics.recording import _Histogram, _never_raises

COLD_START_BUCKETS = [0.01, 0.025, 0.05, *LOAD_BUCKETS]
"""Cold starts are a load's: ``LOAD_BUCKETS``, finer below 0.1 s (tiny models page in fast)."""


class _Families:
    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge

        version = ("model", "version")
        self.resident = Gauge(
            "tfserving_model_resident",
            "1 while a serving replica holds the model version in memory (summed: how many do).",
            tag_keys=version,
        )
        self.bytes = Gauge(
            "tfserving_model_memory_bytes",
            "Bytes a resident model version is counted for against --model_memory_budget_mb.",
            tag_keys=version,
        )
        self.page_ins = Counter(
            "tfserving_model_page_ins",
            "Loads of a model version for a request that found it not resident (cold starts).",
            tag_keys=version,
        )
        self.evictions = Counter(
            "tfserving_model_evictions",
            "Evictions of a model version to make room for another under the memory budget.",
            tag_keys=version,
        )
        self.cold_start = _Histogram(
            "tfserving_model_cold_start_seconds",
            "Time a page-in took, waiting for room, load and warmup included, in seconds.",
            boundaries=COLD_START_BUCKETS,
            tag_keys=version,
        )
        self.hops = Counter(
            "tfserving_model_hops",
            "Calls a serving replica sent one hop to another that holds the model version.",
            tag_keys=version,
        )
        self.replica_bytes = Gauge(
            "tfserving_replica_model_bytes",
            "Bytes of model versions a serving replica holds (within --model_memory_budget_mb).",
            tag_keys=("replica",),
        )
        self.replica_peak = Gauge(
            "tfserving_replica_model_bytes_peak",
            "The most bytes of model versions a serving replica has held at once.",
            tag_keys=("replica",),
        )


@functools.cache
def _families() -> _Families:
    return _Families()


def _tags(model: str, version: int) -> dict[str, str]:
    return {"model": model, "version": str(version)}


class PagingMetrics:
    """A ``runtime.residency.Listener`` recording into this process's Ray metrics."""

    def __init__(self, replica: str) -> None:
        self.replica = replica
        self.peak = 0
        self.total = 0
        self._resident: dict[tuple[str, int], int] = {}

    @_never_raises
    def resident(self, model: str, version: int, nbytes: int) -> None:
        if nbytes:
            self._resident[(model, version)] = nbytes
        else:
            self._resident.pop((model, version), None)
        self._set(model, version, nbytes)

    def _set(self, model: str, version: int, nbytes: int) -> None:
        m = _families()
        m.resident.set(1.0 if nbytes else 0.0, _tags(model, version))
        m.bytes.set(float(nbytes), _tags(model, version))

    @_never_raises
    def refresh(self) -> None:
        """Every gauge of what is resident set again (Ray's agent keeps them alive)."""
        for (model, version), nbytes in self._resident.items():
            self._set(model, version, nbytes)
        self._set_held()

    @_never_raises
    def paged_in(self, model: str, version: int, seconds: float) -> None:
        m = _families()
        m.page_ins.inc(1.0, _tags(model, version))
        m.cold_start.observe(seconds, _tags(model, version))

    @_never_raises
    def evicted(self, model: str, version: int) -> None:
        _families().evictions.inc(1.0, _tags(model, version))

    @_never_raises
    def forwarded(self, model: str, version: int) -> None:
        _families().hops.inc(1.0, _tags(model, version))

    @_never_raises
    def held(self, total: int) -> None:
        self.total, self.peak = total, max(self.peak, total)
        self._set_held()

    def _set_held(self) -> None:
        m, tags = _families(), {"replica": self.replica}
        m.replica_bytes.set(float(self.total), tags)
        m.replica_peak.set(float(self.peak), tags)
