"""A soak run: mixed load for a long time against one server, then what it cost.

``python -m loadtests.soak --minutes 30`` boots ray-tfserving on a copy of TF Serving's
half_plus_two and, for the whole run, keeps up at once:

- valid gRPC Predicts (several clients) and REST Predicts, each answer checked (y = x/2 + 2);
- hostile requests, one after another from a fixed list (bytes that are no request, unknown
  models and path-like names, a 10^12-element shape, wrong dtypes, malformed, truncated and
  gzip-bombed JSON), each of which must get an error status, never an answer or a hang;
- rollouts: every ``--rollout-every`` seconds a new version appears in the base path and the
  oldest goes (two on disk), so the server loads, swaps and unloads under load.

It reports the requests made, failures by kind and the RSS of every process of the server at
the start (after a warm-up) and at the end, as JSON (``--out``) and a summary. The exit status
is non-zero if a valid request failed or a hostile one was answered or hung. Every loop is
bounded by the run's duration and a count; everything listens on loopback.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests.launcher import HALF_PLUS_TWO, ServerProcess, start_server

MAX_CALLS_PER_CLIENT = 10_000_000


@dataclass
class Tally:
    """Counts by kind, shared by the load threads."""

    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str) -> None:
        with self.lock:
            self.counts[kind] += 1


def _predict_request(x: float) -> Any:
    from compat.protos import predict_pb2, types_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    tensor = request.inputs["x"]
    tensor.dtype = types_pb2.DT_FLOAT
    tensor.tensor_shape.dim.add().size = 1
    tensor.tensor_shape.dim.add().size = 1
    tensor.float_val.append(x)
    return request


def hostile_grpc() -> list[tuple[str, str, bytes]]:
    """(label, method, request bytes): each must be answered with an error status."""
    from compat.protos import predict_pb2, types_pb2

    predict = "/tensorflow.serving.PredictionService/Predict"
    huge = _predict_request(1.0)
    huge.inputs["x"].ClearField("tensor_shape")
    for size in (10**6, 10**6):
        huge.inputs["x"].tensor_shape.dim.add().size = size
    wrong_dtype = _predict_request(1.0)
    wrong_dtype.inputs["x"].dtype = types_pb2.DT_STRING
    wrong_dtype.inputs["x"].ClearField("float_val")
    wrong_dtype.inputs["x"].string_val.append(b"x")
    short_content = _predict_request(1.0)
    short_content.inputs["x"].ClearField("float_val")
    short_content.inputs["x"].tensor_content = b"\0\0"
    cases = [
        ("garbage", predict, b"\xff\xfe\x00garbage"),
        ("unknown model", predict, predict_pb2.PredictRequest().SerializeToString()),
        ("huge shape", predict, huge.SerializeToString()),
        ("wrong dtype", predict, wrong_dtype.SerializeToString()),
        ("short tensor_content", predict, short_content.SerializeToString()),
    ]
    for name in ("../half_plus_two", "/etc/passwd", "%2e%2e"):
        request = _predict_request(1.0)
        request.model_spec.name = name
        cases.append((f"name {name}", predict, request.SerializeToString()))
    return cases


def hostile_rest() -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(label, path, body, headers): each must be answered with a 4xx."""
    predict = "/v1/models/half_plus_two:predict"
    json_type = {"Content-Type": "application/json"}
    return [
        ("invalid json", predict, b'{"instances": [1.0,', json_type),
        ("not an object", predict, b"[1.0]", json_type),
        ("invalid b64", predict, b'{"instances": [{"b64": "***"}]}', json_type),
        ("deep nesting", predict, b'{"instances": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", {}),
        (
            "gzip bomb",
            predict,
            gzip.compress(b" " * (64 << 20)),
            {**json_type, "Content-Encoding": "gzip"},
        ),
        ("path-like model", "/v1/models/..%2F..%2Fetc:predict", b'{"instances": [1.0]}', {}),
        ("unknown version", "/v1/models/half_plus_two/versions/99:predict", b"{}", {}),
    ]


def _valid_grpc(server: ServerProcess, tally: Tally, end: float, seed: int) -> None:
    import grpc

    from compat.protos import predict_pb2

    with grpc.insecure_channel(
        server.grpc_target, options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        call = channel.unary_unary(
            "/tensorflow.serving.PredictionService/Predict",
            request_serializer=predict_pb2.PredictRequest.SerializeToString,
            response_deserializer=predict_pb2.PredictResponse.FromString,
        )
        for i in range(MAX_CALLS_PER_CLIENT):
            if time.monotonic() > end:
                return
            x = float((seed * 7919 + i) % 1000)
            try:
                response = call(_predict_request(x), timeout=10)
                y = list(response.outputs["y"].float_val)
                tally.add("grpc ok" if y == [x / 2 + 2] else "grpc wrong answer")
            except grpc.RpcError as e:
                tally.add(f"grpc {e.code().name}")


def _valid_rest(server: ServerProcess, tally: Tally, end: float) -> None:
    url = f"{server.http_base}/v1/models/half_plus_two:predict"
    for i in range(MAX_CALLS_PER_CLIENT):
        if time.monotonic() > end:
            return
        x = float(i % 1000)
        body = json.dumps({"instances": [[x]]}).encode()
        try:
            with urllib.request.urlopen(urllib.request.Request(url, body), timeout=10) as r:
                answer = json.loads(r.read())
            ok = answer == {"predictions": [[x / 2 + 2]]}
            tally.add("rest ok" if ok else "rest wrong answer")
        except urllib.error.HTTPError as e:
            tally.add(f"rest {e.code}")
        except OSError as e:
            tally.add(f"rest {type(e).__name__}")


def _hostile(server: ServerProcess, tally: Tally, end: float) -> None:
    import grpc

    grpc_cases, rest_cases = hostile_grpc(), hostile_rest()
    with grpc.insecure_channel(server.grpc_target) as channel:
        for i in range(MAX_CALLS_PER_CLIENT):
            if time.monotonic() > end:
                return
            if i % 2 == 0:
                label, method, payload = grpc_cases[(i // 2) % len(grpc_cases)]
                started = time.monotonic()
                try:
                    channel.unary_unary(method)(payload, timeout=10)
                    tally.add(f"hostile answered: {label}")
                except grpc.RpcError as e:
                    slow = time.monotonic() - started > 5
                    tally.add(f"hostile hung: {label}" if slow else f"hostile {e.code().name}")
            else:
                label, path, body, headers = rest_cases[(i // 2) % len(rest_cases)]
                request = urllib.request.Request(server.http_base + path, body, headers)
                try:
                    with urllib.request.urlopen(request, timeout=10):
                        tally.add(f"hostile answered: {label}")
                except urllib.error.HTTPError as e:
                    tally.add(f"hostile {e.code}" if e.code < 500 else f"hostile 5xx: {label}")
                except OSError:
                    tally.add(f"hostile hung: {label}")
            time.sleep(0.02)


def _rollouts(base: Path, every_s: float, end: float, tally: Tally) -> None:
    version = max(int(p.name) for p in base.iterdir())
    for _ in range(100_000):
        if time.monotonic() + every_s > end:
            return
        time.sleep(every_s)
        version += 1
        staging = base.parent / f".staging-{version}"
        shutil.copytree(HALF_PLUS_TWO / "00000123", staging)
        staging.rename(base / str(version))  # appears whole
        versions = sorted(int(p.name) for p in base.iterdir())
        for old in versions[:-2]:
            shutil.rmtree(base / str(old))
        tally.add("rollout")


ONE_SHOT = ("ray::Prober",)
"""Titles of processes that end by design: a new version's load probe, one process per version
(the spare that waits for the next one is taken by a rollout and ended with its load)."""


def rss_by_process(server: ServerProcess) -> dict[int, tuple[str, float]]:
    """Every process in the server's session: pid -> (its title, RSS in MiB). Ray retitles a
    worker with the task it runs, so the pid, not the title, says which process it is."""
    import psutil

    out = {}
    for process in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            if process.pid != server.process.pid and _session(process.pid) != server.process.pid:
                continue
            words = " ".join(process.info["cmdline"] or [process.info["name"]]).split()
            rss = round(process.memory_info().rss / 2**20, 1)
            out[process.pid] = (" ".join(words)[:60], rss)
        except (psutil.Error, OSError):
            continue
    return out


def _session(pid: int) -> int:
    import os

    return os.getsid(pid)


def run(seconds: float, rollout_every_s: float, clients: int, warmup_s: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="rtfs-soak-"))
    base = work / "half_plus_two"
    base.mkdir()
    shutil.copytree(HALF_PLUS_TWO / "00000123", base / "1")
    server = start_server(
        "model_name=half_plus_two",
        f"model_base_path={base}",
        "file_system_poll_wait_seconds=1",
        wait_for=("half_plus_two",),
    )
    tally = Tally()
    try:
        warm_end = time.monotonic() + warmup_s
        _valid_grpc(server, Tally(), warm_end, 0)
        rss_start = rss_by_process(server)
        started = time.monotonic()
        end = started + seconds
        threads = [
            threading.Thread(target=_valid_grpc, args=(server, tally, end, i))
            for i in range(clients)
        ]
        threads += [
            threading.Thread(target=_valid_rest, args=(server, tally, end)),
            threading.Thread(target=_hostile, args=(server, tally, end)),
            threading.Thread(target=_rollouts, args=(base, rollout_every_s, end, tally)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 120)
        rss_end = rss_by_process(server)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    counts = dict(tally.counts)

    def label(pid: int) -> str:
        return f"{pid} {rss_start[pid][0]}"

    growth = {
        label(pid): round(rss_end[pid][1] - rss_start[pid][1], 1)
        for pid in rss_start
        if pid in rss_end
    }
    return {
        "seconds": round(time.monotonic() - started, 1),
        "counts": counts,
        "valid_failures": {
            k: v for k, v in counts.items() if k.startswith(("grpc", "rest")) and "ok" not in k
        },
        "hostile_misses": {
            k: v
            for k, v in counts.items()
            if k.startswith(("hostile answered", "hostile hung", "hostile 5xx"))
        },
        "rss_start_mib": {label(pid): rss for pid, (_, rss) in rss_start.items()},
        "rss_end_mib": {f"{pid} {title}": rss for pid, (title, rss) in rss_end.items()},
        "rss_growth_mib": growth,
        "gone_processes": sorted(
            label(pid)
            for pid in set(rss_start) - set(rss_end)
            if not rss_start[pid][0].startswith(ONE_SHOT)
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=None, help="overrides --minutes")
    parser.add_argument("--rollout-every", type=float, default=60.0, help="seconds")
    parser.add_argument("--clients", type=int, default=4, help="valid gRPC clients")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before RSS is read")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    report = run(seconds, args.rollout_every, args.clients, args.warmup)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    print(
        json.dumps(
            {
                k: report[k]
                for k in ("seconds", "counts", "valid_failures", "hostile_misses", "rss_growth_mib")
            },
            indent=1,
        )
    )
    return 1 if report["valid_failures"] or report["hostile_misses"] else 0


if __name__ == "__main__":
    sys.exit(main())
