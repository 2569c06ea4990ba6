"""Side-by-side benchmark: in-process TF, a plain gRPC server, ray-tfserving over gRPC and REST.

    python -m loadtests.bench [--quick | --smoke] [--seconds S] [--client h2load|python]

In one run, on this machine, one after another (never two servers at once, unless ``--rounds``):

(a) ``inprocess``: ``Servable.run`` called directly at batch sizes 1..32: the limit, in examples/s,
    measured before and again after the servers, the higher of the two kept;
(b) ``plain``: ``loadtests.plain_server``, the leanest Python server (grpc.aio, same data plane,
    one process);
(c) ``ray-grpc``: ray-tfserving's default configuration over gRPC, booted as a user does (the
    ``ray-tfserving`` command with TF Serving's flags), batching off and on (``--enable_batching``
    with a batching parameters file holding ``BATCHING_ON``), one boot per configuration;
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

from loadtests.bench.cli import main, parse_args
from loadtests.bench.measure import add_ratios, higher_limit
from loadtests.bench.runner import run_bench
from loadtests.bench.settings import SYSTEMS, WORKLOADS, RayConfig, Settings

__all__ = [
    "SYSTEMS",
    "WORKLOADS",
    "RayConfig",
    "Settings",
    "add_ratios",
    "higher_limit",
    "main",
    "parse_args",
    "run_bench",
]
