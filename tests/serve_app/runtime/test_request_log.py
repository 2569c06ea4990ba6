"""The request log's writer, in-process: records TensorFlow reads back, rotation by size, and
drops (counted, never raised) when the directory cannot be written or the writer is behind."""

from __future__ import annotations

import functools
import os
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from compat import model_config
from compat.errors import InvalidArgument
from compat.protos import prediction_log_pb2
from serve_app.config.args import AppArgs, ModelArgs, RequestLogArgs
from serve_app.launch.boot import resolve_models
from serve_app.runtime import request_log


def record(i: int) -> prediction_log_pb2.PredictionLog:
    log = prediction_log_pb2.PredictionLog()
    log.log_metadata.model_spec.name = "m"
    log.predict_log.request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.full((4,), i, np.float32)))
    return log


def read(prefix: Path) -> list[prediction_log_pb2.PredictionLog]:
    return [
        prediction_log_pb2.PredictionLog.FromString(r)
        for path in sorted(prefix.parent.glob(prefix.name + "-*.tfrecord"))
        for r in tf.compat.v1.io.tf_record_iterator(str(path))
    ]


def test_records_are_written_in_order_and_read_back_by_tensorflow(tmp_path: Path) -> None:
    log = request_log.RequestLog("m", RequestLogArgs(filename_prefix=str(tmp_path / "a/log")))
    for i in range(20):
        log.submit(lambda i=i: record(i))
    log.close()
    got = read(tmp_path / "a/log")
    assert [int(tf.make_ndarray(r.predict_log.request.inputs["x"])[0]) for r in got] == list(
        range(20)
    )
    assert (log.written, log.dropped) == (20, 0)
    (name,) = [p.name for p in (tmp_path / "a").iterdir()]
    assert name.startswith("log-") and name.endswith(f"-{os.getpid()}-00000.tfrecord")


def test_files_rotate_by_size(tmp_path: Path) -> None:
    args = RequestLogArgs(filename_prefix=str(tmp_path / "log"), max_file_bytes=1024)
    log = request_log.RequestLog("m", args)
    for i in range(50):
        log.submit(lambda i=i: record(i))
    log.close()
    files = sorted(tmp_path.glob("log-*.tfrecord"))
    assert len(files) >= 3  # ~60 bytes a record, 50 of them, 1 KiB a file
    assert all(f.stat().st_size < 1024 + 200 for f in files)  # a file ends after the record
    assert len(read(tmp_path / "log")) == 50


def test_an_unwritable_directory_drops_records_and_raises_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    log = request_log.RequestLog("m", RequestLogArgs(filename_prefix=str(blocker / "log")))
    for i in range(10):
        log.submit(lambda i=i: record(i))
    log.close()
    assert (log.written, log.dropped) == (0, 10)


def big_record(i: int) -> prediction_log_pb2.PredictionLog:
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.inputs["x"].CopyFrom(
        tf.make_tensor_proto(np.full((2048,), i, np.float32))  # 8 KB
    )
    return log


def test_a_full_disk_drops_records_and_the_log_resumes_when_there_is_room(tmp_path: Path) -> None:
    """The log's second file is on a full disk (``/dev/full``: every write is ENOSPC, no
    privilege needed): the record written there is dropped, the next file takes the rest."""
    args = RequestLogArgs(filename_prefix=str(tmp_path / "log"), max_file_bytes=16 << 10)
    log = request_log.RequestLog("m", args)
    full = tmp_path / f"log-{log._started}-{os.getpid()}-00001.tfrecord"
    full.symlink_to("/dev/full")
    for i in range(6):  # two records a file
        log.submit(lambda i=i: big_record(i))
    log.close()
    assert (log.written, log.dropped) == (5, 1)
    full.unlink()  # what is left to read is the files on disk
    kept = read(tmp_path / "log")
    assert [int(tf.make_ndarray(r.predict_log.request.inputs["x"])[0]) for r in kept] == [
        0,
        1,
        3,
        4,
        5,
    ]


def test_a_writer_behind_drops_at_once_instead_of_waiting(tmp_path: Path) -> None:
    args = RequestLogArgs(filename_prefix=str(tmp_path / "log"), max_pending=5)
    log = request_log.RequestLog("m", args)
    gate = threading.Event()

    def slow() -> prediction_log_pb2.PredictionLog:
        gate.wait(60)
        return record(0)

    caller = threading.Thread(target=lambda: [log.submit(slow) for _ in range(100)])
    caller.start()
    caller.join(30)  # a hang guard: the writer is held for longer
    # the caller never waits for the disk: all 100 returned while the writer is still held
    assert not caller.is_alive() and not gate.is_set()
    assert log.dropped >= 94
    gate.set()
    log.close()
    assert log.dropped >= 94 and log.written + log.dropped == 100


def test_a_record_that_cannot_be_built_costs_that_record_only(tmp_path: Path) -> None:
    log = request_log.RequestLog("m", RequestLogArgs(filename_prefix=str(tmp_path / "log")))
    log.submit(lambda: 1 / 0)  # type: ignore[arg-type,return-value]
    log.submit(lambda: record(1))
    log.close()
    assert (log.written, log.dropped) == (1, 1)


def test_sampling_rate_zero_logs_nothing_and_one_logs_all() -> None:
    assert request_log.for_model("m", None) is None
    assert request_log.for_model("m", RequestLogArgs(filename_prefix="/x", sampling_rate=0)) is None
    log = request_log.for_model("m", RequestLogArgs(filename_prefix="/x", sampling_rate=1.0))
    assert log is not None and all(log.sampled() for _ in range(1000))
    assert log is request_log.for_model("m", RequestLogArgs(filename_prefix="/x", sampling_rate=1))


def test_the_process_s_request_logs_are_one_registry_that_a_reset_closes(tmp_path: Path) -> None:
    args = RequestLogArgs(filename_prefix=str(tmp_path / "log"), sampling_rate=1.0)
    first = request_log.reset_process_logs()
    log = request_log.for_model("m", args)
    assert log is not None and log is first.for_model("m", args)
    assert request_log.process_logs() is first
    log.submit(lambda: record(7))
    fresh = request_log.reset_process_logs()  # the old logs write what they queued and close
    assert request_log.process_logs() is fresh and fresh is not first
    [written] = read(tmp_path / "log")
    assert log.written == 1 and tf.make_ndarray(written.predict_log.request.inputs["x"])[0] == 7
    assert request_log.for_model("m", args) is not log


CONFIG = """model_config_list {{ config {{ name: "m" base_path: "/b" logging_config {{
  log_collector_config {{ type: "{type}" filename_prefix: "{prefix}" }}
  sampling_config {{ sampling_rate: {rate} }} }} }} }}"""


def test_logging_config_maps_onto_the_request_log() -> None:
    (entry,) = model_config.entries(
        model_config.parse_text(CONFIG.format(type="tfrecord", prefix="/logs/m", rate=0.25))
    )
    assert entry.request_log == {"filename_prefix": "/logs/m", "sampling_rate": 0.25}


@pytest.mark.parametrize(
    ("type_", "prefix", "rate", "message"),
    [
        ("kafka", "/l", 0.5, "Model m: log collector type 'kafka' is not supported"),
        ("", "/l", 0.5, "Model m: log collector type '' is not supported"),
        ("tfrecord", "", 0.5, "Model m: log_collector_config has no filename_prefix"),
        ("tfrecord", "/l", 1.5, "Model m: sampling_rate 1.5 is not within [0, 1]"),
    ],
)
def test_a_logging_config_we_cannot_honour_is_refused(
    type_: str, prefix: str, rate: float, message: str
) -> None:
    config = model_config.parse_text(CONFIG.format(type=type_, prefix=prefix, rate=rate))
    with pytest.raises(InvalidArgument) as e:
        model_config.entries(config)
    assert e.value.message.startswith(message)


def test_a_version_logs_classify_regress_and_multi_inference_with_responses(
    testdata: Path, tmp_path: Path
) -> None:
    """The version's own path (``ModelVersion.call``), in-process on TF Serving's
    half_plus_two: each API's record has its request and the response the caller got."""
    import asyncio

    from compat.protos import classification_pb2, inference_pb2, regression_pb2
    from serve_app.calls import Api, ModelCall
    from serve_app.runtime.model import ModelVersion

    path = testdata / "saved_model_half_plus_two_cpu" / "00000123"
    version = ModelVersion("half_plus_two", 123, str(path), session={})
    prefix = tmp_path / "hpt"
    version.reconfigure(
        {"request_logs": {"half_plus_two": {"filename_prefix": str(prefix), "sampling_rate": 1}}}
    )
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "half_plus_two"
    classify.model_spec.signature_name = "classify_x_to_y"
    classify.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.CopyFrom(classify.model_spec)
    regress.model_spec.signature_name = "regress_x_to_y"
    regress.input.CopyFrom(classify.input)
    multi = inference_pb2.MultiInferenceRequest()
    task = multi.tasks.add()
    task.model_spec.CopyFrom(regress.model_spec)
    task.method_name = "tensorflow/serving/regress"
    multi.input.CopyFrom(classify.input)
    calls = [
        ModelCall(Api.CLASSIFY, classify.model_spec, classify),
        ModelCall(Api.REGRESS, regress.model_spec, regress),
        ModelCall(Api.MULTI_INFERENCE, task.model_spec, multi),
        ModelCall(Api.METADATA, classify.model_spec, _metadata_request()),  # not logged
    ]

    async def run() -> list[bytes]:
        return [(await version.call(c)).raise_for_status() for c in calls]

    payloads = asyncio.run(run())
    request_log.close_all()
    version.servable.close()  # type: ignore[union-attr]
    records = read(prefix)
    assert [r.WhichOneof("log_type") for r in records] == [
        "classify_log",
        "regress_log",
        "multi_inference_log",
    ]
    assert records[0].classify_log.request == classify
    assert records[0].classify_log.response.SerializeToString() == payloads[0]
    assert records[1].regress_log.response.result.regressions[0].value == 3.0
    assert records[2].multi_inference_log.request == multi
    assert records[2].multi_inference_log.response.SerializeToString() == payloads[2]
    for r in records:
        assert r.log_metadata.model_spec.name == "half_plus_two"
        assert r.log_metadata.model_spec.version.value == 123
        assert list(r.log_metadata.saved_model_tags) == ["serve"]


def _metadata_request():  # type: ignore[no-untyped-def]
    from compat.protos import get_model_metadata_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "half_plus_two"
    request.metadata_field.append("signature_def")
    return request


# --- the queue is bounded by bytes -------------------------------------------------------------


def test_the_queue_holds_no_more_than_max_pending_bytes_of_requests(tmp_path: Path) -> None:
    """A writer behind with large requests waiting: what the queue pins stays within the
    bound, the rest is dropped at once (and counted), and nothing is pinned once written."""
    args = RequestLogArgs(filename_prefix=str(tmp_path / "log"))
    log = request_log.RequestLog("m", args, max_pending_bytes=1 << 20)
    gate = threading.Event()
    alive: list[weakref.ref[np.ndarray]] = []

    def submit(i: int) -> None:
        tensor = np.full((64 << 10,), i, np.float32)  # 256 KiB
        alive.append(weakref.ref(tensor))

        def build() -> prediction_log_pb2.PredictionLog:
            gate.wait(10)
            return record(int(tensor[0]))

        log.submit(build, request_log.held_bytes(build))

    for i in range(40):  # 10 MiB offered
        submit(i)
        assert log.pending_bytes <= 1 << 20
    queued = sum(ref() is not None for ref in alive)
    assert queued == 4  # 1 MiB (with the one the writer builds), not the 10 MiB offered
    gate.set()
    log.close()
    assert log.written == queued and log.written + log.dropped == 40
    assert log.pending_bytes == 0
    assert all(ref() is None for ref in alive)  # the writer keeps no request once written


def test_held_bytes_counts_the_request_and_response_a_record_keeps() -> None:
    from compat.protos import predict_pb2
    from serve_app.calls import Api, ModelCall

    request = predict_pb2.PredictRequest()
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.zeros((100_000,), np.float32)))
    call = ModelCall(Api.PREDICT, request.model_spec, request)
    payload = b"r" * 5000
    grpc_record = lambda: (call.request, payload)  # noqa: E731 (as the version makes it)
    assert 400_000 <= request_log.held_bytes(grpc_record) <= 410_000

    class Prepared:  # a Predict decoded from JSON or ModelInfer: its arrays
        inputs = {"x": np.zeros((1000,), np.float64)}
        outputs = {"y": np.zeros((500,), np.float32)}

    assert request_log.held_bytes(functools.partial(print, Prepared())) == 10_000
    assert request_log.held_bytes(lambda: None) == 0


# --- a reloaded config's request logs stay where the operator allowed -------------------------


def model(prefix: str, name: str = "m") -> ModelArgs:
    log = RequestLogArgs(filename_prefix=prefix, sampling_rate=1.0)
    return ModelArgs(name=name, base_path="/b", request_log=log)


def test_the_allowed_directories_are_the_startup_config_s_and_the_flag_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    args = resolve_models(
        AppArgs(
            models=[model("logs/a/m"), model(str(tmp_path / "link/m"), "n")],
            request_log_allowed_dirs="extra,/var/log/../log/rtfs",  # type: ignore[arg-type]
        )
    )
    assert args.request_log_allowed_dirs == [
        str(tmp_path / "extra"),
        "/var/log/rtfs",
        str(tmp_path / "logs/a"),
        str(tmp_path / "real"),
    ]
    # the startup prefixes, resolved: the writers open what was checked
    assert [m.request_log.filename_prefix for m in args.models] == [  # type: ignore[union-attr]
        str(tmp_path / "logs/a/m"),
        str(tmp_path / "real/m"),
    ]


@pytest.mark.parametrize("prefix", ["{a}/m", "{a}/deeper/still/m", "{a}/x/../m", "{link_in}/m"])
def test_a_reload_may_log_under_an_allowed_directory(tmp_path: Path, prefix: str) -> None:
    a, elsewhere = tmp_path / "a", tmp_path / "elsewhere"
    a.mkdir()
    elsewhere.mkdir()
    (a / "inside").mkdir()
    (tmp_path / "link_in").symlink_to(a / "inside")
    prefix = prefix.format(a=a, link_in=tmp_path / "link_in")
    (confined,) = request_log.confine([model(prefix)], [str(a)])
    written_to = Path(confined.request_log.filename_prefix)  # type: ignore[union-attr]
    assert written_to.parent.resolve().is_relative_to(a) and written_to.name == "m"


@pytest.mark.parametrize(
    ("prefix", "where"),
    [
        ("{elsewhere}/m", "{elsewhere}"),
        ("{a}/../elsewhere/m", "{elsewhere}"),  # .. out of it
        ("{a}/link_out/m", "{elsewhere}"),  # a symlink out of it
        ("{a}/link_out/../x/m", "{tmp}/x"),  # .. after a symlink: read as the kernel does
        ("{a}2/m", "{a}2"),  # a sibling whose name begins the same
        ("/etc/cron.d/m", "/etc/cron.d"),
    ],
)
def test_a_reload_that_logs_anywhere_else_is_invalid_argument(
    tmp_path: Path, prefix: str, where: str
) -> None:
    a, elsewhere = tmp_path / "a", tmp_path / "elsewhere"
    a.mkdir()
    elsewhere.mkdir()
    (a / "link_out").symlink_to(elsewhere)
    prefix, where = (s.format(a=a, elsewhere=elsewhere, tmp=tmp_path) for s in (prefix, where))
    with pytest.raises(InvalidArgument) as e:
        request_log.confine([model("/ok/m", "fine"), model(prefix)], [str(a), "/ok"])
    assert e.value.message == (
        f"Model m: request log filename_prefix {prefix!r} is in {where}, outside the "
        f"directories allowed at startup ({a}, /ok): those of the startup config's request "
        "logs and --request_log_allowed_dirs"
    )
