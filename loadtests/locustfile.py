"""Locust users for ray-tfserving (or any TF Serving): ``GrpcUser`` and ``RestUser``.

    locust -f loadtests/locustfile.py --headless -u 8 -r 8 -t 20s \\
        --payload deeplab --image-size 64 --grpc-port 8500 --rest-port 8501 [GrpcUser] [RestUser]

Both users send the same Predict (see :mod:`loadtests.payloads`) and read the same options,
which locust adds to its own command line (``events.init_command_line_parser``):

* workload: ``--payload deeplab|half_plus_two``, ``--model``, ``--signature``,
  ``--image-size``, ``--batch``, ``--seed``, or ``--request-file`` (a recorded PredictRequest,
  binary or ``.pbtxt``, or a ``.json`` REST body);
* target: ``--target-host`` (default 127.0.0.1), ``--grpc-port`` (8500), ``--rest-port``
  (8501); locust's ``--host`` (a URL), when given, is the REST base instead;
* pacing: ``--wait-min`` / ``--wait-max`` seconds between a user's requests (default 0: each
  user is a closed loop), or ``--rate R``: R requests/s in total over all users of this locust
  process, released by one shared pacer (a user waits for the next free slot; slots are never
  made up later, so a slow server gets at most R/s, never a burst). Enough users must be running
  to keep R/s in flight (users >= R x latency);
* ``--request-timeout`` seconds per request (default 30).

Pick the users with locust's own class arguments (``GrpcUser``, ``RestUser``; both by default,
equal weights) or with ``--tags grpc`` / ``--tags rest``.

``GrpcUser`` opens one channel per user (its own connection: ``grpc.use_local_subchannel_pool``)
with the official ``PredictionServiceStub``, on gRPC's gevent integration, and reports every
call through ``events.request`` (type ``grpc``; failures as ``<CODE>: <details>``).
``RestUser`` is a locust ``HttpUser`` posting TF Serving JSON to ``/v1/models/<model>:predict``
(type ``POST``); any non-200 reply, or a 200 without ``predictions``/``outputs``, is a failure
named ``HTTP <status>: <error>``.

Importing this module monkey-patches the process for gevent (``import locust``) and switches
gRPC to gevent; do it before any gRPC channel exists. :func:`run_local` runs the users inside
the current process, for scripts that want load without a subprocess.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import threading
import time
import weakref
from typing import Any

# isort: off
import locust  # noqa: F401  (first: gevent monkey-patching, before gRPC and TensorFlow)
import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import HttpUser, User, events, tag, task

# isort: on
from compat.protos import prediction_service_pb2_grpc
from loadtests import payloads

grpc_gevent.init_gevent()

log = logging.getLogger(__name__)

_GRPC_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.use_local_subchannel_pool", 1),
]


# --------------------------------------------------------------------------- options


def add_arguments(parser: Any) -> None:
    """Add this locustfile's options to ``parser`` (locust's, or a plain ``argparse`` one)."""
    if "--rate" in getattr(parser, "_option_string_actions", {}):
        return  # added already (the module was imported twice)
    group = parser.add_argument_group("ray-tfserving workload")
    group.add_argument(
        "--payload",
        choices=payloads.PAYLOADS,
        default="deeplab",
        help="synthetic workload (default deeplab)",
    )
    group.add_argument("--model", default="", help="model name (default: the payload's own)")
    group.add_argument(
        "--signature",
        default="",
        help="signature name (default: predict_images for deeplab, else the server's default)",
    )
    group.add_argument(
        "--image-size", type=int, default=64, help="deeplab image height and width (default 64)"
    )
    group.add_argument(
        "--batch", type=int, default=1, help="images or scalars per request (default 1)"
    )
    group.add_argument("--seed", type=int, default=7, help="synthetic data seed")
    group.add_argument(
        "--request-file",
        default="",
        help="send this recorded PredictRequest (.pb binary, .pbtxt text) or "
        "REST body (.json) instead of --payload",
    )
    group.add_argument("--target-host", default="127.0.0.1", help="server address")
    group.add_argument("--grpc-port", type=int, default=8500, help="gRPC port (default 8500)")
    group.add_argument("--rest-port", type=int, default=8501, help="REST port (default 8501)")
    group.add_argument(
        "--wait-min",
        type=float,
        default=0.0,
        help="min seconds between one user's requests (default 0)",
    )
    group.add_argument(
        "--wait-max",
        type=float,
        default=0.0,
        help="max seconds between one user's requests (default: --wait-min)",
    )
    group.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="total requests/s over all users of this process (0: unpaced)",
    )
    group.add_argument(
        "--request-timeout", type=float, default=30.0, help="seconds per request (default 30)"
    )


@events.init_command_line_parser.add_listener
def _on_parser(parser: Any, **_: Any) -> None:
    add_arguments(parser)


_cli_environment: list[Any] = []


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    _cli_environment[:] = [environment]
    # The payloads are packed by TensorFlow (``tf.make_tensor_proto``): its import (seconds) is
    # paid here, before the run's clock starts, not by the first user inside a timed run.
    import tensorflow  # noqa: F401


@events.quit.add_listener
def _on_quit(**_: Any) -> None:
    """Let locust's CSV writer write the final statistics before its files are closed.

    Locust rewrites ``*_stats.csv`` once a second from a greenlet and closes the files at exit
    without a last write, so the CSV can miss the requests of the final second and of the
    ``--stop-timeout`` drain (locust issues #1806, #2299). ``quit`` fires after the users have
    stopped and before the files are closed: one writer interval here makes the CSV final.
    """
    environment = _cli_environment[0] if _cli_environment else None
    options = getattr(environment, "parsed_options", None)
    if getattr(options, "csv_prefix", None):
        import gevent
        from locust import stats

        gevent.sleep(stats.CSV_STATS_INTERVAL_SEC + 0.25)


def make_options(**overrides: Any) -> argparse.Namespace:
    """The options with their defaults, then ``overrides`` (``image_size=128``, ...): what
    :func:`run_local` (or a hand-made ``Environment``) passes as ``parsed_options``."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = parser.parse_args([])
    for key, value in overrides.items():
        if not hasattr(options, key):
            raise TypeError(f"unknown option {key!r}")
        setattr(options, key, value)
    return options


def _options(environment: Any) -> argparse.Namespace:
    """The environment's parsed options (defaults when it has none, as in a bare Environment)."""
    options = environment.parsed_options
    return options if options is not None else make_options()


# --------------------------------------------------------------------------- shared state

_payloads: weakref.WeakKeyDictionary[Any, payloads.Payload] = weakref.WeakKeyDictionary()
_pacers: weakref.WeakKeyDictionary[Any, RatePacer] = weakref.WeakKeyDictionary()


_payload_lock = threading.Lock()  # gevent's, once locust has patched threading


def payload_for(environment: Any) -> payloads.Payload:
    """The environment's payload, built once from its options (the first user builds it; the
    others wait for it)."""
    with _payload_lock:
        payload = _payloads.get(environment)
        if payload is None:
            o = _options(environment)
            payload = payloads.build(
                o.payload,
                model=o.model,
                signature=o.signature,
                image_size=o.image_size,
                batch=o.batch,
                seed=o.seed,
                request_file=o.request_file,
                grpc_target=f"{o.target_host}:{o.grpc_port}",
            )
            _payloads[environment] = payload
            log.info("payload: %s", payload.description)
    return payload


class RatePacer:
    """Hands out send slots ``1 / rate`` seconds apart, shared by all users of a process.

    A slot is never earlier than now: when users fall behind, the missed slots are dropped,
    so the offered load never exceeds ``rate``.
    """

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.interval = 1.0 / rate
        self._next = 0.0

    def delay(self) -> float:
        """Reserve the next slot; seconds to wait until it."""
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self.interval
        return slot - now


def _pacer(environment: Any) -> RatePacer | None:
    rate = float(_options(environment).rate)
    if rate <= 0:
        return None
    pacer = _pacers.get(environment)
    if pacer is None:
        pacer = _pacers[environment] = RatePacer(rate)
    return pacer


class _Paced:
    """Wait time from the options: the shared pacer, a uniform wait, or none."""

    environment: Any

    def wait_time(self) -> float:
        pacer = _pacer(self.environment)
        if pacer is not None:
            return pacer.delay()
        o = _options(self.environment)
        low, high = float(o.wait_min), max(float(o.wait_max), float(o.wait_min))
        if high <= 0:
            return 0.0
        return random.uniform(low, high)

    def _pace_first_request(self) -> None:
        """Under ``--rate``, the first request waits for its slot too (no burst at spawn)."""
        pacer = _pacer(self.environment)
        if pacer is not None:
            time.sleep(pacer.delay())  # gevent-patched: yields to the other users


# --------------------------------------------------------------------------- users


class GrpcStatusError(Exception):
    """A failed RPC as locust records it: ``<CODE>: <details>`` (one failures.csv row per
    distinct status, not one per call as the RpcError's debug string would give)."""

    def __init__(self, code: grpc.StatusCode | None, details: str | None) -> None:
        self.code = code
        self.details = details or ""
        super().__init__(f"{code.name if code else 'UNKNOWN'}: {self.details}")


class GrpcUser(_Paced, User):
    """Calls ``PredictionService/Predict`` with the official stub over its own channel."""

    def on_start(self) -> None:
        o = _options(self.environment)
        self.payload = payload_for(self.environment)
        self.timeout = float(o.request_timeout)
        self.channel = grpc.insecure_channel(
            f"{o.target_host}:{o.grpc_port}", options=_GRPC_CHANNEL_OPTIONS
        )
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.request_name = f"Predict {self.payload.model}"
        self._pace_first_request()

    def on_stop(self) -> None:
        self.channel.close()

    @tag("grpc")
    @task
    def predict(self) -> None:
        """One Predict, reported to locust as request type ``grpc``."""
        exception: Exception | None = None
        length = 0
        start = time.perf_counter()
        try:
            response = self.stub.Predict(self.payload.request, self.timeout)
            length = response.ByteSize()
        except grpc.RpcError as e:
            exception = GrpcStatusError(e.code(), e.details())  # type: ignore[attr-defined]
        self.environment.events.request.fire(
            request_type="grpc",
            name=self.request_name,
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=length,
            exception=exception,
            context={},
        )


class RestUser(_Paced, HttpUser):
    """Posts TF Serving JSON to ``/v1/models/<model>:predict`` with locust's HTTP client."""

    host: str | None = None
    """locust's ``--host`` when given, else ``http://<--target-host>:<--rest-port>``."""

    def __init__(self, environment: Any) -> None:
        if not environment.host and not self.host:
            o = _options(environment)
            self.host = f"http://{o.target_host}:{o.rest_port}"
        super().__init__(environment)

    def on_start(self) -> None:
        self.payload = payload_for(self.environment)
        self.timeout = float(_options(self.environment).request_timeout)
        self._pace_first_request()

    @tag("rest")
    @task
    def predict(self) -> None:
        """One REST predict, reported to locust as request type ``POST``."""
        path = self.payload.rest_path
        with self.client.post(
            path,
            data=self.payload.body,
            headers={"Content-Type": "application/json"},
            name=path,
            timeout=self.timeout,
            catch_response=True,
        ) as response:
            content = response.content or b""
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {_rest_error(response, content)}")
            elif b'"predictions"' not in content and b'"outputs"' not in content:
                response.failure(f"HTTP 200 without predictions: {content[:200]!r}")
            else:
                response.success()


def _rest_error(response: Any, content: bytes) -> str:
    """TF Serving's ``{"error": msg}``, else the transport error or the body's start."""
    if not content:
        return str(getattr(response, "error", None) or "no response")
    try:
        return str(json.loads(content)["error"])
    except (ValueError, KeyError, TypeError):
        return content[:200].decode("utf-8", "replace")


# --------------------------------------------------------------------------- in-process


def run_local(
    user_classes: list[type[User]] | None = None,
    users: int = 4,
    seconds: float = 10.0,
    **options: Any,
) -> Any:
    """Run ``user_classes`` (default both) in this process for ``seconds`` with ``users``
    users (spawned at once) and return locust's ``RequestStats`` (``.total``,
    ``.get(name, method)``, ``.entries``, ``.errors``). ``options`` override the defaults of
    :func:`make_options` (``grpc_port=..., payload="half_plus_two", rate=50``...).

    Blocks the calling greenlet; other greenlets (and gevent-patched threads) keep running.
    """
    import gevent
    from locust.env import Environment

    environment = Environment(
        user_classes=user_classes or [GrpcUser, RestUser],
        parsed_options=make_options(**options),
        stop_timeout=5.0,
    )
    runner = environment.create_local_runner()
    try:
        runner.start(users, spawn_rate=users)
        gevent.sleep(seconds)
    finally:
        runner.quit()
        runner.greenlet.join(timeout=30)
    return environment.stats
