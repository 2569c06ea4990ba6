"""A rollout's gates (``lifecycle.gates``), pure: a candidate held, moved on, promoted or rolled
back by its figures against the current version's."""

from __future__ import annotations

import pytest

from serve_app.lifecycle.gates import Figures, Position, RolloutPolicy, Stage, advance, start

POLICY = RolloutPolicy(
    shadow_requests=100,
    max_diff_rate=0.01,
    canary_weights=[0.1, 0.5],
    canary_requests=50,
    max_error_rate_increase=0.02,
    max_p99_ratio=1.5,
)
SHADOW, CANARY_1, CANARY_2 = (
    Position(Stage.SHADOW),
    Position(Stage.CANARY),
    Position(Stage.CANARY, 1),
)
HEALTHY = dict(current_requests=1000, current_errors=0, current_p99_s=0.010)

CASES = [
    # (name, at, figures, next stage, next step, reason starts with)
    ("shadow holds", SHADOW, Figures(compared=50), Stage.SHADOW, 0, ""),
    ("shadow within rate", SHADOW, Figures(compared=100, differed=1), Stage.CANARY, 0, ""),
    (
        "shadow differs",
        SHADOW,
        Figures(compared=100, differed=2),
        Stage.ROLLED_BACK,
        0,
        "shadow: 2 of 100",
    ),
    (
        "shadow differs early",
        SHADOW,
        Figures(compared=3, differed=3),
        Stage.ROLLED_BACK,
        0,
        "shadow",
    ),
    (
        "canary holds",
        CANARY_1,
        Figures(candidate_requests=10, candidate_p99_s=0.1, **HEALTHY),
        Stage.CANARY,
        0,
        "",
    ),
    (
        "canary next step",
        CANARY_1,
        Figures(candidate_requests=50, candidate_p99_s=0.012, **HEALTHY),
        Stage.CANARY,
        1,
        "",
    ),
    (
        "canary promoted",
        CANARY_2,
        Figures(candidate_requests=60, candidate_p99_s=0.012, **HEALTHY),
        Stage.FULL,
        0,
        "",
    ),
    (
        "canary slow",
        CANARY_2,
        Figures(candidate_requests=60, candidate_p99_s=0.020, **HEALTHY),
        Stage.ROLLED_BACK,
        0,
        "canary at 0.5: p99 latency 2",
    ),
    (
        "canary errs early",
        CANARY_1,
        Figures(candidate_requests=5, candidate_errors=2, **HEALTHY),
        Stage.ROLLED_BACK,
        0,
        "canary at 0.1: error rate 0.4",
    ),
    (
        "canary within errors",
        CANARY_1,
        Figures(candidate_requests=50, candidate_errors=1, candidate_p99_s=0.01, **HEALTHY),
        Stage.CANARY,
        1,
        "",
    ),
]


@pytest.mark.parametrize(
    ("at", "figures", "stage", "step", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_each_gate(at: Position, figures: Figures, stage: Stage, step: int, reason: str) -> None:
    after = advance(POLICY, at, figures)
    assert (after.stage, after.step) == (stage, step)
    assert after.reason.startswith(reason) and bool(after.reason) == bool(reason)


def test_a_good_candidate_goes_through_every_stage_and_ends_full() -> None:
    at = start(POLICY)
    weights = [at.weight(POLICY)]
    good = Figures(compared=100, candidate_requests=50, candidate_p99_s=0.01, **HEALTHY)
    for _ in range(5):
        at = advance(POLICY, at, good)
        weights.append(at.weight(POLICY))
    assert at.stage is Stage.FULL
    assert weights == [0.0, 0.1, 0.5, 1.0, 1.0, 1.0]  # and stays there


def test_the_end_stages_stay_and_empty_stages_are_skipped() -> None:
    gone = Position(Stage.ROLLED_BACK, reason="x")
    assert advance(POLICY, gone, Figures(compared=1000)) == gone
    assert start(RolloutPolicy(shadow_requests=0)).stage is Stage.CANARY
    no_canary = RolloutPolicy(shadow_requests=0, canary_weights=[])
    assert start(no_canary) == Position(Stage.FULL)
    assert (
        advance(RolloutPolicy(canary_weights=[]), SHADOW, Figures(compared=100)).stage is Stage.FULL
    )
