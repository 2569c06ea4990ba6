"""serve_app.metrics.recording without Ray: ``RequestRecorder`` adds requests up and flushes them
into a fake sink; the batch size counts examples; a recording error never reaches the caller."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest

from serve_app.metrics import recording
from serve_app.metrics.labels import RequestLabels
from serve_app.metrics.recording import RequestRecorder, batch_examples

OK = RequestLabels("m", "1", "serving_default", "predict", "grpc", "OK")
MISSING = RequestLabels("m", "", "serving_default", "predict", "rest", "NOT_FOUND")


@dataclass
class FakeCounter:
    """Every ``inc`` kept, by its tags."""

    totals: dict[frozenset[tuple[str, str]], float] = field(default_factory=dict)
    calls: int = 0

    def inc(self, value: float, tags: dict[str, str]) -> None:
        key = frozenset(tags.items())
        self.totals[key] = self.totals.get(key, 0.0) + value
        self.calls += 1

    def value(self, **tags: str) -> float:
        return self.totals.get(frozenset(tags.items()), 0.0)


@dataclass
class FakeSink:
    requests: FakeCounter = field(default_factory=FakeCounter)
    errors: FakeCounter = field(default_factory=FakeCounter)
    latency_sum: FakeCounter = field(default_factory=FakeCounter)
    latency_buckets: FakeCounter = field(default_factory=FakeCounter)


def recorder() -> tuple[RequestRecorder, FakeSink]:
    sink = FakeSink()
    return RequestRecorder(lambda: sink, interval_s=None), sink


def test_requests_are_added_up_until_a_flush() -> None:
    r, sink = recorder()
    for seconds in (0.002, 0.003, 0.2):
        r.add(OK, seconds)
    r.add(MISSING, 0.0001)
    assert sink.requests.calls == 0  # nothing reaches the sink before the flush
    r.flush()
    ok, missing = OK.tags(), MISSING.tags()
    assert sink.requests.value(**ok) == 3 and sink.requests.value(**missing) == 1
    assert sink.errors.value(**missing) == 1 and sink.errors.value(**ok) == 0
    assert sink.latency_sum.value(**ok) == pytest.approx(0.205)
    # one counter per bucket, not cumulative: 2 ms in (1 ms, 2.5 ms], 3 ms in (2.5 ms, 5 ms]
    assert sink.latency_buckets.value(**ok, le="0.0025") == 1
    assert sink.latency_buckets.value(**ok, le="0.005") == 1
    assert sink.latency_buckets.value(**ok, le="0.25") == 1
    assert sink.latency_buckets.value(**missing, le="0.0005") == 1
    assert sum(sink.latency_buckets.totals.values()) == 4


def test_the_recording_functions_add_to_the_process_s_recorder_which_a_test_may_replace() -> None:
    r, sink = recorder()
    try:
        assert recording.reset_recorder(r) is r and recording.recorder() is r
        recording.record_request(OK, 0.002)
        recording.flush()
        assert sink.requests.value(**OK.tags()) == 1
    finally:
        fresh = recording.reset_recorder()
    assert recording.recorder() is fresh and fresh is not r


def test_a_bucket_holds_its_upper_bound_and_the_last_one_everything_beyond() -> None:
    r, sink = recorder()
    r.add(OK, 0.001)
    r.add(OK, 45.0)
    r.flush()
    assert sink.latency_buckets.value(**OK.tags(), le="0.001") == 1
    assert sink.latency_buckets.value(**OK.tags(), le="+Inf") == 1


def test_a_flush_hands_each_request_over_once() -> None:
    r, sink = recorder()
    r.add(OK, 0.01)
    r.flush()
    r.flush()  # nothing new: nothing handed over
    r.add(OK, 0.01)
    r.flush()
    assert sink.requests.value(**OK.tags()) == 2
    assert sink.requests.calls == 2


def test_concurrent_adds_are_all_counted() -> None:
    r, sink = recorder()

    def hammer() -> None:
        for _ in range(500):
            r.add(OK, 0.001)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(20):
        r.flush()  # flushes in between lose nothing
    for t in threads:
        t.join()
    r.flush()
    assert sink.requests.value(**OK.tags()) == 2000


def test_no_thread_without_an_interval() -> None:
    r, _ = recorder()
    r.add(OK, 0.01)
    assert r._thread is None


def test_a_batch_counts_the_rows_of_each_calls_first_input() -> None:
    calls = [
        SimpleNamespace(inputs={"x": np.zeros((5, 1)), "y": np.zeros((9, 1))}),
        SimpleNamespace(inputs={"x": np.float32(1.0)}),  # a scalar is one example
        SimpleNamespace(inputs={}),
    ]
    assert batch_examples(calls) == 7


def test_a_recording_error_is_logged_once_and_never_raised(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> None:
        raise RuntimeError("no metrics here")

    monkeypatch.setattr(recording, "_metrics", broken)
    monkeypatch.setattr(recording, "_FAILED", set())
    logger = logging.getLogger("ray.serve")  # Ray may have stopped it propagating to the root
    logger.addHandler(caplog.handler)
    try:
        recording.record_load("m", 1, True, 0.5)
        recording.record_load("m", 1, True, 0.5)
    finally:
        logger.removeHandler(caplog.handler)
    assert [r.getMessage() for r in caplog.records] == ["Recording metrics failed in record_load"]


def test_unknown_models_and_signatures_collapse_to_one_series() -> None:
    """10,000 requests naming made-up models, and made-up signatures of a served model, add one
    series each (``__unknown__``), not one per name; served names keep theirs."""
    r, sink = recorder()
    r.serving(["m", "other"])
    r.learn_signatures("m", ["serving_default", "classify_x"])
    for i in range(10_000):
        r.add(MISSING._replace(model=f"random-{i}", signature=f"s{i}"), 0.001)
        r.add(OK._replace(signature=f"no-such-{i}", status="FAILED_PRECONDITION"), 0.001)
    r.add(OK, 0.001)
    r.add(OK._replace(signature="classify_x", status="INVALID_ARGUMENT"), 0.001)
    r.add(MISSING._replace(model="other"), 0.001)
    r.flush()
    series = {dict(tags)["model"] + "/" + dict(tags)["signature"] for tags in sink.requests.totals}
    assert series == {
        "__unknown__/__unknown__",
        "m/__unknown__",
        "m/serving_default",
        "m/classify_x",
        "other/serving_default",
    }
    unknown = MISSING._replace(model="__unknown__", signature="__unknown__")
    assert sink.requests.value(**unknown.tags()) == 10_000
    assert sink.errors.value(**unknown.tags()) == 10_000


def test_a_signature_answered_ok_is_kept_and_learning_is_bounded() -> None:
    """A signature a served model answered OK exists (its own deployment, not loaded here):
    later errors naming it keep the name. At most MAX_SIGNATURES pairs are learnt."""
    from serve_app.metrics.labels import MAX_SIGNATURES

    r, sink = recorder()
    r.serving(["m"])
    r.add(OK._replace(signature="remote"), 0.001)
    r.add(OK._replace(signature="remote", status="INVALID_ARGUMENT"), 0.001)
    for i in range(MAX_SIGNATURES + 10):
        r.add(OK._replace(signature=f"ok-{i}"), 0.001)
    r.flush()
    names = {dict(tags)["signature"] for tags in sink.requests.totals}
    assert "remote" in names and "__unknown__" in names
    assert len(names) <= MAX_SIGNATURES + 1
    bad = OK._replace(signature="remote", status="INVALID_ARGUMENT")
    assert sink.errors.value(**bad.tags()) == 1


def test_before_the_routing_table_every_name_is_kept() -> None:
    r, sink = recorder()
    r.add(MISSING._replace(model="x"), 0.001)
    r.flush()
    assert sink.requests.value(**MISSING._replace(model="x").tags()) == 1
