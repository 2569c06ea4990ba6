"""The serving replica: holds the client ports and answers every TF Serving RPC and REST route,
and the Open Inference Protocol's (``serve_app.transports.open_inference``), over the same versions.

Each replica of this deployment binds the client ports itself (``transports.listeners``, with
``SO_REUSEPORT``, so several replicas per node share them), loads the served versions
(``ModelVersion``, batching queue included) and runs them in its own process: one Python process
between the client's socket and the model. Each request is parsed once, here; its ModelSpec is
resolved against the routing table (TF Serving's errors for unknown models, versions and
labels) and the parsed message goes to the version. Ray Serve keeps the lifecycle: it starts,
health-checks and replaces replicas, and ships the routing table and the versions to hold as
``user_config`` (blue/green: a replica loads a new version before its table routes to it).

A model may instead run in deployments of its own (``colocate=false``: its own replicas,
resources and autoscaling); the replica then forwards the request's bytes to them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import ray
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from compat.errors import (
    DeadlineExceeded,
    Internal,
    ResourceExhausted,
    ServingError,
    Unavailable,
    from_code,
)
from compat.routing import RoutingTable
from compat.servable import usable_cores
from serve_app import metrics
from serve_app.calls import Api, ModelCall, ModelReply, grpc_call
from serve_app.ray_patches import replica_names
from serve_app.runtime import request_log
from serve_app.runtime.model import ModelVersion
from serve_app.runtime.replica_config import (
    IngressConfig,
    ListenConfig,
    LocalVersion,
    VersionConfig,
    VersionOptions,
)
from serve_app.transports import rest
from serve_app.transports.listeners import INFERENCE_SERVICE, MAX_MESSAGE_BYTES, Listeners
from serve_app.transports.open_inference import OpenInference

logger = logging.getLogger("ray.serve")

INLINE_OPS = -1
"""``inter_op_parallelism`` that runs every op in the calling thread (TF: any negative value)."""

REPORT_INTERVAL_S = 1.0
"""How often a serving replica tells the version manager what it holds (a heartbeat)."""


class Ingress:
    """Serves the client ports of one replica; routes to the versions it holds, or, for models
    in their own deployments, to those."""

    def __init__(
        self,
        manager: DeploymentHandle,
        local_options: VersionOptions | None = None,
        listen: ListenConfig | None = None,
    ) -> None:
        self._manager = manager
        self._table = RoutingTable()
        self._handles: dict[str, DeploymentHandle] = {}
        self._app_name = serve.get_replica_context().app_name
        self._rest = rest.RestApi(self)
        self._v2 = OpenInference(self)
        self.prometheus_path: str | None = None
        self.rest_timeout_s: float | None = 30.0
        self.cors = False
        """TF Serving's CORS headers on REST answers (``--rest_api_enable_cors_support``)."""
        self._local_options = _share_cores(
            local_options,
            listen.replicas if listen else 1,
            gpu=local_options is not None
            and local_options.session.allow_gpu
            and bool(ray.get_gpu_ids()),
        )
        """``ModelVersion`` keyword arguments when co-located, else None."""
        self._local: dict[str, ModelVersion] = {}
        self._listen = listen
        """The ports; None: this replica binds none."""
        self.max_request_bytes: int = listen.max_request_bytes if listen else MAX_MESSAGE_BYTES
        """The largest gRPC message and REST body taken (``max_request_bytes``)."""
        self._listeners: Listeners | None = None
        self._replica = replica_names()[0]
        self._heartbeat: asyncio.Task[None] | None = None

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """The routing table arrives as user_config: one atomic swap per replica. Co-located,
        the versions to hold arrive with it: new ones load first (off the event loop, requests
        keep flowing), then the table swaps, then dropped ones go (in-flight calls keep theirs).
        The first time, the client ports are bound only once the versions are loaded."""
        config = IngressConfig.model_validate(user_config)
        if self._local_options is not None:
            versions = config.versions or VersionConfig()
            await self._load_local(config.local, versions, config.num_load_threads)
        self.cors = config.cors
        self._table = config.routing
        metrics.serving(self._table.models)
        self.rest_timeout_s = config.rest_api_timeout_in_ms / 1000 or None
        self.prometheus_path = config.prometheus_path
        if self._local_options is not None:
            for target in set(self._local) - set(config.local):
                logger.info("Unloading %s", target)
                del self._local[target]  # closed once its last in-flight call is done
        listen = self._listen
        if self._listeners is None and listen is not None:
            listeners = Listeners(
                self,
                listen.host,
                listen.grpc_port,
                listen.http_port,
                admin=(listen.admin_host, listen.admin_port),
                max_request_bytes=self.max_request_bytes,
                health=listen.grpc_health_service,
                reflection=listen.grpc_reflection,
                tls=_tls(listen.ssl_config_file),
                backends={INFERENCE_SERVICE: self._v2},
                max_concurrent_requests=listen.max_concurrent_requests,
                socket_path=listen.grpc_socket_path,
                channel_arguments=list(listen.grpc_channel_arguments.items()),
                rest_body_timeout_s=listen.rest_body_timeout_s,
            )
            await listeners.start()
            self._listeners = listeners
        await self._report()
        if self._heartbeat is None:
            self._heartbeat = asyncio.get_running_loop().create_task(self._report_forever())

    async def _report(self) -> None:
        """Tell the version manager which routing table and versions this replica holds: it
        moves a rollout on only once every serving replica has them."""
        loads = {target: local.load_state() for target, local in self._local.items()}
        try:
            await asyncio.wait_for(
                self._manager.report_replica.remote(self._replica, self._table.epoch, loads),
                REPORT_INTERVAL_S * 2,
            )
        except Exception as e:  # the manager restarting: the next heartbeat tells it
            logger.debug("Reporting to the version manager failed: %s", e)

    async def _report_forever(self) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            await self._report()

    async def _load_local(
        self, wanted: dict[str, LocalVersion], config: VersionConfig, load_threads: int = 0
    ) -> None:
        """Load the versions not held yet, ``load_threads`` at once (``--num_load_threads``;
        0, as TF Serving's, one at a time), then give every version the batching knobs, their
        thread counts this replica's share of the node's."""
        assert self._local_options is not None
        options = dict(self._local_options)  # its fields, the session still a SessionConfig
        new = {t: v for t, v in wanted.items() if t not in self._local}

        def load(target: str) -> ModelVersion:
            v = new[target]
            return ModelVersion(v.model, v.version, v.path, **options)

        self._local.update(await load_all(list(new), load, load_threads))
        replicas = self._listen.replicas if self._listen else 1
        batching = config.batching
        threads = share_threads(batching.num_batch_threads, replicas)
        config = config.model_copy(
            update={"batching": batching.model_copy(update={"num_batch_threads": threads})}
        )
        for local in self._local.values():
            local.reconfigure(config)
            if local.servable is not None:
                metrics.learn_signatures(local.model, local.servable.signatures)

    def check_health(self) -> None:
        """Serve's health check: a replica whose REST server stopped is replaced."""
        if self._listeners is not None and not self._listeners.alive():
            raise RuntimeError("the REST server of this replica stopped")

    async def __del__(self) -> None:
        """Serve's graceful shutdown: stop taking connections, let calls in flight finish."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        listeners, self._listeners = self._listeners, None
        if listeners is not None:
            await listeners.stop(self._listen.shutdown_grace_s if self._listen else 10.0)
        metrics.flush()
        await asyncio.to_thread(request_log.close_all)

    def _handle(self, target: str) -> DeploymentHandle:
        handle = self._handles.get(target)
        if handle is None:
            handle = serve.get_deployment_handle(target, self._app_name)
            self._handles[target] = handle
        return handle

    # --- the one forwarding path, shared by gRPC and REST ------------------------------------

    async def call_model(self, call: ModelCall) -> ModelReply:
        """Resolve the call's model spec and answer it from the version; errors as a reply.

        A version held here answers in this process; one in its own deployment gets the call
        through Serve (``ModelCall`` pickles its request as bytes). A full queue answers
        RESOURCE_EXHAUSTED at once; a call still waiting when the caller's deadline passes gets
        DEADLINE_EXCEEDED. Every call is counted in the request metrics (``serve_app.metrics``).
        """
        started = time.perf_counter()
        version = None
        try:
            route = self._table.resolve(call.spec)
            version = route.version
            reply = await self._call(route.target, call)
        except ServingError as e:
            reply = ModelReply.error(e)
        except BackPressureError:
            reply = ModelReply.error(
                ResourceExhausted("The model's request queue is full; retry later")
            )
        except Exception as e:  # never a Ray traceback to the client
            reply = ModelReply.error(transport_error(e))
        metrics.record_model_call(call, version, reply.code, time.perf_counter() - started)
        return reply

    async def _call(self, target: str, call: ModelCall) -> ModelReply:
        deadline = call.deadline
        local = self._local.get(target)
        if local is not None:  # co-located: no hop
            if deadline is None:
                return await local.call(call)
            try:
                return await asyncio.wait_for(local.call(call), deadline - time.time())
            except TimeoutError:
                raise DeadlineExceeded("Deadline Exceeded") from None
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

    async def call_manager(self, method: str, *args: Any) -> Any:
        """The version manager's answer; a failed call raises ``transport_error``'s error."""
        try:
            return await getattr(self._manager, method).remote(*args)
        except Exception as e:
            raise transport_error(e) from None

    async def _manager_rpc(self, method: str, request: bytes) -> ModelReply:
        try:
            return cast(ModelReply, await self.call_manager(method, request))
        except ServingError as e:
            return ModelReply.error(e)

    async def _forward(self, api: Api, raw: bytes, deadline: float | None) -> ModelReply:
        try:
            call = grpc_call(api, raw, deadline)
        except ServingError as e:
            return ModelReply.error(e)
        return await self.call_model(call)

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
        return await self._manager_rpc("get_status", raw)

    async def HandleReloadConfigRequest(self, raw: bytes, deadline: float | None) -> ModelReply:
        return await self._manager_rpc("reload_config", raw)

    # --- grpc.health.v1.Health ------------------------------------------------------------------

    async def Check(self, raw: bytes, deadline: float | None) -> ModelReply:
        from serve_app.transports import health

        return await health.check(self, raw)

    # --- the Open Inference Protocol: its gRPC service is self._v2 (transports.open_inference) --

    @property
    def table(self) -> RoutingTable:
        """The routing table this replica holds now."""
        return self._table

    # --- REST -----------------------------------------------------------------------------------

    async def rest(self, request: Request) -> Response:
        if self.prometheus_path and request.url.path == self.prometheus_path:
            try:
                states = (await self.call_manager("snapshot")).status
            except ServingError as e:
                return Response(e.message, status_code=503, media_type="text/plain")
            body, content_type = await metrics.prometheus_text(states)
            return Response(body, media_type=content_type)
        path = rest.request_path(request)
        if path == "/v2" or path.startswith("/v2/"):
            return await self._v2.handle(request, path)
        return await self._rest.handle(request)

    async def admin(self, request: Request) -> Response:
        """The admin port (``admin_port``): ray-tfserving's runtime routes, nothing else."""
        return await self._rest.handle_admin(request)


def _share_cores(options: VersionOptions | None, replicas: int, gpu: bool) -> VersionOptions | None:
    """TF's threads in a serving replica: the arguments' are the node's (TF Serving's, for its
    one process), so a replica takes its share (``share_threads``), and what they leave at 0
    is filled in.

    ``intra_op_parallelism`` 0 (TF's default: every core, right for one process) becomes this
    replica's share of the node's cores: the serving replicas each run their own TF, and each
    taking every core oversubscribes them (measured on 2 cores, DeepLab 128 with batching and
    two replicas: 365 -> 427 req/s). ``inter_op_parallelism`` 0, in a replica without a GPU
    whose share is one thread, becomes -1: each op runs in the thread that runs the model, with
    no hand-off to an inter-op pool and back, and the version runs one model call at a time
    outside batching (``model.runs_at_once``). Measured on 2 cores, one run: DeepLab with
    batching 309 -> 349 req/s, without 314 -> 326; half_plus_two 2630 -> 2992 and 2241 -> 2694.
    With a share of two or more threads, the inter-op pool stays (in-process, DeepLab with two
    intra-op threads ran 4-7% slower inline) but is the share too, not TF's every core: the
    replicas of a 16-core node would each run ops on 16 threads otherwise. A GPU replica keeps
    TF's default: there the inter-op pool keeps the device fed."""
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


def _tls(ssl_config_file: str | None) -> Any:
    """The SSLConfig the ports speak (``ssl_config_file``), read in this process; None:
    plaintext."""
    if not ssl_config_file:
        return None
    from compat.text_configs import read_ssl_config

    return read_ssl_config(ssl_config_file)


def transport_error(e: Exception) -> ServingError:
    """What a failed call to another deployment tells the client: a gRPC failure between
    deployments keeps its code and details (an oversized message is RESOURCE_EXHAUSTED), a
    replica that died or cannot be reached is UNAVAILABLE, anything else INTERNAL."""
    import grpc
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    logger.warning("Call to a model replica failed: %s: %s", type(e).__name__, e)
    if isinstance(e, grpc.aio.AioRpcError):
        return from_code(e.code().value[0], e.details() or e.code().name)
    if isinstance(e, ActorDiedError | ActorUnavailableError):
        return Unavailable("The model's replica is unavailable; retry later")
    return Internal(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
