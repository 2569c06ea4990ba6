"""The deployment plan: which model versions have deployments, and how requests are routed.

The plan is the declarative state the version manager moves forward one step at a time (add
green, switch routing, remove blue); ``build_app`` turns a plan into a Serve application.
"""

from __future__ import annotations

import hashlib
import re

from pydantic import BaseModel

from compat.routing import RoutingTable

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
