"""The data plane of a serving replica: what every transport calls (``transports.plane.Plane``).

It holds the routing table and the versions loaded in this process, and answers:

- a model call (``call_model``): its ModelSpec is resolved against the routing table (TF
  Serving's errors for unknown models, versions and labels) and the parsed call goes to the
  version, held here (co-located: no hop) or in a deployment of its own (``colocate=false``:
  the call's bytes go to its replicas through Serve); deadlines, a full queue and a replica that
  cannot be reached become TF Serving's codes, and every call is counted in the metrics;
- TF Serving's RPCs, request bytes and deadline in, ``ModelReply`` out: PredictionService's
  parse the request into a ``ModelCall``, ModelService's go to the version manager;
- shadow traffic: a sample of a model's answered Predicts mirrored to its shadow version, off
  the request's path (``runtime.shadow``);
- readiness, model status, reloads and label weights, from the version manager
  (``deployments.ManagerClient``), and the metrics page.

Co-located, it loads the versions a new routing table needs (``load``, off the event loop) and
lets go of those it no longer routes to (``unload``); ``runtime.ingress`` (the Ray lifecycle)
says when. With a memory budget (``--model_memory_budget_mb``) the versions are paged in and
out, kept where placement says, and a call may go one hop to a replica holding its version
(``runtime.paging``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, cast

from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from compat.errors import DeadlineExceeded, ResourceExhausted, ServingError, Unavailable
from compat.routing import RoutingTable
from compat.servable import usable_cores
from serve_app import metrics
from serve_app.calls import Api, ModelCall, ModelReply, grpc_call
from serve_app.deployments import ManagerClient, transport_error
from serve_app.runtime.model import ModelVersion
from serve_app.runtime.paging import Pager, Peers
from serve_app.runtime.replica_config import (
    IngressConfig,
    LocalVersion,
    VersionConfig,
    VersionOptions,
)
from serve_app.runtime.shadow import Mirror
from serve_app.runtime.tally import Tally

logger = logging.getLogger("ray.serve")

INLINE_OPS = -1
"""``inter_op_parallelism`` that runs every op in the calling thread (TF: any negative value)."""


class DataPlane:
    """Routes and answers the calls of one serving replica; its transports take it as a
    ``transports.plane.Plane``."""

    def __init__(
        self,
        manager: ManagerClient,
        app_name: str,
        max_request_bytes: int,
        local_options: VersionOptions | None = None,
        replicas: int = 1,
        replica: str = "",
        peers: Peers | None = None,
    ) -> None:
        self.manager = manager
        self.table = RoutingTable()
        """The routing table held now."""
        self.cors = False
        """TF Serving's CORS headers on REST answers (``--rest_api_enable_cors_support``)."""
        self.rest_timeout_s: float | None = 30.0
        self.prometheus_path: str | None = None
        self.max_request_bytes = max_request_bytes
        """The largest gRPC message and REST body taken (``max_request_bytes``)."""
        self.local: dict[str, ModelVersion] = {}
        """Co-located versions held here (deployment name -> it)."""
        self._local_options = local_options
        """``ModelVersion`` keyword arguments when co-located (``share_cores``'d), else None."""
        self._replicas = replicas
        """Serving replicas per node: they share its threads."""
        self._app_name = app_name
        self._handles: dict[str, DeploymentHandle] = {}
        self.pager: Pager | None = None
        """Under a memory budget: the versions loaded here, paged in and out."""
        self._replica = replica
        self._peers = peers
        """The other serving replicas, for a call's one hop under a budget."""
        self.in_flight = 0
        """Model calls being answered now (the mirror sheds while they are many)."""
        self.tally = Tally()
        """Per-version counts for the version manager's rollouts (sent with the heartbeat)."""
        self.mirror = Mirror(self._call, lambda: self.in_flight, record=self._record_shadow)
        """Shadow traffic: answered calls mirrored to a model's shadow version."""

    def _record_shadow(self, *args: Any) -> None:
        metrics.record_shadow(*args)
        self.tally.record_shadow(*args)

    @property
    def colocated(self) -> bool:
        """This replica loads the versions it routes to."""
        return self._local_options is not None

    def configure(self, config: IngressConfig) -> None:
        """The new routing table and REST settings, at once."""
        self.cors = config.cors
        self.table = config.routing
        metrics.serving(self.table.models)
        self.rest_timeout_s = config.rest_api_timeout_in_ms / 1000 or None
        self.prometheus_path = config.prometheus_path

    # --- the versions held here (co-located) --------------------------------------------------

    async def load(
        self,
        wanted: dict[str, LocalVersion],
        config: VersionConfig,
        load_threads: int = 0,
        budget_mb: int = 0,
        placement: tuple[int, int] = (0, 1),
    ) -> None:
        """Load the versions not held yet, ``load_threads`` at once (``--num_load_threads``;
        0, as TF Serving's, one at a time), then give every version the batching knobs, their
        thread counts this replica's share of the node's. With ``budget_mb``
        (``--model_memory_budget_mb``), the ``Pager`` loads them, this replica being
        ``placement`` (its rank, the serving replicas)."""
        assert self._local_options is not None
        batching = config.batching
        threads = share_threads(batching.num_batch_threads, self._replicas)
        config = config.model_copy(
            update={"batching": batching.model_copy(update={"num_batch_threads": threads})}
        )
        if budget_mb:
            if self.pager is None:
                self.pager = Pager(self._local_options, self._replica, self._peers)
            await self.pager.load(wanted, config, budget_mb, *placement)
            return
        options = dict(self._local_options)  # its fields, the session still a SessionConfig
        new = {t: v for t, v in wanted.items() if t not in self.local}

        def load(target: str) -> ModelVersion:
            v = new[target]
            return ModelVersion(v.model, v.version, v.path, **options)

        self.local.update(await load_all(list(new), load, load_threads))
        for local in self.local.values():
            local.reconfigure(config)
            if local.servable is not None:
                metrics.learn_signatures(local.model, local.servable.signatures)

    def unload(self, keep: Iterable[str]) -> None:
        """Let go of the versions not in ``keep``; each closes once its last call is done."""
        keep = set(keep)
        for target in set(self.local) - keep:
            logger.info("Unloading %s", target)
            del self.local[target]
        if self.pager is not None:
            self.pager.unload(keep)

    def load_states(self) -> dict[str, Any]:
        """Each version held here -> how its load went (the heartbeat's); under a budget,
        every version loaded at rollout, resident or not (it can be served: AVAILABLE)."""
        paged = self.pager.paged if self.pager is not None else {}
        states = {target: state for target, (_, state) in paged.items()}
        return states | {target: local.load_state() for target, local in self.local.items()}

    def versions_held(self) -> list[ModelVersion]:
        """The versions resident in this process now."""
        paged = self.pager.residency.resident().values() if self.pager is not None else ()
        return [*self.local.values(), *paged]

    # --- the one forwarding path, shared by every transport -----------------------------------

    async def call_model(self, call: ModelCall) -> ModelReply:
        """Resolve the call's model spec and answer it from the version; errors as a reply.

        A version held here answers in this process; one in its own deployment gets the call
        through Serve (``ModelCall`` pickles its request as bytes). A full queue answers
        RESOURCE_EXHAUSTED at once; a call still waiting when the caller's deadline passes gets
        DEADLINE_EXCEEDED. Every call is counted in the request metrics (``serve_app.metrics``).
        """
        started = time.perf_counter()
        route = None
        self.in_flight += 1
        try:
            route = self.table.resolve(call.spec)
            reply = await self._call(route.target, call)
        except ServingError as e:
            reply = ModelReply.error(e)
        except BackPressureError:
            reply = ModelReply.error(
                ResourceExhausted("The model's request queue is full; retry later")
            )
        except Exception as e:  # never a Ray traceback to the client
            reply = ModelReply.error(transport_error(e))
        finally:
            self.in_flight -= 1
        seconds = time.perf_counter() - started
        version = route.version if route is not None else None
        metrics.record_model_call(call, version, reply.code, seconds)
        if route is not None:
            self.tally.record_call(route.model, version, reply.code, seconds)
        if reply.ok and route is not None:
            self._shadow(route.model, version, call, reply, seconds)
        return reply

    def _shadow(
        self, model: str, version: int | None, call: ModelCall, reply: ModelReply, seconds: float
    ) -> None:
        """Mirror an answered call to the model's shadow version, if it has one that wants it
        (``runtime.shadow``); the reply is already the client's."""
        routes = self.table.models.get(model)
        shadow = routes.shadow if routes is not None else None
        if routes is None or shadow is None or not Mirror.wanted(call, shadow, version):
            return
        target = routes.versions.get(shadow.version)
        if target is not None:
            self.mirror.offer(model, shadow, target, call, reply, seconds)

    async def _call(self, target: str, call: ModelCall) -> ModelReply:
        deadline = call.deadline
        local = self.local.get(target)
        if local is not None:  # co-located: no hop
            return await _within(deadline, local.call(call))
        pager = self.pager
        if pager is not None and pager.serves(target):
            return await _within(deadline, pager.call(target, call))
        paged = pager.paged.get(target) if pager is not None else None
        if paged is not None:  # under a budget, it failed to load
            raise Unavailable(paged[1].message)
        response = self._handle(target).call.remote(call)
        if deadline is None:
            return cast(ModelReply, await response)
        try:
            return cast(
                ModelReply, await asyncio.wait_for(asyncio.shield(response), deadline - time.time())
            )
        except TimeoutError:
            response.cancel()
            raise DeadlineExceeded("Deadline Exceeded") from None

    async def answer_hop(self, target: str, call: ModelCall) -> ModelReply | None:
        """A call another serving replica sent here for ``target`` (``runtime.paging``),
        answered here under its deadline, never sent on; None: ``target`` is not served here
        (this replica's table is behind or ahead of the sender's), the sender answers it."""
        pager = self.pager
        if pager is None or not pager.serves(target):
            return None
        try:
            return await _within(call.deadline, pager.call(target, call, hop=True))
        except ServingError as e:
            return ModelReply.error(e)

    def _handle(self, target: str) -> DeploymentHandle:
        handle = self._handles.get(target)
        if handle is None:
            handle = serve.get_deployment_handle(target, self._app_name)
            self._handles[target] = handle
        return handle

    async def _forward(self, api: Api, raw: bytes, deadline: float | None) -> ModelReply:
        try:
            call = grpc_call(api, raw, deadline)
        except ServingError as e:
            return ModelReply.error(e)
        return await self.call_model(call)

    # --- the version manager's answers ----------------------------------------------------------

    async def ready(self) -> bool:
        return await self.manager.ready()

    async def model_status(self, raw: bytes) -> ModelReply:
        return await self.manager.get_status(raw)

    async def set_label_weight(self, model: str, label: str, weight: float) -> ModelReply:
        return await self.manager.set_label_weight(model, label, weight)

    async def rollout(self, model: str, action: str = "") -> ModelReply:
        return await self.manager.rollout(model, action)

    async def metrics_text(self) -> tuple[bytes, str]:
        """The metrics page: every node's metrics and the version states."""
        snapshot = await self.manager.snapshot()
        return await metrics.prometheus_text(snapshot.status)

    # --- tensorflow.serving.PredictionService: (request bytes, deadline) -> ModelReply --------

    async def Predict(self, raw: bytes, deadline: float | None) -> ModelReply:
        return await self._forward(Api.PREDICT, raw, deadline)

    async def Classify(self, raw: bytes, deadline: float | None) -> ModelReply:
        return await self._forward(Api.CLASSIFY, raw, deadline)

    async def Regress(self, raw: bytes, deadline: float | None) -> ModelReply:
        return await self._forward(Api.REGRESS, raw, deadline)

    async def GetModelMetadata(self, raw: bytes, deadline: float | None) -> ModelReply:
        return await self._forward(Api.METADATA, raw, deadline)

    async def MultiInference(self, raw: bytes, deadline: float | None) -> ModelReply:
        return await self._forward(Api.MULTI_INFERENCE, raw, deadline)

    # --- tensorflow.serving.ModelService ----------------------------------------------------------

    async def GetModelStatus(self, raw: bytes, deadline: float | None) -> ModelReply:
        try:
            return await self.manager.get_status(raw)
        except ServingError as e:
            return ModelReply.error(e)

    async def HandleReloadConfigRequest(self, raw: bytes, deadline: float | None) -> ModelReply:
        try:
            return await self.manager.reload_config(raw)
        except ServingError as e:
            return ModelReply.error(e)


def share_cores(options: VersionOptions | None, replicas: int, gpu: bool) -> VersionOptions | None:
    """TF's threads in a serving replica: the arguments' are the node's (TF Serving's, for its
    one process), so a replica takes its share (``share_threads``), and what they leave at 0
    is filled in.

    ``intra_op_parallelism`` 0 (TF's default: every core, right for one process) becomes this
    replica's share of the node's cores: the serving replicas each run their own TF, and each
    taking every core oversubscribes them (the README's Benchmark section has the measurements
    behind these defaults). ``inter_op_parallelism`` 0, in a replica without a GPU
    whose share is one thread, becomes -1: each op runs in the thread that runs the model, with
    no hand-off to an inter-op pool and back, and the version runs one model call at a time
    outside batching (``model.runs_at_once``); faster on DeepLab and half_plus_two, with and
    without batching. With a share of two or more threads, the inter-op pool stays (in-process,
    DeepLab with two intra-op threads ran slower inline) but is the share too, not TF's every
    core: the replicas of a 16-core node would each run ops on 16 threads otherwise. A GPU
    replica keeps TF's default: there the inter-op pool keeps the device fed."""
    if options is None:
        return None
    session = options.session
    threads = share_threads(session.intra_op_parallelism or usable_cores(), replicas)
    inter = share_threads(session.inter_op_parallelism, replicas)
    if not inter and not gpu:
        inter = INLINE_OPS if threads == 1 else threads
    update = {"intra_op_parallelism": threads, "inter_op_parallelism": inter}
    return options.model_copy(update={"session": session.model_copy(update=update)})


def share_threads(count: int, replicas: int) -> int:
    """A replica's share of ``count`` threads of the node (TF Serving's thread flags, for its
    one process): an equal part, at least one; 0 and negative counts (TF's defaults and
    markers) are kept."""
    return max(1, count // replicas) if count > 0 else count


async def load_all(
    targets: list[str], load: Callable[[str], ModelVersion], threads: int
) -> dict[str, ModelVersion]:
    """``load`` each target off the event loop, ``threads`` at once (0: one at a time)."""
    gate = asyncio.Semaphore(max(1, threads))

    async def one(target: str) -> ModelVersion:
        async with gate:
            return await asyncio.to_thread(load, target)

    return dict(zip(targets, await asyncio.gather(*map(one, targets)), strict=True))


async def _within(deadline: float | None, answer: Coroutine[Any, Any, ModelReply]) -> ModelReply:
    """``answer``, DEADLINE_EXCEEDED once the caller's deadline passes."""
    if deadline is None:
        return await answer
    try:
        return await asyncio.wait_for(answer, deadline - time.time())
    except TimeoutError:
        raise DeadlineExceeded("Deadline Exceeded") from None
