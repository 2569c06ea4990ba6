"""The benchmark runs end to end in its tiny mode: every system answers, the outputs are written.

No timing is asserted (the machine is shared); only that each cell measured something.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests import procstat
from loadtests.bench import SYSTEMS, RayConfig, add_ratios, higher_limit

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_smoke_run_measures_every_system(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    run = subprocess.run(
        [sys.executable, "-m", "loadtests.bench", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((out / "bench.json").read_text())
    cells = {(c["system"], c["batching"], c["concurrency"]): c for c in results["cells"]}
    assert set(cells) == {
        ("inprocess", None, None),
        ("plain", None, 1),
        ("ray-grpc", "off", 1),
        ("ray-rest", "off", 1),
    }
    assert {c["system"] for c in results["cells"]} == set(SYSTEMS)
    for cell in results["cells"]:
        assert cell["workload"] == "half_plus_two"
        assert cell["examples_per_s"] > 0, cell
        if cell["system"] != "inprocess":
            assert cell["requests"] > 0 and cell["errors"] == 0, cell
            assert cell["p50_ms"] > 0 and cell["p99_ms"] >= cell["p50_ms"], cell
            assert cell["vs_inprocess"] > 0, cell
            assert cell["server_cpu_total"] > 0, cell
    assert cells[("ray-grpc", "off", 1)]["vs_plain"] > 0
    limit = cells[("inprocess", None, None)]
    assert limit["examples_per_s"] == max(limit["limit_runs"]) > 0  # before and after the servers
    assert (out / "bench.png").stat().st_size > 0
    assert "c/a" in run.stdout and "c/b" in run.stdout


def test_the_limit_is_the_higher_of_its_two_measurements() -> None:
    before = {"system": "inprocess", "examples_per_s": 300.0, "best_batch": 16}
    after = {"system": "inprocess", "examples_per_s": 390.0, "best_batch": 8}
    assert higher_limit(before, after) == {**after, "limit_runs": [300.0, 390.0]}
    assert higher_limit(after, before) == {**after, "limit_runs": [390.0, 300.0]}


def test_ratios_compare_examples_to_the_limit_and_requests_to_the_plain_server() -> None:
    cells = [
        {"workload": "w", "system": "inprocess", "examples_per_s": 400.0},
        {
            "workload": "w",
            "system": "plain",
            "concurrency": 16,
            "throughput_rps": 100.0,
            "examples_per_s": 100.0,
        },
        {
            "workload": "w",
            "system": "ray-grpc",
            "concurrency": 16,
            "throughput_rps": 60.0,
            "examples_per_s": 60.0,
        },
        {
            "workload": "w",
            "system": "ray-grpc",
            "concurrency": 1,
            "throughput_rps": 50.0,
            "examples_per_s": 50.0,
        },
    ]
    add_ratios(cells)
    assert cells[1]["vs_inprocess"] == 0.25 and cells[1]["vs_plain"] is None
    assert cells[2]["vs_inprocess"] == 0.15 and cells[2]["vs_plain"] == 0.6
    assert cells[3]["vs_plain"] is None  # no plain cell at concurrency 1


def test_process_roles() -> None:
    assert procstat.role(["ray::ServeReplica:default:Ingress.handle_request"]) == "ingress"
    assert procstat.role(["ray::ServeReplica:default:deeplab-v1"]) == "replica:deeplab-v1"
    assert procstat.role(["ray::ProxyActor.receive_asgi_messages"]) == "proxy"
    assert procstat.role(["/x/bin/python", "-u", "-m", "loadtests.plain_server"]) == (
        "loadtests.plain_server"
    )
    assert procstat.role(["/x/gcs_server", "--flag"]) == "gcs_server"


def test_cores_used_counts_per_process_deltas() -> None:
    before = {1: ("proxy", 10.0), 2: ("ingress", 5.0)}
    after = {1: ("proxy", 11.0), 2: ("ingress.x", 6.0), 3: ("replica:m", 0.5)}
    assert procstat.cores_used(before, after, 2.0) == {
        "ingress.x": 0.5,
        "proxy": 0.5,
        "replica:m": 0.25,
    }


def test_variant_syntax_splits_environment_from_app_arguments() -> None:
    rc = RayConfig.parse("tput batching=on RAY_SERVE_THROUGHPUT_OPTIMIZED=1 intra_op_parallelism=1")
    assert rc.label == "tput" and rc.batching
    assert rc.env == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    assert rc.app_args()[0] == "batching.enabled=true"
    assert rc.app_args()[-2:] == ["intra_op_parallelism=1", "direct_ingress=true"]
    assert rc.direct_ingress  # throughput-optimized mode turns Ray's direct ingress on
    assert not RayConfig.parse(
        "x RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_DIRECT_INGRESS=0"
    ).direct_ingress
    assert RayConfig.parse("plain-off").app_args() == []


def test_default_run_measures_the_fast_path_beside_the_defaults() -> None:
    from loadtests.bench import parse_args

    settings, _ = parse_args(["--quick"])
    assert [rc.label for rc in settings.ray_configs] == ["off", "on", "fast"]
    fast = settings.ray_configs[-1]
    assert fast.batching and fast.direct_ingress and "colocate=true" in fast.app_args()
    smoke, _ = parse_args(["--smoke"])
    assert [rc.label for rc in smoke.ray_configs] == ["off"]
