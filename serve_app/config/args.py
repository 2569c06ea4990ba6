"""Typed application arguments: what `serve run serve_app:app key=value ...` and the CLI accept.

The one source of the configuration: each field's docstring is its documentation, and a field
that is one of TF Serving's flags (or one of ours) says so with ``Flag`` in its annotation:
``serve_app.launch.flags`` generates the command line from these, defaults and help included.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_app.config.flag import UNSET, Flag
from serve_app.config.model_args import (
    Ints,
    ModelArgs,
    RequestLogArgs,
    RolloutPolicy,
    ShadowArgs,
    Strings,
    VersionPolicy,
    models_from_config,
)
from serve_app.config.serving import ServingAutoscalingArgs

__all__ = [
    "APP_NAME",
    "LOOPBACK",
    "UNSET",
    "AppArgs",
    "BatchingArgs",
    "Flag",
    "Ints",
    "ModelArgs",
    "RequestLogArgs",
    "RolloutPolicy",
    "ScalingArgs",
    "ServingAutoscalingArgs",
    "ShadowArgs",
    "Strings",
    "VersionPolicy",
    "models_from_config",
]

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

APP_NAME = "default"
"""The one Serve application (``serve run``'s default name)."""


class BatchingArgs(BaseModel):
    """Dynamic batching inside each model-version replica (TF Serving's BatchingParameters)."""

    model_config = ConfigDict(
        extra="forbid", protected_namespaces=(), use_attribute_docstrings=True
    )

    enabled: Annotated[bool, Flag("enable_batching")] = False
    """Batch concurrent requests into one model run (``--enable_batching``)."""
    max_batch_size: int = Field(default=32, ge=1)
    """Largest batch, in examples (the 0th dimension), run at once."""
    batch_timeout_micros: int = Field(default=2000, ge=0)
    """How long the first request of a batch waits for others."""
    max_enqueued_batches: int = Field(default=100, ge=1)
    """Queue bound in batches; a request that needs one more is refused with UNAVAILABLE."""
    num_batch_threads: int = Field(default=0, ge=0)
    """Batches run concurrently on the node (TF Serving's batch threads, for its one process),
    shared out between the serving replicas, at least one each (``share_threads``). 0: as
    many as a replica has TF intra-op threads, its share of the node's cores (TF Serving's
    default is every core). A model in deployments of its own runs this many per replica."""
    allowed_batch_sizes: Ints = []
    """If set, a batch is padded up to the next allowed size (last == max_batch_size)."""
    pad_variable_length_inputs: bool = False
    """Pad inputs whose non-batch dimensions differ to the largest, then slice outputs back."""

    @model_validator(mode="after")
    def _allowed_sizes(self) -> BatchingArgs:
        sizes = self.allowed_batch_sizes
        if sizes:
            if sizes != sorted(set(sizes)):
                raise ValueError("allowed_batch_sizes must be strictly increasing")
            if sizes[-1] != self.max_batch_size:
                raise ValueError("the last entry of allowed_batch_sizes must equal max_batch_size")
        return self


class ScalingArgs(BaseModel):
    """Replica count and resources of each model-version deployment."""

    model_config = ConfigDict(
        extra="forbid", protected_namespaces=(), use_attribute_docstrings=True
    )

    num_replicas: Annotated[int | None, Flag("num_replicas")] = Field(default=1, ge=1)
    """Fixed replica count; ``None`` turns on autoscaling between min and max."""
    min_replicas: int = Field(default=1, ge=0)
    """Autoscaling lower bound."""
    max_replicas: int = Field(default=2, ge=1)
    """Autoscaling upper bound."""
    target_ongoing_requests: float = Field(default=4.0, gt=0)
    """Autoscaling target of in-flight requests per replica."""
    upscale_delay_s: float = Field(default=2.0, ge=0)
    """How long load must stay high before adding a replica."""
    downscale_delay_s: float = Field(default=10.0, ge=0)
    """How long load must stay low before removing a replica."""
    num_cpus: float = Field(default=0.25, gt=0)
    """CPUs reserved per replica (fractional, so everything schedules on 2 cores)."""
    accelerator: Annotated[Literal["auto", "cpu", "gpu"], Flag("accelerator")] = "auto"
    """``auto`` uses a GPU when the Ray cluster has one, else the CPU."""
    num_gpus: Annotated[float, Flag("num_gpus")] = Field(default=1.0, gt=0, le=8)
    """GPUs per replica when on GPU (fractional shares a card between replicas)."""
    max_ongoing_requests: int = Field(default=64, ge=1)
    """Requests in flight per replica before Ray queues them."""
    max_queued_requests: int = Field(default=256, ge=-1)
    """Requests waiting for a replica beyond which we answer RESOURCE_EXHAUSTED (-1: no bound)."""


class AppArgs(BaseModel):
    """Everything that shapes the application; the one typed input of ``build_app``."""

    model_config = ConfigDict(
        extra="forbid", protected_namespaces=(), use_attribute_docstrings=True
    )

    model_name: Annotated[str, Flag("model_name", cli_default="default")] = "deeplab"
    """Name of the single model served when no config file is given."""
    model_base_path: Annotated[str, Flag("model_base_path", cli_default="")] = "models/deeplab"
    """Base path of the single model (relative paths are resolved against the cwd)."""
    model_config_file: Annotated[str | None, Flag("model_config_file")] = None
    """A ModelServerConfig text file; replaces model_name/model_base_path when set."""
    models: list[ModelArgs] = []
    """Resolved model list (filled from the two options above by ``resolve_models``)."""
    host: Annotated[str, Flag("host")] = "127.0.0.1"
    """Address Ray and both ports bind to; loopback unless you serve a network."""
    grpc_port: Annotated[int, Flag("port")] = Field(default=8500, ge=0, le=65535)
    """gRPC port of the TF Serving API (TF Serving's 8500; 0 disables gRPC)."""
    http_port: Annotated[int, Flag("rest_api_port", cli_default=0)] = Field(
        default=8501, ge=0, le=65535
    )
    """HTTP port of the TF Serving REST API (TF Serving's usual 8501; 0 disables REST)."""
    max_concurrent_requests: Annotated[int, Flag("max_concurrent_requests")] = Field(
        default=1024, ge=1
    )
    """Requests in flight per serving replica, gRPC and REST together (health and status
    excepted): beyond it a request is answered at once with RESOURCE_EXHAUSTED (REST 429)
    rather than queued, so that overload costs neither memory nor everyone's latency."""
    max_request_bytes: Annotated[int, Flag("max_request_bytes")] = Field(
        default=2**31 - 1, ge=1, le=2**31 - 1
    )
    """The largest request either port takes: a larger gRPC message is RESOURCE_EXHAUSTED, a
    larger REST body (or a gzip body that inflates beyond it) is 413, each with a message that
    says so. TF Serving's own limit (INT_MAX) by default."""
    grpc_health_service: Annotated[bool, Flag("enable_grpc_healthcheck_service")] = True
    """Serve ``grpc.health.v1.Health`` on the gRPC port: on by default here (off in TF Serving),
    since the gRPC probes of Kubernetes and load balancers ask it and a client that does not
    call it pays nothing. It says SERVING once every model's newest version is AVAILABLE,
    NOT_SERVING before and while draining."""
    ssl_config_file: Annotated[str | None, Flag("ssl_config_file")] = None
    """TF Serving's SSLConfig text file (``--ssl_config_file``): the gRPC and the REST port
    then speak TLS only (mutual TLS with ``client_verify``), and refuse plaintext. Every serving
    replica reads it when it binds the ports, so on a cluster it must be on every node that
    serves. The admin port stays plaintext on ``admin_host``."""
    grpc_socket_path: Annotated[str | None, Flag("grpc_socket_path")] = None
    """Serve the gRPC API on this Unix domain socket too (``--grpc_socket_path``; clients
    dial ``unix:<path>``), beside ``grpc_port`` or instead of it (``grpc_port=0``). Every
    serving replica of a node listens; one at a time is published at the path, and another
    takes over within 0.2 s when it dies (``serve_app.transports.unix_socket``). A relative
    path is taken from the directory the server is started in."""
    grpc_channel_arguments: Annotated[dict[str, int | str], Flag("grpc_channel_arguments")] = {}
    """gRPC server arguments (``--grpc_channel_arguments=grpc.max_connection_age_ms=2000,...``,
    ``compat.text_configs.parse_channel_arguments``): a value that reads as a 32-bit integer
    is passed as one, any other as a string, as TF Serving passes them; they win over the
    server's own (``grpc.max_receive_message_length`` from ``max_request_bytes``, say)."""
    saved_model_tags: Annotated[Strings, Flag("saved_model_tags")] = Field(
        default=["serve"], min_length=1
    )
    """The MetaGraph loaded from each SavedModel: the one tagged with exactly these
    (``--saved_model_tags=serve,gpu``; TF Serving's ``serve``)."""
    grpc_reflection: bool = True
    """Serve gRPC server reflection (``grpc.reflection.v1`` and ``v1alpha``) on the gRPC port,
    listing its services, as TF Serving does: grpcurl and similar tools work against it."""
    admin_port: Annotated[int, Flag("admin_port")] = Field(default=0, ge=0, le=65535)
    """Port of ray-tfserving's runtime admin routes (a label's share of ``latest``:
    ``POST /admin/models/{m}/labels/{l}/weight``); 0, the default, turns them off. They are never
    on the REST port: whoever reaches that port reaches only TF Serving's API."""
    admin_host: str = "127.0.0.1"
    """Address the admin port binds to: loopback by default, whatever ``host`` is."""
    file_system_poll_wait_seconds: Annotated[float, Flag("file_system_poll_wait_seconds")] = Field(
        default=1.0, ge=0
    )
    """How often base paths are scanned for new versions (0 disables polling)."""
    model_config_file_poll_wait_seconds: Annotated[
        float, Flag("model_config_file_poll_wait_seconds")
    ] = Field(default=0.0, ge=0)
    """How often the config file is re-read (0: only at startup and on reload RPCs)."""
    rollout: Literal["availability_preserving", "resource_preserving"] = "availability_preserving"
    """Load the new version before unloading the old (default) or the reverse."""
    enable_model_warmup: Annotated[bool, Flag("enable_model_warmup")] = True
    """Replay ``assets.extra/tf_serving_warmup_requests`` before a version is AVAILABLE."""
    enable_signature_method_name_check: Annotated[
        bool, Flag("enable_signature_method_name_check")
    ] = False
    """Refuse signatures whose method_name does not fit the RPC (TF Serving's flag, off)."""
    max_load_retries: Annotated[int, Flag("max_num_load_retries")] = Field(default=2, ge=0)
    """Extra attempts to load a version that failed before it is given up (END with error): 2
    here, 5 in TF Serving, whose retries wait a minute each (``load_retry_interval_micros``)
    and hold a startup 5 minutes for a version that cannot load. Here retries follow at
    once, so a bad version fails startup in seconds; one whose directory then changes is
    loaded again at the next poll, which covers what TF Serving's slow retries wait for."""
    load_retry_interval_s: Annotated[float, Flag("load_retry_interval_micros", scale=1e-6)] = Field(
        default=0.0, ge=0
    )
    """The wait between two attempts to load a version: none by default here (TF Serving: a
    minute), see ``max_load_retries``; ``--load_retry_interval_micros=60000000`` with
    ``--max_num_load_retries=5`` is TF Serving's behaviour."""
    load_probe_timeout_s: Annotated[float, Flag("load_probe_timeout_seconds")] = Field(
        default=600.0, ge=0
    )
    """A new version first loads (and warms up) in a process of its own, and only then in the
    serving replicas: one whose load crashes, runs out of memory or is not done within this
    many seconds is END with the reason and never reaches them (ours; 0: no probe)."""
    load_probe_memory_mb: Annotated[int, Flag("load_probe_memory_mb")] = Field(default=0, ge=0)
    """The memory a new version's probe may take beyond TF's own (ours; 0: the node's available
    memory divided by the serving replicas, each of which would hold a copy)."""
    load_probe_spare: Annotated[bool, Flag("load_probe_spare")] = True
    """After a new version's probe, keep one probe process started ahead, TensorFlow imported,
    for the next: that probe takes about its load's time instead of seconds more (ours; it holds
    TF's memory while it waits, some 600 MB of RSS here, most of it TF's shared libraries)."""
    batching: BatchingArgs = BatchingArgs()
    """Dynamic batching knobs."""
    scaling: ScalingArgs = ScalingArgs()
    """Replica count, autoscaling and resources of model-version replicas."""
    ingress_replicas: Annotated[
        Annotated[int, Field(ge=1)] | Literal["auto"], Flag("serving_replicas")
    ] = 2
    """Serving replicas: processes that each hold the client ports (``SO_REUSEPORT``) and run
    the co-located models. Two by default, so that one that dies costs its own connections,
    not the port (its replacement loads, then binds again). ``auto``: Serve's autoscaler keeps
    between ``serving_min_replicas`` and ``serving_max_replicas``, from the load the replicas
    report (``serve_app.runtime.autoscaling``)."""
    serving_autoscaling: ServingAutoscalingArgs = ServingAutoscalingArgs()
    """With ``serving_replicas=auto``: the bounds, target and delays of the autoscaler."""
    colocate: Annotated[bool, Flag("colocate")] = True
    """Each serving replica loads the served versions itself and answers in its own process
    (the default: one process per request). ``false`` puts each version in deployments of its
    own, with ``scaling``'s replicas, resources and autoscaling, one hop away; ``scaling`` then
    applies to those, and the serving replicas reserve ``serving_num_cpus`` each."""
    own_deployments: dict[str, ScalingArgs] = {}
    """Models that run in deployments of their own, each with its own replicas, resources and
    autoscaling (a GPU model beside CPU ones, say), one hop from the serving replicas; the
    others run inside the serving replicas, with ``scaling``'s resources."""
    serving_num_cpus: float = Field(default=0.1, gt=0)
    """CPUs reserved per serving replica when the models run in their own deployments."""
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    """On a replica's shutdown, how long calls in flight get to finish after it stops taking
    new connections."""
    max_connection_age_s: float = Field(default=300.0, ge=0)
    """A client's gRPC connection to a serving replica lasts this long (gRPC's
    ``grpc.max_connection_age_ms``, with 10% jitter), then gets GOAWAY and the client opens a
    new one, which the kernel places on any replica: replicas added by a scale-up get their
    share of long-lived channels. 0: connections last for ever. ``--grpc_channel_arguments``
    wins over it."""
    max_connection_age_grace_s: float = Field(default=30.0, ge=0)
    """Calls in flight on a connection past ``max_connection_age_s`` get this long to end
    before it is closed (``grpc.max_connection_age_grace_ms``)."""
    rest_keepalive_timeout_s: float = Field(default=5.0, gt=0)
    """An idle REST keep-alive connection is closed after this (uvicorn's keep-alive timeout)."""
    rest_max_connection_age_s: float = Field(default=300.0, ge=0)
    """A REST keep-alive connection older than this is closed after its next answer
    (``connection: close``), as ``max_connection_age_s`` does for gRPC. 0: no bound."""
    access_log: bool = False
    """Ray Serve's access-log line for every request in the proxy and in each replica it
    passes (TF Serving logs none); off, it saves each of them a log write per request."""
    intra_op_parallelism: Annotated[int, Flag("tensorflow_intra_op_parallelism")] = Field(
        default=0, ge=0
    )
    """TF intra-op threads of the node, as TF Serving's one process takes them, shared out
    between the serving replicas, at least one each (0: the node's cores so shared; TF's own
    default would give every process every core). A model in deployments of its own takes
    this many per replica."""
    inter_op_parallelism: Annotated[int, Flag("tensorflow_inter_op_parallelism")] = 0
    """TF inter-op threads of the node, shared out as ``intra_op_parallelism``. Negative: every
    op runs in the thread that runs the model, as TF takes it. 0: in a serving replica without
    a GPU, its intra-op threads, and with one intra-op thread its ops run in the calling thread
    (no thread hand-off per op: faster, measured as in the README's "Benchmark") and it
    starts one model run at a time outside batching; elsewhere TF's default."""
    per_process_gpu_memory_fraction: Annotated[float, Flag("per_process_gpu_memory_fraction")] = (
        Field(default=0.0, ge=0, le=1)
    )
    """Fraction of GPU memory each replica may take (0: grow on demand)."""
    rest_api_timeout_in_ms: Annotated[int, Flag("rest_api_timeout_in_ms")] = Field(
        default=30000, ge=0
    )
    """Deadline of a REST request."""
    rest_body_timeout_s: float = Field(default=30.0, gt=0)
    """How long a REST request's body may take to arrive once its headers have: a body still
    incomplete after it is answered 408 (Request Timeout) and its connection closed. A request
    counts against ``max_concurrent_requests`` only once its body is whole, so clients that
    trickle bodies (slowloris) hold connections, never the server's request slots."""
    request_log_allowed_dirs: Annotated[Strings, Flag("request_log_allowed_dirs")] = []
    """Directories a reloaded config's request logs may go under, besides the startup config's
    (``launch.resolve_models`` adds those, resolved); elsewhere a reload is INVALID_ARGUMENT."""
    object_store_cache_max_mb: Annotated[int, Flag("object_store_cache_max_mb"), Field(ge=0)] = (
        10240
    )
    """Size bound of each node's object-store cache (``storage.cache``): beyond it, the least
    recently used versions no process of the node serves are deleted."""
    prometheus_path: str | None = None
    """Serve Prometheus metrics at this HTTP path (from ``--monitoring_config_file``)."""

    # --- TF Serving 2.20's flags of model loading and serving options (issue 25) -------------
    allow_version_labels_for_unavailable_models: Annotated[
        bool, Flag("allow_version_labels_for_unavailable_models")
    ] = False
    """A reload may give a label that names no version yet a version not yet AVAILABLE, as TF
    Serving's flag allows; a label that already names a version still moves only to an
    AVAILABLE one. Labels in the startup config are always accepted once their versions load."""
    enable_per_model_batching_parameters: Annotated[
        bool, Flag("enable_per_model_batching_parameters")
    ] = False
    """With batching on, a version's ``batching_params.pbtxt`` (a BatchingParameters text file
    in its SavedModel directory) sets that version's batching, as in TF Serving; only
    ``num_batch_threads`` still comes from the server's. A version without one uses the
    server's batching; a file that does not parse fails the version's load."""
    tensorflow_session_config_file: Annotated[
        str | None, Flag("tensorflow_session_config_file")
    ] = None
    """A TF ConfigProto text file applied to every version's session, as in TF Serving; the
    thread and GPU memory flags, where set, win over it. Read once, at startup (its text is
    ``session_config``)."""
    session_config: str = ""
    """The ConfigProto text of ``tensorflow_session_config_file``, filled from it at startup."""
    num_load_threads: Annotated[int, Flag("num_load_threads")] = Field(default=0, ge=0)
    """Versions a serving replica loads at once (TF Serving's load thread pool); 0, as there,
    one at a time. Models in deployments of their own load in their own processes anyway."""
    model_memory_budget_mb: Annotated[int, Flag("model_memory_budget_mb"), Field(ge=0)] = 0
    """Memory each serving replica may hold in loaded model versions, in MB (ours); 0: none,
    every version in every replica. With one, versions are loaded at rollout (AVAILABLE from then
    on) and kept by their owner replica if they fit; a request for one its replica lacks pages it
    in there if hot, else goes one hop to a holder. Least recently used are evicted by bytes (TF
    Serving's estimate, corrected by what a load took), never one in use or ``pinned``; one that
    cannot fit answers RESOURCE_EXHAUSTED."""
    num_request_iterations_for_warmup: Annotated[int, Flag("num_request_iterations_for_warmup")] = (
        Field(default=0, ge=0)
    )
    """How many times each warmup record is replayed (TF Serving's flag; 0 or 1: once)."""
    rest_api_enable_cors_support: Annotated[bool, Flag("rest_api_enable_cors_support")] = False
    """Add TF Serving's CORS headers to every REST API answer and answer a preflight
    ``OPTIONS`` (``Access-Control-Allow-Origin: *``, ``-Methods: POST, GET``, ``-Headers:
    Content-Type``)."""
    enable_serialization_as_tensor_content: Annotated[
        bool, Flag("enable_serialization_as_tensor_content")
    ] = False
    """gRPC Predict answers numeric outputs in ``tensor_content`` (raw bytes) rather than the
    typed ``*_val`` fields, as TF Serving's flag does; string outputs stay in ``string_val``."""
    mixed_precision: Annotated[Literal["", "bfloat16"], Flag("mixed_precision")] = ""
    """``bfloat16``: TF's oneDNN bfloat16 auto mixed precision rewrite on every session, as TF
    Serving's flag sets it; TF applies it only on a CPU with bfloat16 instructions
    (``avx512_bf16``, ``amx_bf16``), and the command line warns when this one has none."""

    @model_validator(mode="after")
    def _read_session_config(self) -> AppArgs:
        if self.tensorflow_session_config_file and not self.session_config:
            from compat.errors import ServingError
            from compat.text_configs import read_session_config

            try:
                self.session_config = read_session_config(self.tensorflow_session_config_file)
            except ServingError as e:
                raise ValueError(e.message) from None
        return self

    @field_validator("grpc_channel_arguments", mode="before")
    @classmethod
    def _channel_arguments(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        from compat.errors import ServingError
        from compat.text_configs import parse_channel_arguments

        try:
            return parse_channel_arguments(value)
        except ServingError as e:
            raise ValueError(e.message) from None

    @property
    def serving_autoscaled(self) -> bool:
        """``serving_replicas=auto``: Serve's autoscaler sets the serving replicas' count."""
        return self.ingress_replicas == "auto"

    @property
    def serving_replicas_most(self) -> int:
        """The most serving replicas there may be (a node's cores are shared out over them)."""
        auto = self.serving_autoscaling
        return auto.max_replicas if self.ingress_replicas == "auto" else self.ingress_replicas

    @property
    def serving_replicas_least(self) -> int:
        """The fewest serving replicas there may be (a rollout waits for this many reports)."""
        auto = self.serving_autoscaling
        return auto.min_replicas if self.ingress_replicas == "auto" else self.ingress_replicas

    def own_scaling(self, model: str) -> ScalingArgs | None:
        """The scaling of ``model``'s own deployments; None when it runs in the serving
        replicas."""
        if model in self.own_deployments:
            return self.own_deployments[model]
        return None if self.colocate else self.scaling

    @property
    def loopback(self) -> bool:
        """Serves this machine only: every port (Ray's too) binds loopback."""
        return self.host in LOOPBACK

    @model_validator(mode="after")
    def _colocated_scaling(self) -> AppArgs:
        # scaling's replica count would be ignored: with colocate the models run in the
        # serving replicas, whose number is ingress_replicas. Refuse rather than ignore it.
        if self.colocate and self.scaling.num_replicas is None:
            raise ValueError(
                "autoscaling (scaling.num_replicas=None) applies to models in deployments of "
                "their own: set colocate=false, or a fixed ingress_replicas"
            )
        if self.colocate and self.scaling.num_replicas != 1:
            raise ValueError(
                f"scaling.num_replicas={self.scaling.num_replicas} (--num_replicas) sets the "
                "replicas of models in deployments of their own (colocate=false or "
                "own_deployments); with colocate the models run in the serving replicas: set "
                "ingress_replicas (--serving_replicas)"
            )
        return self
