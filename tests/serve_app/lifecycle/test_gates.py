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


TIMED = RolloutPolicy(
    shadow_requests=100,
    shadow_seconds=60,
    max_diff_rate=0.01,
    canary_weights=[0.1, 0.5],
    canary_requests=50,
    canary_seconds=20,
    min_stage_requests=10,
    max_p99_ratio=1.5,
)
TIMED_CASES = [
    # (name, at, figures, seconds, next stage, next step, reason starts with)
    ("shadow before its time", SHADOW, Figures(compared=20), 30, Stage.SHADOW, 0, ""),
    ("shadow at its time", SHADOW, Figures(compared=20), 60, Stage.CANARY, 0, ""),
    ("shadow count first", SHADOW, Figures(compared=100), 1, Stage.CANARY, 0, ""),
    ("shadow too few at its time", SHADOW, Figures(compared=9), 600, Stage.SHADOW, 0, ""),
    # 1 of 20 is within 1% of the 100 the stage may still reach, not of the 20 it ends with
    ("shadow within so far", SHADOW, Figures(compared=20, differed=1), 30, Stage.SHADOW, 0, ""),
    (
        "shadow over rate at its time",
        SHADOW,
        Figures(compared=20, differed=1),
        60,
        Stage.ROLLED_BACK,
        0,
        "shadow: 1 of 20",
    ),
    (
        "canary with no candidate answer",
        CANARY_1,
        Figures(candidate_requests=0, **HEALTHY),
        600,
        Stage.CANARY,
        0,
        "",
    ),
    (
        "canary at its time",
        CANARY_1,
        Figures(candidate_requests=10, candidate_p99_s=0.012, **HEALTHY),
        20,
        Stage.CANARY,
        1,
        "",
    ),
    (
        "canary slow at its time",
        CANARY_1,
        Figures(candidate_requests=10, candidate_p99_s=0.5, **HEALTHY),
        20,
        Stage.ROLLED_BACK,
        0,
        "canary at 0.1: p99 latency 50",
    ),
    (
        "canary slow before its time",
        CANARY_1,
        Figures(candidate_requests=10, candidate_p99_s=0.5, **HEALTHY),
        19,
        Stage.CANARY,
        0,
        "",
    ),
    (
        "canary erring at its time",
        CANARY_2,
        Figures(candidate_requests=10, candidate_errors=1, candidate_p99_s=0.01, **HEALTHY),
        20,
        Stage.ROLLED_BACK,
        0,
        "canary at 0.5: error rate 0.1",
    ),
]


@pytest.mark.parametrize(
    ("at", "figures", "seconds", "stage", "step", "reason"),
    [c[1:] for c in TIMED_CASES],
    ids=[c[0] for c in TIMED_CASES],
)
def test_a_stage_with_a_time_limit_ends_then_with_enough_requests_judged_on_them(
    at: Position, figures: Figures, seconds: float, stage: Stage, step: int, reason: str
) -> None:
    after = advance(TIMED, at, figures, seconds)
    assert (after.stage, after.step) == (stage, step)
    assert after.reason.startswith(reason) and bool(after.reason) == bool(reason)


def test_a_shadow_ended_by_time_only() -> None:
    """``shadow_requests: 0`` with ``shadow_seconds``: a shadow stage that only time ends; before
    then only a diff rate of 0 is sure to be breached."""
    lenient = RolloutPolicy(shadow_requests=0, shadow_seconds=30, max_diff_rate=0.2)
    assert start(lenient) == SHADOW
    assert advance(lenient, SHADOW, Figures(compared=1000), 29) == SHADOW
    assert advance(lenient, SHADOW, Figures(compared=3, differed=3), 29) == SHADOW
    assert advance(lenient, SHADOW, Figures(compared=10, differed=2), 30).stage is Stage.CANARY
    assert advance(lenient, SHADOW, Figures(compared=10, differed=3), 30).stage is (
        Stage.ROLLED_BACK
    )
    strict = RolloutPolicy(shadow_requests=0, shadow_seconds=30)
    assert advance(strict, SHADOW, Figures(compared=3, differed=1), 1).stage is Stage.ROLLED_BACK


@pytest.mark.parametrize("seconds", [0, 1e6])
@pytest.mark.parametrize("policy", [POLICY, TIMED, RolloutPolicy(canary_requests=1)])
def test_no_canary_step_passes_before_the_candidate_answers(
    policy: RolloutPolicy, seconds: float
) -> None:
    """However long a step runs and however few requests it needs, a candidate routed no
    request in it stays at that step (and its latency is judged on its own answers)."""
    idle = Figures(current_requests=1000, current_p99_s=0.01)
    assert advance(policy, CANARY_1, idle, seconds) == CANARY_1
    slow = Figures(candidate_requests=1, candidate_p99_s=1.0, **HEALTHY)
    after = advance(policy, CANARY_1, slow, seconds)
    if policy.canary_requests == 1:  # its first answer ends the step: judged, rolled back
        assert after.stage is Stage.ROLLED_BACK and "p99 latency 100" in after.reason
    else:  # one answer is fewer than the step needs, by count or by time
        assert after == CANARY_1


def test_min_stage_requests_is_at_least_one() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        RolloutPolicy(min_stage_requests=0)
