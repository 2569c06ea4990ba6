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

The kernel spreads new connections only, and a gRPC channel keeps its connection for hours: so a
connection's age is bounded (``grpc.max_connection_age_ms``, ``max_connection_age_s``; gRPC
sends GOAWAY, lets calls in flight end within ``grpc.max_connection_age_grace_ms``, and the
client's next call opens a new connection, which the kernel places again) and a REST connection
is closed after ``rest_max_connection_age_s`` (``connection: close`` on its next answer) or
``rest_keepalive_timeout_s`` idle. A replica added by a scale-up thus gets its share of
long-lived clients within one connection age; one being removed answers its calls in flight
and sends GOAWAY (``Listeners.stop``).

TF Serving's own gRPC server sets ``SO_REUSEPORT`` too (gRPC's default on Linux). Methods not
registered here (e.g. SessionService) are answered UNIMPLEMENTED by gRPC itself.

With ``ssl_config_file`` both client ports speak TLS only (gRPC's own TLS; uvicorn's ``ssl``
for REST), with client certificates required and verified against ``custom_ca`` when
``client_verify`` is set, as TF Serving's gRPC port does: plaintext and clients whose
certificates do not chain to the CA fail the handshake. TLS ends in the serving replica itself,
so the one process between socket and model stays one (Ray's proxies have no TLS at all).
gRPC server reflection lists the services registered here; it reads their descriptors from
protobuf's default pool, which holds TF Serving's protos once they are imported, so it works
with the raw-bytes handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import Response

from compat.errors import ServingError, truncate
from compat.json_codec import error_text
from compat.text_configs import Tls
from serve_app.transports import http, rest
from serve_app.transports.connections import (
    MAX_MESSAGE_BYTES,
    Admission,
    ConnectionAges,
    closing,
    grpc_server_options,
)
from serve_app.transports.health import Health
from serve_app.transports.open_inference import OpenInference
from serve_app.transports.plane import (
    HEALTH_SERVICE,
    INFERENCE_SERVICE,
    SERVICES,
    Plane,
    RpcFunction,
)
from serve_app.transports.unix_socket import UnixSocket

logger = logging.getLogger("ray.serve")

#: Answered whatever the load: health and status, so that an overloaded server is seen as
#: overloaded, not as dead.
UNBOUNDED = {"Check", "GetModelStatus", "ServerLive", "ServerReady", "ModelReady"}

#: The REST routes answered whatever the load (``UNBOUNDED``'s counterparts).
UNBOUNDED_PATHS = ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready")


def _rpc_handler(function: RpcFunction, admission: Admission | None) -> grpc.RpcMethodHandler:
    async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if admission is not None and not admission.enter():
            context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
            context.set_details(admission.message())
            return b""
        try:
            remaining = context.time_remaining()
            deadline = time.time() + remaining if remaining is not None else None
            reply = await function(raw, deadline)
        finally:
            if admission is not None:
                admission.leave()
        if not reply.ok:
            context.set_code(reply.code)
            context.set_details(truncate(reply.message))
            return b""
        return reply.payload

    # No (de)serializers: the handler gets the request's bytes and returns the response's.
    return grpc.unary_unary_rpc_method_handler(handle)


def grpc_handlers(
    plane: Plane,
    services: Iterable[str] = tuple(SERVICES),
    admission: Admission | None = None,
    servicers: Mapping[str, object] | None = None,
) -> list[grpc.GenericRpcHandler]:
    """One generic handler per service, each method bound to ``plane.<Method>`` (or to the
    service's own object in ``servicers``); every method but ``UNBOUNDED`` goes through
    ``admission``."""
    servicers = servicers or {}
    return [
        grpc.method_handlers_generic_handler(
            service,
            {
                m: _rpc_handler(
                    getattr(servicers.get(service, plane), m),
                    None if m in UNBOUNDED else admission,
                )
                for m in SERVICES[service]
            },
        )
        for service in services
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


def grpc_credentials(tls: Tls) -> grpc.ServerCredentials:
    """TF Serving's server credentials for an SSLConfig (server.cc): the key pair, and client
    certificates required and verified against ``custom_ca`` when ``client_verify``."""
    return grpc.ssl_server_credentials(
        [(tls.server_key.encode(), tls.server_cert.encode())],
        root_certificates=tls.custom_ca.encode() or None,
        require_client_auth=tls.client_verify,
    )


def _uvicorn_ssl(tls: Tls, files: contextlib.ExitStack) -> dict[str, Any]:
    """uvicorn's ssl settings for an SSLConfig. uvicorn (Python's ``ssl``) reads the key and
    certificate from files only: they are written to a directory only this user can read,
    removed once the server has built its SSL context."""
    import ssl

    private = Path(files.enter_context(tempfile.TemporaryDirectory(prefix="rtfs-tls-")))
    settings: dict[str, Any] = {}
    for name, text in (
        ("ssl_keyfile", tls.server_key),
        ("ssl_certfile", tls.server_cert),
        ("ssl_ca_certs", tls.custom_ca),
    ):
        if text:
            path = private / f"{name}.pem"
            path.write_text(text)
            settings[name] = str(path)
    settings["ssl_cert_reqs"] = ssl.CERT_REQUIRED if tls.client_verify else ssl.CERT_NONE
    return settings


def add_reflection(server: grpc.aio.Server, services: Iterable[str]) -> None:
    """gRPC server reflection, ``grpc.reflection.v1`` and ``v1alpha`` (grpcurl asks for v1
    first), listing ``services`` and itself. grpcio-reflection serves v1alpha only; v1's
    messages are the same on the wire, so the same servicer answers under v1's name."""
    import tensorflow_serving.apis.model_service_pb2
    import tensorflow_serving.apis.prediction_service_pb2  # noqa: F401
    from grpc_health.v1 import health_pb2  # noqa: F401
    from grpc_reflection.v1alpha import reflection, reflection_pb2
    from open_inference.grpc import protocol  # noqa: F401

    v1 = "grpc.reflection.v1.ServerReflection"
    names = [*services, reflection.SERVICE_NAME, v1]
    servicer = reflection.aio.ReflectionServicer(names)
    reflection.enable_server_reflection(names, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(v1, {"ServerReflectionInfo": handler})]
    )


def _uvicorn_server(app: Any, keepalive_timeout_s: float = 5.0, **ssl: Any) -> Any:
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
        timeout_keep_alive=keepalive_timeout_s,  # type: ignore[arg-type]  # a float works
        **ssl,
    )
    return Server(config)


def placement() -> str:
    """Where Ray put this process: its replica, node and GPUs (for the log)."""
    import ray

    from serve_app.ray_patches import replica_names

    replica = replica_names()[1]
    node = ray.get_runtime_context().get_node_id()[:8]
    return f"replica {replica}, node {node}, GPUs {ray.get_gpu_ids()}"


class Listeners:
    """The gRPC server, the REST server and (when enabled) the admin server of one serving
    replica, over its data plane: TF Serving's RPCs are the plane's, Health's and the Open
    Inference Protocol's their transports' (``health``, ``open_inference``); HTTP goes to the
    metrics page, ``/v2`` or TF Serving's REST API (``rest``)."""

    def __init__(
        self,
        plane: Plane,
        host: str,
        grpc_port: int,
        http_port: int,
        admin: tuple[str, int] = ("127.0.0.1", 0),
        max_request_bytes: int = MAX_MESSAGE_BYTES,
        health: bool = True,
        max_concurrent_requests: int = 1024,
        reflection: bool = True,
        tls: Tls | None = None,
        socket_path: str | None = None,
        channel_arguments: Sequence[tuple[str, int | str]] = (),
        rest_body_timeout_s: float = 30.0,
        max_connection_age_s: float = 300.0,
        max_connection_age_grace_s: float = 30.0,
        rest_keepalive_timeout_s: float = 5.0,
        rest_max_connection_age_s: float = 300.0,
    ) -> None:
        self.plane = plane
        self.rest = rest.RestApi(plane)
        self.v2 = OpenInference(plane)
        self.servicers: dict[str, object] = {
            INFERENCE_SERVICE: self.v2,
            HEALTH_SERVICE: Health(plane),
        }
        """Services answered by an object of their own (service name -> it), not the plane."""
        self.host = host
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.admin_host, self.admin_port = admin
        """The admin routes' address (``admin_port``; 0: off)."""
        self.max_request_bytes = max_request_bytes
        """The largest gRPC message taken (gRPC answers RESOURCE_EXHAUSTED beyond it)."""
        self.admission = Admission(max_concurrent_requests)
        self.rest_body_timeout_s = rest_body_timeout_s
        """A REST body must arrive within this; a request counts against ``admission`` only
        once it has (a slow client holds a connection, never a slot): 408 otherwise."""
        self.services = [s for s in SERVICES if health or s != HEALTH_SERVICE]
        """The gRPC services registered (``grpc_health_service``: Health or not)."""
        self.reflection = reflection
        """Serve gRPC server reflection (``grpc_reflection``)."""
        self.tls = tls
        """What both client ports speak: TLS with this SSLConfig, or plaintext (None)."""
        self.unix_socket = UnixSocket(socket_path) if socket_path else None
        """gRPC on a Unix domain socket too (``--grpc_socket_path``), shared by the node's
        serving replicas (``serve_app.transports.unix_socket``)."""
        self.channel_arguments = dict(channel_arguments)
        """gRPC server arguments (``--grpc_channel_arguments``); they win over ours."""
        self.max_connection_age_s = max_connection_age_s
        """A gRPC connection's age bound (GOAWAY after it; 0: none)."""
        self.max_connection_age_grace_s = max_connection_age_grace_s
        """How long calls in flight on a connection past its age may take to end."""
        self.rest_keepalive_timeout_s = rest_keepalive_timeout_s
        """An idle REST connection is closed after this."""
        self.rest_ages = ConnectionAges(rest_max_connection_age_s)
        """REST connections past their age bound are closed after their next answer."""
        self._grpc: grpc.aio.Server | None = None
        self._http: list[Any] = []
        self._http_tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Bind both ports (0 disables one) and serve; raises if a port cannot be bound."""
        if self.grpc_port or self.unix_socket is not None:
            self._grpc = await self._serve_grpc()
        if self.http_port:
            await self._serve_http(self.host, self.http_port, self._asgi, self.tls)
        if self.admin_port:
            await self._serve_http(self.admin_host, self.admin_port, self._admin_asgi)
        logger.info(
            "Serving gRPC on %s:%s%s and REST on %s:%s%s%s (%s)",
            self.host,
            self.grpc_port or "-",
            f" and {self.unix_socket.path}" if self.unix_socket else "",
            self.host,
            self.http_port or "-",
            ""
            if self.tls is None
            else (" over mutual TLS" if self.tls.client_verify else " over TLS"),
            f", admin routes on {self.admin_host}:{self.admin_port}" if self.admin_port else "",
            placement(),
        )

    async def _serve_grpc(self) -> grpc.aio.Server:
        options = grpc_server_options(
            self.max_request_bytes,
            self.max_connection_age_s,
            self.max_connection_age_grace_s,
            self.channel_arguments,
        )
        server = grpc.aio.server(options=list(options.items()))
        server.add_generic_rpc_handlers(
            grpc_handlers(self.plane, self.services, self.admission, self.servicers)
        )
        if self.reflection:
            add_reflection(server, self.services)
        addresses = []
        if self.grpc_port:
            host = f"[{self.host}]" if ":" in self.host else self.host
            addresses.append(f"{host}:{self.grpc_port}")
        if self.unix_socket is not None:
            addresses.append(self.unix_socket.address)
        for address in addresses:  # each raises if it cannot bind
            if self.tls is None:
                server.add_insecure_port(address)
            else:
                server.add_secure_port(address, grpc_credentials(self.tls))
        await server.start()
        if self.unix_socket is not None:
            self.unix_socket.bound()
            self.unix_socket.start()
        return server

    async def _serve_http(self, host: str, port: int, app: Any, tls: Tls | None = None) -> None:
        sock = reuseport_socket(host, port)
        with contextlib.ExitStack() as files:
            ssl = _uvicorn_ssl(tls, files) if tls is not None else {}
            server = _uvicorn_server(app, self.rest_keepalive_timeout_s, **ssl)
            task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
            self._http.append(server)
            self._http_tasks.append(task)
            while not server.started:  # the SSL context is built by then: the files can go
                if task.done():
                    task.result()  # raises what stopped it
                    raise RuntimeError(f"the HTTP server on port {port} stopped")
                await asyncio.sleep(0.01)

    async def _asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if self.rest_ages.expired(scope.get("client")):
            send = closing(send)
        if scope["path"] in (*UNBOUNDED_PATHS, self.plane.prometheus_path):
            response = await self._route(Request(scope, receive))
            await response(scope, receive, send)
            return
        timeout_s = self.rest_body_timeout_s
        try:
            body = await http.whole_body(
                receive, http.content_length(scope), self.max_request_bytes, timeout_s
            )
        except http.Disconnected:
            return
        if body is None:
            message = f"The request body did not arrive within {timeout_s:g}s; closing"
            response = Response(
                error_text(message),
                status_code=408,
                media_type="application/json",
                headers={"connection": "close"},  # the rest of the body is never read
            )
        elif not self.admission.enter():
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
            response = rest.error_response(code, self.admission.message())
        else:
            receive = body
            try:
                response = await self._route(Request(scope, receive))
            finally:
                self.admission.leave()
        await response(scope, receive, send)

    async def _admin_asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        response = await self.rest.handle_admin(Request(scope, receive))
        await response(scope, receive, send)

    async def _route(self, request: Request) -> Response:
        """One request on the REST port: the metrics page (``prometheus_path``), the Open
        Inference Protocol (``/v2``) or TF Serving's REST API."""
        plane = self.plane
        if plane.prometheus_path and request.url.path == plane.prometheus_path:
            try:
                body, content_type = await plane.metrics_text()
            except ServingError as e:
                return Response(e.message, status_code=503, media_type="text/plain")
            return Response(body, media_type=content_type)
        path = rest.request_path(request)
        if path == "/v2" or path.startswith("/v2/"):
            return await self.v2.handle(request, path)
        return await self.rest.handle(request)

    def alive(self) -> bool:
        """Every HTTP server still serving (the replica's health check)."""
        return not any(task.done() for task in self._http_tasks)

    async def stop(self, grace_s: float) -> None:
        """Stop taking connections; calls in flight get up to ``grace_s`` to finish."""
        for server in self._http:
            server.should_exit = True
        if self.unix_socket is not None:
            self.unix_socket.remove()
        if self._grpc is not None:
            await self._grpc.stop(grace_s)
        for task in self._http_tasks:
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(task, grace_s + 1)
