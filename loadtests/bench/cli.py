"""``python -m loadtests.bench``: the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtests import h2load
from loadtests.bench.report import _row, chart, roles_table, table
from loadtests.bench.runner import run_bench
from loadtests.bench.settings import SYSTEMS, WORKLOADS, RayConfig, Settings


def _csv(kind: type, choices: tuple[str, ...] | None = None) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        values = [kind(v) for v in text.split(",") if v]
        if choices is not None:
            bad = [v for v in values if v not in choices]
            if bad:
                raise argparse.ArgumentTypeError(f"{bad} not in {list(choices)}")
        return values

    return parse


def parse_args(argv: list[str] | None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench", description=__doc__.split("\n\n")[0]
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="~3 s cells")
    mode.add_argument(
        "--smoke", action="store_true", help="tiny: half_plus_two, concurrency 1, batching off"
    )
    parser.add_argument("--seconds", type=float, help="measured seconds per cell (default 8)")
    parser.add_argument("--warmup", type=float, help="unrecorded seconds before each cell")
    parser.add_argument("--out", default="results/bench", help="directory for JSON and PNG")
    parser.add_argument("--workloads", type=_csv(str, WORKLOADS))
    parser.add_argument("--systems", type=_csv(str, SYSTEMS))
    parser.add_argument("--concurrency", type=_csv(int))
    parser.add_argument(
        "--batching",
        type=_csv(str, ("off", "on")),
        help="ray-tfserving boots with batching off and/or on (default both; '' for none)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="another ray-tfserving boot: 'LABEL [batching=on] [ENV_VAR=v] [app.arg=v] ...'",
    )
    parser.add_argument("--batch-sizes", type=_csv(int), help="in-process batch sizes")
    parser.add_argument("--model-dir", help="reuse (or create) the DeepLab export here")
    parser.add_argument(
        "--ray-arg", action="append", default=[], help="app argument key=value for every boot"
    )
    parser.add_argument(
        "--ray-env", action="append", default=[], help="environment KEY=VALUE for every boot"
    )
    parser.add_argument(
        "--plain-arg", action="append", default=[], help="extra flag for the plain server"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every cell N times, all servers up at once and interleaved (A/B on a "
        "noisy machine); the cells pool the rounds",
    )
    parser.add_argument(
        "--client",
        choices=("h2load", "python"),
        help="load generator: h2load (C, the default where installed) or python (asyncio)",
    )
    parser.add_argument("--label", default="bench", help="file name stem of the outputs")
    ns = parser.parse_args(argv)
    defaults: dict[str, Any] = dict(
        seconds=8.0,
        warmup_s=2.0,
        inprocess_seconds=1.5,
        batch_sizes=[1, 2, 4, 8, 16, 32],
        concurrency=[1, 16],
        workloads=list(WORKLOADS),
        batching=["off", "on"],
    )
    if ns.smoke:
        defaults.update(
            seconds=1.0,
            warmup_s=0.3,
            inprocess_seconds=0.2,
            batch_sizes=[1, 8],
            concurrency=[1],
            workloads=["half_plus_two"],
            batching=["off"],
        )
    elif ns.quick:
        defaults.update(seconds=3.0, warmup_s=1.0, inprocess_seconds=0.7)
    batching = ns.batching if ns.batching is not None else defaults["batching"]
    ray_configs = [RayConfig(b, batching=b == "on", cli=True) for b in batching]
    ray_configs += [RayConfig.parse(v) for v in ns.variant]
    for rc in ray_configs:
        rc.args += ns.ray_arg
        rc.env.update(kv.split("=", 1) for kv in ns.ray_env)
    settings = Settings(
        seconds=ns.seconds or defaults["seconds"],
        warmup_s=ns.warmup if ns.warmup is not None else defaults["warmup_s"],
        inprocess_seconds=defaults["inprocess_seconds"],
        batch_sizes=ns.batch_sizes or defaults["batch_sizes"],
        concurrency=ns.concurrency or defaults["concurrency"],
        workloads=ns.workloads or defaults["workloads"],
        systems=ns.systems or list(SYSTEMS),
        ray_configs=ray_configs,
        plain_args=ns.plain_arg,
        client=ns.client or ("h2load" if h2load.available() else "python"),
        rounds=ns.rounds,
    )
    return settings, ns


def main(argv: list[str] | None = None) -> int:
    settings, ns = parse_args(argv)
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="loadbench-") as tmp:
        model_dir = Path(ns.model_dir).resolve() if ns.model_dir else None
        results = run_bench(settings, Path(tmp), model_dir)
    json_path = out / f"{ns.label}.json"
    png_path = out / f"{ns.label}.png"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    chart(results, png_path)
    print()
    print(table(results))
    print()
    print("Server cores by process:")
    print(roles_table(results))
    print(f"\nwrote {json_path} and {png_path} in {results['meta']['elapsed_s']:.0f}s")
    failed = [c for c in results["cells"] if c["system"] != "inprocess" and not c["requests"]]
    for c in failed:
        print(f"no successful request: {_row(c)}: {c['first_error']}", file=sys.stderr)
    return 1 if failed else 0
