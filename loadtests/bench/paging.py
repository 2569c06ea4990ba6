"""The benchmark's paging row: many models under ``--model_memory_budget_mb`` against today's
all-models-everywhere, and the hot model against a one-model server.

    python -m loadtests.bench.paging [--out DIR] [--models 200] [--budget-mb 48]
                                     [--requests 1000] [--seconds 10] [--concurrency 16]

``--models`` models (copies of TF Serving's half_plus_two and half_plus_three, their version
directories linked, plus two exports made here with float32 variables of 24 and 20 MB), served
one after the other by three servers of the default two serving replicas:

- ``budget``: ``--model_memory_budget_mb=BUDGET`` (versions paged in and out);
- ``all``: no budget (every replica holds every version, today's behaviour);
- ``one``: only the hot model.

On ``budget`` and ``all``: the boot's time; a Zipf-distributed load (exponent 1.3, the hot
model first) of ``--requests`` Predicts from 8 client threads over 16 connections (both
replicas take calls), every answer checked (failed requests counted), and the page-ins and
hops it caused (the metrics page, summed over the replicas); then the cold start: the
first Predict, one at a time, to 40 models the load never asked for (under the budget most
are not resident: each is a page-in or a hop; without one, all are), p50/p99 in ms, beside a
second Predict to each (warm); then each serving replica's RSS; then the hot model's throughput
under h2load (``--concurrency`` connections for ``--seconds``), as on ``one`` (enough
connections that the kernel spreads them evenly over the two replicas).
Prints a table and writes ``paging.json`` into ``--out``. On a shared machine, compare only
figures of the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from loadtests import h2load
from loadtests.bench.autoscale import serving_replica_rss
from loadtests.bench.settings import PREDICT_METHOD
from loadtests.launcher import TESTDATA, ServerProcess, start_server
from loadtests.workloads import half_plus_two

SMALL = {"saved_model_half_plus_two_cpu": 2.0, "saved_model_half_plus_three": 3.0}
"""TF Serving's test models copied -> what each adds to 0.5 x."""
BIG = {"big_a": 6_000_000, "big_b": 5_000_000}
"""Exports made here: float32 variables of this many elements."""
HOT = "hot"
COLD_SAMPLE = 40
ZIPF_CONNECTIONS = 16
METRICS_PATH = "/monitoring/prometheus/metrics"
METRICS_INTERVAL_MS = 1000
COUNTED = ("page_ins", "hops")
"""Counters read after the Zipf load (``ray_tfserving_model_<name>_total``)."""


def export_big(base: Path, size: int) -> None:
    """y = 0.5 x + 2 beside a ``size``-element variable."""
    import tensorflow as tf

    class Big(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(tf.fill([size], 0.5))

        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def serve(self, x: Any) -> dict[str, Any]:
            return {"y": x * self.w[0] + 2.0}

    module = Big()
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.serve})


def build_models(root: Path, count: int) -> dict[str, float]:
    """The models under ``root`` (the hot one first, then the big ones), each -> its add."""
    adds: dict[str, float] = {}
    small = list(SMALL)
    for i, name in enumerate([HOT] + [f"m{i:03d}" for i in range(count - 1 - len(BIG))]):
        data = small[i % len(small)]
        (root / name).mkdir()
        (root / name / "1").symlink_to(TESTDATA / data / "00000123")
        adds[name] = SMALL[data]
    for name, size in BIG.items():
        export_big(root / name, size)
        adds[name] = 2.0
    return adds


def write_config(path: Path, root: Path, names: list[str]) -> Path:
    entries = "".join(
        f'  config {{ name: "{m}" base_path: "{root / m}" model_platform: "tensorflow" }}\n'
        for m in names
    )
    path.write_text(f"model_config_list {{\n{entries}}}\n")
    return path


def predict(stub: Any, name: str, x: float) -> float:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[x]], dtype=tf.float32))
    return float(stub.Predict(request, 60.0).outputs["y"].float_val[0])


def zipf_load(server: ServerProcess, order: list[str], adds: dict[str, float]) -> dict[str, Any]:
    """``order``'s Predicts from 8 threads over ``ZIPF_CONNECTIONS`` connections (spread over
    the serving replicas, as many clients' are), each answer checked."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    own = [("grpc.use_local_subchannel_pool", 1)]  # a connection each
    channels = [
        grpc.insecure_channel(server.grpc_target, options=own) for _ in range(ZIPF_CONNECTIONS)
    ]
    stubs = [prediction_service_pb2_grpc.PredictionServiceStub(c) for c in channels]

    def one(i_name: tuple[int, str]) -> float | None:
        i, name = i_name
        started = time.perf_counter()
        try:
            stub = stubs[i % len(stubs)]
            ok = predict(stub, name, float(i % 7)) == 0.5 * (i % 7) + adds[name]
        except grpc.RpcError:
            ok = False
        return (time.perf_counter() - started) * 1000 if ok else None

    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, enumerate(order)))
    wall = time.perf_counter() - started
    for channel in channels:
        channel.close()
    latencies = [r for r in results if r is not None]
    return {
        "requests": len(order),
        "models_asked": len(set(order)),
        "failed": len(order) - len(latencies),
        "rps": len(latencies) / wall,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
    }


def first_calls(server: ServerProcess, names: list[str]) -> dict[str, Any]:
    """The first Predict to each of ``names`` (one at a time), and a second one (warm)."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    first: list[float] = []
    second: list[float] = []
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for name in names:
            for times in (first, second):
                started = time.perf_counter()
                predict(stub, name, 1.0)
                times.append((time.perf_counter() - started) * 1000)
    return {
        "cold_p50_ms": float(np.percentile(first, 50)),
        "cold_p99_ms": float(np.percentile(first, 99)),
        "warm_p50_ms": float(np.percentile(second, 50)),
    }


def paging_counts(server: ServerProcess) -> dict[str, float]:
    """Page-ins and hops so far, summed over the replicas, from the metrics page (Ray's agents
    report every ``METRICS_INTERVAL_MS``: waited for twice over)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    time.sleep(2 * METRICS_INTERVAL_MS / 1000)
    with urllib.request.urlopen(server.http_base + METRICS_PATH, timeout=30) as r:
        text = r.read().decode()
    counts = dict.fromkeys(COUNTED, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removeprefix("ray_tfserving_model_").removesuffix("_total")
            if name in counts:
                counts[name] += sample.value
    return counts


def replica_rss_mb(server: ServerProcess) -> list[float]:
    """Each serving replica's RSS in MB (``ps``)."""
    return sorted(round(rss / 1024, 1) for rss in serving_replica_rss(server).values())


def hot_throughput(server: ServerProcess, ns: argparse.Namespace) -> float:
    workload = dataclasses.replace(half_plus_two(), model=HOT)

    def check() -> None:
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            if predict(stub, HOT, 1.0) != 2.5:
                raise RuntimeError("wrong answer from the hot model")

    result = h2load.run(
        f"http://{server.grpc_target}{PREDICT_METHOD}",
        workload.grpc_payload(),
        grpc=True,
        concurrency=ns.concurrency,
        seconds=ns.seconds,
        warmup_s=2.0,
        check=check,
    )
    return result.throughput


def serve(config: Path, *args: str) -> tuple[ServerProcess, float]:
    started = time.monotonic()
    server = start_server(
        f"model_config_file={config}",
        f"prometheus_path={METRICS_PATH}",
        *args,
        wait_for=(HOT,),
        env={"RAY_metrics_report_interval_ms": str(METRICS_INTERVAL_MS)},
    )
    return server, time.monotonic() - started


def run(ns: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"settings": vars(ns)}
    with tempfile.TemporaryDirectory(prefix="bench-paging-") as tmp:
        root = Path(tmp)
        adds = build_models(root, ns.models)
        names = [HOT, *BIG, *(n for n in adds if n != HOT and n not in BIG)]
        rng = np.random.default_rng(27)
        ranks = rng.zipf(1.3, size=ns.requests * 4)
        order = [names[r - 1] for r in ranks if r <= len(names)][: ns.requests]
        cold = [n for n in sorted(adds) if n not in order][:COLD_SAMPLE]
        everything = write_config(root / "all.config", root, list(adds))
        for label, args in (("budget", [f"model_memory_budget_mb={ns.budget_mb}"]), ("all", [])):
            server, boot_s = serve(everything, *args)
            try:
                row: dict[str, Any] = {"boot_s": round(boot_s, 1)}
                row |= zipf_load(server, order, adds)
                row |= paging_counts(server)
                row |= first_calls(server, cold)
                row["replica_rss_mb"] = replica_rss_mb(server)
                row["hot_rps"] = hot_throughput(server, ns)
            finally:
                server.stop()
            results[label] = row
            print(label, json.dumps(row), flush=True)
        server, boot_s = serve(write_config(root / "one.config", root, [HOT]))
        try:
            results["one"] = {
                "boot_s": round(boot_s, 1),
                "replica_rss_mb": replica_rss_mb(server),
                "hot_rps": hot_throughput(server, ns),
            }
        finally:
            server.stop()
        print("one", json.dumps(results["one"]), flush=True)
    for label in ("budget", "all"):
        results[label]["hot_vs_one"] = results[label]["hot_rps"] / results["one"]["hot_rps"]
    return results


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{'server':8} {'boot s':>7} {'failed':>6} {'zipf req/s':>10} {'page-ins':>8} "
        f"{'hops':>5} {'cold p50':>9} "
        f"{'cold p99':>9} {'warm p50':>9} {'RSS MB per replica':>20} {'hot req/s':>10} "
        f"{'vs one':>7}"
    ]
    for label in ("budget", "all"):
        r = results[label]
        lines.append(
            f"{label:8} {r['boot_s']:7.1f} {r['failed']:6d} {r['rps']:10.0f} "
            f"{r['page_ins']:8.0f} {r['hops']:5.0f} "
            f"{r['cold_p50_ms']:9.1f} {r['cold_p99_ms']:9.1f} {r['warm_p50_ms']:9.1f} "
            f"{' '.join(f'{m:.0f}' for m in r['replica_rss_mb']):>20} {r['hot_rps']:10.0f} "
            f"{r['hot_vs_one']:7.2f}"
        )
    one = results["one"]
    rss = " ".join(f"{m:.0f}" for m in one["replica_rss_mb"])
    lines.append(
        f"{'one':8} {one['boot_s']:7.1f} {'':>6} {'':>10} {'':>8} {'':>5} {'':>9} {'':>9} {'':>9} "
        f"{rss:>20} {one['hot_rps']:10.0f} {1.0:7.2f}"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench.paging", description=__doc__)
    p.add_argument("--out", default="bench-results")
    p.add_argument("--models", type=int, default=200)
    p.add_argument("--budget-mb", type=int, default=48)
    p.add_argument("--requests", type=int, default=1000, help="Predicts of the Zipf load")
    p.add_argument("--seconds", type=float, default=10.0, help="h2load's window on the hot model")
    p.add_argument("--concurrency", type=int, default=16, help="h2load's connections")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    if not h2load.available():
        print("h2load is needed: apt-get install nghttp2-client", file=sys.stderr)
        return 2
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run(ns)
    (out / "paging.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"wrote {out / 'paging.json'}")
    return 1 if results["budget"]["failed"] or results["all"]["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
