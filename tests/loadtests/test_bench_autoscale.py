"""The benchmark's autoscaling row without a server: its summary of the windows (which are the
one-replica and the scaled-out figures) and its plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadtests.bench.autoscale import chart, parse_args, summary

pytestmark = pytest.mark.unit


def window(start: float, connections: int, replicas: int, rps: float, p99: float) -> Any:
    return {
        "start_s": start,
        "connections": connections,
        "replicas": replicas,
        "throughput_rps": rps,
        "p50_ms": p99 / 2,
        "p99_ms": p99,
        "failed": 0,
        "first_error": "",
    }


RESULTS = {
    "settings": vars(parse_args(["--phases", "10,15,10"])),
    "windows": [
        window(0, 1, 1, 1000, 3),
        window(5, 1, 1, 1200, 3),
        window(10, 16, 1, 1500, 20),
        window(15, 16, 2, 1800, 18),
        window(20, 16, 3, 2200, 15),
        window(25, 1, 3, 1300, 2),
        window(30, 1, 1, 1250, 2),
    ],
    "replicas": [(0.5, 1, 1), (12.0, 2, 1), (16.0, 3, 2), (21.0, 3, 3), (29.0, 1, 1)],
}


def test_the_summary_compares_the_high_load_on_one_replica_and_on_the_most() -> None:
    s = summary(RESULTS)
    assert s["most_replicas"] == 3
    assert s["low_one_replica_rps"] == pytest.approx(1150)
    assert s["high_one_replica_rps"] == 1500
    assert s["high_most_replicas_rps"] == 2200
    assert (s["high_one_replica_p99_ms"], s["high_most_replicas_p99_ms"]) == (20, 15)
    assert s["failed"] == 0


def test_the_plot_is_written(tmp_path: Path) -> None:
    chart(RESULTS, tmp_path / "autoscale.png")
    assert (tmp_path / "autoscale.png").read_bytes()[:4] == b"\x89PNG"


def test_three_phases_are_required() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--phases", "10,20"])
