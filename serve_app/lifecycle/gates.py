"""A rollout's gates, pure: where a candidate version goes next from its figures.

A rollout (``RolloutPolicy``) takes a candidate through stages: ``shadow`` (it answers a mirror
of live requests, ``runtime.shadow``), then ``canary`` steps (a growing share of ``latest``
traffic, ``canary_weights``), then ``full``. Each stage is judged on the figures gathered since
it began (``Figures``) against the current version's: the shadow on its diff rate; each canary
step on the error rate and p99 latency against the current version's. A breach rolls back
(``rolled_back``, with the reason) as soon as it is certain, even before the stage has its
requests; a stage that has them and no breach moves on. Nothing here acts: the caller routes as
the ``Position`` says. The caller is the version manager (``lifecycle.gated``), for a model
whose config has a ``rollout`` block (the policy, typed in ``config.model_args``); it gathers
the figures from the serving replicas' counts (``runtime.tally``).
"""

from __future__ import annotations

import enum
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
    if policy.shadow_requests:
        return Position(Stage.SHADOW)
    return _after_shadow(policy)


def _after_shadow(policy: RolloutPolicy) -> Position:
    return Position(Stage.CANARY) if policy.canary_weights else Position(Stage.FULL)


def advance(policy: RolloutPolicy, at: Position, figures: Figures) -> Position:
    """The next position: ``at`` again (hold), the next stage or step, or rolled back."""
    if at.stage is Stage.SHADOW:
        allowed = policy.max_diff_rate * max(policy.shadow_requests, figures.compared)
        if figures.differed > allowed:
            rate = figures.differed / max(figures.compared, 1)
            return Position(
                Stage.ROLLED_BACK,
                reason=f"shadow: {figures.differed} of {figures.compared} answers differed "
                f"(diff rate {rate:.3g}, at most {policy.max_diff_rate:g} allowed)",
            )
        if figures.compared < policy.shadow_requests:
            return at
        return _after_shadow(policy)
    if at.stage is Stage.CANARY:
        breach = _canary_breach(policy, figures)
        if breach:
            return Position(Stage.ROLLED_BACK, reason=f"canary at {at.weight(policy):g}: {breach}")
        if figures.candidate_requests < policy.canary_requests:
            return at
        if at.step + 1 < len(policy.canary_weights):
            return Position(Stage.CANARY, at.step + 1)
        return Position(Stage.FULL)
    return at


def _canary_breach(policy: RolloutPolicy, f: Figures) -> str:
    """The SLO a canary step breaks, or "". Errors are judged as soon as they are more than
    the step allows in all; latency once the step has its requests."""
    current_rate = f.current_errors / f.current_requests if f.current_requests else 0.0
    allowed = (current_rate + policy.max_error_rate_increase) * max(
        policy.canary_requests, f.candidate_requests
    )
    if f.candidate_errors > allowed:
        rate = f.candidate_errors / max(f.candidate_requests, 1)
        return f"error rate {rate:.3g} against {current_rate:.3g}"
    if f.candidate_requests < policy.canary_requests:
        return ""
    if f.candidate_p99_s is not None and f.current_p99_s:
        ratio = f.candidate_p99_s / f.current_p99_s
        if ratio > policy.max_p99_ratio:
            return f"p99 latency {ratio:.3g} times the current version's"
    return ""
