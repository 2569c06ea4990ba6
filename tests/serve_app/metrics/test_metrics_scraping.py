"""serve_app.metrics.scraping without a server: the pages of two "nodes" (plain strings, as Ray's
metrics agents write them) merge into one, Ray's per-process labels summed away, histograms
rebuilt with exact sums, the version states beside them."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from serve_app.metrics.labels import RequestLabels
from serve_app.metrics.scraping import merge, page, version_state_family
from tests.serve_app.metrics.test_metrics_recording import FakeCounter, FakeSink, recorder

AGENT_PAGE = """# HELP ray_tfserving_batch_size Examples per batch.
# TYPE ray_tfserving_batch_size histogram
ray_tfserving_batch_size_bucket{{WorkerId="{w}",le="4.0",model="m",version="1"}} 1.0
ray_tfserving_batch_size_bucket{{WorkerId="{w}",le="8.0",model="m",version="1"}} 2.0
ray_tfserving_batch_size_bucket{{WorkerId="{w}",le="+Inf",model="m",version="1"}} 2.0
ray_tfserving_batch_size_count{{WorkerId="{w}",model="m",version="1"}} 2.0
ray_tfserving_batch_size_sum{{WorkerId="{w}",model="m",version="1"}} 9.0
# HELP ray_tfserving_batch_size_exact_sum_total The exact sum.
# TYPE ray_tfserving_batch_size_exact_sum_total counter
ray_tfserving_batch_size_exact_sum_total{{WorkerId="{w}",model="m",version="1"}} 8.0
# HELP ray_serve_num_router_requests_total Ray's own.
# TYPE ray_serve_num_router_requests_total counter
ray_serve_num_router_requests_total{{WorkerId="{w}"}} 5.0
"""

#: The exported name of each counter ``RequestRecorder`` flushes into (``recording._Metrics``).
EXPORTED = {
    "requests": "ray_tfserving_requests_total",
    "errors": "ray_tfserving_request_errors_total",
    "latency_sum": "ray_tfserving_request_latency_seconds_exact_sum_total",
    "latency_buckets": "ray_tfserving_request_latency_seconds_per_bucket_total",
}


def agent_page(sink: FakeSink, worker: str, node: str) -> str:
    """What a node's agent would export for the counters in ``sink``, with Ray's labels."""
    lines = []
    for attribute, name in EXPORTED.items():
        counter: FakeCounter = getattr(sink, attribute)
        lines += [f"# HELP {name} Ray's description.", f"# TYPE {name} counter"]
        for tags, value in counter.totals.items():
            labels = {"WorkerId": worker, "NodeAddress": node, **dict(tags)}
            text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            lines.append(f"{name}{{{text}}} {value}")
    return "\n".join(lines) + "\n"


def samples(families: list) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples}


def test_merge_sums_processes_and_keeps_exact_sums() -> None:
    families = merge([AGENT_PAGE.format(w="a"), AGENT_PAGE.format(w="b")])
    assert [f.name for f in families] == ["ray_tfserving_batch_size"]
    merged = {(s.name, s.labels.get("le")): s.value for s in families[0].samples}
    assert merged == {
        ("ray_tfserving_batch_size_bucket", "4.0"): 2.0,
        ("ray_tfserving_batch_size_bucket", "8.0"): 4.0,
        ("ray_tfserving_batch_size_bucket", "+Inf"): 4.0,
        ("ray_tfserving_batch_size_count", None): 4.0,
        ("ray_tfserving_batch_size_sum", None): 16.0,  # the exact sums, not Ray's 18
    }
    assert all("WorkerId" not in s.labels for s in families[0].samples)


def test_requests_recorded_on_two_nodes_scrape_as_one_exact_histogram() -> None:
    ok = RequestLabels("m", "1", "serving_default", "predict", "grpc", "OK")
    missing = RequestLabels("m", "", "serving_default", "predict", "rest", "NOT_FOUND")
    first, first_sink = recorder()
    second, second_sink = recorder()
    for seconds in (0.0002, 0.003):
        first.add(ok, seconds)
    second.add(ok, 0.003)
    second.add(ok, 40.0)
    second.add(missing, 0.02)
    first.flush()
    second.flush()

    families = merge(
        [agent_page(first_sink, "w1", "10.0.0.1"), agent_page(second_sink, "w2", "10.0.0.2")]
    )
    names = [f.name for f in families]
    assert names == [
        "ray_tfserving_request_errors",
        "ray_tfserving_request_latency_seconds",
        "ray_tfserving_requests",
    ]
    latency = families[1]
    assert latency.type == "histogram"
    assert latency.documentation.startswith("Time from the serving replica receiving")
    got = samples(families)
    series = frozenset(ok.tags().items())
    bucket = "ray_tfserving_request_latency_seconds_bucket"
    assert got[(bucket, series | {("le", "0.0005")})] == 1  # 0.2 ms
    assert got[(bucket, series | {("le", "0.0025")})] == 1  # cumulative
    assert got[(bucket, series | {("le", "0.005")})] == 3  # 3 ms on both nodes
    assert got[(bucket, series | {("le", "30.0")})] == 3
    assert got[(bucket, series | {("le", "+Inf")})] == 4  # 40 s
    assert got[("ray_tfserving_request_latency_seconds_count", series)] == 4
    assert got[("ray_tfserving_request_latency_seconds_sum", series)] == pytest.approx(40.0062)
    assert got[("ray_tfserving_requests_total", series)] == 4
    assert got[("ray_tfserving_request_errors_total", frozenset(missing.tags().items()))] == 1
    assert not any(k == "WorkerId" or k == "NodeAddress" for _, ls in got for k, _ in ls)
    # no exact-sum or per-bucket family left on the page
    assert not any("exact_sum" in n or "per_bucket" in n for n, _ in got)


def test_the_page_carries_the_version_states_and_parses() -> None:
    body = page(
        [AGENT_PAGE.format(w="a"), ""],  # a node that did not answer adds nothing
        {"m": {2: "AVAILABLE", 1: "UNLOADING"}},
    )
    text = body.decode()
    assert "# TYPE ray_tfserving_model_version_state gauge" in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == {"ray_tfserving_batch_size", "ray_tfserving_model_version_state"}
    state = families["ray_tfserving_model_version_state"]
    assert [(s.labels, s.value) for s in state.samples] == [
        ({"model": "m", "version": "1", "state": "UNLOADING"}, 1.0),
        ({"model": "m", "version": "2", "state": "AVAILABLE"}, 1.0),
    ]


def test_no_versions_is_an_empty_state_family() -> None:
    family = version_state_family({})
    assert family.name == "ray_tfserving_model_version_state" and family.samples == []


def shadow_page(w: str, differed: float, same: float, shadow_s: float, worst: float) -> str:
    """A node's shadow series (``recording.record_shadow``), with Ray's labels."""
    at = f'WorkerId="{w}",model="m",signature="serving_default",version="2"'
    requests, seconds = "ray_tfserving_shadow_requests_total", "ray_tfserving_shadow_seconds_total"
    return (
        "\n".join(
            [
                f"# TYPE {requests} counter",
                f'{requests}{{{at},outcome="differed"}} {differed}',
                f'{requests}{{{at},outcome="same"}} {same}',
                f'{requests}{{{at},outcome="dropped"}} 5.0',
                f"# TYPE {seconds} counter",
                f'{seconds}{{{at},side="serving"}} 1.0',
                f'{seconds}{{{at},side="shadow"}} {shadow_s}',
                "# TYPE ray_tfserving_shadow_max_abs_diff gauge",
                f"ray_tfserving_shadow_max_abs_diff{{{at}}} {worst}",
            ]
        )
        + "\n"
    )


def test_shadow_figures_are_derived_and_the_largest_difference_is_the_max() -> None:
    pages = [
        shadow_page("a", differed=3.0, same=1.0, shadow_s=2.0, worst=0.5),
        shadow_page("b", differed=0.0, same=4.0, shadow_s=1.0, worst=1.5),
    ]
    got = samples(merge(pages))
    series = frozenset({("model", "m"), ("signature", "serving_default"), ("version", "2")})
    assert got[("ray_tfserving_shadow_diff_rate", series)] == 3.0 / 8.0
    assert got[("ray_tfserving_shadow_latency_ratio", series)] == 3.0 / 2.0
    assert got[("ray_tfserving_shadow_max_abs_diff", series)] == 1.5  # not summed
    dropped = series | {("outcome", "dropped")}
    assert got[("ray_tfserving_shadow_requests_total", dropped)] == 10.0
    # Without shadow series, no derived family.
    assert not any("shadow" in f.name for f in merge([AGENT_PAGE.format(w="a")]))
