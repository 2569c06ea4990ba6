"""Run locust headless against a running server; keep its CSV and HTML; print a summary.

    python -m loadtests.run --users 8 --seconds 20 --model deeplab --out results/locust

wraps ``locust -f loadtests/locustfile.py --headless -u 8 -r 8 -t 20s --csv <out>/locust
--csv-full-history --html <out>/report.html ...`` in a subprocess with a hard timeout, then
reads locust's own ``<out>/locust_stats.csv`` and ``locust_failures.csv`` and prints requests,
failures, p50/p95/p99 (ms) and requests/s per request type and in aggregate. Locust's output
goes to ``<out>/locust.log``.

``--protocol grpc|rest|both`` picks the user classes (default both: equal numbers of
``GrpcUser`` and ``RestUser``). Every other option goes to locust unchanged, i.e. to the
locustfile's workload options (``--payload``, ``--model``, ``--signature``, ``--image-size``,
``--batch``, ``--request-file``, ``--target-host``, ``--grpc-port``, ``--rest-port``, ``--rate``,
``--wait-min``, ``--wait-max``, ``--request-timeout``; see :mod:`loadtests.locustfile`) or to
locust itself.

Exit status: 0 if every request succeeded, 1 if any failed, 2 if locust gave no statistics
(it crashed or ran past the hard timeout).

From Python (e.g. load in the background during a rollout)::

    run = LocustRun.start(users=4, seconds=30, out=tmp / "load",
                          locust_args=["--payload", "half_plus_two", "--grpc-port", "8500"])
    ...                                  # roll out a new version meanwhile
    summary = run.wait()                 # Summary: .total, .rows, .failures, .format()
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCUSTFILE = REPO / "loadtests" / "locustfile.py"
CSV_PREFIX = "locust"
HTML_REPORT = "report.html"
LOG_FILE = "locust.log"
USER_CLASSES = {"grpc": ("GrpcUser",), "rest": ("RestUser",), "both": ("GrpcUser", "RestUser")}
STARTUP_ALLOWANCE_S = 180.0
"""Hard timeout beyond ``seconds``: locust's start (importing TensorFlow) and its stop."""
STOP_TIMEOUT_S = 5
"""Seconds locust lets in-flight requests finish after ``-t`` runs out."""


@dataclass(frozen=True)
class Row:
    """One line of locust's ``*_stats.csv`` (one request type and name, or ``Aggregated``)."""

    type: str
    name: str
    requests: int
    failures: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    avg_ms: float
    max_ms: float
    rps: float


@dataclass(frozen=True)
class Failure:
    """One line of locust's ``*_failures.csv``."""

    method: str
    name: str
    error: str
    occurrences: int


@dataclass
class Summary:
    """What one locust run measured, as its CSV files say."""

    rows: list[Row]
    """One per (request type, name), e.g. ``grpc``/``Predict deeplab`` and ``POST``/``/v1/...``."""
    total: Row
    """The ``Aggregated`` line."""
    failures: list[Failure] = field(default_factory=list)

    def by_type(self, request_type: str) -> list[Row]:
        """The rows of one request type (``grpc`` or ``POST``)."""
        return [r for r in self.rows if r.type == request_type]

    def format(self) -> str:
        """A small table, then the distinct failures."""
        head = f"{'type':<6} {'name':<34} {'requests':>9} {'failures':>9} "
        head += f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'req/s':>8}"
        lines = [head]
        for r in [*self.rows, self.total]:
            lines.append(
                f"{r.type:<6} {r.name[:34]:<34} {r.requests:>9} {r.failures:>9} "
                f"{_ms(r.p50_ms):>7} {_ms(r.p95_ms):>7} {_ms(r.p99_ms):>7} {r.rps:>8.1f}"
            )
        for f in self.failures:
            lines.append(f"failure: {f.method} {f.name}: {f.error} x{f.occurrences}")
        return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # locust writes N/A for percentiles of an entry without requests


def read_summary(out: Path | str, prefix: str = CSV_PREFIX) -> Summary:
    """Read ``<out>/<prefix>_stats.csv`` (and ``_failures.csv``) as locust wrote them."""
    out = Path(out)
    rows: list[Row] = []
    total: Row | None = None
    with open(out / f"{prefix}_stats.csv", newline="") as f:
        for line in csv.DictReader(f):
            row = Row(
                type=line["Type"],
                name=line["Name"],
                requests=int(line["Request Count"]),
                failures=int(line["Failure Count"]),
                p50_ms=_number(line["50%"]),
                p95_ms=_number(line["95%"]),
                p99_ms=_number(line["99%"]),
                avg_ms=float(line["Average Response Time"]),
                max_ms=float(line["Max Response Time"]),
                rps=float(line["Requests/s"]),
            )
            if row.name == "Aggregated" and not row.type:
                total = row
            else:
                rows.append(row)
    if total is None:
        raise ValueError(f"no Aggregated line in {out / f'{prefix}_stats.csv'}")
    failures: list[Failure] = []
    failures_csv = out / f"{prefix}_failures.csv"
    if failures_csv.exists():
        with open(failures_csv, newline="") as f:
            failures = [
                Failure(line["Method"], line["Name"], line["Error"], int(line["Occurrences"]))
                for line in csv.DictReader(f)
            ]
    return Summary(rows, total, failures)


def locust_command(
    users: int,
    seconds: float,
    out: Path,
    *,
    spawn_rate: float | None = None,
    protocol: str = "both",
    locust_args: Sequence[str] = (),
) -> list[str]:
    """The headless locust command line that writes its CSV files and HTML report to ``out``."""
    if protocol not in USER_CLASSES:
        raise ValueError(f"protocol must be one of {sorted(USER_CLASSES)}, got {protocol!r}")
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--users",
        str(users),
        "--spawn-rate",
        str(spawn_rate if spawn_rate is not None else users),
        "--run-time",
        f"{max(1, round(seconds))}s",
        "--stop-timeout",
        str(STOP_TIMEOUT_S),
        "--csv",
        str(out / CSV_PREFIX),
        "--csv-full-history",
        "--html",
        str(out / HTML_REPORT),
        "--only-summary",
        *locust_args,
        *USER_CLASSES[protocol],
    ]


@dataclass
class LocustRun:
    """A locust subprocess (its own session, so it can be ended as a group) and its output."""

    process: subprocess.Popen[bytes]
    out: Path
    timeout_s: float
    timed_out: bool = False
    """Whether ``wait`` had to end locust at the hard timeout."""

    @classmethod
    def start(
        cls,
        users: int,
        seconds: float,
        out: Path | str,
        *,
        spawn_rate: float | None = None,
        protocol: str = "both",
        locust_args: Sequence[str] = (),
        timeout_s: float | None = None,
    ) -> LocustRun:
        """Start locust in the background; ``wait`` ends it at ``timeout_s`` (default
        ``seconds + STARTUP_ALLOWANCE_S``) at the latest."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        command = locust_command(
            users, seconds, out, spawn_rate=spawn_rate, protocol=protocol, locust_args=locust_args
        )
        with open(out / LOG_FILE, "wb") as log:
            log.write((" ".join(command) + "\n").encode())
            log.flush()
            process = subprocess.Popen(
                command,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                start_new_session=True,
            )
        return cls(process, out, seconds + STARTUP_ALLOWANCE_S if timeout_s is None else timeout_s)

    def log(self) -> str:
        """Locust's output so far."""
        return (self.out / LOG_FILE).read_text(errors="replace")

    def wait(self) -> Summary:
        """Wait for locust (ending it at the hard timeout), then read its statistics.

        Raises ``RuntimeError`` with the end of locust's log if it wrote none.
        """
        try:
            self.process.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            self.timed_out = True
            self.stop()
        try:
            return read_summary(self.out)
        except (OSError, ValueError) as e:
            raise RuntimeError(
                f"locust exited with {self.process.returncode} and no statistics ({e}):\n"
                f"{self.log()[-4000:]}"
            ) from e

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM (locust stops the users and writes its reports), then SIGKILL its group."""
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def run(
    users: int,
    seconds: float,
    out: Path | str,
    *,
    spawn_rate: float | None = None,
    protocol: str = "both",
    locust_args: Sequence[str] = (),
    timeout_s: float | None = None,
) -> Summary:
    """Run locust to the end (see :meth:`LocustRun.start`) and return its summary."""
    return LocustRun.start(
        users,
        seconds,
        out,
        spawn_rate=spawn_rate,
        protocol=protocol,
        locust_args=locust_args,
        timeout_s=timeout_s,
    ).wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.run",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Other options go to locust and the locustfile (see loadtests/locustfile.py), "
        "e.g. --payload half_plus_two --grpc-port 8500 --rest-port 8501 --rate 50.",
        allow_abbrev=False,
    )
    parser.add_argument("--users", type=int, default=8, help="concurrent users (default 8)")
    parser.add_argument("--seconds", type=float, default=20.0, help="run time (default 20)")
    parser.add_argument(
        "--spawn-rate",
        type=float,
        default=None,
        help="users started per second (default: all at once)",
    )
    parser.add_argument(
        "--protocol",
        choices=sorted(USER_CLASSES),
        default="both",
        help="which users: gRPC, REST or both (default)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("results/locust"),
        help="folder for locust's CSV files, HTML report and log",
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=None,
        help=f"hard timeout (default: seconds + {STARTUP_ALLOWANCE_S:.0f})",
    )
    args, locust_args = parser.parse_known_args(argv)
    locust_run = LocustRun.start(
        args.users,
        args.seconds,
        args.out,
        spawn_rate=args.spawn_rate,
        protocol=args.protocol,
        locust_args=locust_args,
        timeout_s=args.timeout_s,
    )
    print(
        f"locust: {args.users} users, {args.seconds:g} s, {args.protocol} -> {args.out}/",
        flush=True,
    )
    try:
        summary = locust_run.wait()
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        locust_run.stop()
        raise
    print(summary.format())
    print(f"report: {args.out / HTML_REPORT}  csv: {args.out / CSV_PREFIX}_stats.csv")
    if locust_run.timed_out:
        print(f"locust ran past the hard timeout ({locust_run.timeout_s:g} s)", file=sys.stderr)
        return 2
    return 1 if summary.total.failures else 0


if __name__ == "__main__":
    sys.exit(main())
