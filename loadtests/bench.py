"""Side-by-side benchmark: in-process TF, a plain gRPC server, ray-tfserving over gRPC and REST.

    python -m loadtests.bench [--quick | --smoke] [--seconds S] [--client h2load|python]

In one run, on this machine, one after another (never two servers at once, unless ``--rounds``):

(a) ``inprocess``: ``Servable.run`` called directly at batch sizes 1..32: the limit, in examples/s,
    measured before and again after the servers, the higher of the two kept;
(b) ``plain``: ``loadtests.plain_server``, the leanest Python server (grpc.aio, same data plane,
    one process);
(c) ``ray-grpc``: ray-tfserving's default configuration over gRPC, batching off and on
    (TF Serving's ``--enable_batching`` with ``BATCHING_ON``), one boot per configuration;
(d) ``ray-rest``: the same servers over REST;
(e) ``ray-v2``: the same servers over the Open Inference Protocol's gRPC ``ModelInfer`` (raw
    tensors, as tritonclient sends them), to compare with (c) on the same path.

Workloads: ``half_plus_two`` (x float [1, 1]: serving overhead) and ``deeplab128`` (a DeepLab
export called at 128x128 through ``predict_images``: compute), each at every ``--concurrency``
(closed loop: that many requests in flight, each on a connection of its own). The load comes from
h2load (``loadtests.h2load``: nghttp2's C load generator, so the client hardly takes the server's
cores; one checked Python call first) or, with ``--client python``, from one asyncio process.
Each cell warms up, then measures for ``--seconds``. Prints a table (req/s, p50/p99 ms, client and
server cores used, and the ratios to the in-process limit and to the plain server), the server's
cores by process (serving replicas, version manager, Ray: where the CPU goes), and writes
``bench.json`` and ``bench.png`` into ``--out``. On a shared machine, compare only figures of the
same run.

``--variant "LABEL [batching=on] [ENV_VAR=value] [app.arg=value] ..."`` boots one more
ray-tfserving configuration in the same run, to measure a tuning knob against the same
baselines (e.g. ``"one ingress_replicas=1"``); ``--ray-env KEY=VALUE`` and ``--ray-arg
key=value`` apply to every boot. ``--rounds N`` boots every server at once and interleaves their
cells N times (pooled), so that configurations compared on a noisy machine see the same noise.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loadtests import clients, h2load, launcher, procstat

REPO = launcher.REPO
HALF_PLUS_TWO = launcher.HALF_PLUS_TWO
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
MODEL_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
SYSTEMS = ("inprocess", "plain", "ray-grpc", "ray-rest", "ray-v2")
RAY_SYSTEMS = ("ray-grpc", "ray-rest", "ray-v2")
WORKLOADS = ("half_plus_two", "deeplab128")
BATCHING_ON = ("batching.max_batch_size=16", "batching.batch_timeout_micros=2000")
DEEPLAB_SIZE = 128
MAX_REQUESTS = 200_000
"""Upper bound on requests recorded per cell (each cell is also bounded in time)."""


@dataclass
class Workload:
    """One request shape against one served model."""

    name: str
    model: str
    base_path: Path
    signature: str
    example: dict[str, np.ndarray]
    """One request's inputs (batch dimension 1)."""
    rest_instance: Any
    """The same request as one REST ``instances`` row."""

    def batch(self, n: int) -> dict[str, np.ndarray]:
        return {k: np.concatenate([v] * n) for k, v in self.example.items()}

    def grpc_payload(self) -> bytes:
        from compat.protos import predict_pb2
        from compat.tensors import from_numpy

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model
        request.model_spec.signature_name = self.signature
        for alias, value in self.example.items():
            request.inputs[alias].CopyFrom(from_numpy(value, tensor_content=True))
        return request.SerializeToString()

    def v2_payload(self) -> bytes:
        """The same request as a V2 ModelInferRequest, every tensor raw."""
        from compat import open_inference

        request = open_inference.pb.ModelInferRequest(model_name=self.model)
        request.parameters[open_inference.SIGNATURE_PARAMETER].string_param = self.signature
        for alias, value in self.example.items():
            kind = open_inference.BY_NUMPY[value.dtype]
            request.inputs.add(name=alias, datatype=kind.name, shape=value.shape)
            request.raw_input_contents.append(open_inference.to_raw(value))
        return request.SerializeToString()

    def rest_body(self) -> bytes:
        doc = {"signature_name": self.signature, "instances": [self.rest_instance]}
        return json.dumps(doc, separators=(",", ":")).encode()


def half_plus_two() -> Workload:
    return Workload(
        name="half_plus_two",
        model="half_plus_two",
        base_path=HALF_PLUS_TWO,
        signature="serving_default",
        example={"x": np.array([[1.0]], dtype=np.float32)},
        rest_instance=[1.0],
    )


def deeplab128(base_path: Path) -> Workload:
    from export.synthetic import make_batch

    image = np.round(make_batch(1, DEEPLAB_SIZE, seed=7)[0])  # [1, 128, 128, 3], whole numbers
    size = np.array([DEEPLAB_SIZE], dtype=np.int32)
    return Workload(
        name="deeplab128",
        model="deeplab",
        base_path=base_path,
        signature="predict_images",
        example={"images": image, "height": size, "width": size.copy()},
        rest_instance={
            "images": image[0].astype(int).tolist(),
            "height": DEEPLAB_SIZE,
            "width": DEEPLAB_SIZE,
        },
    )


@dataclass
class Settings:
    seconds: float
    warmup_s: float
    inprocess_seconds: float
    batch_sizes: list[int]
    concurrency: list[int]
    workloads: list[str]
    systems: list[str]
    ray_configs: list[RayConfig]
    plain_args: list[str] = field(default_factory=list)
    client: str = "h2load"
    """``h2load`` (nghttp2's C load generator, when installed) or ``python`` (asyncio)."""
    rounds: int = 1
    """With more than one, every server is booted at once and their cells interleaved."""


@dataclass
class RayConfig:
    """One ray-tfserving boot, measured over gRPC and REST: a label, app arguments, environment.

    ``--variant "LABEL batching=on KEY=VALUE key.sub=value ..."``: upper-case keys are
    environment variables (Ray's workers inherit them), the rest ``serve run`` app arguments.
    """

    label: str
    batching: bool = False
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> RayConfig:
        label, *tokens = text.split()
        config = cls(label)
        for token in tokens:
            key, _, value = token.partition("=")
            if key == "batching":
                config.batching = value == "on"
            elif re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
                config.env[key] = value
            else:
                config.args.append(token)
        return config

    def describe(self) -> str:
        return " ".join([*self.app_args(), *(f"{k}={v}" for k, v in self.env.items())])

    def app_args(self) -> list[str]:
        batching = ["batching.enabled=true", *BATCHING_ON] if self.batching else []
        return [*batching, *self.args]


# --- (a) in-process -----------------------------------------------------------------------------


def measure_inprocess(workload: Workload, settings: Settings) -> dict[str, Any]:
    """``Servable.run`` in a loop at every batch size; the best examples/s is the limit."""
    from compat.servable import Servable
    from loadtests.plain_server import newest_version

    servable = Servable(newest_version(workload.base_path)[1])
    try:
        signature = servable.signature(workload.signature)
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


def boot_plain(workloads: list[Workload], settings: Settings, workdir: Path) -> Target:
    plain = launcher.start_plain_server(
        {w.model: w.base_path for w in workloads},
        *settings.plain_args,
        log_path=workdir / "plain.log",
        env={"TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    return Target("plain", ["plain"], None, plain.grpc_target, None, plain.process.pid, plain.stop)


def boot_ray(rc: RayConfig, workloads: list[Workload], settings: Settings, workdir: Path) -> Target:
    config = model_config(workloads, workdir / f"models-{rc.label}.config")
    server = launcher.start_server(
        f"model_config_file={config}",
        *rc.app_args(),
        wait_for=[w.model for w in workloads],
        env={"TF_CPP_MIN_LOG_LEVEL": "2", **rc.env},
        tmp_prefix="loadbench-ray-",
    )
    systems: list[str] = [s for s in RAY_SYSTEMS if s in settings.systems]
    return Target(
        rc.label,
        systems,
        rc,
        server.grpc_target,
        server.http_base,
        server.process.pid,
        server.stop,
    )


def model_config(workloads: list[Workload], path: Path) -> Path:
    """A ModelServerConfig text file serving every workload's model."""
    entries = "\n".join(
        f'  config {{ name: "{w.model}" base_path: "{w.base_path}" model_platform: "tensorflow" }}'
        for w in workloads
    )
    path.write_text(f"model_config_list {{\n{entries}\n}}\n")
    return path


@contextmanager
def _step(title: str) -> Iterator[None]:
    print(f"== {title}", flush=True)
    started = time.monotonic()
    yield
    print(f"   ({time.monotonic() - started:.1f}s)", flush=True)


def run_bench(settings: Settings, workdir: Path, model_dir: Path | None) -> dict[str, Any]:
    started = time.time()
    load_before = os.getloadavg()
    cells: list[dict[str, Any]] = []
    boot_s: dict[str, float] = {}
    workloads: list[Workload] = []
    for name in settings.workloads:
        if name == "half_plus_two":
            workloads.append(half_plus_two())
        else:
            workloads.append(deeplab128(_deeplab_model(model_dir or workdir / "deeplab")))

    if "inprocess" in settings.systems:
        for w in workloads:
            with _step(f"in-process {w.name}, batch sizes {settings.batch_sizes}"):
                cells.append(measure_inprocess(w, settings))
                print(f"  {_row(cells[-1])}", flush=True)

    boots: list[tuple[str, Callable[[], Target]]] = []
    if "plain" in settings.systems:
        boots.append(("plain grpc.aio server", lambda: boot_plain(workloads, settings, workdir)))
    if set(RAY_SYSTEMS) & set(settings.systems):
        for rc in settings.ray_configs:
            boots.append(
                (
                    f"ray-tfserving [{rc.label}] ({rc.describe()})",
                    functools.partial(boot_ray, rc, workloads, settings, workdir),
                )
            )
    measurements: dict[tuple[str, str, str | None, int], Measurement] = {}

    def boot(title: str, start: Callable[[], Target]) -> Target:
        with _step(f"{title}: boot"):
            t0 = time.monotonic()
            target = start()
            boot_s[target.name] = round(time.monotonic() - t0, 1)
        return target

    if settings.rounds == 1:  # one server at a time
        for title, start in boots:
            target = boot(title, start)
            try:
                with _step(f"{title}: cells"):
                    measure(target, workloads, settings, measurements)
            finally:
                target.stop()
    else:  # every server up at once, their cells interleaved round by round
        targets: list[Target] = []
        try:
            for title, start in boots:
                targets.append(boot(title, start))
            for r in range(settings.rounds):
                for target in targets:
                    with _step(f"round {r + 1}/{settings.rounds}: {target.name}"):
                        measure(target, workloads, settings, measurements)
        finally:
            for target in targets:
                target.stop()
    cells += [m.cell() for m in measurements.values()]
    if "inprocess" in settings.systems and boots:  # again: this machine's speed drifts
        for i, first in enumerate(cells):
            if first["system"] == "inprocess":
                w = next(w for w in workloads if w.name == first["workload"])
                with _step(f"in-process {w.name} again, after the servers"):
                    cells[i] = higher_limit(first, measure_inprocess(w, settings))
                    print(
                        f"  limit {cells[i]['examples_per_s']:.0f} ex/s, the higher of "
                        f"{cells[i]['limit_runs']} (before and after the servers)",
                        flush=True,
                    )

    add_ratios(cells)
    return {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "elapsed_s": round(time.time() - started, 1),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "load_average_start": load_before,
            "load_average_end": os.getloadavg(),
            "python": platform.python_version(),
            "versions": _versions(),
            "settings": dataclasses.asdict(settings),
            "boot_s": boot_s,
            "deeplab_size": DEEPLAB_SIZE,
            "batching_on_args": ["batching.enabled=true", *BATCHING_ON],
        },
        "cells": cells,
    }


def _deeplab_model(base: Path) -> Path:
    """A DeepLab export (20 steps at 32x32: weights do not matter for speed), made if missing."""
    if not any(base.glob("*/saved_model.pb")):
        with _step(f"export DeepLab to {base}"):
            from export.savedmodel import export_model

            export_model(base, 1, steps=20, size=32, log=None)
    return base


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("ray", "tensorflow", "grpcio", "aiohttp"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "?"
    return found


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


# --- output -------------------------------------------------------------------------------------

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


# --- command line -------------------------------------------------------------------------------


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
    ray_configs = [RayConfig(b, batching=b == "on") for b in batching]
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


if __name__ == "__main__":
    sys.exit(main())
