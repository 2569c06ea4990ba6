"""A rollout's gates, pure: where a candidate version goes next from its figures.

A rollout (``RolloutPolicy``) takes a candidate through stages: ``shadow`` (it answers a mirror
of live requests, ``runtime.shadow``), then ``canary`` steps (a growing share of ``latest``
traffic, ``canary_weights``), then ``full``. Each stage is judged on the figures gathered since
it began (``Figures``) against the current version's: the shadow on its diff rate; each canary
step on the error rate and p99 latency against the current version's. A stage ends on a count
of requests (``shadow_requests``, ``canary_requests``: the candidate's own answers) or on time
(``shadow_seconds``, ``canary_seconds``, with ``min_stage_requests``), so no stage passes on a
candidate that answered nothing. A breach rolls back (``rolled_back``, with the reason) as soon
as it is certain, even before the stage has its requests; a stage that has them and no breach
moves on. Nothing here acts: the caller routes as the ``Position`` says. The caller is the
version manager (``lifecycle.gated``), for a model whose config has a ``rollout`` block (the
policy, typed in ``config.model_args``); it gathers the figures from the serving replicas'
counts (``runtime.tally``).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from serve_app.config.model_args import RolloutPolicy

__all__ = ["Figures", "Position", "RolloutPolicy", "Stage", "advance", "start"]


class Stage(enum.StrEnum):
    SHADOW = "shadow"
    CANARY = "canary"
    FULL = "full"
    ROLLED_BACK = "rolled_back"


@dataclass(frozen=True)
class Figures:
    """What happened since the stage began."""

    compared: int = 0
    differed: int = 0
    candidate_requests: int = 0
    candidate_errors: int = 0
    candidate_p99_s: float | None = None
    current_requests: int = 0
    current_errors: int = 0
    current_p99_s: float | None = None


@dataclass(frozen=True)
class Position:
    """Where a rollout is: its stage, the canary step, and why it rolled back."""

    stage: Stage = Stage.SHADOW
    step: int = 0
    reason: str = ""

    def weight(self, policy: RolloutPolicy) -> float:
        """The candidate's share of ``latest`` traffic at this position."""
        if self.stage is Stage.FULL:
            return 1.0
        if self.stage is Stage.CANARY:
            return policy.canary_weights[self.step]
        return 0.0


def start(policy: RolloutPolicy) -> Position:
    """A new candidate's first position."""
    if policy.shadow_requests or policy.shadow_seconds:
        return Position(Stage.SHADOW)
    return _after_shadow(policy)


def _after_shadow(policy: RolloutPolicy) -> Position:
    return Position(Stage.CANARY) if policy.canary_weights else Position(Stage.FULL)


def _over(wanted: int, limit_s: float, minimum: int, count: int, seconds: float) -> bool:
    """A stage's end: ``wanted`` counted (0: not by count), or ``limit_s`` past (0: not by
    time) with ``minimum`` counted."""
    by_count = wanted > 0 and count >= wanted
    return by_count or (0 < limit_s <= seconds and count >= minimum)


def _allowed(rate: float, count: int, wanted: int, over: bool) -> float:
    """How many of a stage's requests may fail its gate (differ, err) at ``rate``: of those
    counted once it is over; before, of the most it can end with (``wanted``; a stage ended
    by time only may end with any number, so only a rate of 0 is sure to be breached)."""
    if over:
        return rate * count
    if wanted == 0:
        return math.inf if rate > 0 else 0.0
    return rate * max(wanted, count)


def advance(
    policy: RolloutPolicy, at: Position, figures: Figures, seconds: float = 0.0
) -> Position:
    """The next position: ``at`` again (hold), the next stage or step, or rolled back.
    ``seconds``: how long the stage's counts have run (for ``shadow_seconds`` and
    ``canary_seconds``). A stage that ends is judged on all it counted; one that holds only
    on what would breach whatever its remaining requests are."""
    if at.stage is Stage.SHADOW:
        over = _over(
            policy.shadow_requests,
            policy.shadow_seconds,
            policy.min_stage_requests,
            figures.compared,
            seconds,
        )
        allowed = _allowed(policy.max_diff_rate, figures.compared, policy.shadow_requests, over)
        if figures.differed > allowed:
            rate = figures.differed / max(figures.compared, 1)
            return Position(
                Stage.ROLLED_BACK,
                reason=f"shadow: {figures.differed} of {figures.compared} answers differed "
                f"(diff rate {rate:.3g}, at most {policy.max_diff_rate:g} allowed)",
            )
        return _after_shadow(policy) if over else at
    if at.stage is Stage.CANARY:
        over = _over(
            policy.canary_requests,
            policy.canary_seconds,
            policy.min_stage_requests,
            figures.candidate_requests,
            seconds,
        )
        breach = _canary_breach(policy, figures, over)
        if breach:
            return Position(Stage.ROLLED_BACK, reason=f"canary at {at.weight(policy):g}: {breach}")
        if not over:
            return at
        if at.step + 1 < len(policy.canary_weights):
            return Position(Stage.CANARY, at.step + 1)
        return Position(Stage.FULL)
    return at


def _canary_breach(policy: RolloutPolicy, f: Figures, over: bool) -> str:
    """The SLO a canary step breaks, or "". Errors are judged as soon as they are more than
    the step allows in all; latency once the step is over (it has its requests)."""
    current_rate = f.current_errors / f.current_requests if f.current_requests else 0.0
    rate_allowed = current_rate + policy.max_error_rate_increase
    if f.candidate_errors > _allowed(
        rate_allowed, f.candidate_requests, policy.canary_requests, over
    ):
        rate = f.candidate_errors / max(f.candidate_requests, 1)
        return f"error rate {rate:.3g} against {current_rate:.3g}"
    if not over:
        return ""
    if f.candidate_p99_s is not None and f.current_p99_s:
        ratio = f.candidate_p99_s / f.current_p99_s
        if ratio > policy.max_p99_ratio:
            return f"p99 latency {ratio:.3g} times the current version's"
    return ""
