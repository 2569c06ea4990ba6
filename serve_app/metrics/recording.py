"""Recording: each value is counted with Ray's metrics API in the process that knows it.

* the serving replica records every model request (count, errors, latency) labelled with
  ``labels.RequestLabels``: it sees both transports, the resolved version and the final status.
  It adds them up in-process (``RequestRecorder``: one dict update per request) and hands them to
  Ray every ``FLUSH_INTERVAL_S``, the latency histogram as per-bucket counters. Names that are
  not served are labelled ``UNKNOWN`` (the series stay as many as the served models and
  signatures, whatever clients send);
* a replica holding a version records its load latency once and, with batching, the number of
  examples each batch gathers (only it sees batches);
* the request log counts the records it wrote or dropped.

A recording never fails a request or a load: its error is logged, once per function.
"""

from __future__ import annotations

import bisect
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from compat.errors import StatusCode
from serve_app.calls import ModelCall
from serve_app.metrics.labels import (
    BATCH_BUCKETS,
    BUCKET_LABELS,
    DEFAULT_SIGNATURE,
    EXACT_SUM,
    LATENCY_BUCKETS,
    LOAD_BUCKETS,
    MAX_SIGNATURES,
    PER_BUCKET,
    REQUEST_LABELS,
    UNKNOWN,
    RequestLabels,
)

logger = logging.getLogger("ray.serve")

FLUSH_INTERVAL_S = 1.0
"""How often a replica hands the requests it counted to Ray's metrics (which reports them every
``metrics_report_interval_ms``)."""


class CounterLike(Protocol):
    """What a recorder needs of a counter (``ray.util.metrics.Counter``)."""

    def inc(self, value: float, tags: dict[str, str]) -> None: ...


class RequestSink(Protocol):
    """The counters ``RequestRecorder`` flushes into (``_Metrics``, or a fake)."""

    @property
    def requests(self) -> CounterLike: ...
    @property
    def errors(self) -> CounterLike: ...
    @property
    def latency_sum(self) -> CounterLike: ...
    @property
    def latency_buckets(self) -> CounterLike: ...


class _Metrics:
    """This process's Ray metrics (created on first use, inside a Ray worker)."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge

        self.requests = Counter(
            "tfserving_requests",
            "Model requests answered, by model, version, signature, API, protocol and status.",
            tag_keys=REQUEST_LABELS,
        )
        self.errors = Counter(
            "tfserving_request_errors",
            "Model requests answered with an error status.",
            tag_keys=REQUEST_LABELS,
        )
        self.latency_buckets = Counter(
            "tfserving_request_latency_seconds" + PER_BUCKET,
            "Model requests by the latency bucket (upper bound ``le``) they fell in.",
            tag_keys=(*REQUEST_LABELS, "le"),
        )
        self.latency_sum = Counter(
            "tfserving_request_latency_seconds" + EXACT_SUM,
            "The exact sum of tfserving_request_latency_seconds.",
            tag_keys=REQUEST_LABELS,
        )
        self.batch_size = _Histogram(
            "tfserving_batch_size",
            "Examples (rows along dimension 0) gathered into one batch by dynamic batching.",
            boundaries=BATCH_BUCKETS,
            tag_keys=("model", "version"),
        )
        self.request_log = Counter(
            "tfserving_request_log_records",
            "Records of the request log (logging_config), by model and outcome: written, or "
            "dropped (the writer behind, an unwritable directory, a full disk).",
            tag_keys=("model", "outcome"),
        )
        self.lifecycle_errors = Counter(
            "tfserving_lifecycle_errors",
            "Failed steps of the version manager, by step (scan: a base path's listing, "
            "config_file: the model config file's re-read, probe: a new version's load in a "
            "process of its own, poll: any other) and model (empty: the whole server).",
            tag_keys=("step", "model"),
        )
        shadow = ("model", "version", "signature")
        self.shadow_requests = Counter(
            "tfserving_shadow_requests",
            "Requests mirrored to a shadow version (our model config's shadow block), by "
            "outcome: same or differed (its answer against the served one), failed (it "
            "errored where the serving version did not), dropped (shed: queue full, too old, "
            "the replica busy).",
            tag_keys=(*shadow, "outcome"),
        )
        self.shadow_seconds = Counter(
            "tfserving_shadow_seconds",
            "Time the compared requests took, by side: serving (the version that answered the "
            "client) or shadow.",
            tag_keys=(*shadow, "side"),
        )
        self.shadow_max_abs_diff = Gauge(
            "tfserving_shadow_max_abs_diff",
            "The largest absolute difference between a shadow's and the served outputs.",
            tag_keys=shadow,
        )
        self.load_latency = _Histogram(
            "tfserving_model_load_latency_seconds",
            "Time a replica took to load (and warm up) its model version, in seconds.",
            boundaries=LOAD_BUCKETS,
            tag_keys=("model", "version", "status"),
        )


class _Histogram:
    """A Ray histogram whose sum is also kept exactly.

    Ray's agent rebuilds a histogram from its bucket counts using bucket midpoints, so the
    exported ``_sum`` is an approximation. A companion counter adds up the observed values;
    ``scraping.merge`` puts its total in place of the histogram's ``_sum`` and drops it.
    """

    def __init__(
        self, name: str, description: str, boundaries: Sequence[float], tag_keys: tuple[str, ...]
    ) -> None:
        from ray.util.metrics import Counter, Histogram

        self.histogram = Histogram(
            name, description, boundaries=list(boundaries), tag_keys=tag_keys
        )
        self.sum = Counter(name + EXACT_SUM, f"The exact sum of {name}.", tag_keys=tag_keys)

    def observe(self, value: float, tags: dict[str, str]) -> None:
        self.histogram.observe(value, tags)
        if value > 0:
            self.sum.inc(value, tags)


@functools.cache
def _metrics() -> _Metrics:
    return _Metrics()


# --- the request path (a few microseconds) ---------------------------------------------------

_F = TypeVar("_F", bound=Callable[..., None])
_FAILED: set[str] = set()


def _never_raises(record: _F) -> _F:
    """Metrics must not fail a request or a load: a recording error is logged, once."""

    @functools.wraps(record)
    def guarded(*args: Any, **kwargs: Any) -> None:
        try:
            record(*args, **kwargs)
        except Exception:
            if record.__name__ not in _FAILED:
                _FAILED.add(record.__name__)
                logger.exception("Recording metrics failed in %s", record.__name__)

    return guarded  # type: ignore[return-value]


class RequestRecorder:
    """Request counts, errors and latencies of this process, added up here and handed to the
    sink's counters by a background thread every ``interval_s`` (None: only by ``flush``).

    A Ray metric update validates its tags and crosses into Ray's C++ core: four of them per
    request cost a tiny model much of its throughput (measured as in the README's "Benchmark"). Here
    a request costs one dict update under an uncontended lock; the latency histogram travels as
    one counter per bucket (``PER_BUCKET``) that ``scraping.merge`` turns back into a histogram.
    """

    def __init__(
        self,
        sink: Callable[[], RequestSink] = _metrics,
        interval_s: float | None = FLUSH_INTERVAL_S,
    ) -> None:
        self._sink = sink
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._pending: dict[RequestLabels, list[Any]] = {}
        self._thread: threading.Thread | None = None
        self._models: frozenset[str] | None = None
        """The served models' names (``serving``); None: not told yet, every name kept."""
        self._signatures: set[tuple[str, str]] = set()
        """(model, signature) pairs known to exist: loaded here, or answered OK."""

    def serving(self, models: Iterable[str]) -> None:
        """The models served now (the routing table's): any other name is ``UNKNOWN``."""
        with self._lock:
            self._models = frozenset(models)

    def learn_signatures(self, model: str, signatures: Iterable[str]) -> None:
        """Signatures a version of ``model`` has (loaded in this process)."""
        with self._lock:
            for signature in signatures:
                self._known_signature(model, signature)

    def _known_signature(self, model: str, signature: str) -> bool:
        key = (model, signature)
        if key in self._signatures:
            return True
        if len(self._signatures) >= MAX_SIGNATURES:
            return False
        self._signatures.add(key)
        return True

    def _bounded(self, labels: RequestLabels) -> RequestLabels:
        """``labels`` with a model that is not served, or a signature not known to exist (an
        error naming one never loaded nor answered OK), as ``UNKNOWN``."""
        if self._models is not None and labels.model not in self._models:
            signature = UNKNOWN if labels.signature else ""
            return labels._replace(model=UNKNOWN, version="", signature=signature)
        signature = labels.signature
        if signature in ("", DEFAULT_SIGNATURE) or (labels.model, signature) in self._signatures:
            return labels
        if not labels.error and self._known_signature(labels.model, signature):
            return labels
        return labels._replace(signature=UNKNOWN)

    def add(self, labels: RequestLabels, seconds: float) -> None:
        with self._lock:
            labels = self._bounded(labels)
            entry = self._pending.get(labels)
            if entry is None:
                entry = self._pending[labels] = [0, 0, 0.0, [0] * (len(LATENCY_BUCKETS) + 1)]
            entry[0] += 1
            entry[1] += labels.error
            entry[2] += seconds
            entry[3][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        if self._thread is None and self._interval_s is not None:
            self._thread = threading.Thread(target=self._run, name="rtfs-metrics", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        assert self._interval_s is not None
        while True:
            time.sleep(self._interval_s)
            self.flush()

    def flush(self) -> None:
        """Hand what was counted since the last flush to the sink."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        m = self._sink()
        for labels, (count, errors, total, buckets) in pending.items():
            tags = labels.tags()
            m.requests.inc(float(count), tags)
            if errors:
                m.errors.inc(float(errors), tags)
            if total > 0:
                m.latency_sum.inc(total, tags)
            for bound, n in zip(BUCKET_LABELS, buckets, strict=True):
                if n:
                    m.latency_buckets.inc(float(n), {**tags, "le": bound})


_process_recorder = RequestRecorder()


def recorder() -> RequestRecorder:
    """This process's recorder: the one the functions below record into."""
    return _process_recorder


def reset_recorder(new: RequestRecorder | None = None) -> RequestRecorder:
    """Make ``new`` (a fresh one by default) this process's recorder, and return it: a test
    starts from nothing counted, or records into a sink of its own."""
    global _process_recorder
    _process_recorder = new if new is not None else RequestRecorder()
    return _process_recorder


@_never_raises
def record_request(labels: RequestLabels, seconds: float) -> None:
    """One answered model request."""
    recorder().add(labels, seconds)


def flush() -> None:
    """Hand the requests counted so far to Ray's metrics now (a replica shutting down)."""
    recorder().flush()


@_never_raises
def serving(models: Iterable[str]) -> None:
    """The models served now: requests naming any other are labelled ``UNKNOWN``."""
    recorder().serving(models)


@_never_raises
def learn_signatures(model: str, signatures: Iterable[str]) -> None:
    """The signatures of a version of ``model`` this process loaded."""
    recorder().learn_signatures(model, signatures)


@_never_raises
def record_model_call(
    call: ModelCall, version: int | None, code: StatusCode, seconds: float
) -> None:
    """``DataPlane.call_model``'s call: labels from the parsed call and its reply's status."""
    recorder().add(RequestLabels.of_call(call, version, code), seconds)


@_never_raises
def record_batch(model: str, version: int, calls: Sequence[Any]) -> None:
    """The examples in one batch of Predict calls (``PredictCall.inputs``)."""
    _metrics().batch_size.observe(
        float(batch_examples(calls)), {"model": model, "version": str(version)}
    )


def batch_examples(calls: Sequence[Any]) -> int:
    """The rows (dimension 0 of each call's first input) a batch of Predict calls gathers; a
    call whose input is a scalar, or that has none, counts one."""
    return sum(_rows(c.inputs) for c in calls)


def _rows(inputs: dict[str, Any]) -> int:
    for value in inputs.values():
        shape = getattr(value, "shape", ())
        return int(shape[0]) if shape else 1
    return 1


@_never_raises
def record_request_log(model: str, outcome: str, count: int = 1) -> None:
    """Records of a model's request log written or dropped (``serve_app.runtime.request_log``)."""
    _metrics().request_log.inc(float(count), {"model": model, "outcome": outcome})


@_never_raises
def record_load(model: str, version: int, ok: bool, seconds: float) -> None:
    """A version's load (and warmup): how long it took, and whether it succeeded."""
    status = "OK" if ok else "ERROR"
    _metrics().load_latency.observe(
        seconds, {"model": model, "version": str(version), "status": status}
    )


@_never_raises
def record_lifecycle_error(step: str, model: str) -> None:
    """A failed step of the version manager (``serve_app.lifecycle.faults``)."""
    _metrics().lifecycle_errors.inc(1.0, {"step": step, "model": model})


_SHADOW_MAX: dict[tuple[str, str, str], float] = {}
"""(model, version, signature) -> the largest difference this process has seen."""


@_never_raises
def record_shadow(
    model: str,
    version: int,
    signature: str,
    outcome: str,
    seconds: tuple[float, float] = (0.0, 0.0),
    max_abs_diff: float = 0.0,
) -> None:
    """One mirrored request's ``outcome`` (``serve_app.runtime.shadow``); a compared one's
    (serving, shadow) ``seconds`` and largest output difference too."""
    m = _metrics()
    tags = {"model": model, "version": str(version), "signature": signature or DEFAULT_SIGNATURE}
    m.shadow_requests.inc(1.0, {**tags, "outcome": outcome})
    if outcome not in ("same", "differed"):
        return
    for side, value in zip(("serving", "shadow"), seconds, strict=True):
        if value > 0:
            m.shadow_seconds.inc(value, {**tags, "side": side})
    key = (tags["model"], tags["version"], tags["signature"])
    worst = max(_SHADOW_MAX.get(key, 0.0), max_abs_diff)
    _SHADOW_MAX[key] = worst
    m.shadow_max_abs_diff.set(worst, tags)
