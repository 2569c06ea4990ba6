"""Replay before live traffic (``compat.replay``): logged requests answered by a candidate and a
baseline in this process, the diff report; TF Serving's half_plus_two against half_plus_three
(every answer differs) and against itself (none does)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from compat import replay
from compat.protos import prediction_log_pb2
from tests.harness import TESTDATA

HALF_PLUS_TWO = TESTDATA / "saved_model_half_plus_two_cpu"
HALF_PLUS_THREE = TESTDATA / "saved_model_half_plus_three"


def predict(rows: int) -> prediction_log_pb2.PredictionLog:
    log = prediction_log_pb2.PredictionLog()
    request = log.predict_log.request
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(
        tf.make_tensor_proto(np.arange(rows, dtype=np.float32).reshape(rows, 1))
    )
    return log


def regress() -> prediction_log_pb2.PredictionLog:
    log = prediction_log_pb2.PredictionLog()
    request = log.regress_log.request
    request.model_spec.signature_name = "regress_x_to_y"
    example = request.input.example_list.examples.add()
    example.features.feature["x"].float_list.value.append(4.0)
    return log


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A request log: five Predicts of 1 to 5 rows, one Regress, one record not replayed."""
    path = tmp_path_factory.mktemp("logs") / "requests-1.tfrecord"
    skipped = prediction_log_pb2.PredictionLog()
    skipped.session_run_log.SetInParent()
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in [*map(predict, range(1, 6)), regress(), skipped]:
            writer.write(log.SerializeToString())
    return path


def test_half_plus_three_differs_on_every_request(logs: Path, tmp_path: Path) -> None:
    out, drawn = tmp_path / "report.json", tmp_path / "report.png"
    argv = ["--baseline", str(HALF_PLUS_TWO), "--candidate", str(HALF_PLUS_THREE)]
    assert replay.main([*argv, "--out", str(out), "--plot", str(drawn), str(logs.parent)]) == 0
    assert drawn.read_bytes().startswith(b"\x89PNG")
    report = json.loads(out.read_text())
    assert report["records"] == 7 and report["skipped"] == 1
    assert report["compared"] == report["differed"] == 6
    assert report["diff_rate"] == 1.0
    assert report["max_abs_diff"]["y"] == pytest.approx(1.0)  # 0.5x+3 against 0.5x+2
    assert report["differed_outputs"] == {"<error>": 1, "y": 5}  # no regress_x_to_y there
    assert report["errors"] == {"baseline": 0, "candidate": 1}
    assert report["latency"]["ratio"] > 0
    assert report["candidate"].endswith("saved_model_half_plus_three/00000123")
    # A gate on the diff rate fails the command.
    assert replay.main([*argv, "--max_diff_rate", "0.5", str(logs)]) == 3


def test_a_version_against_itself_differs_nowhere(logs: Path) -> None:
    from compat import platforms

    half_plus_two = platforms.load(replay.version_dir(str(HALF_PLUS_TWO)))
    report = replay.replay(half_plus_two, half_plus_two, replay.read_logs([str(logs)]))
    assert report["compared"] == 6 and report["differed"] == 0 and report["diff_rate"] == 0.0
    assert report["max_abs_diff"] == {"outputs": 0.0, "y": 0.0}
    assert report["errors"] == {"baseline": 0, "candidate": 0}
    capped = replay.replay(
        half_plus_two, half_plus_two, replay.read_logs([str(logs)]), max_records=2
    )
    assert capped["compared"] == 2


def test_unreadable_logs_or_versions_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--baseline", str(HALF_PLUS_TWO), "--candidate", str(tmp_path)]
    assert replay.main([*argv, str(tmp_path / "missing.tfrecord")]) == 1
    assert "error:" in capsys.readouterr().err


def test_ray_tfserving_replay_is_this_command(capsys: pytest.CaptureFixture) -> None:
    from serve_app.launch import cli

    with pytest.raises(SystemExit) as exited:
        cli.main(["replay", "--help"])
    assert exited.value.code == 0
    assert "usage: ray-tfserving replay" in capsys.readouterr().out


def test_a_rollout_report_is_drawn(tmp_path: Path) -> None:
    """``plot_rollout``: the admin port's rollout reports, one panel each (a PNG)."""
    figures = dict(
        compared=0,
        differed=0,
        candidate_requests=4,
        candidate_errors=0,
        candidate_p99_s=0.5,
        current_requests=9,
        current_errors=0,
        current_p99_s=None,  # none measured: drawn as 0
    )
    stages = [
        {"stage": "shadow", "weight": 0.0, "figures": {**figures, "compared": 5}},
        {"stage": "canary", "weight": 0.25, "figures": figures},
    ]
    report = {"model": "m", "current": 1, "candidate": 2, "outcome": "promoted", "stages": stages}
    replay.plot_rollout([report, {**report, "stages": stages[:1]}], tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
