"""Request logging, TF Serving's ``logging_config``: a sample of a model's successful requests,
each with its response, as TFRecord files of ``tensorflow.serving.PredictionLog``.

The format is that of TF Serving's warmup file (``assets.extra/tf_serving_warmup_requests``),
so ``python -m serve_app.warmup_from_logs`` turns logged traffic into a version's warmup.

Off the request path: a request that is sampled puts a closure (which builds its record) on a
bounded queue and goes on; one writer thread per model and process builds the records and
writes them. A full queue, an unwritable directory or a full disk drops records: each drop is
counted (``ray_tfserving_request_log_records_total{outcome="dropped"}``) and logged at most once
a minute; no request is slowed or failed by its log. Each process writes its own files,
``<filename_prefix>-<start time>-<pid>-<n>.tfrecord``, and begins the next one once a file holds
``max_file_bytes``.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from serve_app import metrics
from serve_app.args import RequestLogArgs

logger = logging.getLogger("ray.serve")

DROP_LOG_INTERVAL_S = 60.0
"""At most one log line per model and this many seconds about dropped records."""

Build = Callable[[], Any]
"""Builds one ``PredictionLog`` (in the writer thread)."""


class RequestLog:
    """One model's request log in this process."""

    def __init__(self, model: str, args: RequestLogArgs) -> None:
        self.model = model
        self.args = args
        self._queue: queue.Queue[Build | None] = queue.Queue(args.max_pending)
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

    def submit(self, build: Build) -> None:
        """Queue one record; never blocks, never raises."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name=f"rtfs-request-log-{self.model}", daemon=True
                    )
                    self._thread.start()
        try:
            self._queue.put_nowait(build)
        except queue.Full:
            self._drop("the writer is behind (max_pending records wait)")

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
            build = self._queue.get()
            if build is None:
                self._close_file()
                return
            try:
                record = build().SerializeToString()
            except Exception as e:  # a bug in building a record costs that record only
                self._drop(f"the record could not be built: {type(e).__name__}: {e}")
                continue
            try:
                self._write(record)
            except Exception as e:  # unwritable, full disk: drop, and try a new file next
                self._close_file()
                self._drop(f"writing failed: {e}")
                continue
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


_LOGS: dict[tuple[str, str], RequestLog] = {}
_LOGS_LOCK = threading.Lock()


def for_model(model: str, args: RequestLogArgs | None) -> RequestLog | None:
    """This process's request log of ``model`` with ``args`` (one writer per model and
    settings, shared by the versions it holds); None when it logs nothing."""
    if args is None or args.sampling_rate <= 0.0:
        return None
    key = (model, args.model_dump_json())
    with _LOGS_LOCK:
        log = _LOGS.get(key)
        if log is None:
            log = _LOGS[key] = RequestLog(model, args)
        return log


def close_all(timeout_s: float = 5.0) -> None:
    """Write what every request log of this process has queued, then close their files."""
    with _LOGS_LOCK:
        logs = list(_LOGS.values())
    for log in logs:
        log.close(timeout_s)
