"""Shadow traffic in a serving replica: a sample of a model's answered Predicts mirrored to its
shadow version (``compat.routing.Shadow``, from our ``shadow`` block of the model config), the
two answers compared (``compat.compare``) and counted in the metrics
(``metrics.record_shadow``).

The client never waits for the mirror: ``Mirror.offer`` is called once the serving version has
answered, only puts the call in a bounded queue (``Shadow.max_pending`` calls per model and
``MAX_PENDING_BYTES`` in all; beyond, it is dropped),
and one background task per replica runs the queue's calls one at a time. A mirrored call is
dropped, not run, when it waited more than ``MAX_AGE_S`` or while the replica has
``shed_in_flight`` client calls or more in flight: shadow traffic is the first thing shed under
load. The answers are decoded and compared in a thread, off the event loop. Only successful
Predicts (gRPC and REST) are mirrored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from compat.compare import Comparison, Tolerance, compare_arrays, outputs_of
from compat.protos import predict_pb2
from compat.routing import Shadow
from serve_app import metrics
from serve_app.calls import Api, ModelCall, ModelReply, Wire
from serve_app.runtime.request_log import held_bytes

logger = logging.getLogger("ray.serve")

MAX_AGE_S = 5.0
"""A mirrored call that waited longer is dropped (the replica is behind)."""
TIMEOUT_S = 30.0
"""The deadline a mirrored call runs under."""
MAX_PENDING_BYTES = 64 << 20
"""What the queued mirrors of a replica may hold (requests and served answers), roughly
(``request_log.held_bytes``); beyond, a mirror is dropped: big requests queue few."""
SHED_IN_FLIGHT = 32
"""Client calls in flight in the replica from which mirrored calls are dropped."""

Caller = Callable[[str, ModelCall], Awaitable[ModelReply]]
"""How a call reaches a target (``DataPlane._call``)."""


@dataclass
class _Pending:
    model: str
    shadow: Shadow
    target: str
    call: ModelCall
    served: ModelReply
    served_s: float
    queued: float
    nbytes: int


class Mirror:
    """The mirrored calls of one serving replica and the task that runs them."""

    def __init__(
        self,
        caller: Caller,
        in_flight: Callable[[], int],
        shed_in_flight: int = SHED_IN_FLIGHT,
        record: Callable[..., None] = metrics.record_shadow,
        max_bytes: int = MAX_PENDING_BYTES,
    ) -> None:
        self._caller = caller
        self._in_flight = in_flight
        self._shed_in_flight = shed_in_flight
        self._record = record
        self._queue: deque[_Pending] = deque()
        self._pending: dict[str, int] = {}
        """Model -> its calls in the queue."""
        self._max_bytes = max_bytes
        self._bytes = 0
        """What the queue holds (``held_bytes``)."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.busy = False
        """A mirrored call is running now."""
        self.counts: dict[str, int] = {}
        """Outcome -> how many (this replica's, since it started)."""

    @staticmethod
    def wanted(call: ModelCall, shadow: Shadow | None, version: int | None) -> bool:
        """Whether an answered ``call`` goes to the shadow: a Predict served by another version,
        sampled."""
        return (
            shadow is not None
            and call.api is Api.PREDICT
            and version != shadow.version
            and shadow.sampling_rate > 0
            and (shadow.sampling_rate >= 1 or random.random() < shadow.sampling_rate)
        )

    def offer(
        self,
        model: str,
        shadow: Shadow,
        target: str,
        call: ModelCall,
        served: ModelReply,
        served_s: float,
    ) -> None:
        """Queue a mirror of ``call`` (answered ``served`` in ``served_s``), or drop it when
        the model already has ``max_pending`` queued, or the queue would hold more than
        ``max_bytes``. Never blocks, never raises."""
        nbytes = held_bytes(call) + len(served.payload)
        full = self._pending.get(model, 0) >= shadow.max_pending
        if full or self._bytes + nbytes > self._max_bytes:
            self._count(model, shadow.version, call, "dropped")
            return
        self._pending[model] = self._pending.get(model, 0) + 1
        self._bytes += nbytes
        self._queue.append(
            _Pending(model, shadow, target, call, served, served_s, time.monotonic(), nbytes)
        )
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            item = self._queue.popleft()
            self._pending[item.model] -= 1
            self._bytes -= item.nbytes
            self.busy = True
            try:
                await self._mirror(item)
            except Exception:  # the mirror must never take the replica down
                logger.exception("Shadow call to %s failed", item.target)
            finally:
                self.busy = False

    async def _mirror(self, item: _Pending) -> None:
        call = item.call
        version = item.shadow.version
        if time.monotonic() - item.queued > MAX_AGE_S or self._in_flight() >= self._shed_in_flight:
            self._count(item.model, version, call, "dropped")
            return
        mirrored = ModelCall(call.api, call.spec, call.request, call.wire, time.time() + TIMEOUT_S)
        started = time.perf_counter()
        reply = await self._caller(item.target, mirrored)
        shadow_s = time.perf_counter() - started
        if not reply.ok:
            self._count(item.model, version, call, "failed")
            return
        tol = Tolerance(item.shadow.atol, item.shadow.rtol)
        # Decoding and comparing big outputs takes a while: off the event loop the clients use.
        result = await asyncio.to_thread(compare_replies, call.wire, item.served, reply, tol)
        outcome = "differed" if result.diff else "same"
        self._count(
            item.model, version, call, outcome, (item.served_s, shadow_s), result.max_abs_diff
        )

    def _count(self, model: str, version: int, call: ModelCall, outcome: str, *args: Any) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        self._record(model, version, call.signature, outcome, *args)


def compare_replies(
    wire: Wire, served: ModelReply, shadow: ModelReply, tol: Tolerance
) -> Comparison:
    """Two Predict answers as their wire carries them (a PredictResponse, or REST's JSON)."""
    if wire is Wire.REST:
        return compare_arrays(json_outputs(served.payload), json_outputs(shadow.payload), tol)
    a = predict_pb2.PredictResponse.FromString(served.payload)
    b = predict_pb2.PredictResponse.FromString(shadow.payload)
    return compare_arrays(outputs_of(a), outputs_of(b), tol)


def json_outputs(payload: bytes) -> dict[str, np.ndarray]:
    """REST Predict's answer as named arrays: ``predictions`` (rows, each a value or a dict of
    outputs) or ``outputs`` (one value or a dict of outputs)."""
    doc = json.loads(payload)
    if "predictions" in doc:
        rows = doc["predictions"]
        if rows and all(isinstance(r, dict) for r in rows):
            return {k: np.asarray([r.get(k) for r in rows]) for k in sorted(rows[0])}
        return {"predictions": np.asarray(rows)}
    outputs = doc.get("outputs")
    if isinstance(outputs, dict):
        return {k: np.asarray(v) for k, v in outputs.items()}
    return {"outputs": np.asarray(outputs)}
