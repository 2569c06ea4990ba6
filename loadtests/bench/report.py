"""The results as a table, a per-process table of server cores, and a chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

HEADER = (
    f"{'workload':<14}{'system':<11}{'config':<11}{'conc':>5}{'req/s':>9}{'ex/s':>9}"
    f"{'p50 ms':>9}{'p99 ms':>9}{'err':>5}{'client':>7}{'server':>7}"
    f"{'c/a':>8}{'c/b':>7}"
)


def _fmt(value: Any, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


def _row(c: dict[str, Any]) -> str:
    if c["system"] == "inprocess":
        batch = f"b={c['best_batch']}"
        return (
            f"{c['workload']:<14}{'in-process':<11}{batch:<11}{'-':>5}{'-':>9}"
            f"{_fmt(c['examples_per_s'], '.0f', 9)}{_fmt(c['p50_ms'], '.2f', 9)}{'-':>9}"
            f"{'-':>5}{'-':>7}{'-':>7}{'-':>8}{'-':>7}"
        )
    return (
        f"{c['workload']:<14}{c['system']:<11}{c['config'] or '-':<11}{c['concurrency']:>5}"
        f"{_fmt(c['throughput_rps'], '.0f', 9)}{_fmt(c['examples_per_s'], '.0f', 9)}"
        f"{_fmt(c['p50_ms'], '.2f', 9)}{_fmt(c['p99_ms'], '.2f', 9)}{c['errors']:>5}"
        f"{_fmt(c['client_cpu_cores'], '.2f', 7)}{_fmt(c.get('server_cpu_total'), '.2f', 7)}"
        f"{_fmt(c.get('vs_inprocess'), '.1%', 8)}{_fmt(c.get('vs_plain'), '.0%', 7)}"
    )


def table(results: dict[str, Any]) -> str:
    lines = [HEADER, "-" * len(HEADER)]
    for c in results["cells"]:
        lines.append(_row(c))
    lines += [
        "",
        "ex/s: examples/s (in-process: at its best batch size b, p50 = ms per batch).",
        "client/server: CPU cores used by the load generator / by all server processes.",
        "c/a: examples/s over the in-process limit; c/b: req/s over the plain server's, same "
        "workload and concurrency.",
    ]
    return "\n".join(lines)


def roles_table(results: dict[str, Any]) -> str:
    """Server cores by process role for every networked cell (where the CPU goes)."""
    lines = []
    for c in results["cells"]:
        if c["system"] == "inprocess":
            continue
        roles = ", ".join(f"{r} {v:.2f}" for r, v in c["server_cpu_cores"].items() if v >= 0.01)
        lines.append(
            f"{c['workload']:<14}{c['system']:<9}{c['config'] or '-':<11}c={c['concurrency']:<3} "
            f"{roles}"
        )
    return "\n".join(lines)


def _series(cell: dict[str, Any]) -> str:
    return cell["system"] + (f" [{cell['config']}]" if cell["config"] else "")


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in results["cells"] if c["system"] != "inprocess"]
    workloads = list(dict.fromkeys(c["workload"] for c in results["cells"]))
    series = list(dict.fromkeys(_series(c) for c in cells))
    fig, axes = plt.subplots(2, max(1, len(workloads)), figsize=(6 * len(workloads), 8))
    axes = np.array(axes).reshape(2, -1)
    for col, wl in enumerate(workloads):
        mine = [c for c in cells if c["workload"] == wl]
        concs = sorted({c["concurrency"] for c in mine})
        width = 0.8 / max(1, len(series))
        for row, (key, label) in enumerate(
            [("throughput_rps", "throughput (req/s)"), ("p99_ms", "p99 latency (ms)")]
        ):
            ax = axes[row, col]
            for i, s in enumerate(series):
                by_conc = {c["concurrency"]: c[key] or 0 for c in mine if _series(c) == s}
                values = [by_conc.get(n, 0) for n in concs]
                xs = np.arange(len(concs)) + i * width
                ax.bar(xs, values, width, label=s)
            if row == 0:
                limit = next(
                    (
                        c["examples_per_s"]
                        for c in results["cells"]
                        if c["system"] == "inprocess" and c["workload"] == wl
                    ),
                    None,
                )
                if limit:
                    ax.axhline(limit, color="k", linestyle="--", label="in-process limit (ex/s)")
            ax.set_xticks(np.arange(len(concs)) + width * (len(series) - 1) / 2)
            ax.set_xticklabels([f"concurrency {n}" for n in concs])
            ax.set_yscale("log")
            ax.set_ylabel(label)
            ax.set_title(f"{wl}: {label}")
            if row == 0 and col == 0:
                ax.legend(fontsize=8)
    fig.suptitle(
        f"ray-tfserving vs baselines ({results['meta']['cpus']} CPUs, {results['meta']['started']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
