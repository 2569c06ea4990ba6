"""The soak run, short (``python -m loadtests.soak --minutes 30`` is the long one): valid,
hostile and rollout load at once against a live server lose nothing and leak nothing."""

from __future__ import annotations

from loadtests import soak


def test_a_short_soak_loses_nothing_and_stays_bounded() -> None:
    report = soak.run(seconds=30, rollout_every_s=9, clients=3, warmup_s=5)
    counts = report["counts"]
    # each kind of load ran beside the others (how much of it is the benchmark's business)
    assert counts.get("grpc ok", 0) > 0 and counts.get("rest ok", 0) > 0, counts
    assert counts.get("rollout", 0) >= 2, counts  # versions changed under the load, twice
    assert sum(v for k, v in counts.items() if k.startswith("hostile")) > 0, counts
    assert report["valid_failures"] == {}, counts
    assert report["hostile_misses"] == {}, counts
    assert report["gone_processes"] == [], report  # no process died (or was replaced)
    ingress = {k: v for k, v in report["rss_growth_mib"].items() if "Ingress" in k}
    assert ingress and max(ingress.values()) < 200, report["rss_growth_mib"]
    print(f"\nshort soak: {counts}; Ingress RSS growth (MiB): {ingress}")
