"""The benchmark's autoscaling row: ray-tfserving with ``--serving_replicas=auto`` under a load
step.

    python -m loadtests.bench.autoscale [--out DIR] [--low 1] [--high 16] [--phases 20,60,40]

One boot of half_plus_two (``serving_replicas=auto``, 1 to ``--max-replicas``, one request in
flight targeted per replica, delays of seconds so that the step fits in minutes), then h2load
(``loadtests.h2load``: a C closed-loop client, so that the client hardly takes the server's
cores) at ``--low`` connections, at ``--high``, and at ``--low`` again, in back-to-back windows of
``--window`` seconds. Each window opens new connections, which the kernel spreads over the
replicas listening then (h2load stops a connection that gets GOAWAY instead of reconnecting,
so the server's connection age stays at its default, longer than a window). The serving
replicas (processes, and those listening on the gRPC port) are sampled every 0.5 s. Prints a
table (window, connections, replicas, req/s, p50/p99 ms, failed), writes ``autoscale.json`` and
``autoscale.png`` (replicas over time; throughput and p99 through the step) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from loadtests import h2load
from loadtests.bench.settings import PREDICT_METHOD
from loadtests.launcher import TESTDATA, ServerProcess, start_server
from loadtests.workloads import half_plus_two

INGRESS_TITLE = "ray::ServeReplica:default:Ingress"


def serving_replica_rss(server: ServerProcess) -> dict[int, int]:
    """The serving replicas' pids and their RSS in KB (Ray retitles a busy one
    ``...:Ingress.<method>``)."""
    out = subprocess.run(
        ["ps", "-wweo", "pid=,sid=,rss=,args="], capture_output=True, text=True, check=True
    ).stdout
    found = {}
    for line in out.splitlines():
        pid, sid, rss, args = line.split(None, 3)
        title = args.split()[0]
        if int(sid) == server.process.pid and (
            title == INGRESS_TITLE or title.startswith(INGRESS_TITLE + ".")
        ):
            found[int(pid)] = int(rss)
    return found


def serving_replicas(server: ServerProcess) -> set[int]:
    """The serving replicas' pids."""
    return set(serving_replica_rss(server))


def listening(port: int) -> set[int]:
    """The pids listening on ``port`` (``ss``)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    held = set()
    for row in out.splitlines():
        if row.split()[3].rsplit(":", 1)[1] == str(port):
            held |= {int(p.split(",")[0]) for p in row.split("pid=")[1:]}
    return held


def check_call(target: str) -> None:
    """One Predict through the official stubs, its answer checked (h2load checks statuses)."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        reply = stub.Predict(half_plus_two().predict_request(), 30.0)
    if list(reply.outputs["y"].float_val) != [2.5]:
        raise RuntimeError(f"wrong answer: {reply}")


def run_step(ns: argparse.Namespace) -> dict[str, Any]:
    server = start_server(
        "model_name=half_plus_two",
        f"model_base_path={TESTDATA / 'saved_model_half_plus_two_cpu'}",
        "ingress_replicas=auto",
        "serving_autoscaling.min_replicas=1",
        f"serving_autoscaling.max_replicas={ns.max_replicas}",
        f"serving_autoscaling.target_in_flight={ns.target}",
        f"serving_autoscaling.upscale_delay_s={ns.upscale_delay}",
        f"serving_autoscaling.downscale_delay_s={ns.downscale_delay}",
        "serving_autoscaling.look_back_s=3",
        "serving_autoscaling.metrics_interval_s=0.5",
        wait_for=("half_plus_two",),
    )
    samples: list[tuple[float, int, int]] = []
    stop = threading.Event()
    t0 = time.monotonic()

    def sample() -> None:
        for _ in range(100_000):
            if stop.wait(0.5):
                return
            pids = serving_replicas(server)
            samples.append(
                (time.monotonic() - t0, len(pids), len(pids & listening(server.grpc_port)))
            )

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    windows: list[dict[str, Any]] = []
    body = half_plus_two().grpc_payload()
    url = f"http://{server.grpc_target}{PREDICT_METHOD}"
    try:
        for connections, seconds in zip((ns.low, ns.high, ns.low), ns.phases, strict=True):
            for _ in range(max(1, round(seconds / ns.window))):
                start = time.monotonic() - t0
                result = h2load.run(
                    url,
                    body,
                    grpc=True,
                    concurrency=connections,
                    seconds=ns.window,
                    warmup_s=0.0,
                    check=lambda: check_call(server.grpc_target),
                )
                lat = result.latencies_ms
                windows.append(
                    {
                        "start_s": start,
                        "connections": connections,
                        "replicas": len(serving_replicas(server) & listening(server.grpc_port)),
                        "throughput_rps": result.throughput,
                        "p50_ms": float(np.percentile(lat, 50)) if lat else None,
                        "p99_ms": float(np.percentile(lat, 99)) if lat else None,
                        "failed": result.errors,
                        "first_error": result.first_error,
                    }
                )
                print(_row(windows[-1]), flush=True)
    finally:
        stop.set()
        sampler.join(timeout=5)
        server.stop()
    return {"settings": vars(ns), "windows": windows, "replicas": samples}


def _row(w: dict[str, Any]) -> str:
    p50 = f"{w['p50_ms']:8.2f}" if w["p50_ms"] is not None else "       -"
    p99 = f"{w['p99_ms']:8.2f}" if w["p99_ms"] is not None else "       -"
    return (
        f"{w['start_s']:7.1f}s {w['connections']:5d} conn {w['replicas']:3d} replicas "
        f"{w['throughput_rps']:9.0f} req/s  p50 {p50} ms  p99 {p99} ms  failed {w['failed']}"
    )


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """Throughput at the low load on one replica, at the high load before any replica was added
    and once every replica listened, and the most replicas seen."""
    windows = results["windows"]
    high = results["settings"]["high"]
    low = [w for w in windows if w["connections"] != high and w["replicas"] == 1]
    most = max((r for _, _, r in results["replicas"]), default=0)
    on_one = [w for w in windows if w["connections"] == high and w["replicas"] == 1]
    on_most = [w for w in windows if w["connections"] == high and w["replicas"] == most]

    def mean(ws: list[dict[str, Any]], key: str) -> float | None:
        values = [w[key] for w in ws if w[key] is not None]
        return float(np.mean(values)) if values else None

    return {
        "most_replicas": most,
        "low_one_replica_rps": mean(low[:3], "throughput_rps"),
        "high_one_replica_rps": mean(on_one, "throughput_rps"),
        "high_most_replicas_rps": mean(on_most, "throughput_rps"),
        "high_one_replica_p99_ms": mean(on_one, "p99_ms"),
        "high_most_replicas_p99_ms": mean(on_most, "p99_ms"),
        "failed": sum(w["failed"] for w in windows),
    }


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    times = [t for t, _, _ in results["replicas"]]
    axes[0].step(times, [n for _, n, _ in results["replicas"]], where="post", label="started")
    axes[0].step(times, [n for _, _, n in results["replicas"]], where="post", label="listening")
    axes[0].set_ylabel("serving replicas")
    axes[0].legend()
    windows = results["windows"]
    starts = [w["start_s"] for w in windows]
    width = results["settings"]["window"]
    axes[1].bar(starts, [w["throughput_rps"] for w in windows], width=width, align="edge")
    axes[1].set_ylabel("throughput (req/s)")
    axes[2].bar(starts, [w["p99_ms"] or 0 for w in windows], width=width, align="edge")
    axes[2].set_ylabel("p99 latency (ms)")
    axes[2].set_xlabel("seconds since the load began (connections per window)")
    for w in windows:
        axes[1].annotate(str(w["connections"]), (w["start_s"] + width / 2, 0), ha="center")
    fig.suptitle("half_plus_two, --serving_replicas=auto: a load step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench.autoscale", description=__doc__)
    p.add_argument("--out", default="bench-results")
    p.add_argument("--low", type=int, default=1, help="connections before and after the step")
    p.add_argument("--high", type=int, default=16, help="connections during the step")
    p.add_argument(
        "--phases",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[20.0, 60.0, 40.0],
        help="seconds at low, high, low",
    )
    p.add_argument("--window", type=float, default=5.0, help="seconds per h2load run")
    p.add_argument("--max-replicas", type=int, default=3)
    p.add_argument("--target", type=float, default=1.0, help="requests in flight per replica")
    p.add_argument("--upscale-delay", type=float, default=2.0)
    p.add_argument("--downscale-delay", type=float, default=10.0)
    ns = p.parse_args(argv)
    if len(ns.phases) != 3:
        p.error("--phases takes three durations: low, high, low")
    return ns


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    if not h2load.available():
        print("h2load is needed: apt-get install nghttp2-client", file=sys.stderr)
        return 2
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run_step(ns)
    results["summary"] = summary(results)
    (out / "autoscale.json").write_text(json.dumps(results, indent=2) + "\n")
    chart(results, out / "autoscale.png")
    print(json.dumps(results["summary"], indent=2))
    print(f"wrote {out / 'autoscale.json'} and {out / 'autoscale.png'}")
    return 1 if results["summary"]["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
