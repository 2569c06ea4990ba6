"""What the builder (``serve_app.launch.app``) hands each deployment, typed: one model per receiver.

Constructor arguments (``ListenConfig``, ``VersionOptions``) are fixed for a replica's life;
``user_config`` (``IngressConfig``, ``VersionConfig``) changes at runtime through Serve's
``reconfigure``. The constructor arguments have no defaults of their own: the builder fills
every field from ``AppArgs``, whose defaults are the only ones. The builder dumps a
``user_config`` with ``model_dump(mode="json")`` (Serve wants JSON) and the receiver validates
it back, so both sides read the same fields.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from compat.routing import RoutingTable
from compat.servable import SERVE_TAG
from serve_app.config.args import BatchingArgs, RequestLogArgs


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class SessionConfig(_Config):
    """TF session knobs of a version's process (``compat.servable.SessionOptions``)."""

    intra_op_parallelism: int = 0
    """Threads of one op (``--tensorflow_intra_op_parallelism``); 0: TF's default."""
    inter_op_parallelism: int = 0
    """Ops run at once (``--tensorflow_inter_op_parallelism``); 0: TF's default."""
    per_process_gpu_memory_fraction: float = 0.0
    """Share of the GPU's memory TF takes up front; 0: it grows as needed."""
    allow_gpu: bool = True
    """False: TF sees no GPU (``accelerator=cpu``)."""
    tags: list[str] = [SERVE_TAG]
    """The MetaGraph loaded: the one tagged with exactly these (``--saved_model_tags``)."""
    config_text: str = ""
    """ConfigProto text the knobs above apply over (``--tensorflow_session_config_file``)."""
    mixed_precision: str = ""
    """``bfloat16``: TF's bfloat16 auto mixed precision rewrite (``--mixed_precision``)."""


class VersionOptions(_Config):
    """``ModelVersion``'s keyword arguments: how one version loads."""

    session: SessionConfig
    """The version's TF session options."""
    warmup: bool
    """Replay the version's warmup file before reporting loaded (``--enable_model_warmup``)."""
    max_load_retries: int
    """Further load attempts after a failed one (``--max_num_load_retries``)."""
    load_retry_interval_s: float
    """Seconds between load attempts (``--load_retry_interval_micros``)."""
    check_method_name: bool
    """Predict refuses a signature of another method (``--enable_signature_method_name_check``)."""
    warmup_iterations: int
    """Times each warmup record is replayed (``--num_request_iterations_for_warmup``; 0: once)."""
    tensor_content: bool
    """gRPC Predict outputs in ``tensor_content`` (``--enable_serialization_as_tensor_content``)."""
    per_model_batching: bool
    """A version's ``batching_params.pbtxt`` sets its batching
    (``--enable_per_model_batching_parameters``)."""
    object_store_cache_max_mb: int
    """Size bound of the node's cache of object-store versions (``--object_store_cache_max_mb``)."""


class VersionConfig(_Config):
    """A version's ``user_config`` (``ModelVersion.reconfigure``): what changes without a reload."""

    batching: BatchingArgs = BatchingArgs()
    """Dynamic batching knobs."""
    request_logs: dict[str, RequestLogArgs] = {}
    """Model -> its request log (the model config's ``logging_config``), for models that log."""


class LocalVersion(_Config):
    """A version the serving replicas hold themselves (co-located)."""

    model: str
    """The model's name."""
    version: int
    """The version number."""
    path: str
    """Its SavedModel directory (local, or an object-store URL)."""
    pinned: bool = False
    """Never paged out under a memory budget (the model config's ``pinned``)."""


class ListenConfig(_Config):
    """``Ingress``'s ports and connection limits."""

    host: str
    """Address the client ports bind."""
    grpc_port: int
    """TF Serving's gRPC port (``--port``)."""
    http_port: int
    """TF Serving's REST port (``--rest_api_port``)."""
    max_request_bytes: int
    """The largest gRPC message and REST body taken."""
    max_concurrent_requests: int
    """Requests in flight per replica before new ones are refused."""
    grpc_health_service: bool
    """Serve ``grpc.health.v1.Health`` on the gRPC port."""
    grpc_reflection: bool
    """Serve gRPC server reflection on the gRPC port."""
    ssl_config_file: str | None
    """TF Serving's SSLConfig text file; None: plaintext."""
    grpc_socket_path: str | None
    """A Unix socket the gRPC API is served on too (``--grpc_socket_path``); None: none."""
    grpc_channel_arguments: dict[str, int | str]
    """gRPC server arguments (``--grpc_channel_arguments``)."""
    admin_host: str
    """Address of the admin port."""
    admin_port: int
    """The admin port (ray-tfserving's runtime routes); 0: none."""
    shutdown_grace_s: float
    """How long calls in flight may finish once the ports stop taking connections."""
    rest_body_timeout_s: float
    """How long a REST body may take to arrive (408 beyond)."""
    max_connection_age_s: float
    """A gRPC connection's age bound (GOAWAY after it); 0: none."""
    max_connection_age_grace_s: float
    """Calls in flight on a connection past its age get this long to end."""
    rest_keepalive_timeout_s: float
    """An idle REST connection is closed after this."""
    rest_max_connection_age_s: float
    """A REST connection older than this is closed after its next answer; 0: no bound."""
    replicas: int
    """How many serving replicas share the node (each takes its share of the cores)."""


class IngressConfig(_Config):
    """``Ingress``'s ``user_config``: the routing table and what the replicas hold."""

    routing: RoutingTable = RoutingTable()
    """What requests are routed to (``compat.routing``)."""
    rest_api_timeout_in_ms: int = 30000
    """REST requests' deadline (``--rest_api_timeout_in_ms``); 0: none."""
    prometheus_path: str | None = None
    """The REST path of the Prometheus metrics; None: not served."""
    local: dict[str, LocalVersion] = {}
    """Deployment name -> the co-located version the serving replicas load (colocate only)."""
    versions: VersionConfig | None = None
    """The co-located versions' ``user_config``; None when the replicas hold no model."""
    num_load_threads: int = 0
    """Co-located versions loaded at once (``--num_load_threads``); 0: one at a time."""
    model_memory_budget_mb: int = 0
    """Bytes of co-located versions each replica holds at most (``--model_memory_budget_mb``,
    ``runtime.paging``); 0: every version is held."""
    cors: bool = False
    """TF Serving's CORS headers on REST answers, and preflights answered
    (``--rest_api_enable_cors_support``)."""
