"""A serving replica's per-version counts (``runtime.tally``): what a replica sends with its
heartbeat, added up over replicas, differences since a stage began, the p99 from buckets."""

from __future__ import annotations

import grpc
import pytest

from serve_app.runtime.tally import BUCKETS_S, Tally, merge

OK, INTERNAL, BAD = grpc.StatusCode.OK, grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT


def test_calls_and_shadow_outcomes_are_counted_per_version() -> None:
    t = Tally()
    for _ in range(98):
        t.record_call("m", 1, OK, 0.002)
    t.record_call("m", 1, INTERNAL, 0.002)
    t.record_call("m", 1, BAD, 0.002)  # the client's error, not the version's
    t.record_call("m", None, grpc.StatusCode.NOT_FOUND, 0.001)  # no version: not counted
    t.record_shadow("m", 2, "serving_default", "differed", (0.1, 0.2), 1.0)
    t.record_shadow("m", 2, "serving_default", "same")
    totals = merge([t.figures()])
    assert totals.version("m", 1).requests == 100
    assert totals.version("m", 1).errors == 1
    assert totals.version("m", 2).requests == 0
    assert totals.outcomes("m", 2) == {"differed": 1, "same": 1}


def test_replicas_add_up_and_since_is_what_came_after() -> None:
    a, b = Tally(), Tally()
    a.record_call("m", 1, OK, 0.001)
    before = merge([a.figures(), b.figures()])
    for _ in range(10):
        a.record_call("m", 1, OK, 0.001)
        b.record_call("m", 1, OK, 0.001)
    b.record_shadow("m", 2, "", "same")
    now = merge([a.figures(), b.figures()])
    assert now.version("m", 1).requests == 21
    diff = now.since(before)
    assert diff.version("m", 1).requests == 20
    assert diff.outcomes("m", 2) == {"same": 1}
    assert merge([b.figures()]).since(now).version("m", 1).requests == 0  # never below 0


def test_p99_is_the_bucket_of_the_99th_percentile() -> None:
    t = Tally()
    for _ in range(99):
        t.record_call("m", 1, OK, 0.001)
    t.record_call("m", 1, OK, 0.5)
    p99 = merge([t.figures()]).version("m", 1).p99()
    assert p99 is not None and 0.001 <= p99 <= 0.001 * 1.25
    for _ in range(5):
        t.record_call("m", 1, OK, 0.5)
    p99 = merge([t.figures()]).version("m", 1).p99()
    assert p99 is not None and 0.5 <= p99 <= 0.5 * 1.25
    assert merge([]).version("m", 1).p99() is None
    assert BUCKETS_S[-1] > 240


@pytest.mark.parametrize("figures", [{}, {"calls": [("m", 1, 1, 0, [1, 2])]}])
def test_figures_not_as_sent_are_skipped(figures: dict) -> None:
    assert merge([figures]).version("m", 1).requests == 0
