"""Request logging, TF Serving's ``logging_config``: a sample of a model's successful requests,
each with its response, as TFRecord files of ``tensorflow.serving.PredictionLog``.

The format is that of TF Serving's warmup file (``assets.extra/tf_serving_warmup_requests``),
so ``python -m compat.warmup_from_logs`` turns logged traffic into a version's warmup.

Off the request path: a request that is sampled puts a closure (which builds its record) on a
bounded queue and goes on; one writer thread per model and process builds the records and
writes them. The queue is bounded in records (``max_pending``) and in the bytes its closures
hold (``MAX_PENDING_BYTES``, the request and response each pins, from ``held_bytes``): a
burst of large requests waits in memory up to that bound, never beyond. A full queue, an
unwritable directory or a full disk drops records: each drop is
counted (``ray_tfserving_request_log_records_total{outcome="dropped"}``) and logged at most once
a minute; no request is slowed or failed by its log. Each process writes its own files,
``<filename_prefix>-<start time>-<pid>-<n>.tfrecord``, and begins the next one once a file holds
``max_file_bytes``.

Where: a reloaded config's request logs must stay under the directories allowed at startup
(``confine``): those of the startup config's request logs and ``--request_log_allowed_dirs``,
each resolved (symlinks, ``..``); a reload that points one elsewhere is INVALID_ARGUMENT.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from compat.errors import InvalidArgument
from serve_app import metrics
from serve_app.config.args import ModelArgs, RequestLogArgs

logger = logging.getLogger("ray.serve")

MAX_PENDING_BYTES = 64 << 20
"""What the records waiting for a model's writer may hold, per process: beyond, a record is
dropped (and counted), so a burst of large requests pins no more memory than this."""
DROP_LOG_INTERVAL_S = 60.0
"""At most one log line per model and this many seconds about dropped records."""

Build = Callable[[], Any]
"""Builds one ``PredictionLog`` (in the writer thread)."""


class RequestLog:
    """One model's request log in this process."""

    def __init__(
        self, model: str, args: RequestLogArgs, max_pending_bytes: int = MAX_PENDING_BYTES
    ) -> None:
        self.model = model
        self.args = args
        self.max_pending_bytes = max_pending_bytes
        self._queue: queue.Queue[tuple[Build, int] | None] = queue.Queue(args.max_pending)
        self._pending_bytes = 0
        """What the queued closures hold, by ``held_bytes``."""
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._writer: Any = None
        self._file_bytes = 0
        self._files = 0
        self._started = time.strftime("%Y%m%dT%H%M%S")
        self._last_complaint = -DROP_LOG_INTERVAL_S
        self.written = 0
        self.dropped = 0

    def sampled(self) -> bool:
        """Whether to log this request (``sampling_rate``)."""
        rate = self.args.sampling_rate
        return rate >= 1.0 or (rate > 0.0 and random.random() < rate)

    def submit(self, build: Build, nbytes: int = 0) -> None:
        """Queue one record whose closure holds ``nbytes`` (``held_bytes``); never blocks,
        never raises. Beyond ``max_pending`` records or ``max_pending_bytes`` it is dropped."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name=f"rtfs-request-log-{self.model}", daemon=True
                    )
                    self._thread.start()
        with self._lock:
            if self._pending_bytes + nbytes > self.max_pending_bytes:
                full = True
            else:
                full = False
                self._pending_bytes += nbytes
        if full:
            self._drop(
                f"the writer is behind ({self._pending_bytes} bytes of records wait; "
                f"max_pending_bytes is {self.max_pending_bytes}, this record {nbytes})"
            )
            return
        try:
            self._queue.put_nowait((build, nbytes))
        except queue.Full:
            self._release(nbytes)
            self._drop("the writer is behind (max_pending records wait)")

    @property
    def pending_bytes(self) -> int:
        """What the queued records' closures hold now."""
        return self._pending_bytes

    def _release(self, nbytes: int) -> None:
        with self._lock:
            self._pending_bytes -= nbytes

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (up to ``timeout_s``), then close the file."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)

    # --- the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._close_file()
                return
            build, nbytes = item
            del item  # the closure (and the request it holds) goes with its record
            try:
                record = build().SerializeToString()
            except Exception as e:  # a bug in building a record costs that record only
                self._drop(f"the record could not be built: {type(e).__name__}: {e}")
                continue
            finally:
                del build
                self._release(nbytes)
            try:
                self._write(record)
            except Exception as e:  # unwritable, full disk: drop, and try a new file next
                self._close_file()
                self._drop(f"writing failed: {e}")
                continue
            finally:
                del record
            self.written += 1
            metrics.record_request_log(self.model, "written")
            if self._queue.empty():
                self._writer.flush()

    def _write(self, record: bytes) -> None:
        if self._writer is None or self._file_bytes >= self.args.max_file_bytes:
            self._close_file()
            self._open_file()
        self._writer.write(record)
        self._file_bytes += len(record) + 16  # TFRecord framing: length, CRCs

    def _open_file(self) -> None:
        import tensorflow as tf

        prefix = self.args.filename_prefix
        directory = os.path.dirname(prefix)
        if directory:
            os.makedirs(directory, exist_ok=True)
        path = f"{prefix}-{self._started}-{os.getpid()}-{self._files:05d}.tfrecord"
        self._writer = tf.io.TFRecordWriter(path)
        self._files += 1
        self._file_bytes = 0
        logger.info("Request log of %s: writing %s", self.model, path)

    def _close_file(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception as e:
                self._drop(f"closing the file failed: {e}", count=0)

    def _drop(self, why: str, count: int = 1) -> None:
        self.dropped += count
        if count:
            metrics.record_request_log(self.model, "dropped", count)
        now = time.monotonic()
        if now - self._last_complaint >= DROP_LOG_INTERVAL_S:
            self._last_complaint = now
            logger.warning(
                "Request log of %s (%s): %s; records are dropped (%d so far), requests are "
                "served as usual",
                self.model,
                self.args.filename_prefix,
                why,
                self.dropped,
            )


def held_bytes(obj: Any, depth: int = 3) -> int:
    """What a record's closure holds, roughly: a message's wire size, an array's bytes, a
    string's length, summed through closures, ``functools.partial`` arguments, mappings,
    short sequences and objects with ``request``/``inputs``/``outputs`` (a call, a prepared
    Predict), ``depth`` levels down. Cheap: nothing is serialized, no long list walked."""
    if obj is None or depth < 0:
        return 0
    if isinstance(obj, bytes | bytearray | memoryview | str):
        return len(obj)
    byte_size = getattr(obj, "ByteSize", None)  # a protobuf message
    if callable(byte_size):
        return int(byte_size())
    nbytes = getattr(obj, "nbytes", None)  # a NumPy array
    if isinstance(nbytes, int):
        return nbytes
    below = depth - 1
    if isinstance(obj, functools.partial):
        parts: Iterable[Any] = [*obj.args, *obj.keywords.values()]
    elif callable(obj) and hasattr(obj, "__closure__"):  # a function: its cells and defaults
        parts = [cell.cell_contents for cell in obj.__closure__ or ()]
        parts += list(getattr(obj, "__defaults__", None) or ())
    elif isinstance(obj, Mapping):
        parts = obj.values() if len(obj) <= 64 else ()
    elif isinstance(obj, tuple | list):
        parts = obj if len(obj) <= 64 else ()
    else:
        parts = [getattr(obj, a) for a in ("request", "inputs", "outputs") if hasattr(obj, a)]
    return sum(held_bytes(p, below) for p in parts)


def allowed_dirs(models: Iterable[ModelArgs], extra: Iterable[str]) -> list[str]:
    """The directories request logs may be written under: ``extra``
    (``--request_log_allowed_dirs``) and those of ``models``' request logs (the startup
    config's), each resolved (absolute, ``..`` and symlinks followed), without repeats."""
    prefixes = [m.request_log.filename_prefix for m in models if m.request_log is not None]
    dirs = [*extra, *map(_directory, prefixes)]
    return list(dict.fromkeys(os.path.realpath(d) for d in dirs))


def confine(models: list[ModelArgs], allowed: Iterable[str]) -> list[ModelArgs]:
    """``models`` of a reloaded config with each request log's ``filename_prefix`` resolved
    (so the writers open the very path checked here), or INVALID_ARGUMENT naming a request log
    that would be written outside every directory in ``allowed`` (``allowed_dirs``)."""
    roots = [os.path.realpath(d) for d in allowed]
    result = []
    for m in models:
        log = m.request_log
        if log is not None:
            prefix = log.filename_prefix
            where = os.path.realpath(_directory(prefix))
            if not any(os.path.commonpath([where, root]) == root for root in roots):
                raise InvalidArgument(
                    f"Model {m.name}: request log filename_prefix {prefix!r} is in {where}, "
                    "outside the directories allowed at startup ("
                    + (", ".join(roots) or "none")
                    + "): those of the startup config's request logs and "
                    "--request_log_allowed_dirs"
                )
            resolved = os.path.join(where, os.path.basename(prefix))
            m = m.model_copy(
                update={"request_log": log.model_copy(update={"filename_prefix": resolved})}
            )
        result.append(m)
    return result


def _directory(prefix: str) -> str:
    """The directory a prefix's files go to (``logs/m``: ``logs``; ``m``: the cwd), not yet
    resolved: ``realpath`` then follows symlinks before ``..``, as the file system does."""
    return os.path.join(os.getcwd(), os.path.dirname(prefix))


class RequestLogs:
    """Request logs by model and settings: one writer each, shared by the versions a process
    holds."""

    def __init__(self) -> None:
        self._logs: dict[tuple[str, str], RequestLog] = {}
        self._lock = threading.Lock()

    def for_model(self, model: str, args: RequestLogArgs | None) -> RequestLog | None:
        """The request log of ``model`` with ``args``; None when it logs nothing."""
        if args is None or args.sampling_rate <= 0.0:
            return None
        key = (model, args.model_dump_json())
        with self._lock:
            log = self._logs.get(key)
            if log is None:
                log = self._logs[key] = RequestLog(model, args)
            return log

    def close_all(self, timeout_s: float = 5.0) -> None:
        """Write what every request log has queued, then close their files."""
        with self._lock:
            logs = list(self._logs.values())
        for log in logs:
            log.close(timeout_s)


_process_logs = RequestLogs()


def process_logs() -> RequestLogs:
    """This process's request logs."""
    return _process_logs


def reset_process_logs() -> RequestLogs:
    """Close this process's request logs and start afresh (tests); the new registry."""
    global _process_logs
    _process_logs.close_all()
    _process_logs = RequestLogs()
    return _process_logs


def for_model(model: str, args: RequestLogArgs | None) -> RequestLog | None:
    """This process's request log of ``model`` with ``args`` (``RequestLogs.for_model``)."""
    return process_logs().for_model(model, args)


def close_all(timeout_s: float = 5.0) -> None:
    """Write what every request log of this process has queued, then close their files."""
    process_logs().close_all(timeout_s)
