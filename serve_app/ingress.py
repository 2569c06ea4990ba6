"""The ingress deployment: every TF Serving RPC and REST route, each a thin hop into a replica.

gRPC methods are named after the RPCs (Ray's proxy calls them by name) and receive the raw
request bytes (see ``grpc_services``). The ingress reads only the ModelSpec, resolves it against
the routing table (TF Serving's errors for unknown models, versions and labels), and forwards
the untouched bytes to the model-version replica, which decodes, runs and encodes once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from compat import rest_api
from compat.errors import (
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    ServingError,
    Unavailable,
    from_code,
    truncate,
)
from compat.inference import multi_inference_model_spec
from compat.protos import get_model_status_pb2, inference_pb2
from compat.routing import RoutingTable
from serve_app import metrics
from serve_app.model import LoadState, ModelVersion
from serve_app.replies import RawMessage, Reply

logger = logging.getLogger("ray.serve")

#: Parses just field 1 (``model_spec``) of any request that has it, skipping the payload.
_HEAD = get_model_status_pb2.GetModelStatusRequest


class Ingress:
    """Routes TF Serving's gRPC and REST requests to model-version deployments, or, co-located
    (``colocate=true``), to the versions this replica loaded itself."""

    def __init__(
        self, manager: DeploymentHandle, local_options: dict[str, Any] | None = None
    ) -> None:
        self._manager = manager
        self._table = RoutingTable()
        self._handles: dict[str, DeploymentHandle] = {}
        self._app_name = serve.get_replica_context().app_name
        self._rest = rest_api.RestApi(self)
        self.prometheus_path: str | None = None
        self._local_options = local_options
        """``ModelVersion`` keyword arguments when co-located, else None."""
        self._local: dict[str, ModelVersion] = {}

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """The routing table arrives as user_config: one atomic swap per replica. Co-located,
        the versions to hold arrive with it: new ones load first (off the event loop, requests
        keep flowing), then the table swaps, then dropped ones go (in-flight calls keep theirs)."""
        if self._local_options is not None:
            await self._load_local(config["local"], config["batching"])
        self._table = RoutingTable.model_validate(config["routing"])
        self.rest_timeout_s = config.get("rest_api_timeout_in_ms", 30000) / 1000 or None
        self.prometheus_path = config.get("prometheus_path")
        if self._local_options is not None:
            for target in set(self._local) - set(config["local"]):
                logger.info("Unloading %s", target)
                del self._local[target]  # closed once its last in-flight call is done

    async def _load_local(self, wanted: dict[str, list[Any]], batching: dict[str, Any]) -> None:
        assert self._local_options is not None
        for target, (model, version, path) in wanted.items():
            if target not in self._local:
                self._local[target] = await asyncio.to_thread(
                    ModelVersion, model, version, path, **self._local_options
                )
        for local in self._local.values():
            local.reconfigure({"batching": batching})

    def load_state(self, target: str) -> LoadState | None:
        """A co-located version's load outcome (None: not held by this replica)."""
        local = self._local.get(target)
        return local.load_state() if local is not None else None

    def routing_epoch(self) -> int:
        return self._table.epoch

    def _handle(self, target: str) -> DeploymentHandle:
        handle = self._handles.get(target)
        if handle is None:
            handle = serve.get_deployment_handle(target, self._app_name)
            self._handles[target] = handle
        return handle

    # --- the one forwarding path, shared by gRPC and REST ------------------------------------

    async def call_model(
        self,
        spec: Any,
        method: str,
        *args: Any,
        deadline: float | None = None,
        protocol: str = "grpc",
    ) -> Reply:
        """Resolve ``spec`` and call ``method`` on the version's replica; errors as a Reply.

        A full replica queue answers RESOURCE_EXHAUSTED at once; a request still waiting when
        the caller's deadline passes is cancelled (so it never runs) with DEADLINE_EXCEEDED.
        Every call is counted in the request metrics (``serve_app.metrics``).
        """
        started = time.perf_counter()
        version = None
        try:
            route = self._table.resolve(spec)
            version = route.version
            reply = await self._call(route.target, method, args, deadline)
        except ServingError as e:
            reply = Reply.error(e)
        except BackPressureError:
            reply = Reply.error(ResourceExhausted("The model's request queue is full; retry later"))
        except Exception as e:  # never a Ray traceback to the client
            reply = Reply.error(transport_error(e))
        metrics.record_model_call(
            spec, method, args, protocol, version, reply.code, time.perf_counter() - started
        )
        return reply

    async def _call(
        self, target: str, method: str, args: tuple[Any, ...], deadline: float | None
    ) -> Reply:
        local = self._local.get(target)
        if local is not None:  # co-located: no hop
            work = getattr(local, method)(*args, deadline=deadline)
            if deadline is None:
                return cast(Reply, await work)
            try:
                return cast(Reply, await asyncio.wait_for(work, deadline - time.time()))
            except TimeoutError:
                raise DeadlineExceeded("Deadline Exceeded") from None
        response = getattr(self._handle(target), method).remote(*args, deadline=deadline)
        if deadline is None:
            return await response
        try:
            return await asyncio.wait_for(asyncio.shield(response), deadline - time.time())
        except TimeoutError:
            response.cancel()
            raise DeadlineExceeded("Deadline Exceeded") from None

    async def call_manager(self, method: str, *args: Any) -> Any:
        """The version manager's answer; a failed call raises ``transport_error``'s error."""
        try:
            return await getattr(self._manager, method).remote(*args)
        except Exception as e:
            raise transport_error(e) from None

    async def _manager_rpc(self, method: str, request: bytes, grpc_context: Any) -> RawMessage:
        try:
            reply = await self.call_manager(method, request)
        except ServingError as e:
            reply = Reply.error(e)
        return _grpc_reply(reply, grpc_context)

    async def _forward(self, raw: bytes, grpc_context: Any, method: str) -> RawMessage:
        try:
            head = _HEAD.FromString(raw)
        except Exception:
            return _grpc_reply(
                Reply.error(InvalidArgument("Could not parse request")), grpc_context
            )
        if not head.HasField("model_spec"):
            return _grpc_reply(Reply.error(InvalidArgument("Missing ModelSpec")), grpc_context)
        deadline = getattr(grpc_context, "rtfs_deadline", None)
        reply = await self.call_model(head.model_spec, method, raw, deadline=deadline)
        return _grpc_reply(reply, grpc_context)

    # --- tensorflow.serving.PredictionService ---------------------------------------------------

    async def Predict(self, request: bytes, grpc_context: Any) -> RawMessage:
        return await self._forward(request, grpc_context, "predict")

    async def Classify(self, request: bytes, grpc_context: Any) -> RawMessage:
        return await self._forward(request, grpc_context, "classify")

    async def Regress(self, request: bytes, grpc_context: Any) -> RawMessage:
        return await self._forward(request, grpc_context, "regress")

    async def GetModelMetadata(self, request: bytes, grpc_context: Any) -> RawMessage:
        return await self._forward(request, grpc_context, "metadata")

    async def MultiInference(self, request: bytes, grpc_context: Any) -> RawMessage:
        try:
            spec = multi_inference_model_spec(
                inference_pb2.MultiInferenceRequest.FromString(request)
            )
        except Exception:
            return _grpc_reply(
                Reply.error(InvalidArgument("Could not parse request")), grpc_context
            )
        deadline = getattr(grpc_context, "rtfs_deadline", None)
        reply = await self.call_model(spec, "multi_inference", request, deadline=deadline)
        return _grpc_reply(reply, grpc_context)

    # --- tensorflow.serving.ModelService ----------------------------------------------------------

    async def GetModelStatus(self, request: bytes, grpc_context: Any) -> RawMessage:
        return await self._manager_rpc("get_status", request, grpc_context)

    async def HandleReloadConfigRequest(self, request: bytes, grpc_context: Any) -> RawMessage:
        return await self._manager_rpc("reload_config", request, grpc_context)

    # --- grpc.health.v1.Health ------------------------------------------------------------------

    async def Check(self, request: bytes, grpc_context: Any) -> RawMessage:
        from serve_app import health

        return _grpc_reply(await health.check(self, request), grpc_context)

    # --- REST -----------------------------------------------------------------------------------

    async def __call__(self, request: Request) -> Response:
        if self.prometheus_path and request.url.path == self.prometheus_path:
            try:
                states = (await self.call_manager("snapshot"))["status"]
            except ServingError as e:
                return Response(e.message, status_code=503, media_type="text/plain")
            body, content_type = await metrics.prometheus_text(states)
            return Response(body, media_type=content_type)
        return await self._rest.handle(request)


def transport_error(e: Exception) -> ServingError:
    """What a failed call to a model replica tells the client: a gRPC failure between
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


def _grpc_reply(reply: Reply, grpc_context: Any) -> RawMessage:
    """OK: the payload; otherwise the status code and TF Serving's message, with an empty reply."""
    if reply.code:
        from serve_app.replies import STATUS_BY_VALUE

        grpc_context.set_code(STATUS_BY_VALUE[reply.code])
        grpc_context.set_details(truncate(reply.message))
        return RawMessage()
    return RawMessage(reply.payload)
