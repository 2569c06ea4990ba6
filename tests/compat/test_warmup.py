"""compat.warmup: TF Serving's warmup file replayed against a copy of half_plus_two.

Messages from saved_model_warmup.cc / saved_model_warmup_util.cc.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf

from compat.errors import (
    InvalidArgument,
    ServingError,
    StatusCode,
    Unimplemented,
    from_code,
)
from compat.protos import (
    classification_pb2,
    inference_pb2,
    prediction_log_pb2,
    regression_pb2,
)
from compat.servable import Servable
from compat.signatures import CLASSIFY_METHOD, REGRESS_METHOD
from compat.tensors import from_numpy
from compat.warmup import MAX_WARMUP_RECORDS, replay_warmup, warmup_file
from tests.harness import TESTDATA

HALF_PLUS_TWO = TESTDATA / "saved_model_half_plus_two_cpu/00000123"
MODEL = "default"
VERSION = 123


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of half_plus_two's version directory, to write warmup files into."""
    path = tmp_path_factory.mktemp("half_plus_two") / "00000123"
    shutil.copytree(HALF_PLUS_TWO, path)
    return path


@pytest.fixture(scope="module")
def servable(model_dir: Path) -> Servable:
    return Servable(model_dir)


def _write(model_dir: Path, records: list[bytes]) -> Path:
    file = warmup_file(model_dir)
    file.parent.mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(file)) as writer:
        for record in records:
            writer.write(record)
    return file


def _predict(alias: str = "x") -> prediction_log_pb2.PredictionLog:
    log = prediction_log_pb2.PredictionLog()
    request = log.predict_log.request
    request.model_spec.name = MODEL
    request.inputs[alias].CopyFrom(from_numpy(np.array([[2.0]], dtype=np.float32)))
    return log


def _classify(signature: str = "classify_x_to_y") -> prediction_log_pb2.PredictionLog:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature
    request.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    log = prediction_log_pb2.PredictionLog()
    log.classify_log.request.CopyFrom(request)
    return log


def _regress() -> prediction_log_pb2.PredictionLog:
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "regress_x_to_y"
    request.input.CopyFrom(_classify().classify_log.request.input)
    log = prediction_log_pb2.PredictionLog()
    log.regress_log.request.CopyFrom(request)
    return log


def _multi_inference() -> prediction_log_pb2.PredictionLog:
    request = inference_pb2.MultiInferenceRequest()
    request.input.CopyFrom(_classify().classify_log.request.input)
    for signature, method in (
        ("classify_x_to_y", CLASSIFY_METHOD),
        ("regress_x_to_y", REGRESS_METHOD),
    ):
        task = request.tasks.add(method_name=method)
        task.model_spec.name = MODEL
        task.model_spec.signature_name = signature
    log = prediction_log_pb2.PredictionLog()
    log.multi_inference_log.request.CopyFrom(request)
    return log


def _records(*logs: prediction_log_pb2.PredictionLog) -> list[bytes]:
    return [log.SerializeToString() for log in logs]


def test_no_warmup_file(servable: Servable, tmp_path: Path) -> None:
    assert replay_warmup(servable, tmp_path, MODEL, VERSION) == 0


@pytest.mark.parametrize("iterations", [1, 2])
def test_every_request_kind(servable: Servable, model_dir: Path, iterations: int) -> None:
    """Predict, Classify, Regress and MultiInference records run; an empty record is skipped."""
    logs = (
        _predict(),
        _classify(),
        _regress(),
        _multi_inference(),
        prediction_log_pb2.PredictionLog(),
    )
    _write(model_dir, _records(*logs))
    assert replay_warmup(servable, model_dir, MODEL, VERSION, iterations=iterations) == 5


def test_exactly_the_maximum(servable: Servable, model_dir: Path) -> None:
    _write(model_dir, _records(*[_predict()] * MAX_WARMUP_RECORDS))
    assert replay_warmup(servable, model_dir, MODEL, VERSION) == MAX_WARMUP_RECORDS


@pytest.mark.parametrize("max_records", [3, MAX_WARMUP_RECORDS])
def test_too_many_records(servable: Servable, model_dir: Path, max_records: int) -> None:
    file = _write(model_dir, _records(*[_regress()] * (max_records + 1)))
    message = f"Number of warmup records exceeds the maximum ({max_records}) at {file}"
    with pytest.raises(InvalidArgument, match=f"^{re.escape(message)}$"):
        replay_warmup(servable, model_dir, MODEL, VERSION, max_records)


@pytest.mark.parametrize(
    ("bad", "kind", "error", "cause"),
    [
        (
            _predict(alias="wrong"),
            "predict_log",
            InvalidArgument,
            "Signature input alias: x(feed name: x:0) not found in request",
        ),
        (
            _classify("nope"),
            "classify_log",
            InvalidArgument,
            "No signature was found with the name: nope",
        ),
        (
            prediction_log_pb2.PredictionLog(session_run_log={}),
            "session_run_log",
            Unimplemented,
            "Unsupported log_type for warmup: 5",
        ),
    ],
)
def test_failing_record_fails_warmup(
    servable: Servable,
    model_dir: Path,
    bad: prediction_log_pb2.PredictionLog,
    kind: str,
    error: type[ServingError],
    cause: str,
) -> None:
    """The request's own code, and a message naming the warmup record that failed."""
    file = _write(model_dir, _records(_regress(), bad, _regress()))
    expected = f"Warmup failed on record 2 ({kind}) of {file}: {cause}"
    with pytest.raises(error, match="^" + re.escape(expected)):
        replay_warmup(servable, model_dir, MODEL, VERSION)


def test_unparsable_record(servable: Servable, model_dir: Path) -> None:
    file = _write(model_dir, [b"\x0a\x05abc"])  # a length-delimited field cut short
    with pytest.raises(InvalidArgument, match="^" + re.escape("Failed to parse warmup record: ")):
        replay_warmup(servable, model_dir, MODEL, VERSION)
    assert file.exists()


def test_not_a_tfrecord_file(servable: Servable, model_dir: Path) -> None:
    file = warmup_file(model_dir)
    file.parent.mkdir(exist_ok=True)
    file.write_bytes(b"this is not a TFRecord file, just some bytes")
    with pytest.raises(ServingError) as caught:
        replay_warmup(servable, model_dir, MODEL, VERSION)
    assert caught.value.code == from_code(StatusCode.DATA_LOSS, "").code
    assert caught.value.message.endswith(". Please verify your warmup data is in TFRecord format.")
