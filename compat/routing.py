"""Which servable answers a ModelSpec: TF Serving's ServableHandle lookup, Ray-free.

The routing table names, per model, the AVAILABLE versions and the target that serves each
(a deployment name in ray-tfserving), the version labels, and the version ``latest`` means.
It is plain data so the version manager can ship it to every ingress replica in one
``user_config`` update, which Ray applies atomically per replica.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, Field

from compat.errors import InvalidArgument, NotFound


class Canary(BaseModel):
    """A share of ``latest`` requests sent to another version (beyond TF Serving)."""

    version: int
    """The canary version; must be AVAILABLE."""
    weight: float = Field(ge=0.0, le=1.0)
    """Fraction of requests for ``latest`` that go to the canary."""


class Shadow(BaseModel):
    """A version that gets a sampled mirror of the model's requests (beyond TF Serving)."""

    version: int
    """The shadowed version; must be AVAILABLE."""
    sampling_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    """The share of requests answered by another version that are mirrored to it."""
    atol: float = 1e-6
    rtol: float = 1e-6
    """Float outputs agree within ``atol + rtol * |shadow|`` (``compat.compare``)."""
    max_pending: int = 64
    """Mirrored requests waiting in a serving replica at most."""


class ModelRoutes(BaseModel):
    """The routes of one model."""

    versions: dict[int, str] = {}
    """AVAILABLE version -> the target (deployment name) that serves it."""
    labels: dict[str, int] = {}
    """Version label -> version, as ``version_labels`` in the model config."""
    latest: int | None = None
    """The version a request without version or label gets (the newest AVAILABLE)."""
    canary: Canary | None = None
    """Optional weighted canary for ``latest`` requests."""
    shadow: Shadow | None = None
    """Optional shadow version, mirrored requests answered by the others."""


class RoutingTable(BaseModel):
    """Every served model's routes; the ingress's whole view of what is AVAILABLE."""

    models: dict[str, ModelRoutes] = {}
    """Model name -> its routes."""
    epoch: int = 0
    """Increases with every change, so replicas can tell a newer table from an older one."""

    def resolve(self, spec: ModelSpecLike) -> Route:
        """The target and version for a request's ModelSpec, or TF Serving's error."""
        name = spec.name
        if not name:
            raise InvalidArgument("ModelSpec has no name specified.")
        routes = self.models.get(name)
        version: int | None
        if spec.HasField("version"):
            version = spec.version.value
        elif spec.version_label:
            if routes is None or spec.version_label not in routes.labels:
                raise InvalidArgument(f"Unrecognized servable version label: {spec.version_label}")
            version = routes.labels[spec.version_label]
        else:
            version = None
        if version is None:
            if routes is None or routes.latest is None or routes.latest not in routes.versions:
                raise NotFound(f"Servable not found for request: Latest({name})")
            version = routes.latest
            canary = routes.canary
            if canary and canary.version in routes.versions and random.random() < canary.weight:
                version = canary.version
        elif routes is None or version not in routes.versions:
            raise NotFound(f"Servable not found for request: Specific({name}, {version})")
        return Route(model=name, version=version, target=routes.versions[version])


@dataclass(frozen=True)
class Route:
    """Where one request goes."""

    model: str
    version: int
    target: str


class ModelSpecLike(Protocol):
    """The fields of ``tensorflow.serving.ModelSpec`` that routing reads."""

    name: str
    version_label: str
    version: Any

    def HasField(self, field_name: str) -> bool: ...
