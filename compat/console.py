"""A quiet console: TensorFlow's and Ray's start-up chatter hidden, warnings and errors kept.

TensorFlow 2.21 prints a dozen C++ lines on import (absl writes them to stderr before its own
logging is set up, whatever ``TF_CPP_MIN_LOG_LEVEL`` says), among them
``E0000 ... failed call to cuInit`` on every machine without a GPU; Ray forwards the same from
every worker, with Serve's INFO lines. ``quiet()`` puts a filter on this process's stderr file
descriptor (so C++ writes are caught too) that drops:

- absl/glog lines of severity I and W (``I0000 00:00:...  port.cc:153] ...``), absl's
  ``WARNING: All log messages before absl::InitializeLog() ...`` and TF's CPU-feature notice;
- TF's complaints that there is no CUDA (cuInit, cuda drivers), which only mean "CPU";
- INFO lines of Ray and Serve, Ray's token-auth notice for the embedded, loopback-only Ray,
  and the raylet's notes on actors ended at shutdown;

all of them also when Ray forwards them from a worker (``(ServeReplica:... pid=1) ...``).
Everything else, warnings, errors (TF's E and F lines among them) and tracebacks, passes.

``python -m compat.console CMD ...`` runs another command with the same filter on its output
(``make run``'s export step: ``export/`` imports nothing of ours) and exits with its status.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import BinaryIO

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_WORKER = re.compile(r"^\((?:[^()]|\([^()]*\))*? pid=\d+(?:, ip=[^)]*)?\) |^\(raylet\) ")
_REPEATED = re.compile(r" \[repeated \d+x across cluster\].*$")
NOISE = re.compile(
    "|".join(
        [
            r"^[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.]+:\d+\] ",  # absl/glog I and W
            r"^E\d{4} .*\] (failed call to cuInit|.*cuda drivers|.*CUDA_ERROR_NO_DEVICE)",
            r"^WARNING: All log messages before absl::InitializeLog\(\) is called",
            r"^To enable the following instructions: ",  # cpu_feature_guard's second line
            r"^INFO \d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ",  # Serve's INFO
            r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\tINFO ",  # Ray's INFO
            r"Token authentication is enabled for this Ray cluster",
            r"^Task ServeController\.\w+ failed\. .*killed by `ray\.kill`",
            r"^\[\d+m?$",  # a bare colour code left by Ray's dedup
        ]
    )
)


def is_noise(line: str) -> bool:
    """Whether ``quiet()`` drops ``line`` (one line, without its newline)."""
    text = _REPEATED.sub("", _WORKER.sub("", _ANSI.sub("", line)))
    return not text.strip() or bool(NOISE.search(text))


def quiet() -> None:
    """From now on, this process's stdout and stderr (fds 1 and 2, C++ included) without
    ``is_noise`` lines. A thread per descriptor copies the lines that pass to the original; at
    exit, what is still in the pipes is copied before the process ends."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    drains = [_filter(1), _filter(2)]
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    atexit.register(_drain, drains)


_END = b"\x00rtfs-quiet-end\n"


def _filter(fd: int) -> tuple[threading.Event, int]:
    """Put a filtering pipe on ``fd``; the event is set once ``_END`` has come through; the
    descriptor ``fd`` was."""
    original = os.dup(fd)
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)
    out = os.fdopen(os.dup(original), "wb", buffering=0)
    done = threading.Event()

    def copy() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for raw in pipe:
                if raw.endswith(_END):
                    if raw != _END:
                        out.write(raw[: -len(_END)] + b"\n")
                    done.set()
                    return
                if not is_noise(raw.decode(errors="replace").rstrip("\n")):
                    with contextlib.suppress(OSError):  # a reader gone: keep draining the pipe
                        out.write(raw)

    threading.Thread(target=copy, name=f"rtfs-quiet-{fd}", daemon=True).start()
    return done, original


def _drain(drains: list[tuple[threading.Event, int]], timeout_s: float = 2.0) -> None:
    """Copy what is left in the pipes, then give each descriptor back its original."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    for fd, (done, original) in zip((1, 2), drains, strict=True):
        os.write(fd, _END)
        done.wait(timeout_s)
        os.dup2(original, fd)


def run(argv: Sequence[str]) -> int:
    """Run ``argv`` with its stdout and stderr filtered onto ours; its exit status. SIGINT and
    SIGTERM are passed on to it."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def pass_on(signum: int, frame: object) -> None:
        process.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, pass_on)

    def copy(source: BinaryIO, target: BinaryIO) -> None:
        for raw in source:
            if not is_noise(raw.decode(errors="replace").rstrip("\n")):
                target.write(raw)
                target.flush()

    assert process.stdout is not None and process.stderr is not None
    copiers = [
        threading.Thread(target=copy, args=(process.stdout, sys.stdout.buffer)),
        threading.Thread(target=copy, args=(process.stderr, sys.stderr.buffer)),
    ]
    for thread in copiers:
        thread.start()
    code = process.wait()
    for thread in copiers:
        thread.join()
    return code


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print("usage: python -m compat.console CMD [ARG ...]", file=sys.stderr)
        sys.exit(2)
    sys.exit(run(sys.argv[1:]))
