"""The deployment plan: which model versions have deployments, and how requests are routed.

The plan is the declarative state the version manager moves forward one step at a time (add
green, switch routing, remove blue); ``build_app`` turns a plan into a Serve application.
``routing_for`` is the routing policy, pure: what the plan routes to, given what is loaded.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping

from pydantic import BaseModel

from compat.routing import Canary, ModelRoutes, RoutingTable
from serve_app.args import ModelArgs

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class Plan(BaseModel):
    """Deployed versions and the routing table shipped to the ingress."""

    deployed: dict[str, dict[int, str]] = {}
    """Model -> version -> SavedModel directory, each with its own deployment."""
    routing: RoutingTable = RoutingTable()
    """What the ingress routes to (only AVAILABLE versions)."""

    def copy_deep(self) -> Plan:
        return self.model_copy(deep=True)


def deployment_name(model: str, version: int) -> str:
    """A Serve deployment name for one model version, stable and unique."""
    safe = _UNSAFE.sub("_", model)
    if safe != model:
        safe += "-" + hashlib.sha1(model.encode()).hexdigest()[:8]
    return f"{safe}-v{version}"


def routing_for(
    plan: Plan,
    loaded: Callable[[str, int], bool],
    models: Mapping[str, ModelArgs],
    label_weights: Mapping[str, tuple[str, float]],
    epoch: int,
    exclude: Mapping[str, set[int]] | None = None,
    drop_model: str | None = None,
) -> RoutingTable:
    """The routing table for ``plan``: per model, its deployed versions that are ``loaded``
    (but ``exclude``'s, on their way out), the newest as ``latest``, the config's labels that
    name one of them, and a label's canary weight (``label_weights``) when its version is
    routed. ``drop_model`` is left out whole."""
    exclude = exclude or {}
    routing = plan.routing.model_copy(deep=True)
    routing.models = {}
    for name, versions in plan.deployed.items():
        if name == drop_model:
            continue
        ok = {
            v: deployment_name(name, v)
            for v in versions
            if loaded(name, v) and v not in exclude.get(name, set())
        }
        model = models.get(name)
        labels = {label: v for label, v in model.version_labels.items() if v in ok} if model else {}
        routing.models[name] = ModelRoutes(
            versions=ok,
            latest=max(ok) if ok else None,
            labels=labels,
            canary=_canary(label_weights.get(name), labels, set(ok)),
        )
    routing.epoch = epoch
    return routing


def _canary(
    weight: tuple[str, float] | None, labels: Mapping[str, int], available: set[int]
) -> Canary | None:
    label, share = weight or ("", 0.0)
    version = labels.get(label)
    if not share or version is None or version not in available:
        return None
    return Canary(version=version, weight=share)


def invalid_labels(models: list[ModelArgs], routing: RoutingTable) -> str:
    """TF Serving's message for the first label (``version_labels``) that names a version not
    AVAILABLE now; "" when every label may be assigned (``ServerCore::ReloadConfig``)."""
    for m in models:
        available = routing.models.get(m.name, ModelRoutes()).versions
        for v in m.version_labels.values():
            if v not in available:
                return (
                    f"Request to assign label to version {v} of model {m.name}, which is "
                    "not currently available for inference"
                )
    return ""
