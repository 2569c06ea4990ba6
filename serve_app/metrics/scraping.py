"""Scraping: the Prometheus page, gathered from every node's Ray metrics agent.

Ray's per-node metrics agent (part of the dashboard agent, which runs even with the dashboard
off) collects every worker's metrics and exports them on the node's ``metrics_export_port``.
When Prometheus scrapes ``prometheus_path``, the ingress replica that gets the request fetches
our families from every alive node's agent, drops Ray's per-process labels, sums the series that
remain equal, adds the version states read from the version manager at that moment, and answers
the whole in Prometheus' text format through ``prometheus_client``. Any replica therefore gives
the complete picture, however many ingress or model replicas and nodes there are.

Histograms come back exact: the request latency travels as per-bucket counters
(``labels.PER_BUCKET``) rebuilt here into a cumulative histogram, and each histogram's exact sum
(``labels.EXACT_SUM``) replaces the ``_sum`` that Ray's agent approximates from bucket
midpoints. Ray reports worker metrics every ``metrics_report_interval_ms`` (10 s by default), so
a request shows up in the next scrape after that, well within a usual scrape interval. If the
counters of a replica that has stopped drop out of the agent's page, Prometheus' ``rate()``
takes the decrease as a counter reset.
"""

from __future__ import annotations

import asyncio
import logging
import math
import urllib.request
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from serve_app.metrics.labels import BUCKET_LABELS, EXACT_SUM, LATENCY_BUCKETS, PER_BUCKET, PREFIX

logger = logging.getLogger("ray.serve")

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
FETCH_TIMEOUT_S = 5.0
"""How long one node's agent may take to answer; a node that does not is left out, logged."""

_Series = tuple[str, tuple[tuple[str, str], ...]]
"""A sample's name and its sorted labels."""


async def prometheus_text(version_states: Mapping[str, Mapping[int, str]]) -> tuple[bytes, str]:
    """The endpoint's body and content type: every node's families plus the version states."""
    import ray

    nodes = await asyncio.to_thread(ray.nodes)
    urls = [
        _metrics_url(n["NodeManagerAddress"], n["MetricsExportPort"])
        for n in nodes
        if n.get("Alive") and n.get("MetricsExportPort")
    ]
    texts = await asyncio.gather(*(asyncio.to_thread(_fetch, url) for url in urls))
    return page(texts, version_states), CONTENT_TYPE_LATEST


def page(texts: Iterable[str], version_states: Mapping[str, Mapping[int, str]]) -> bytes:
    """Our page from the agents' pages and the version states, in Prometheus' text format."""
    families = merge(texts)
    families.append(version_state_family(version_states))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)


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
    sums: dict[str, dict[_Series, float]] = {}
    for family in text_string_to_metric_families("\n".join(kept) + "\n"):
        merged = families.get(family.name)
        if merged is None:
            merged = families[family.name] = Metric(family.name, family.documentation, family.type)
            sums[family.name] = {}
        totals = sums[family.name]
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in RAY_LABELS))
            key = (sample.name, labels)
            if family.name in MAX_MERGED:
                totals[key] = max(totals.get(key, -math.inf), sample.value)
            else:
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
    families.update(shadow_figures(sums))
    return [families[name] for name in sorted(families)]


MAX_MERGED = frozenset({PREFIX + "shadow_max_abs_diff"})
"""Gauges merged by their largest value (a largest difference), not summed."""


def shadow_figures(sums: Mapping[str, Mapping[_Series, float]]) -> dict[str, Metric]:
    """The shadow's diff rate (differed over compared) and latency ratio (shadow's time over
    the serving version's, for the same requests), per model, version and signature, from the
    merged counters (``recording.record_shadow``)."""
    by_outcome: dict[tuple[tuple[str, str], ...], dict[str, float]] = {}
    for (_, labels), value in sums.get(PREFIX + "shadow_requests", {}).items():
        rest = tuple(kv for kv in labels if kv[0] != "outcome")
        outcome = dict(labels).get("outcome", "")
        by_outcome.setdefault(rest, {})[outcome] = value
    by_side: dict[tuple[tuple[str, str], ...], dict[str, float]] = {}
    for (_, labels), value in sums.get(PREFIX + "shadow_seconds", {}).items():
        rest = tuple(kv for kv in labels if kv[0] != "side")
        by_side.setdefault(rest, {})[dict(labels).get("side", "")] = value
    rate = Metric(
        PREFIX + "shadow_diff_rate",
        "The share of compared mirrored requests whose shadow answer differed.",
        "gauge",
    )
    ratio = Metric(
        PREFIX + "shadow_latency_ratio",
        "The shadow version's time over the serving version's, for the same requests.",
        "gauge",
    )
    for labels, counts in sorted(by_outcome.items()):
        compared = counts.get("same", 0.0) + counts.get("differed", 0.0)
        if compared:
            rate.add_sample(rate.name, dict(labels), counts.get("differed", 0.0) / compared)
    for labels, sides in sorted(by_side.items()):
        if sides.get("serving"):
            ratio.add_sample(ratio.name, dict(labels), sides.get("shadow", 0.0) / sides["serving"])
    return {m.name: m for m in (rate, ratio) if m.samples}


def _rebuild_histogram(
    families: dict[str, Metric], sums: dict[str, dict[_Series, float]], name: str
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
    histogram: dict[_Series, float] = {}
    for rest, counts in series.items():
        running = 0.0
        for bound, label in zip(
            [*map(float, LATENCY_BUCKETS), math.inf], BUCKET_LABELS, strict=True
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


def _sample_order(item: tuple[_Series, float]) -> tuple:
    """Series together, buckets by ascending bound, then _count and _sum."""
    (name, labels), _ = item
    rest = tuple(kv for kv in labels if kv[0] != "le")
    bound = next((float(v) for k, v in labels if k == "le"), 0.0)
    return (rest, name.endswith(("_count", "_sum")), name, bound)


def version_state_family(states: Mapping[str, Mapping[int, str]]) -> GaugeMetricFamily:
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
