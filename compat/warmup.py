"""Model warmup: replay a version's recorded requests once at load time, as TF Serving does.

TF Serving (``saved_model_warmup.cc``, ``saved_model_warmup_util.cc``) reads
``<version>/assets.extra/tf_serving_warmup_requests``, a TFRecord file of
``tensorflow.serving.PredictionLog``, and runs each record's request against the freshly loaded
model before it serves: Predict, Classify, Regress and MultiInference records run,
``session_run_log`` is UNIMPLEMENTED, a record with no request is skipped. A missing file means
no warmup; more than 1000 records, an unparsable record, a corrupt file or any failing request
fails the load. Requests run here through the same code as live traffic (``compat.dataplane``
for Predict, ``compat.inference`` for the rest).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from google.protobuf.message import DecodeError

from compat.dataplane import prepare_predict
from compat.errors import InvalidArgument, ServingError, StatusCode, Unimplemented, from_code
from compat.inference import classify, multi_inference, regress
from compat.platforms import LoadedModel
from compat.protos import prediction_log_pb2

logger = logging.getLogger(__name__)

ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
#: ``WarmupConsts::kMaxNumRecords``.
MAX_WARMUP_RECORDS = 1000

#: Record kinds answered by compat.inference, by their PredictionLog field.
_INFERENCE: dict[str, Callable[..., object]] = {
    "classify_log": classify,
    "regress_log": regress,
    "multi_inference_log": multi_inference,
}


def warmup_file(path: str | os.PathLike[str]) -> Path:
    """Where a SavedModel version directory keeps its warmup requests."""
    return Path(path) / ASSETS_EXTRA / WARMUP_FILE


def _replay(
    servable: LoadedModel,
    log: prediction_log_pb2.PredictionLog,
    model: str,
    version: int,
    check_method_name: bool,
) -> None:
    """RunWarmupRequest (saved_model_warmup.cc): run one record's request, drop the response."""
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
        call = prepare_predict(servable, log.predict_log.request)
        servable.run(call.signature, call.inputs, call.output_aliases)
    elif kind in _INFERENCE:
        request = getattr(log, kind).request
        _INFERENCE[kind](servable, request, model, version, check_method_name=check_method_name)
    elif kind == "session_run_log":
        # TF prints the oneof case, i.e. the field number.
        number = log.DESCRIPTOR.fields_by_name[kind].number
        raise Unimplemented(f"Unsupported log_type for warmup: {number}")
    # Anything else (no request, predict_streamed_log) is skipped, as in TF Serving's TF1 path.


def replay_warmup(
    servable: LoadedModel,
    path: str | os.PathLike[str],
    model: str,
    version: int,
    max_records: int = MAX_WARMUP_RECORDS,
    *,
    iterations: int = 1,
    check_method_name: bool = False,
) -> int:
    """Replay the warmup file of the SavedModel at ``path``; how many records ran (0: no file).

    ``iterations`` is ``--num_request_iterations_for_warmup`` (each record runs that many
    times), ``check_method_name`` ``--enable_signature_method_name_check``. Raises a
    :class:`ServingError`: the failing request's own code with a message saying which record
    failed, or TF Serving's errors for too many records (INVALID_ARGUMENT), an unparsable record
    (INVALID_ARGUMENT) or a file that is not TFRecord (DATA_LOSS).
    """
    file = warmup_file(path)
    if not file.exists():
        logger.info("No warmup data file found at %s", file)
        return 0
    import tensorflow as tf

    start = time.monotonic()
    count = 0
    try:
        for record in tf.compat.v1.io.tf_record_iterator(str(file)):
            try:
                log = prediction_log_pb2.PredictionLog.FromString(record)
            except DecodeError:
                raw = record.decode("utf-8", "backslashreplace")
                raise InvalidArgument(f"Failed to parse warmup record: {raw} from {file}") from None
            for _ in range(iterations):
                try:
                    _replay(servable, log, model, version, check_method_name)
                except ServingError as e:
                    raise type(e)(
                        f"Warmup failed on record {count + 1} ({log.WhichOneof('log_type')}) "
                        f"of {file}: {e.message}"
                    ) from e
            count += 1
            if count > max_records:
                raise InvalidArgument(
                    f"Number of warmup records exceeds the maximum ({max_records}) at {file}"
                )
    except tf.errors.OpError as e:
        message = e.message
        if e.error_code == StatusCode.DATA_LOSS.value[0]:
            message += ". Please verify your warmup data is in TFRecord format."
        raise from_code(e.error_code, message) from None
    logger.info(
        "Finished reading warmup data for model at %s. Number of warmup records read: %d. "
        "Elapsed time (microseconds): %d.",
        file,
        count,
        (time.monotonic() - start) * 1e6,
    )
    return count
