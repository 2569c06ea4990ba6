"""Placement under a memory budget (issue 27): which serving replicas hold a model's versions.

Without a budget every serving replica holds every version (clients reach any replica: the
kernel spreads their connections). Under ``--model_memory_budget_mb`` a replica holds what fits,
and the replicas together hold far more than one of them could, because they do not all hold the
same versions:

- **At rollout** each version has an owner, one of the deployment's replicas by a stable hash
  of its name (``owner``). A replica keeps the versions it owns first (evicting for them, least
  recently used first), then the others only while they fit without evicting anything. A config
  that fits the budget is therefore held by every replica, as without one; a larger one is
  spread over the replicas, each version held by at least its owner while room allows.
- **From measured load** (``Load``: each replica's calls per version, decayed with a half-life
  of ``HALF_LIFE_S``): a call for a version this replica does not hold pages it in here only if
  it fits in room left free, or if the version is hot here (``HOT_CALLS`` recent calls at
  least) and hotter than every version its page-in would evict (``keep_here``). Otherwise the
  call goes one hop to a replica that holds the version (``runtime.paging``: Serve's routing
  by multiplexed model id). So a hot model gains a copy on every replica its calls reach, and
  a cold one loses its copies to hotter ones, down to where its calls are sent.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable

HALF_LIFE_S = 10.0
"""How fast a version's recent calls are forgotten: each counts half after this long."""
HOT_CALLS = 8.0
"""Recent calls (decayed) that make a version hot enough here to be paged in by eviction: a
steady 0.55 calls/s (8 x ln 2 / ``HALF_LIFE_S``) on this replica. Below it a hop (1-3 ms
measured on 2 cores) costs less than a page-in (tens of milliseconds, and an eviction)."""


def owner(target: str, replicas: int) -> int:
    """The rank of the replica that owns ``target`` (a version's deployment name) among
    ``replicas``: stable across processes and runs (not Python's salted ``hash``)."""
    digest = hashlib.blake2b(target.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % max(1, replicas)


class Load:
    """Each version's recent calls on this replica: a count that halves every
    ``half_life_s``."""

    def __init__(
        self, half_life_s: float = HALF_LIFE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._decay = math.log(2) / half_life_s
        self._clock = clock
        self._calls: dict[str, tuple[float, float]] = {}
        """Target -> (its count, when it was last brought up to date)."""

    def record(self, target: str) -> float:
        """One call for ``target``; its count now."""
        count = self.calls(target) + 1.0
        self._calls[target] = (count, self._clock())
        return count

    def calls(self, target: str) -> float:
        """``target``'s recent calls, decayed to now."""
        count, at = self._calls.get(target, (0.0, 0.0))
        if not count:
            return 0.0
        return count * math.exp(-self._decay * (self._clock() - at))

    def forget(self, keep: Iterable[str]) -> None:
        """Drop the counts of versions no longer served."""
        keep = set(keep)
        for target in set(self._calls) - keep:
            del self._calls[target]


class Placement:
    """One replica's placement: which versions it owns (``rank`` among ``replicas``), and
    whether a call for a version it does not hold pages the version in here."""

    def __init__(self, rank: int = 0, replicas: int = 1, load: Load | None = None) -> None:
        self.rank = rank
        self.replicas = replicas
        self.load = load or Load()

    def owns(self, target: str) -> bool:
        return owner(target, self.replicas) == self.rank % max(1, self.replicas)

    @property
    def alone(self) -> bool:
        """No other replica to send a call to."""
        return self.replicas <= 1

    def keep_here(self, target: str, victims: list[str] | None) -> bool:
        """A call for ``target``, not held here, is answered here (paged in) rather than sent
        to a replica that holds it. ``victims``: what its page-in would evict (empty: it fits
        in free room; None: it cannot fit now, whatever is evicted)."""
        if self.alone:
            return True
        if victims is None:
            return False
        if not victims:
            return True
        calls = self.load.calls(target)
        return calls >= HOT_CALLS and all(self.load.calls(v) < calls for v in victims)
