"""A serving replica's running counts per model version, for the version manager's rollouts
(``lifecycle.gated``): the calls each version answered, how many failed on the server's side,
their latencies in fixed buckets, and the shadow's outcomes (``runtime.shadow``). The replica
sends them with its heartbeat (``Tally.figures``: plain, cumulative since it started); the
manager adds up the replicas' (``merge``) and judges a stage on the difference since it began
(``Totals.since``), the p99 read from the buckets (``p99``).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc

BUCKETS_S: tuple[float, ...] = tuple(0.0005 * 1.25**k for k in range(60))
"""Upper bounds of the latency buckets, 0.5 ms to over four minutes, each 25% wider (and one
beyond): a p99 read from them is at most a quarter above the true one."""

SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.ABORTED,
    }
)
"""The codes a version is to blame for: a bad request (INVALID_ARGUMENT...) is the client's."""


@dataclass
class VersionCounts:
    """One version's calls: answered, failed (``SERVER_ERRORS``), and their latencies."""

    requests: int = 0
    errors: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_S) + 1))
    """Calls per latency bucket (``BUCKETS_S``; the last: beyond them)."""

    def add(self, other: VersionCounts, sign: int = 1) -> None:
        self.requests += sign * other.requests
        self.errors += sign * other.errors
        self.buckets = [a + sign * b for a, b in zip(self.buckets, other.buckets, strict=True)]

    def p99(self) -> float | None:
        """The 99th percentile latency, as its bucket's upper bound; None without calls."""
        total = sum(max(0, n) for n in self.buckets)
        if total <= 0:
            return None
        wanted, seen = 0.99 * total, 0
        for i, n in enumerate(self.buckets):
            seen += max(0, n)
            if seen >= wanted:
                return BUCKETS_S[min(i, len(BUCKETS_S) - 1)]
        return BUCKETS_S[-1]


Key = tuple[str, int]
"""(model, version)."""


@dataclass
class Totals:
    """Counts of every (model, version), added up over replicas (or one replica's)."""

    calls: dict[Key, VersionCounts] = field(default_factory=dict)
    shadow: dict[Key, dict[str, int]] = field(default_factory=dict)
    """(model, shadow version) -> mirrored calls by outcome (same, differed, failed, dropped)."""

    def version(self, model: str, version: int) -> VersionCounts:
        return self.calls.get((model, version), VersionCounts())

    def outcomes(self, model: str, version: int) -> dict[str, int]:
        return self.shadow.get((model, version), {})

    def since(self, earlier: Totals) -> Totals:
        """What was counted after ``earlier`` (never below 0: a replica that went is gone from
        both)."""
        out = Totals()
        for key, counts in self.calls.items():
            diff = VersionCounts()
            diff.add(counts)
            if key in earlier.calls:
                diff.add(earlier.calls[key], -1)
            diff.requests, diff.errors = max(0, diff.requests), max(0, diff.errors)
            diff.buckets = [max(0, n) for n in diff.buckets]
            out.calls[key] = diff
        for key, outcomes in self.shadow.items():
            before = earlier.shadow.get(key, {})
            out.shadow[key] = {k: max(0, n - before.get(k, 0)) for k, n in outcomes.items()}
        return out


def merge(figures: Iterable[dict[str, Any]]) -> Totals:
    """The replicas' heartbeat figures (``Tally.figures``) added up; malformed entries skipped."""
    out = Totals()
    for one in figures:
        for model, version, requests, errors, buckets in one.get("calls", ()):
            counts = out.calls.setdefault((model, int(version)), VersionCounts())
            if len(buckets) == len(counts.buckets):
                counts.add(VersionCounts(int(requests), int(errors), list(buckets)))
        for model, version, outcome, n in one.get("shadow", ()):
            outcomes = out.shadow.setdefault((model, int(version)), {})
            outcomes[outcome] = outcomes.get(outcome, 0) + int(n)
    return out


class Tally:
    """One serving replica's counts (``DataPlane.call_model`` and the mirror add to them)."""

    def __init__(self) -> None:
        self.totals = Totals()

    def record_call(
        self, model: str, version: int | None, code: grpc.StatusCode, seconds: float
    ) -> None:
        if version is None:
            return
        counts = self.totals.calls.setdefault((model, version), VersionCounts())
        counts.requests += 1
        counts.errors += code in SERVER_ERRORS
        counts.buckets[bisect.bisect_left(BUCKETS_S, seconds)] += 1

    def record_shadow(self, model: str, version: int, _sig: str, outcome: str, *_: Any) -> None:
        outcomes = self.totals.shadow.setdefault((model, version), {})
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    def figures(self) -> dict[str, Any]:
        """The counts as plain lists, for the heartbeat."""
        t = self.totals
        return {
            "calls": [(m, v, c.requests, c.errors, c.buckets[:]) for (m, v), c in t.calls.items()],
            "shadow": [(m, v, o, n) for (m, v), os in t.shadow.items() for o, n in os.items()],
        }
