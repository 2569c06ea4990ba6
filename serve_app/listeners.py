"""The client ports, held by every serving replica itself: TF Serving's gRPC services and REST.

Every serving replica (the ``Ingress`` deployment) binds ``grpc_port`` and ``http_port`` with
``SO_REUSEPORT``, so all the replicas on a node share the client ports:

- the kernel spreads new connections over the replicas listening on a port (an L4 balance, as a
  Kubernetes Service does; one gRPC channel stays on one replica, so a client that wants several
  opens several channels);
- a replica that dies takes only its own connections: their calls fail at once (the kernel
  resets them, the client sees UNAVAILABLE) and the client reconnects to a replica still
  listening; the replica Serve starts in its place binds again once its models are loaded;
- between the socket and the model there is grpc.aio (or uvicorn) and our code, in one process.

TF Serving's own gRPC server sets ``SO_REUSEPORT`` too (gRPC's default on Linux). Methods not
registered here (e.g. SessionService) are answered UNIMPLEMENTED by gRPC itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc

from compat.errors import truncate
from serve_app.calls import ModelReply

logger = logging.getLogger("ray.serve")

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
HEALTH_SERVICE = "grpc.health.v1.Health"

SERVICES: dict[str, tuple[str, ...]] = {
    PREDICTION_SERVICE: ("Classify", "Regress", "Predict", "MultiInference", "GetModelMetadata"),
    MODEL_SERVICE: ("GetModelStatus", "HandleReloadConfigRequest"),
    HEALTH_SERVICE: ("Check",),
}
"""Every RPC we answer: the backend has a coroutine of the same name, ``(raw, deadline) ->
ModelReply``."""

MAX_MESSAGE_BYTES = 2**31 - 1
"""TF Serving's gRPC server accepts messages up to INT_MAX (main.cc sets no smaller limit)."""

RpcFunction = Callable[[bytes, float | None], Awaitable[ModelReply]]


def _rpc_handler(function: RpcFunction) -> grpc.RpcMethodHandler:
    async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        remaining = context.time_remaining()
        deadline = time.time() + remaining if remaining is not None else None
        reply = await function(raw, deadline)
        if not reply.ok:
            context.set_code(reply.code)
            context.set_details(truncate(reply.message))
            return b""
        return reply.payload

    # No (de)serializers: the handler gets the request's bytes and returns the response's.
    return grpc.unary_unary_rpc_method_handler(handle)


def grpc_handlers(backend: Any) -> list[grpc.GenericRpcHandler]:
    """One generic handler per service, each method bound to ``backend.<Method>``."""
    return [
        grpc.method_handlers_generic_handler(
            service, {m: _rpc_handler(getattr(backend, m)) for m in methods}
        )
        for service, methods in SERVICES.items()
    ]


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` that other replicas may bind too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _uvicorn_server(app: Any) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn without its signal handlers: the replica's process owns its signals."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    config = uvicorn.Config(
        app,
        interface="asgi3",
        lifespan="off",
        proxy_headers=False,
        log_level="warning",
        access_log=False,
        loop="none",
        http="httptools",
        timeout_graceful_shutdown=None,
    )
    return Server(config)


def placement() -> str:
    """Where Ray put this process: its replica, node and GPUs (for the log)."""
    import ray
    from ray import serve

    replica = serve.get_replica_context().replica_id.unique_id
    node = ray.get_runtime_context().get_node_id()[:8]
    return f"replica {replica}, node {node}, GPUs {ray.get_gpu_ids()}"


class Listeners:
    """The gRPC server and the REST server of one serving replica."""

    def __init__(self, backend: Any, host: str, grpc_port: int, http_port: int) -> None:
        self.backend = backend
        self.host = host
        self.grpc_port = grpc_port
        self.http_port = http_port
        self._grpc: grpc.aio.Server | None = None
        self._http: Any = None
        self._http_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind both ports (0 disables one) and serve; raises if a port cannot be bound."""
        if self.grpc_port:
            server = grpc.aio.server(
                options=[
                    ("grpc.so_reuseport", 1),
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ]
            )
            server.add_generic_rpc_handlers(grpc_handlers(self.backend))
            host = f"[{self.host}]" if ":" in self.host else self.host
            server.add_insecure_port(f"{host}:{self.grpc_port}")  # raises if it cannot bind
            await server.start()
            self._grpc = server
        if self.http_port:
            sock = reuseport_socket(self.host, self.http_port)
            self._http = _uvicorn_server(self._asgi)
            self._http_task = asyncio.get_running_loop().create_task(
                self._http.serve(sockets=[sock])
            )
            while not self._http.started:
                if self._http_task.done():
                    self._http_task.result()  # raises what stopped it
                    raise RuntimeError(f"the REST server on port {self.http_port} stopped")
                await asyncio.sleep(0.01)
        logger.info(
            "Serving gRPC on %s:%s and REST on %s:%s (%s)",
            self.host,
            self.grpc_port or "-",
            self.host,
            self.http_port or "-",
            placement(),
        )

    async def _asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        from starlette.requests import Request

        if scope["type"] != "http":
            return
        response = await self.backend.rest(Request(scope, receive))
        await response(scope, receive, send)

    def alive(self) -> bool:
        """Both servers still serving (the replica's health check)."""
        return self._http_task is None or not self._http_task.done()

    async def stop(self, grace_s: float) -> None:
        """Stop taking connections; calls in flight get up to ``grace_s`` to finish."""
        if self._http is not None:
            self._http.should_exit = True
        if self._grpc is not None:
            await self._grpc.stop(grace_s)
        if self._http_task is not None:
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(self._http_task, grace_s + 1)
