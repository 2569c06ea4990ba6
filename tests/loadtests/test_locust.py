"""The locust users against a live server: both protocols counted, and errors really reported.

Runs ``python -m loadtests.run`` (locust headless, as the README says) and reads locust's own
CSV files. No timing is asserted (the machine is shared).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.run import HTML_REPORT, read_summary
from tests.harness import REPO, Server, shared_server

MODEL = "half_plus_two"
USERS = 4
HARD_TIMEOUT_S = 150


pytestmark = pytest.mark.shares_server("half_plus_two")


@pytest.fixture(scope="module")
def server() -> Server:
    return shared_server("half_plus_two")


def _locust(server: Server, out: Path, seconds: int, *args: str) -> subprocess.CompletedProcess:
    """``python -m loadtests.run`` with both users against ``server``."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.run",
            "--users",
            str(USERS),
            "--seconds",
            str(seconds),
            "--out",
            str(out),
            "--timeout-s",
            str(HARD_TIMEOUT_S - 10),
            "--payload",
            "half_plus_two",
            "--grpc-port",
            str(server.grpc_port),
            "--rest-port",
            str(server.http_port),
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=HARD_TIMEOUT_S,
    )


@pytest.mark.timeout(300)
def test_both_protocols_without_failures(server: Server, tmp_path: Path) -> None:
    run = _locust(server, tmp_path, 4)
    out = run.stdout + run.stderr + (tmp_path / "locust.log").read_text(errors="replace")
    assert run.returncode == 0, out[-4000:]
    summary = read_summary(tmp_path)
    grpc_rows, rest_rows = summary.by_type("grpc"), summary.by_type("POST")
    assert [r.name for r in grpc_rows] == [f"Predict {MODEL}"], out[-4000:]
    assert [r.name for r in rest_rows] == [f"/v1/models/{MODEL}:predict"], out[-4000:]
    for row in (*grpc_rows, *rest_rows):
        assert row.requests > 0 and row.failures == 0, row
        assert row.p50_ms is not None and row.p99_ms is not None and row.p99_ms >= row.p50_ms
    assert summary.total.requests == grpc_rows[0].requests + rest_rows[0].requests
    assert summary.total.failures == 0 and not summary.failures
    assert (tmp_path / HTML_REPORT).stat().st_size > 0
    assert (tmp_path / "locust_stats_history.csv").stat().st_size > 0
    assert "Aggregated" in run.stdout and "p99 ms" in run.stdout  # the printed summary


@pytest.mark.timeout(300)
def test_a_wrong_model_is_counted_as_failures_at_the_set_rate(
    server: Server, tmp_path: Path
) -> None:
    rate, seconds = 40, 3
    run = _locust(server, tmp_path, seconds, "--model", "nope", "--rate", str(rate))
    out = run.stdout + run.stderr + (tmp_path / "locust.log").read_text(errors="replace")
    assert run.returncode == 1, out[-4000:]
    summary = read_summary(tmp_path)
    grpc_row, rest_row = summary.by_type("grpc")[0], summary.by_type("POST")[0]
    assert grpc_row.name == "Predict nope" and rest_row.name == "/v1/models/nope:predict"
    for row in (grpc_row, rest_row):
        assert row.requests > 0 and row.failures == row.requests, row
    errors = {(f.method, f.error) for f in summary.failures}
    message = "Servable not found for request: Latest(nope)"
    assert any(m == "grpc" and f"NOT_FOUND: {message}" in e for m, e in errors), errors
    assert any(m == "POST" and f"HTTP 404: {message}" in e for m, e in errors), errors
    # NOT_FOUND is fast: unpaced, 4 users make hundreds of calls in 3 s; the pacer allows
    # `rate` per second in total (plus each user's first slot)
    assert summary.total.requests <= rate * seconds * 1.25 + USERS, summary.format()


def test_request_files_send_the_same_tensors(server: Server, tmp_path: Path) -> None:
    """A recorded PredictRequest (binary and text) and a REST body (decoded with the live
    server's signature) give the same gRPC request as the synthetic payload."""
    from google.protobuf import text_format

    from loadtests import payloads

    synthetic = payloads.build("half_plus_two", batch=3)
    (tmp_path / "r.pb").write_bytes(synthetic.request.SerializeToString())
    (tmp_path / "r.pbtxt").write_text(text_format.MessageToString(synthetic.request))
    (tmp_path / "r.json").write_text('{"instances": [[1.0], [2.0], [3.0]]}')
    for name in ("r.pb", "r.pbtxt"):
        recorded = payloads.build(request_file=str(tmp_path / name))
        assert recorded.request == synthetic.request and recorded.model == MODEL
        assert recorded.body == b'{"inputs": {"x": [[1.0], [2.0], [3.0]]}}'
    body = payloads.build(
        request_file=str(tmp_path / "r.json"), model=MODEL, grpc_target=server.grpc_target
    )
    assert body.request.inputs["x"] == synthetic.request.inputs["x"]
    assert body.rest_path == f"/v1/models/{MODEL}:predict"
