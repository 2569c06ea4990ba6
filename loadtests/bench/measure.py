"""Measuring: the in-process limit, a target's cells over the network (h2load or the Python
client), and the ratios between them."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loadtests import clients, h2load, procstat
from loadtests.bench.report import _row
from loadtests.bench.settings import (
    MAX_REQUESTS,
    MODEL_INFER_METHOD,
    PREDICT_METHOD,
    RayConfig,
    Settings,
)
from loadtests.workloads import Workload


def measure_inprocess(workload: Workload, settings: Settings) -> dict[str, Any]:
    """``Servable.run`` in a loop at every batch size; the best examples/s is the limit."""
    from compat.servable import Servable
    from compat.signatures import DEFAULT_SIGNATURE
    from loadtests.plain_server import newest_version

    assert workload.base_path is not None, workload.name
    servable = Servable(newest_version(workload.base_path)[1])
    try:
        signature = servable.signature(workload.signature or DEFAULT_SIGNATURE)
        outputs = sorted(signature.outputs)
        sizes: dict[str, dict[str, float]] = {}
        for b in settings.batch_sizes:
            inputs = workload.batch(b)
            for _ in range(2):  # builds the callable, warms the kernels
                servable.run(signature, inputs, outputs)
            times: list[float] = []
            started = time.perf_counter()
            while time.perf_counter() - started < settings.inprocess_seconds and len(times) < 10**5:
                t0 = time.perf_counter()
                servable.run(signature, inputs, outputs)
                times.append(time.perf_counter() - t0)
            wall = time.perf_counter() - started
            sizes[str(b)] = {
                "examples_per_s": round(b * len(times) / wall, 1),
                "ms_per_batch": round(1000 * float(np.median(times)), 3),
                "runs": len(times),
            }
    finally:
        servable.close()
    best = max(sizes, key=lambda b: sizes[b]["examples_per_s"])
    one = sizes.get("1", {})
    return {
        "workload": workload.name,
        "system": "inprocess",
        "config": None,
        "batching": None,
        "concurrency": None,
        "batch_sizes": sizes,
        "best_batch": int(best),
        "examples_per_s": sizes[best]["examples_per_s"],
        "throughput_rps": sizes[best]["examples_per_s"] / int(best),
        "p50_ms": sizes[best]["ms_per_batch"],
        "batch1_examples_per_s": one.get("examples_per_s"),
    }


def higher_limit(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The in-process cell with more examples/s, so that a drift of the machine's speed during the
    run lowers the ratios rather than flattering them; both figures are kept in ``limit_runs``."""
    best = max(before, after, key=lambda c: float(c["examples_per_s"]))
    return {**best, "limit_runs": [before["examples_per_s"], after["examples_per_s"]]}


# --- (b)-(d) over the network -------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


@dataclass
class Target:
    """A booted server to measure: the systems it stands for and where to reach it."""

    name: str
    systems: list[str]
    config: RayConfig | None
    grpc_target: str
    http_base: str | None
    session: int
    """Session id of the server's processes (for their CPU use)."""
    stop: Callable[[], None]


@dataclass
class Measurement:
    """One cell: every run of it (several with ``--rounds``), pooled."""

    workload: str
    system: str
    config: RayConfig | None
    concurrency: int
    runs: list[clients.LoadResult] = field(default_factory=list)
    cores: list[dict[str, float]] = field(default_factory=list)
    """Cores each server role used, per run."""

    def add(self, result: clients.LoadResult, cores: dict[str, float]) -> None:
        self.runs.append(result)
        self.cores.append(cores)

    def cell(self, last_only: bool = False) -> dict[str, Any]:
        """The cell's figures, over every run (or the last one)."""
        runs = self.runs[-1:] if last_only else self.runs
        cores = self.cores[-1:] if last_only else self.cores
        wall = sum(r.wall_s for r in runs)
        requests = sum(r.requests for r in runs)
        latencies = [ms for r in runs for ms in r.latencies_ms]
        rate = requests / wall if wall > 0 else 0.0
        cpu: dict[str, float] = {}  # CPU seconds by role, over the windows
        for run, used in zip(runs, cores, strict=True):
            for role, n in used.items():
                cpu[role] = cpu.get(role, 0.0) + n * run.wall_s
        server = {role: round(s / wall, 3) for role, s in sorted(cpu.items())} if wall else {}
        return {
            "workload": self.workload,
            "system": self.system,
            "config": self.config.label if self.config else None,
            "batching": ("on" if self.config.batching else "off") if self.config else None,
            "concurrency": self.concurrency,
            "rounds": len(runs),
            "requests": requests,
            "errors": sum(r.errors for r in runs),
            "wall_s": round(wall, 3),
            "throughput_rps": round(rate, 1),
            "examples_per_s": round(rate, 1),
            "round_throughputs_rps": [round(r.throughput, 1) for r in runs],
            "p50_ms": _percentile(latencies, 50),
            "p90_ms": _percentile(latencies, 90),
            "p99_ms": _percentile(latencies, 99),
            "client_cpu_cores": round(sum(r.client_cpu_s for r in runs) / wall, 3) if wall else 0,
            "server_cpu_cores": server,
            "server_cpu_total": round(sum(server.values()), 3) if server else None,
            "first_error": next((r.first_error for r in runs if r.first_error), ""),
        }


def measure(
    target: Target,
    workloads: list[Workload],
    settings: Settings,
    measurements: dict[tuple[str, str, str | None, int], Measurement],
) -> None:
    """Run every cell of ``target`` once, adding each run to its measurement."""
    for system in target.systems:
        for w in workloads:
            for c in settings.concurrency:
                key = (w.name, system, target.config.label if target.config else None, c)
                m = measurements.setdefault(key, Measurement(w.name, system, target.config, c))
                samples: list[procstat.Sample] = []

                def sample(samples: list[procstat.Sample] = samples) -> None:
                    samples.append(procstat.session_cpu(target.session))

                rest = system == "ray-rest"
                if rest:
                    assert target.http_base is not None
                    url = f"{target.http_base}/v1/models/{w.model}:predict"
                    body = w.rest_body()
                    caller = clients.rest_caller(url, body, connections=c)
                else:
                    method, body = (
                        (MODEL_INFER_METHOD, w.v2_payload())
                        if system == "ray-v2"
                        else (PREDICT_METHOD, w.grpc_payload())
                    )
                    url = f"http://{target.grpc_target}{method}"
                    caller = clients.grpc_caller(target.grpc_target, method, body, connections=c)
                if settings.client == "h2load":
                    result = h2load.run(
                        url,
                        body,
                        grpc=not rest,
                        concurrency=c,
                        seconds=settings.seconds,
                        warmup_s=settings.warmup_s,
                        check=functools.partial(_one_call, caller),
                        on_window=sample,
                    )
                else:
                    load = clients.closed_loop(
                        caller,
                        c,
                        settings.seconds,
                        settings.warmup_s,
                        MAX_REQUESTS,
                        on_window=sample,
                    )
                    result = asyncio.run(load)
                cores = (
                    procstat.cores_used(samples[0], samples[-1], result.wall_s)
                    if len(samples) == 2
                    else {}
                )
                m.add(result, cores)
                print(f"  {_row(m.cell(last_only=True))}", flush=True)


def _one_call(caller: Any) -> None:
    """One request through the Python client, which checks the answer (h2load cannot)."""

    async def call() -> None:
        async with caller as one:
            await one()

    asyncio.run(call())


def add_ratios(cells: list[dict[str, Any]]) -> None:
    """``vs_inprocess``: examples/s over the in-process best; ``vs_plain``: req/s over the plain
    server's at the same workload and concurrency."""
    limit = {c["workload"]: c["examples_per_s"] for c in cells if c["system"] == "inprocess"}
    plain = {
        (c["workload"], c["concurrency"]): c["throughput_rps"]
        for c in cells
        if c["system"] == "plain"
    }
    for c in cells:
        if c["system"] == "inprocess":
            continue
        best = limit.get(c["workload"])
        c["vs_inprocess"] = round(c["examples_per_s"] / best, 4) if best else None
        base = plain.get((c["workload"], c["concurrency"]))
        c["vs_plain"] = (
            round(c["throughput_rps"] / base, 3) if base and c["system"] != "plain" else None
        )
