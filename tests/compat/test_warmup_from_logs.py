"""Warmup from logged traffic: the sample's bound and coverage, and the command end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from compat import warmup_from_logs
from compat.protos import prediction_log_pb2
from compat.servable import Servable
from compat.warmup import replay_warmup
from tests.harness import TESTDATA


def predict_log(rows: int, signature: str = "", value: float = 2.0):  # type: ignore[no-untyped-def]
    log = prediction_log_pb2.PredictionLog()
    request = log.predict_log.request
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = signature
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.full((rows,), value, np.float32)))
    log.predict_log.response.outputs["y"].CopyFrom(tf.make_tensor_proto(np.zeros(rows)))
    return log


def test_every_shape_and_signature_is_covered_before_any_is_repeated() -> None:
    logs = [predict_log(1, value=float(i)) for i in range(500)]  # the common case
    logs += [predict_log(7), predict_log(3, "serving_default")]  # two rare ones
    chosen, groups = warmup_from_logs.choose(logs, max_records=4, per_kind=4)
    assert groups == 3
    keys = [warmup_from_logs.group_of(c) for c in chosen]
    assert len(chosen) == 4 and len(set(keys)) == 3
    assert all(not c.predict_log.HasField("response") for c in chosen)  # requests only


def test_the_sample_is_bounded_per_group_and_in_all() -> None:
    logs = [predict_log(rows) for rows in range(1, 41) for _ in range(10)]
    chosen, groups = warmup_from_logs.choose(logs, max_records=50, per_kind=2)
    assert groups == 40 and len(chosen) == 50
    chosen, _ = warmup_from_logs.choose(logs, max_records=1000, per_kind=2)
    assert len(chosen) == 80


def test_records_warmup_cannot_replay_are_left_out() -> None:
    log = prediction_log_pb2.PredictionLog()
    log.session_run_log.SetInParent()
    assert warmup_from_logs.choose([log, prediction_log_pb2.PredictionLog()]) == ([], 0)


def test_the_command_writes_a_warmup_file_a_version_replays(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m compat.warmup_from_logs``: its ``main`` in this process, the console left as
    pytest's (``quiet`` is ``test_console``'s)."""
    from compat import console

    monkeypatch.setattr(console, "quiet", lambda: None)
    logged = tmp_path / "log-1.tfrecord"
    with tf.io.TFRecordWriter(str(logged)) as writer:
        for rows in (1, 1, 1, 2, 5):
            writer.write(predict_log(rows).SerializeToString())
    version = tmp_path / "half_plus_two" / "124"
    import shutil

    shutil.copytree(TESTDATA / "saved_model_half_plus_two_cpu" / "00000123", version)
    out = version / "assets.extra" / "tf_serving_warmup_requests"
    assert warmup_from_logs.main(["--out", str(out), str(logged)]) == 0
    assert capsys.readouterr().out.strip() == (
        f"wrote 5 warmup records (3 distinct API/signature/shape groups) from 5 logged records "
        f"to {out}"
    )
    servable = Servable(version)
    try:
        assert replay_warmup(servable, version, "half_plus_two", 124) == 5
    finally:
        servable.close()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max_records", "1001"], "--max_records must be within 1..1000"),
        (["--per_kind", "0"], "--per_kind must be at least 1"),
    ],
)
def test_bounds_beyond_tf_serving_s_are_refused(flags: list[str], message: str) -> None:
    with pytest.raises(SystemExit):
        warmup_from_logs.main(["--out", "/nonexistent/x", *flags, "log"])


def test_a_missing_log_file_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, the console left as pytest's."""
    from compat import console

    monkeypatch.setattr(console, "quiet", lambda: None)
    code = warmup_from_logs.main(["--out", str(tmp_path / "w"), str(tmp_path / "none.tfrecord")])
    assert code == 1
    assert capsys.readouterr().err.startswith("error: reading the logs failed: ")
    assert not (tmp_path / "w").exists()


def test_our_bound_is_tf_serving_s() -> None:
    from compat.warmup import MAX_WARMUP_RECORDS

    assert warmup_from_logs.MAX_WARMUP_RECORDS == MAX_WARMUP_RECORDS
