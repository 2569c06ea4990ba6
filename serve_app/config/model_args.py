"""The served models, typed: one ``config`` entry of TF Serving's ModelServerConfig each
(``ModelArgs``: its version policy, labels and request log), and the conversion from the proto.
``serve_app.config.args`` holds the whole application's arguments and re-exports these."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError


def _comma_list(value: Any) -> Any:
    """``a,b,c`` -> ``[a, b, c]``: a list field given as one string (a flag, ``key=value``)."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


Ints = Annotated[list[int], BeforeValidator(_comma_list)]
Strings = Annotated[list[str], BeforeValidator(_comma_list)]


class VersionPolicy(BaseModel):
    """TF Serving's ``model_version_policy``: which versions of a model to serve."""

    model_config = ConfigDict(
        extra="forbid", protected_namespaces=(), use_attribute_docstrings=True
    )

    kind: Literal["latest", "all", "specific"] = "latest"
    """``latest`` serves the newest ``num_versions``; ``all`` every version; ``specific`` a list."""
    num_versions: int = Field(default=1, ge=1)
    """For ``latest``: how many of the newest versions to serve."""
    versions: Ints = []
    """For ``specific``: the versions to serve."""


class RequestLogArgs(BaseModel):
    """A model's request log (TF Serving's ``logging_config`` of a model config entry): a
    sample of its successful requests, each with its response, written as TFRecord files of
    ``tensorflow.serving.PredictionLog``, the format of TF Serving's warmup file."""

    model_config = ConfigDict(
        extra="forbid", protected_namespaces=(), use_attribute_docstrings=True
    )

    filename_prefix: str
    """``log_collector_config.filename_prefix``: each serving process writes
    ``<prefix>-<start time>-<pid>-<n>.tfrecord`` files, rotated by size."""
    sampling_rate: float = Field(default=0.0, ge=0, le=1)
    """``sampling_config.sampling_rate``: the share of requests logged (0: none, 1: all)."""
    max_file_bytes: int = Field(default=64 << 20, ge=1 << 10)
    """A file is closed and the next one begun once it holds this many bytes."""
    max_pending: int = Field(default=1000, ge=1)
    """Records waiting for the writer thread; beyond, a record is dropped (and counted), so a
    slow or full disk never slows or fails a request."""


class ShadowArgs(BaseModel):
    """Shadow traffic (our ``shadow`` block in a model's config entry, beyond TF Serving): a
    version that receives a sampled mirror of the model's requests once the serving version
    has answered them, its answers compared with the served ones (``compat.compare``) and
    counted in the metrics; the client only ever gets the serving version's answer. The
    shadowed version is held out of ``latest`` while another version is available (a request
    that names it, by number or label, still gets it)."""

    model_config = ConfigDict(
        extra="forbid", protected_namespaces=(), use_attribute_docstrings=True
    )

    version: int | None = None
    """The shadowed version; with neither this nor ``version_label``, the newest available."""
    version_label: str | None = None
    """The label naming the shadowed version."""
    sampling_rate: float = Field(default=1.0, ge=0, le=1)
    """The share of the model's Predict requests mirrored (0: none, 1: all)."""
    atol: float = Field(default=1e-6, ge=0)
    """Float outputs agree when ``|served - shadow| <= atol + rtol * |shadow|``."""
    rtol: float = Field(default=1e-6, ge=0)
    """See ``atol``."""
    max_pending: int = Field(default=64, ge=1)
    """Mirrored requests waiting in a serving replica; beyond, the newest is dropped (and
    counted): the mirror never queues up behind the clients."""


class RolloutPolicy(BaseModel):
    """A safe rollout (our ``rollout`` block in a model's config entry, beyond TF Serving): a
    new version, once loaded and warmed, is not served at once but goes through stages, each
    judged against the version serving now (``lifecycle.gates``): ``shadow`` (it answers a
    mirror of live requests, compared with the served answers), ``canary`` steps (a share of
    ``latest`` traffic each), then ``full``. A breach rolls it back."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    shadow_requests: int = Field(default=100, ge=0)
    """Compared mirrored requests that end the shadow stage (0: none; with ``shadow_seconds``
    0 too, no shadow stage)."""
    shadow_seconds: float = Field(default=0.0, ge=0)
    """The shadow stage also ends this many seconds after its counts began, once it has
    ``min_stage_requests`` compared (0: off): ``shadow_requests`` or ``shadow_seconds``,
    whichever comes first."""
    max_diff_rate: float = Field(default=0.0, ge=0, le=1)
    """The share of compared requests that may differ."""
    atol: float = Field(default=1e-6, ge=0)
    """In the shadow, float outputs agree when ``|served - shadow| <= atol + rtol * |shadow|``."""
    rtol: float = Field(default=1e-6, ge=0)
    """See ``atol``."""
    canary_weights: list[Annotated[float, Field(gt=0, le=1)]] = [0.01, 0.1, 0.5]
    """The canary steps: the candidate's share of ``latest`` traffic, in order."""
    canary_requests: int = Field(default=100, ge=1)
    """Requests the candidate answers in each canary step before it is judged."""
    canary_seconds: float = Field(default=0.0, ge=0)
    """A canary step also ends this many seconds after its counts began, once the candidate
    has answered ``min_stage_requests`` in it (0: off)."""
    min_stage_requests: int = Field(default=10, ge=1)
    """A stage ended by time (``shadow_seconds``, ``canary_seconds``) holds until it has this
    many compared requests (shadow) or candidate answers (canary), and is judged on them."""
    max_error_rate_increase: float = Field(default=0.0, ge=0, le=1)
    """How much higher the candidate's error rate may be than the current version's."""
    max_p99_ratio: float = Field(default=2.0, gt=0)
    """How many times the current version's p99 latency the candidate's may be."""


class ModelArgs(BaseModel):
    """One served model, as one ``config`` entry of TF Serving's ModelServerConfig."""

    model_config = ConfigDict(
        extra="forbid", protected_namespaces=(), use_attribute_docstrings=True
    )

    name: str
    """Model name clients put in ``model_spec.name``."""
    base_path: str
    """Directory holding numeric version subdirectories."""
    version_policy: VersionPolicy = VersionPolicy()
    """Which versions to serve."""
    version_labels: dict[str, int] = {}
    """Label -> version; a label may only name an AVAILABLE version."""
    request_log: RequestLogArgs | None = None
    """Log a sample of this model's requests (``logging_config``); None: none."""
    shadow: ShadowArgs | None = None
    """Mirror a sample of this model's requests to another of its versions (our ``shadow``
    block); None: none."""
    rollout: RolloutPolicy | None = None
    """Roll new versions out in gated stages (our ``rollout`` block); None: TF Serving's way
    (a new version takes the traffic once loaded)."""
    pinned: bool = False
    """Its versions stay resident in every serving replica under ``--model_memory_budget_mb``
    (our ``pinned: true``), never paged out; without a budget every version is resident."""


def models_from_config(config: Any) -> list[ModelArgs]:
    """ModelServerConfig proto -> typed model list (TF Serving's checks in
    ``compat.model_config.entries``)."""
    from compat import model_config
    from compat.errors import InvalidArgument

    entries = model_config.entries(config)
    for e in entries:
        if e.rollout is not None:
            try:
                RolloutPolicy.model_validate(e.rollout)
            except ValidationError as error:
                first = error.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                raise InvalidArgument(f"Model {e.name}: rollout {where}: {first['msg']}") from None
    return [
        ModelArgs(
            name=e.name,
            base_path=e.base_path,
            version_policy=VersionPolicy(
                kind=e.policy,  # type: ignore[arg-type]
                num_versions=e.num_versions,
                versions=e.versions,
            ),
            version_labels=e.labels,
            request_log=RequestLogArgs.model_validate(e.request_log) if e.request_log else None,
            shadow=ShadowArgs.model_validate(e.shadow) if e.shadow else None,
            rollout=RolloutPolicy.model_validate(e.rollout) if e.rollout is not None else None,
            pinned=e.pinned,
        )
        for e in entries
    ]
