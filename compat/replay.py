"""Replay logged requests against a candidate version and a baseline, before live traffic.

    ray-tfserving replay --baseline MODEL/123 --candidate MODEL/124 [--atol A] [--rtol R] \\
        [--max_records N] [--out report.json] [--plot report.png] [--max_diff_rate X] LOG ...

(or ``python -m compat.replay ...``). The logs are TFRecord files of
``tensorflow.serving.PredictionLog``: the request logs (``logging_config``) or TF Serving's
warmup files; a directory stands for the ``*.tfrecord`` and ``tf_serving_warmup_requests``
files under it. Both versions are loaded in this process (``compat.platforms``, as a serving
replica loads them: no server), and every Predict, Classify and Regress record is answered by
both, in turns, timed; the answers are compared output by output (``compat.compare``). The
report, printed as JSON and written to ``--out``, holds the counts, the diff rate, the largest
absolute difference per output and the latency ratio (candidate over baseline); ``--plot`` draws
each record's difference and latencies (matplotlib, the ``load`` extra). The exit status
is 3 when the diff rate is above ``--max_diff_rate``, 1 when the logs or a version cannot be
read, else 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compat.compare import Comparison, DiffStats, Tolerance, compare_arrays
from compat.errors import ServingError
from compat.platforms import LoadedModel
from compat.protos import prediction_log_pb2
from compat.warmup_from_logs import read_logs

REPLAYED = ("predict_log", "classify_log", "regress_log")
"""The records replayed (MultiInference and session runs are counted as skipped)."""

Outputs = dict[str, np.ndarray]


def answer(servable: LoadedModel, log: prediction_log_pb2.PredictionLog) -> Outputs:
    """One record's request answered by ``servable``, as arrays to compare; a failure is its
    ``ServingError``."""
    from compat.dataplane import prepare_predict
    from compat.inference import classify, regress

    kind = log.WhichOneof("log_type")
    request = getattr(log, kind).request
    if kind == "predict_log":
        call = prepare_predict(servable, request)
        return servable.run(call.signature, call.inputs, call.output_aliases)
    if kind == "regress_log":
        result = regress(servable, request, "replay", 0).result
        return {"outputs": np.array([r.value for r in result.regressions], np.float32)}
    classifications = classify(servable, request, "replay", 0).result.classifications
    return {
        "classes": np.array([[c.label for c in x.classes] for x in classifications], object),
        "scores": np.array([[c.score for c in x.classes] for x in classifications], np.float32),
    }


def timed(servable: LoadedModel, log: prediction_log_pb2.PredictionLog) -> tuple[Any, float]:
    """``answer``'s outputs (or its error) and the seconds it took."""
    started = time.perf_counter()
    try:
        result: Any = answer(servable, log)
    except ServingError as e:
        result = e
    return result, time.perf_counter() - started


def compare_answers(a: Any, b: Any, tol: Tolerance) -> Comparison:
    """Two answers, either of them an error: an error is its own output, ``<error>``, equal
    when both failed with the same code."""
    if isinstance(a, ServingError) or isinstance(b, ServingError):
        same = type(a) is type(b) and getattr(a, "code", None) == getattr(b, "code", None)
        return Comparison(
            diff=not same,
            max_abs_diff=0.0 if same else float("inf"),
            differed=[] if same else ["<error>"],
            per_output={"<error>": 0.0 if same else float("inf")},
        )
    return compare_arrays(a, b, tol)


def replay(
    baseline: LoadedModel,
    candidate: LoadedModel,
    logs: Iterable[prediction_log_pb2.PredictionLog],
    tol: Tolerance = Tolerance(),
    max_records: int | None = None,
    stats: DiffStats | None = None,
) -> dict[str, Any]:
    """Every replayable record answered by both versions, in turns; the report (the
    comparisons are added to ``stats``, when given: the plot's data)."""
    stats = stats if stats is not None else DiffStats()
    read = skipped = 0
    errors = {"baseline": 0, "candidate": 0}
    warm = False
    for log in logs:
        if max_records is not None and stats.compared >= max_records:
            break
        read += 1
        if log.WhichOneof("log_type") not in REPLAYED:
            skipped += 1
            continue
        if not warm:  # each version's first run builds what later runs reuse: not timed
            timed(baseline, log)
            timed(candidate, log)
            warm = True
        if stats.compared % 2:  # neither version always runs first
            (c, c_s), (b, b_s) = timed(candidate, log), timed(baseline, log)
        else:
            (b, b_s), (c, c_s) = timed(baseline, log), timed(candidate, log)
        errors["baseline"] += isinstance(b, ServingError)
        errors["candidate"] += isinstance(c, ServingError)
        stats.add(compare_answers(b, c, tol), b_s, c_s)
    return {"records": read, "skipped": skipped, "errors": errors, **stats.report()}


def plot(stats: DiffStats, path: str | Path, title: str) -> None:
    """The report's plot (PNG): each record's largest output difference, and each record's
    latency on the candidate against the baseline's (the diagonal: as fast). Needs matplotlib
    (the ``load`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (diffs, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    finite = [d if np.isfinite(d) else np.nan for d in stats.diffs]
    diffs.plot(range(1, len(finite) + 1), finite, ".", markersize=3)
    missing = [i + 1 for i, d in enumerate(stats.diffs) if not np.isfinite(d)]
    if missing:  # a missing output, another shape or an error: at the top, in red
        top = max([d for d in finite if np.isfinite(d)] or [1.0])
        diffs.plot(missing, [top] * len(missing), "rx", label="shape/dtype/error")
        diffs.legend()
    diffs.set(xlabel="record", ylabel="max |baseline - candidate|", title="Output differences")
    base = [1000 * s for s in stats.baseline_s]
    cand = [1000 * s for s in stats.candidate_s]
    latency.plot(base, cand, ".", markersize=3)
    edge = max([*base, *cand, 1e-3])
    latency.plot([0, edge], [0, edge], "k--", linewidth=0.8)
    latency.set(xlabel="baseline (ms)", ylabel="candidate (ms)", title="Latency per record")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_rollout(reports: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Rollout reports (the admin port's ``/admin/models/{model}/rollout``), one panel each
    (PNG): per stage behind it, the p99 latency of the current version and of the candidate,
    and the requests and differing answers it was judged on; the title says how it ended.
    Needs matplotlib (the ``load`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(reports), figsize=(4.2 * len(reports), 4), squeeze=False)
    for ax, report in zip(axes[0], reports, strict=True):
        stages = report["stages"]
        names = []
        for s in stages:
            f = s["figures"]
            if s["stage"] == "shadow":
                names.append(f"shadow\n{f['differed']}/{f['compared']} differed")
            else:
                names.append(f"{s['stage']} {s['weight']:g}\n{f['candidate_requests']} requests")
        x = np.arange(len(stages))
        for offset, side in ((-0.2, "current"), (0.2, "candidate")):
            p99 = [1000 * (s["figures"][f"{side}_p99_s"] or 0.0) for s in stages]
            ax.bar(x + offset, p99, 0.4, label=f"{side} v{report[side]} p99")
        ax.set_xticks(x, names)
        ax.set_yscale("log")
        ax.set(ylabel="p99 latency (ms)", title=f"{report['model']}: {report['outcome']}")
        ax.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def log_files(paths: Sequence[str]) -> list[str]:
    """The TFRecord files the given paths stand for (a directory: the logs under it)."""
    files: list[str] = []
    for given in map(Path, paths):
        if given.is_dir():
            found = sorted(given.rglob("*.tfrecord")) + sorted(
                given.rglob("tf_serving_warmup_requests")
            )
            files.extend(str(f) for f in found)
        else:
            files.append(str(given))
    return files


def version_dir(path: str) -> Path:
    """A version directory as given, or a model's base path as its newest version."""
    given = Path(path)
    if (given / "saved_model.pb").is_file() or (given / "saved_model.pbtxt").is_file():
        return given
    versions = [p for p in given.glob("*") if p.name.isdigit() and p.is_dir()]
    return max(versions, key=lambda p: int(p.name)) if versions else given


def main(argv: Sequence[str] | None = None, quiet_console: bool = False) -> int:
    p = argparse.ArgumentParser(
        prog="ray-tfserving replay",
        description="Replay logged PredictionLogs against a candidate and a baseline version "
        "and report how their answers differ.",
    )
    p.add_argument("logs", nargs="+", help="TFRecord files of PredictionLog, or directories")
    p.add_argument("--baseline", required=True, help="the serving version's directory")
    p.add_argument("--candidate", required=True, help="the new version's directory")
    p.add_argument("--atol", type=float, default=Tolerance.atol, help="float outputs' atol")
    p.add_argument("--rtol", type=float, default=Tolerance.rtol, help="float outputs' rtol")
    p.add_argument("--max_records", type=int, default=None, help="compare at most this many")
    p.add_argument("--out", default=None, help="also write the JSON report here")
    p.add_argument(
        "--max_diff_rate", type=float, default=None, help="exit 3 when the diff rate is above"
    )
    p.add_argument("--plot", default=None, help="also draw the report here (PNG; matplotlib)")
    args = p.parse_args(argv)
    if quiet_console:
        from compat.console import quiet

        quiet()
    from compat import platforms

    files = log_files(args.logs)
    try:
        baseline_dir, candidate_dir = version_dir(args.baseline), version_dir(args.candidate)
        baseline = platforms.load(baseline_dir)
        candidate = platforms.load(candidate_dir)
        stats = DiffStats()
        report = replay(
            baseline,
            candidate,
            read_logs(files),
            Tolerance(args.atol, args.rtol),
            args.max_records,
            stats,
        )
    except ServingError as e:
        print(f"error: loading a version failed: {e.message}", file=sys.stderr)
        return 1
    except Exception as e:  # a missing or corrupt log file
        print(f"error: replaying the logs failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    report = {
        "baseline": str(baseline_dir),
        "candidate": str(candidate_dir),
        "logs": files,
        "tolerance": {"atol": args.atol, "rtol": args.rtol},
        **report,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.plot:
        ratio = report["latency"]["ratio"]
        plot(
            stats,
            args.plot,
            f"{candidate_dir.parent.name}/{candidate_dir.name} against "
            f"{baseline_dir.parent.name}/{baseline_dir.name}: diff rate {report['diff_rate']:.3g}, "
            f"latency ratio {ratio if ratio is None else format(ratio, '.3g')}",
        )
    if args.max_diff_rate is not None and report["diff_rate"] > args.max_diff_rate:
        return 3
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """``main`` with TensorFlow's start-up chatter hidden (``compat.console``): the command."""
    return main(argv, quiet_console=True)


if __name__ == "__main__":
    sys.exit(run())
