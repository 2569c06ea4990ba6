"""Prometheus metrics: recorded with Ray's metrics API where they happen, served by any replica.

Design. A request is answered by one serving replica (``serve_app.ingress``), or forwarded from
it to a model's own deployment; any of them may have several replicas on several nodes. Each
value is recorded once, in the process that knows it, with ``ray.util.metrics``:

* the serving replica records every model request (count, errors, latency) labelled with model,
  version, signature, API, protocol and status: it sees both transports, the resolved version
  and the final status. It adds them up in-process (``RequestRecorder``: one dict update per
  request) and hands them to Ray every second, the latency histogram as per-bucket counters;
* a replica holding a version records its load latency once and, with batching, the number of
  examples each batch gathers (only it sees batches).

Ray's per-node metrics agent (part of the dashboard agent, which runs even with the dashboard
off) collects every worker's metrics and exports them on the node's ``metrics_export_port``.
When Prometheus scrapes ``prometheus_path``, the ingress replica that gets the request fetches
our families from every alive node's agent, drops Ray's per-process labels, sums the series that
remain equal, adds the version states read from the version manager at that moment, and answers
the whole in Prometheus' text format through ``prometheus_client``. Any replica therefore gives
the complete picture, however many ingress or model replicas and nodes there are. (Ray's agent
rebuilds histograms from bucket counts with bucket midpoints; each histogram keeps an exact sum
in a companion counter that replaces the approximate ``_sum`` on our page.) The price:
Ray reports worker metrics every ``metrics_report_interval_ms`` (10 s by default), so a request
shows up in the next scrape after that, well within a usual scrape interval. If the counters
of a replica that has stopped drop out of the agent's page, Prometheus' ``rate()`` takes the
decrease as a counter reset.

Exported names carry Ray's ``ray_`` prefix: ``ray_tfserving_requests_total``,
``ray_tfserving_request_errors_total``, ``ray_tfserving_request_latency_seconds``,
``ray_tfserving_batch_size``, ``ray_tfserving_model_load_latency_seconds``,
``ray_tfserving_request_log_records_total`` and ``ray_tfserving_model_version_state``.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import logging
import math
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from compat.errors import StatusCode
from serve_app.calls import Api, ModelCall

logger = logging.getLogger("ray.serve")

PREFIX = "ray_tfserving_"
"""What our families are called once exported (Ray adds ``ray_`` to every name)."""
REQUEST_LABELS = ("model", "version", "signature", "api", "protocol", "status")
LATENCY_BUCKETS = [
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
LOAD_BUCKETS = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]
#: Labels Ray's agent adds per process and scope; summed away when serving our endpoint.
RAY_LABELS = frozenset(
    {
        "Component",
        "NodeAddress",
        "SessionName",
        "Version",
        "WorkerId",
        "JobId",
        "otel_scope_name",
        "otel_scope_schema_url",
        "otel_scope_version",
    }
)
EXACT_SUM = "_exact_sum"
"""Suffix of the counter that keeps a histogram's exact sum (see ``_Histogram``)."""
PER_BUCKET = "_per_bucket"
"""Suffix of a counter of observations per bucket (label ``le``, not cumulative) that ``merge``
turns into the histogram of the name without it (see ``RequestRecorder``)."""
FLUSH_INTERVAL_S = 1.0
"""How often a replica hands the requests it counted to Ray's metrics (which reports them every
``metrics_report_interval_ms``)."""
FETCH_TIMEOUT_S = 5.0
DEFAULT_SIGNATURE = "serving_default"


class _Metrics:
    """This process's Ray metrics (created on first use, inside a Ray worker)."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter

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
    :func:`merge` puts its total in place of the histogram's ``_sum`` and drops it.
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


# --- recording (hot path: a few microseconds) ------------------------------------------------

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
    """Request counts, errors and latencies of this process, added up here and handed to Ray's
    metrics by a background thread every ``FLUSH_INTERVAL_S``.

    A Ray metric update validates its tags and crosses into Ray's C++ core: four of them per
    request cost ~15% of a tiny model's throughput (measured with h2load on half_plus_two). Here
    a request costs one dict update under an uncontended lock; the latency histogram travels as
    one counter per bucket (``PER_BUCKET``) that ``merge`` turns back into a histogram.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, ...], list[Any]] = {}
        self._thread: threading.Thread | None = None

    def add(self, key: tuple[str, ...], error: bool, seconds: float) -> None:
        with self._lock:
            entry = self._pending.get(key)
            if entry is None:
                entry = self._pending[key] = [0, 0, 0.0, [0] * (len(LATENCY_BUCKETS) + 1)]
            entry[0] += 1
            entry[1] += error
            entry[2] += seconds
            entry[3][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rtfs-metrics", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL_S)
            self.flush()

    def flush(self) -> None:
        """Hand what was counted since the last flush to Ray's metrics."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        m = _metrics()
        for key, (count, errors, total, buckets) in pending.items():
            tags = dict(zip(REQUEST_LABELS, key, strict=True))
            m.requests.inc(float(count), tags)
            if errors:
                m.errors.inc(float(errors), tags)
            if total > 0:
                m.latency_sum.inc(total, tags)
            for bound, n in zip(_BUCKET_LABELS, buckets, strict=True):
                if n:
                    m.latency_buckets.inc(float(n), {**tags, "le": bound})


_BUCKET_LABELS = [*(repr(float(b)) for b in LATENCY_BUCKETS), "+Inf"]
_RECORDER = RequestRecorder()


@_never_raises
def record_request(
    model: str,
    version: int | None,
    signature: str,
    api: str,
    protocol: str,
    code: StatusCode,
    seconds: float,
) -> None:
    """One answered model request, with its gRPC status."""
    key = (
        model,
        "" if version is None else str(version),
        signature,
        api,
        protocol,
        code.name,
    )
    _RECORDER.add(key, code is not StatusCode.OK, seconds)


def flush() -> None:
    """Hand the requests counted so far to Ray's metrics now (a replica shutting down)."""
    _RECORDER.flush()


@_never_raises
def record_model_call(
    call: ModelCall, version: int | None, code: StatusCode, seconds: float
) -> None:
    """``Ingress.call_model``'s call: labels from the parsed call (``serve_app.calls``)."""
    if call.api in (Api.METADATA, Api.MULTI_INFERENCE):
        signature = ""
    else:
        signature = call.signature or DEFAULT_SIGNATURE
    record_request(str(call.spec.name), version, signature, call.api, call.wire, code, seconds)


@_never_raises
def record_batch(model: str, version: int, calls: Sequence[Any]) -> None:
    """The examples in one batch of Predict calls (``PredictCall.inputs``)."""
    _metrics().batch_size.observe(
        float(sum(_rows(c.inputs) for c in calls)), {"model": model, "version": str(version)}
    )


@_never_raises
def record_request_log(model: str, outcome: str, count: int = 1) -> None:
    """Records of a model's request log written or dropped (``serve_app.request_log``)."""
    _metrics().request_log.inc(float(count), {"model": model, "outcome": outcome})


@_never_raises
def record_load(model: str, version: int, ok: bool, seconds: float) -> None:
    status = "OK" if ok else "ERROR"
    _metrics().load_latency.observe(
        seconds, {"model": model, "version": str(version), "status": status}
    )


def _rows(inputs: dict[str, Any]) -> int:
    for value in inputs.values():
        shape = getattr(value, "shape", ())
        return int(shape[0]) if shape else 1
    return 1


# --- the scrape --------------------------------------------------------------------------------


async def prometheus_text(version_states: dict[str, dict[int, str]]) -> tuple[bytes, str]:
    """The endpoint's body and content type: every node's families plus the version states."""
    import ray

    nodes = await asyncio.to_thread(ray.nodes)
    urls = [
        _metrics_url(n["NodeManagerAddress"], n["MetricsExportPort"])
        for n in nodes
        if n.get("Alive") and n.get("MetricsExportPort")
    ]
    texts = await asyncio.gather(*(asyncio.to_thread(_fetch, url) for url in urls))
    families = merge(texts)
    families.append(version_state_family(version_states))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry), CONTENT_TYPE_LATEST


def _metrics_url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}/metrics"


def _fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
            return response.read().decode("utf-8", "replace")
    except OSError as e:
        logger.warning("Could not read Ray metrics from %s: %s", url, e)
        return ""


def merge(texts: Iterable[str]) -> list[Metric]:
    """Our families from several agents' pages, Ray's per-process labels summed away."""
    kept: list[str] = []
    for text in texts:
        kept.extend(line for line in text.splitlines() if _ours(line))
    families: dict[str, Metric] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for family in text_string_to_metric_families("\n".join(kept) + "\n"):
        merged = families.get(family.name)
        if merged is None:
            merged = families[family.name] = Metric(family.name, family.documentation, family.type)
            sums[family.name] = {}
        totals = sums[family.name]
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in RAY_LABELS))
            key = (sample.name, labels)
            totals[key] = totals.get(key, 0.0) + sample.value
    for name in [n for n in families if n.endswith(PER_BUCKET)]:
        _rebuild_histogram(families, sums, name)
    for name in [n for n in families if n.endswith(EXACT_SUM)]:
        exact = sums.pop(name)
        del families[name]
        histogram = sums.get(name.removesuffix(EXACT_SUM))
        if histogram is not None:
            for (_, labels), value in exact.items():
                key = (name.removesuffix(EXACT_SUM) + "_sum", labels)
                if key in histogram:
                    histogram[key] = value
    for name, merged in families.items():
        for (sample_name, labels), value in sorted(sums[name].items(), key=_sample_order):
            merged.add_sample(sample_name, dict(labels), value)
    return [families[name] for name in sorted(families)]


def _rebuild_histogram(
    families: dict[str, Metric],
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]],
    name: str,
) -> None:
    """A ``PER_BUCKET`` counter (observations per bucket) -> the cumulative histogram named
    without the suffix (``_bucket``, ``_count``, and ``_sum`` filled from ``EXACT_SUM``)."""
    base = name.removesuffix(PER_BUCKET)
    family = families.pop(name)
    per_bucket = sums.pop(name)
    series: dict[tuple[tuple[str, str], ...], dict[float, float]] = {}
    for (_, labels), value in per_bucket.items():
        rest = tuple(kv for kv in labels if kv[0] != "le")
        bound = next(float(v) for k, v in labels if k == "le")
        counts = series.setdefault(rest, {})
        counts[bound] = counts.get(bound, 0.0) + value
    histogram: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for rest, counts in series.items():
        running = 0.0
        for bound, label in zip(
            [*map(float, LATENCY_BUCKETS), math.inf], _BUCKET_LABELS, strict=True
        ):
            running += counts.get(bound, 0.0)
            histogram[(base + "_bucket", tuple(sorted((*rest, ("le", label)))))] = running
        histogram[(base + "_count", rest)] = running
        histogram[(base + "_sum", rest)] = 0.0  # the exact sum replaces it below
    families[base] = Metric(base, _REBUILT_HELP.get(base, family.documentation), "histogram")
    sums[base] = histogram


_REBUILT_HELP = {
    PREFIX + "request_latency_seconds": "Time from the serving replica receiving a model "
    "request to its reply, in seconds.",
}


def _ours(line: str) -> bool:
    if line.startswith("#"):
        parts = line.split(" ", 3)
        return len(parts) > 2 and parts[1] in ("HELP", "TYPE") and parts[2].startswith(PREFIX)
    return line.startswith(PREFIX)


def _sample_order(item: tuple[tuple[str, tuple[tuple[str, str], ...]], float]) -> tuple:
    """Series together, buckets by ascending bound, then _count and _sum."""
    (name, labels), _ = item
    rest = tuple(kv for kv in labels if kv[0] != "le")
    bound = next((float(v) for k, v in labels if k == "le"), 0.0)
    return (rest, name.endswith(("_count", "_sum")), name, bound)


def version_state_family(states: dict[str, dict[int, str]]) -> GaugeMetricFamily:
    """1 for the state each known version is in (TF Serving's ModelVersionStatus.State)."""
    family = GaugeMetricFamily(
        PREFIX + "model_version_state",
        "The state of each model version (1 for its current state: START, LOADING, "
        "AVAILABLE, UNLOADING or END).",
        labels=["model", "version", "state"],
    )
    for model in sorted(states):
        for version in sorted(states[model]):
            family.add_metric([model, str(version), states[model][version]], 1.0)
    return family


class _Families:
    """A collector that yields already-built families (for ``generate_latest``)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
