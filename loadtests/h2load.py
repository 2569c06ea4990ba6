"""nghttp2's ``h2load``, a C load generator, as a closed-loop client for the benchmark.

A Python client on this 2-core box takes CPU from the server it measures; h2load sends a
pre-serialized request (a gRPC frame, or a REST body over HTTP/1.1) with one native thread and
costs little. ``concurrency`` connections, one request in flight on each (so an L4 spread over
several serving processes sees them all); ``--warm-up-time`` unrecorded, then ``-D`` seconds.

h2load checks HTTP status only, not gRPC's ``grpc-status`` trailer: ``run`` therefore needs a
``check`` that makes one real call first (the benchmark's Python client), so a cell measuring
error answers fails instead of flattering the server.

Debian/Ubuntu: ``apt-get install nghttp2-client``.
"""

from __future__ import annotations

import collections
import resource
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from loadtests.clients import LoadResult

BINARY = "h2load"
MAX_SECONDS = 300.0


def available() -> bool:
    return shutil.which(BINARY) is not None


def grpc_frame(message: bytes) -> bytes:
    """A length-prefixed gRPC message (uncompressed), as h2load's request body."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def run(
    url: str,
    body: bytes,
    *,
    grpc: bool,
    concurrency: int,
    seconds: float,
    warmup_s: float,
    check: Callable[[], None],
    on_window: Callable[[], None] | None = None,
) -> LoadResult:
    """Load ``url`` with ``body`` for ``seconds`` after ``warmup_s``; bounded by h2load's own
    duration and a subprocess timeout. ``on_window`` runs just before and just after."""
    check()
    seconds = min(seconds, MAX_SECONDS)
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        data = Path(tmp) / "body"
        data.write_bytes(grpc_frame(body) if grpc else body)
        log = Path(tmp) / "requests.tsv"
        command = [
            BINARY,
            "-t1",
            f"-c{concurrency}",
            "-m1",
            f"-D{round(seconds * 1000)}ms",
            f"--warm-up-time={round(warmup_s * 1000)}ms",
            f"--log-file={log}",
            "-d",
            str(data),
        ]
        if grpc:
            command += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        else:
            command += ["--h1", "-H", "content-type: application/json"]
        command.append(url)
        if on_window:
            on_window()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=seconds + warmup_s + 60,
            check=False,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if on_window:
            on_window()
        latencies, statuses = _read_log(log)
    errors = sum(statuses.values())
    # The warm-up included: an upper bound of the client's CPU in the window.
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * (
        seconds / (seconds + warmup_s)
    )
    # h2load's "finished in" includes the warm-up; its log (and req/s) cover the -D window only.
    wall = seconds
    first_error = "" if out.returncode == 0 else (out.stderr or out.stdout)[-300:]
    if errors and not first_error:
        first_error = f"{errors} non-2xx answers (status: count {dict(statuses)})"
    if not latencies and not first_error:  # e.g. its one connection was refused or reset
        first_error = "no request completed: " + out.stdout[-300:]
    return LoadResult(
        requests=len(latencies) - errors,
        errors=errors,
        wall_s=wall,
        latencies_ms=latencies,
        client_cpu_s=cpu,
        first_error=first_error,
        statuses=dict(statuses),
    )


def _read_log(path: Path) -> tuple[list[float], collections.Counter[int]]:
    """(latency ms of every request, the count of each status that was not 2xx) from h2load's
    ``--log-file``."""
    latencies: list[float] = []
    errors: collections.Counter[int] = collections.Counter()
    if not path.exists():
        return latencies, errors
    for line in path.read_text().splitlines():
        cols = line.split("\t")
        if len(cols) < 3:
            continue
        status, micros = int(cols[1]), int(cols[2])
        if not 200 <= status < 300:
            errors[status] += 1
        latencies.append(micros / 1000)
    return latencies, errors
