"""The benchmark runs end to end in its tiny mode: every system answers, the outputs are written.

No timing is asserted (the machine is shared); only that each cell measured something.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests import h2load, procstat
from loadtests.bench import SYSTEMS, RayConfig, add_ratios, higher_limit

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("client", ["h2load", "python"])
def test_smoke_run_measures_every_system(tmp_path: Path, client: str) -> None:
    if client == "h2load" and not h2load.available():
        assert not os.environ.get("CI"), "CI installs h2load (nghttp2-client): .ci/run"
        pytest.skip("h2load (Debian package nghttp2-client) is not installed")
    # Both clients share the callers (h2load's run checks each cell with one call of them), so
    # where h2load runs too, the Python client's own part, its closed loop, is measured against
    # the plain server alone: one boot of ray-tfserving less.
    systems = ["inprocess", "plain"] if client == "python" and h2load.available() else SYSTEMS
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "loadtests.bench", "--smoke", "--client", client]
    run = subprocess.run(
        [*command, "--out", str(out), "--systems", ",".join(systems)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((out / "bench.json").read_text())
    assert results["meta"]["settings"]["client"] == client
    cells = {(c["system"], c["batching"], c["concurrency"]): c for c in results["cells"]}
    every = {
        ("inprocess", None, None),
        ("plain", None, 1),
        ("ray-grpc", "off", 1),
        ("ray-rest", "off", 1),
        ("ray-v2", "off", 1),
    }
    assert set(cells) == {key for key in every if key[0] in systems}
    for cell in results["cells"]:
        assert cell["workload"] == "half_plus_two"
        assert cell["examples_per_s"] > 0, cell
        if cell["system"] != "inprocess":
            assert cell["requests"] > 0 and cell["errors"] == 0, cell
            assert cell["p50_ms"] > 0 and cell["p99_ms"] >= cell["p50_ms"], cell
            assert cell["vs_inprocess"] > 0, cell
            assert cell["server_cpu_total"] > 0, cell
    if "ray-grpc" in systems:
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
    assert rc.app_args()[-1] == "intra_op_parallelism=1"
    assert RayConfig.parse("plain-off").app_args() == []


def test_default_run_measures_the_default_with_batching_off_and_on() -> None:
    from loadtests.bench import parse_args

    settings, _ = parse_args(["--quick"])
    assert [rc.label for rc in settings.ray_configs] == ["off", "on"]
    assert settings.ray_configs[0].app_args() == []  # the default configuration, as shipped
    assert settings.client == ("h2load" if h2load.available() else "python")
    smoke, _ = parse_args(["--smoke", "--client", "python"])
    assert [rc.label for rc in smoke.ray_configs] == ["off"] and smoke.client == "python"


def test_h2load_frames_and_reads_its_log(tmp_path: Path) -> None:
    from loadtests.h2load import _read_log, grpc_frame

    assert grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
    log = tmp_path / "log.tsv"
    log.write_text("1796120733697212\t200\t4427\n1796120733696687\t503\t5011\n")
    assert _read_log(log) == ([4.427, 5.011], {503: 1})  # the count of each non-2xx status


def test_default_configs_boot_through_the_cli_with_tf_servings_batching_file(
    tmp_path: Path,
) -> None:
    """The issue's measure: the ``ray-tfserving`` command, batching by ``--enable_batching``
    and a batching parameters file that TF Serving's parser reads as the serve-run boots' knobs."""
    from compat.text_configs import read_batching_parameters
    from loadtests.bench import parse_args
    from loadtests.bench.settings import BATCHING_ON

    settings, _ = parse_args(["--quick"])
    off, on = settings.ray_configs
    assert off.via_cli and on.via_cli
    assert off.cli_flags("F") == []
    assert on.cli_flags("F") == ["--enable_batching", "--batching_parameters_file=F"]
    path = tmp_path / "batching.txt"
    path.write_text(on.batching_file())
    knobs = read_batching_parameters(path)
    for arg in BATCHING_ON:
        key, value = arg.split("=")
        assert knobs[key.removeprefix("batching.")] == int(value)
    # A variant of TF Serving's knobs boots through the CLI too, its batching file tuned;
    # an app argument (in a variant, or for every boot) goes through serve run's key=value.
    tuned = RayConfig.parse("tuned batching=on file.num_batch_threads=2 file.max_batch_size=8")
    assert tuned.via_cli
    path.write_text(tuned.batching_file())
    knobs = read_batching_parameters(path)
    assert knobs["num_batch_threads"] == 2 and knobs["max_batch_size"] == 8
    assert knobs["batch_timeout_micros"] == 2000
    assert not RayConfig.parse("x batching=on intra_op_parallelism=1").via_cli
    with pytest.raises(ValueError, match="file"):
        RayConfig.parse("x file.num_batch_threads=2")
    assert not parse_args(["--quick", "--ray-arg", "a=b"])[0].ray_configs[0].via_cli
