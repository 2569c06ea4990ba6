"""Warmup from real traffic: logged requests (``logging_config``) -> a version's warmup file.

    python -m compat.warmup_from_logs --out MODEL/VERSION/assets.extra/tf_serving_warmup_requests \\
        [--max_records 100] [--per_kind 4] LOG.tfrecord ...

Reads the request logs' ``PredictionLog`` records and writes a bounded, representative sample
of them: the records are grouped by what a warmup must cover (the API, the signature, and each
input's name, dtype and shape, or the number of examples), at most ``per_kind`` records are
taken of each group, and the groups take turns until ``max_records`` (at most TF Serving's
1000) are chosen, so a rare shape is warmed up as surely as a frequent one. Only the requests
are kept (warmup ignores responses). The next version that has the file replays it when it
loads (``compat.warmup``), as TF Serving does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: TensorFlow comes after the quiet console
    from compat.protos import prediction_log_pb2

MAX_WARMUP_RECORDS = 1000
"""TF Serving's bound on a warmup file (``compat.warmup.MAX_WARMUP_RECORDS``)."""

LOGGED_KINDS = ("predict_log", "classify_log", "regress_log", "multi_inference_log")


def group_of(log: prediction_log_pb2.PredictionLog) -> tuple[object, ...] | None:
    """What a warmup must cover of this record: (API, signature, input names/dtypes/shapes or
    example count); None for a record that warmup cannot replay."""
    from compat.tensors import dtype_name, shape_of

    kind = log.WhichOneof("log_type")
    if kind not in LOGGED_KINDS:
        return None
    request = getattr(log, kind).request
    if kind == "predict_log":
        inputs = tuple(
            sorted((alias, dtype_name(t.dtype), shape_of(t)) for alias, t in request.inputs.items())
        )
        return (kind, request.model_spec.signature_name, inputs)
    if kind == "multi_inference_log":
        tasks = tuple(sorted((t.model_spec.signature_name, t.method_name) for t in request.tasks))
        return (kind, tasks, _examples(request.input))
    return (kind, request.model_spec.signature_name, _examples(request.input))


def _examples(given: object) -> int:
    which = given.WhichOneof("kind")  # type: ignore[attr-defined]
    if which == "example_list":
        return len(given.example_list.examples)  # type: ignore[attr-defined]
    if which == "example_list_with_context":
        return len(given.example_list_with_context.examples)  # type: ignore[attr-defined]
    return 0


def choose(
    logs: Iterable[prediction_log_pb2.PredictionLog],
    max_records: int = 100,
    per_kind: int = 4,
) -> tuple[list[prediction_log_pb2.PredictionLog], int]:
    """The sample (requests only), and how many groups the logs held."""
    from compat.protos import prediction_log_pb2

    groups: dict[tuple[object, ...], list[prediction_log_pb2.PredictionLog]] = {}
    for log in logs:
        key = group_of(log)
        if key is None:
            continue
        members = groups.setdefault(key, [])
        if len(members) < per_kind:
            kind = log.WhichOneof("log_type")
            kept = prediction_log_pb2.PredictionLog()
            getattr(kept, kind).request.CopyFrom(getattr(log, kind).request)
            members.append(kept)
    chosen: list[prediction_log_pb2.PredictionLog] = []
    for turn in range(per_kind):  # groups take turns
        for members in groups.values():
            if turn < len(members) and len(chosen) < max_records:
                chosen.append(members[turn])
    return chosen, len(groups)


def read_logs(paths: Sequence[str]) -> Iterable[prediction_log_pb2.PredictionLog]:
    import tensorflow as tf
    from tensorflow.python.util import deprecation

    from compat.protos import prediction_log_pb2

    for path in paths:
        with deprecation.silence():  # the iterator TF Serving's own warmup reader is
            records = tf.compat.v1.io.tf_record_iterator(path)
        for record in records:
            yield prediction_log_pb2.PredictionLog.FromString(record)


def write(out: Path, logs: Sequence[prediction_log_pb2.PredictionLog]) -> None:
    import tensorflow as tf

    out.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(out)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m compat.warmup_from_logs",
        description="Turn request logs (logging_config) into a version's warmup file.",
    )
    p.add_argument("logs", nargs="+", help="TFRecord files of PredictionLog (the request log)")
    p.add_argument(
        "--out", required=True, help=".../VERSION/assets.extra/tf_serving_warmup_requests"
    )
    p.add_argument("--max_records", type=int, default=100, help="records in the warmup file")
    p.add_argument("--per_kind", type=int, default=4, help="records per API/signature/shape")
    args = p.parse_args(argv)
    if not 1 <= args.max_records <= MAX_WARMUP_RECORDS:
        p.error(f"--max_records must be within 1..{MAX_WARMUP_RECORDS} (TF Serving's bound)")
    if args.per_kind < 1:
        p.error("--per_kind must be at least 1")
    from compat.console import quiet

    quiet()
    read = 0

    def counted() -> Iterable[prediction_log_pb2.PredictionLog]:
        nonlocal read
        for log in read_logs(args.logs):
            read += 1
            yield log

    try:
        chosen, groups = choose(counted(), args.max_records, args.per_kind)
    except Exception as e:  # a missing or corrupt log file
        print(f"error: reading the logs failed: {e}", file=sys.stderr)
        return 1
    if not chosen:
        print(f"error: no replayable request among {read} logged records", file=sys.stderr)
        return 1
    write(Path(args.out), chosen)
    print(
        f"wrote {len(chosen)} warmup records ({groups} distinct API/signature/shape groups) "
        f"from {read} logged records to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
