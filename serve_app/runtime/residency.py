"""Paging a serving replica's versions in and out under a memory budget
(``--model_memory_budget_mb``, issue 27): which versions are resident, and loading and evicting
them.

Every version is loaded once at rollout (``DataPlane.load``: checked and warmed up, its load
state kept for the version manager, so it stays AVAILABLE) and then ``admit``-ted: kept if it
fits, least recently used versions evicted to make room, else freed at once. A request for a
version that is not resident waits for it to be paged in again (``use``): concurrent requests
share one load, loads run one at a time off the event loop (so each one's memory growth is
its own), and room is made first by evicting least recently used versions, by bytes.

A version's bytes are first TF Serving's estimate (``estimate_bytes``: the combined size of
its exported files x ``ESTIMATE_FACTOR``, as ``EstimateResourceFromPath`` in TF Serving's
``servables/tensorflow/bundle_factory_util.cc``), then corrected by what its last load
measurably took (``measured``, ``corrected``: the process's RSS growth across the load or, on a
GPU replica, the card's bytes in use, whichever grew more, never below the estimate and bounded
above, since another thread's allocations can land in the same window).
Before each load what evicted versions left is collected and trimmed (``release_freed``), so
the growth is the load's and the memory goes back to the system.

Never evicted: a version with calls in flight (``use`` holds it), or one of a ``pinned``
model. A version that cannot fit even with everything evictable gone is RESOURCE_EXHAUSTED at
once, naming the budget; one that fits only once calls in flight end waits for them up to
``WAIT_FOR_ROOM_S`` (its caller's deadline bounds it too).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from compat.errors import ResourceExhausted, Unavailable

logger = logging.getLogger("ray.serve")

ESTIMATE_FACTOR = 1.2
"""TF Serving's ``kResourceEstimateRAMMultiplier`` (its pad, ``kResourceEstimateRAMPadBytes``,
is 0)."""
MEASURED_FACTOR = 4
"""A load's measured growth counts up to this many times the estimate, plus ``MEASURED_PAD``."""
MEASURED_PAD = 32 << 20
"""What a load may measure beyond ``MEASURED_FACTOR`` x its estimate (a graph and session's
own memory: a tiny model's variables say nothing of it)."""
WAIT_FOR_ROOM_S = 30.0
"""How long a page-in waits for calls in flight to release room, at most."""

MB = 1 << 20
V = TypeVar("V")


def estimate_bytes(path: str | os.PathLike[str]) -> int:
    """TF Serving's estimate of a version's memory: its files' combined size x 1.2."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(root) / name).stat().st_size
    return int(total * ESTIMATE_FACTOR)


def corrected(estimate: int, measured: int) -> int:
    """The bytes a version is counted for: what its load measured, at least the estimate, at
    most ``MEASURED_FACTOR`` x it plus ``MEASURED_PAD``."""
    return max(estimate, min(measured, estimate * MEASURED_FACTOR + MEASURED_PAD))


@functools.cache
def _process() -> object:
    import psutil

    return psutil.Process()


def rss_bytes() -> int:
    """This process's resident memory."""
    return int(_process().memory_info().rss)  # type: ignore[attr-defined]


@functools.cache
def _gpu() -> Any:
    """TF's config module where this process's TF sees a GPU, else None (TF not imported: no
    version was loaded here, so none is on a card)."""
    tf = sys.modules.get("tensorflow")
    try:
        return tf.config if tf is not None and tf.config.list_logical_devices("GPU") else None
    except (RuntimeError, ValueError, AttributeError):
        return None


def device_bytes() -> int:
    """Bytes TF's allocator has in use on this process's first GPU (shared by its sessions and
    eager code); 0 without one."""
    config = _gpu()
    if config is None:
        return 0
    try:
        return int(config.experimental.get_memory_info("GPU:0")["current"])
    except (RuntimeError, ValueError):
        return 0


def measured(load: Callable[[], V], files: Callable[[V], Any]) -> tuple[V, int]:
    """``load()`` and the bytes its version is counted for: TF Serving's estimate from its
    ``files``, corrected (``corrected``) by what the load grew: this process's RSS or, on a GPU
    replica, the card's bytes in use, whichever grew more; one budget bounds both."""
    release_freed()
    host, card = rss_bytes(), device_bytes()
    value = load()
    grown = max(rss_bytes() - host, device_bytes() - card)
    return value, corrected(estimate_bytes(files(value)), grown)


def release_freed() -> None:
    """Free what evicted versions left behind before a load measures the process's growth:
    their graphs are Python cycles (collected now, not in a later pause of the serving path),
    and glibc keeps freed heap unless trimmed."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        _libc().malloc_trim(0)


@functools.cache
def _libc() -> Any:
    import ctypes

    return ctypes.CDLL("libc.so.6")


class Closable(Protocol):
    def close(self) -> None: ...


T = TypeVar("T", bound=Closable)


class Listener(Protocol):
    """What the residency reports (``serve_app.metrics.paging``, or a fake)."""

    def resident(self, model: str, version: int, nbytes: int) -> None:
        """A version became resident (``nbytes``), or stopped being (0)."""

    def paged_in(self, model: str, version: int, seconds: float) -> None:
        """A request's page-in took ``seconds`` (the cold start)."""

    def evicted(self, model: str, version: int) -> None:
        """A version was evicted for another."""

    def held(self, total: int) -> None:
        """The replica holds ``total`` bytes now."""


@dataclass
class Entry(Generic[T]):
    """One version this replica may hold."""

    target: str
    model: str
    version: int
    pinned: bool = False
    nbytes: int = 0
    """What it is counted for (``corrected``), learnt at its load; fixed while it is resident
    (room was made for it), the most a load measured from its next page-in on."""
    measured: int = 0
    """The most one of its loads measured (``corrected``)."""
    held: T | None = None
    loading: asyncio.Task[None] | None = None
    in_flight: int = 0
    last_used: int = 0
    gone: bool = False
    """Dropped from the routing table: closed once its last call ends."""

    @property
    def page_in_bytes(self) -> int:
        """What its next page-in is counted for: the most a load of it measured."""
        return max(self.nbytes, self.measured)

    @property
    def charged(self) -> bool:
        """Counted against the budget: resident, or being paged in."""
        return self.held is not None or self.loading is not None


class Residency(Generic[T]):
    """The versions of one replica under a budget of ``budget`` bytes. ``load(target)``
    loads one (in a worker thread) and says how many bytes it takes; it raises a
    ``ServingError`` when it cannot."""

    def __init__(
        self,
        budget: int,
        load: Callable[[str], tuple[T, int]],
        listener: Listener | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.budget = budget
        self._load = load
        self._listener = listener
        self._on_change = on_change
        """Called when what is resident or being paged in changes (``runtime.paging`` tells
        Serve's router)."""
        self.entries: dict[str, Entry[T]] = {}
        self._ticks = itertools.count(1)
        self.load_lock = asyncio.Lock()
        """One load at a time, so that each one's memory growth is its own."""
        self._room = asyncio.Event()

    # --- what is held ---------------------------------------------------------------------------

    @property
    def held_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values() if e.charged)

    def resident(self) -> dict[str, T]:
        """Target -> the versions resident now."""
        return {t: e.held for t, e in self.entries.items() if e.held is not None}

    def held_or_loading(self) -> list[str]:
        """The targets resident or being paged in now."""
        return [t for t, e in self.entries.items() if e.charged]

    def _report(self) -> None:
        if self._listener is not None:
            self._listener.held(self.held_bytes)
        if self._on_change is not None:
            self._on_change()

    # --- rollout: a version loaded and checked, kept if it fits ---------------------------------

    def admit(
        self,
        target: str,
        model: str,
        version: int,
        value: T,
        nbytes: int,
        pinned: bool,
        evict: bool = True,
    ) -> bool:
        """Hold ``value`` (just loaded, ``nbytes``) if it fits, evicting least recently used
        versions for it (with ``evict`` False, only if it fits as things are); a pinned one is
        always held. False: it was closed."""
        entry = self.entries.get(target)
        if entry is None:
            entry = self.entries[target] = Entry(target, model, version, pinned)
        entry.pinned, entry.nbytes = pinned, max(entry.nbytes, nbytes)
        entry.measured = max(entry.measured, nbytes)
        if entry.held is not None:  # held already: the new one is not needed
            value.close()
            return True
        fits = self._evict_for(entry, evict or pinned)  # a pinned one is kept even so
        if not pinned and not fits:
            value.close()
            logger.info(
                "%s version %s (%d MB) not kept: over the %d MB model memory budget",
                model,
                version,
                nbytes // MB,
                self.budget // MB,
            )
            return False
        if pinned and self.held_bytes + nbytes > self.budget:
            logger.warning("Pinned %s version %s holds more than the budget leaves", model, version)
        self._hold(entry, value)
        self._report()
        return True

    def drop(self, keep: set[str]) -> None:
        """Forget the versions not in ``keep``; each closes once its last call is done."""
        for target in set(self.entries) - keep:
            entry = self.entries.pop(target)
            entry.gone = True
            if entry.held is not None and not entry.in_flight:
                self._close(entry)
        self._report()

    # --- the request path -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def use(self, target: str) -> AsyncIterator[T]:
        """The resident version of ``target`` for one call, paged in first if it is not; it
        is not evicted until the call ends."""
        entry = self.entries[target]
        value = await self._acquire(entry)
        try:
            yield value
        finally:
            entry.in_flight -= 1
            if entry.gone and not entry.in_flight and entry.held is not None:
                self._close(entry)
            self._wake()

    async def _acquire(self, entry: Entry[T]) -> T:
        while True:
            if entry.held is not None:
                entry.in_flight += 1
                entry.last_used = next(self._ticks)
                return entry.held
            if entry.gone:
                raise Unavailable(f"{entry.model} version {entry.version} was unloaded")
            if entry.loading is None:
                entry.nbytes = entry.page_in_bytes
                await self._make_room(entry)
                if entry.held is None and entry.loading is None:
                    task = asyncio.get_running_loop().create_task(self._page_in(entry))
                    task.add_done_callback(_retrieved)
                    entry.loading = task
                    self._report()
                continue
            await asyncio.shield(entry.loading)

    async def _make_room(self, entry: Entry[T]) -> None:
        """Evict least recently used versions until ``entry`` fits; wait for calls in flight
        to end if only they stand in the way."""
        deadline = time.monotonic() + WAIT_FOR_ROOM_S
        while not self._evict_for(entry):
            pinned = sum(e.nbytes for e in self.entries.values() if e.pinned and e.charged)
            if entry.nbytes + pinned > self.budget:
                raise ResourceExhausted(
                    f"{entry.model} version {entry.version} needs {entry.nbytes / MB:.1f} MB, "
                    f"more than the model memory budget of {self.budget // MB} MB "
                    f"(--model_memory_budget_mb) leaves besides pinned models "
                    f"({pinned / MB:.1f} MB)"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise ResourceExhausted(
                    f"{entry.model} version {entry.version} does not fit in the model memory "
                    f"budget of {self.budget // MB} MB (--model_memory_budget_mb) while "
                    "other versions have calls in flight"
                )
            room = self._room
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(room.wait(), left)

    def victims(self, target: str) -> list[str] | None:
        """What making room for ``target`` would evict now, least recently used first (empty:
        it fits as things are; None: it cannot fit even without every evictable version)."""
        entry = self.entries[target]
        if entry.charged:
            return []
        found = self._victims(entry, entry.page_in_bytes)
        return None if found is None else [e.target for e in found]

    def _victims(self, entry: Entry[T], nbytes: int) -> list[Entry[T]] | None:
        over = self.held_bytes - (entry.nbytes if entry.charged else 0) + nbytes - self.budget
        if over <= 0:
            return []
        evictable = sorted(
            (e for e in self.entries.values() if e is not entry and self._evictable(e)),
            key=lambda e: e.last_used,
        )
        if sum(e.nbytes for e in evictable) < over:
            return None
        chosen = []
        for victim in evictable:
            if over <= 0:
                break
            over -= victim.nbytes
            chosen.append(victim)
        return chosen

    def _evict_for(self, entry: Entry[T], evict: bool = True) -> bool:
        """Evict least recently used versions until ``entry`` fits; False (nothing evicted)
        when it cannot fit even without every evictable one, or, with ``evict`` False, when
        it does not fit as things are."""
        chosen = self._victims(entry, entry.nbytes)
        if chosen is None or (chosen and not evict):
            return False
        for victim in chosen:
            self._close(victim)
            if self._listener is not None:
                self._listener.evicted(victim.model, victim.version)
        if chosen:
            self._report()
        return True

    @staticmethod
    def _evictable(entry: Entry[T]) -> bool:
        return entry.held is not None and not entry.in_flight and not entry.pinned

    async def _page_in(self, entry: Entry[T]) -> None:
        """Load ``entry`` (one load at a time, in a worker thread); its waiters get the
        error of a load that fails."""
        started = time.perf_counter()
        try:
            async with self.load_lock:
                value, nbytes = await asyncio.to_thread(self._load, entry.target)
        finally:
            entry.loading = None
            self._wake()
        entry.measured = max(entry.measured, nbytes)  # counted from its next page-in on
        if entry.gone:
            value.close()
            return
        self._hold(entry, value)
        if self._listener is not None:
            self._listener.paged_in(entry.model, entry.version, time.perf_counter() - started)
        self._report()

    def _hold(self, entry: Entry[T], value: T) -> None:
        entry.held = value
        entry.last_used = next(self._ticks)
        if self._listener is not None:
            self._listener.resident(entry.model, entry.version, entry.nbytes)

    def _close(self, entry: Entry[T]) -> None:
        value, entry.held = entry.held, None
        if value is not None:
            value.close()
            if self._listener is not None:
                self._listener.resident(entry.model, entry.version, 0)

    def _wake(self) -> None:
        """Room may have been released: the page-ins waiting for it look again."""
        room, self._room = self._room, asyncio.Event()
        room.set()


def _retrieved(task: asyncio.Task[None]) -> None:
    """A page-in's error is its waiters'; with none left, it is not logged as unretrieved."""
    if not task.cancelled():
        task.exception()
