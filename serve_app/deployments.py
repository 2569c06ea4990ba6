"""The application's deployments and the typed calls between them, for every layer: their names
(``INGRESS``, ``VERSION_MANAGER``, ``deployment_name`` for a model version), the version
manager's client (``ManagerClient``, a typed method per RPC of ``lifecycle.rollout``'s
``VersionManager`` over its deployment handle) and its ``Snapshot`` (states as
``VersionState``), and what a failed call to another deployment tells the client
(``transport_error``).
"""

from __future__ import annotations

import enum
import hashlib
import logging
import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from serve_app.config.args import APP_NAME

if TYPE_CHECKING:  # imported where used: the launch reads this module before Ray is imported
    from ray.serve.handle import DeploymentHandle

    from compat.errors import ServingError
    from serve_app.calls import ModelReply

logger = logging.getLogger("ray.serve")

INGRESS = "Ingress"
"""The serving replicas' deployment (``runtime.ingress``): the client ports, the data plane."""
VERSION_MANAGER = "VersionManager"
"""The version manager's one-replica deployment (``lifecycle.rollout``)."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def deployment_name(model: str, version: int) -> str:
    """A Serve deployment name for one model version, stable and unique."""
    safe = _UNSAFE.sub("_", model)
    if safe != model:
        safe += "-" + hashlib.sha1(model.encode()).hexdigest()[:8]
    return f"{safe}-v{version}"


class VersionState(enum.StrEnum):
    """A version's state, by the name of TF Serving's ``ModelVersionStatus.State``."""

    UNKNOWN = "UNKNOWN"
    START = "START"
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


class LoadInfo(BaseModel):
    """How a loaded version's load went, in the replica that reported it."""

    seconds: float = 0.0
    """How long its load (and warmup) took."""
    warmup_records: int = 0
    """Records of its warmup file replayed."""


class Snapshot(BaseModel):
    """The version manager's state, for operators, the CLI's startup and the metrics page."""

    plan: dict[str, Any] = {}
    """The plan (``lifecycle.plan.Plan``), as JSON."""
    status: dict[str, dict[int, VersionState]] = {}
    """Model -> version -> its state."""
    loads: dict[str, dict[int, LoadInfo]] = {}
    """Model -> loaded version -> how its load went."""


class ManagerClient:
    """The version manager's RPCs, typed, over its deployment handle. The ``async`` methods
    are the serving replicas' (a failed call raises ``transport_error``'s ``ServingError``);
    the ``*_blocking`` ones the launch's (outside any event loop; Ray's errors as they are,
    ``TimeoutError`` after ``timeout_s``)."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    @classmethod
    def connect(cls, app_name: str = APP_NAME) -> ManagerClient:
        """The client of the version manager of application ``app_name``."""
        from ray import serve

        return cls(serve.get_deployment_handle(VERSION_MANAGER, app_name))

    async def _await(self, response: Any) -> Any:
        try:
            return await response
        except Exception as e:
            raise transport_error(e) from None

    async def ready(self) -> bool:
        """Every model's newest aspired version AVAILABLE, and not draining."""
        return bool(await self._await(self.handle.ready.remote()))

    async def get_status(self, raw: bytes) -> ModelReply:
        """GetModelStatus, for a serialized ``GetModelStatusRequest``."""
        reply: ModelReply = await self._await(self.handle.get_status.remote(raw))
        return reply

    async def reload_config(self, raw: bytes) -> ModelReply:
        """HandleReloadConfigRequest, for a serialized ``ReloadConfigRequest``."""
        reply: ModelReply = await self._await(self.handle.reload_config.remote(raw))
        return reply

    async def set_label_weight(self, model: str, label: str, weight: float) -> ModelReply:
        """Send ``weight`` of ``model``'s ``latest`` requests to ``label``'s version."""
        reply: ModelReply = await self._await(
            self.handle.set_label_weight.remote(model, label, weight)
        )
        return reply

    async def rollout(self, model: str, action: str = "") -> ModelReply:
        """A model's rollout report (JSON), after ``promote`` or ``abort`` when asked."""
        reply: ModelReply = await self._await(self.handle.rollout.remote(model, action))
        return reply

    async def snapshot(self) -> Snapshot:
        snapshot: Snapshot = await self._await(self.handle.snapshot.remote())
        return snapshot

    async def report_replica(
        self,
        replica: str,
        epoch: int,
        loads: dict[str, Any],
        build: str = "",
        figures: dict[str, Any] | None = None,
    ) -> None:
        """A serving replica's heartbeat (its routing epoch, the versions it holds, the version
        it was built with, its per-version counts: ``runtime.tally``); Ray's errors as they are
        (the next heartbeat tells a manager that restarted)."""
        await self.handle.report_replica.remote(replica, epoch, loads, build, figures)

    def ready_blocking(self, timeout_s: float) -> bool:
        return bool(self.handle.ready.remote().result(timeout_s=timeout_s))

    def snapshot_blocking(self, timeout_s: float) -> Snapshot:
        snapshot: Snapshot = self.handle.snapshot.remote().result(timeout_s=timeout_s)
        return snapshot

    def get_status_blocking(self, raw: bytes, timeout_s: float | None = None) -> ModelReply:
        reply: ModelReply = self.handle.get_status.remote(raw).result(timeout_s=timeout_s)
        return reply

    def drain_blocking(self, timeout_s: float) -> None:
        """Readiness 503 and health NOT_SERVING from now on (``VersionManager.drain``)."""
        self.handle.drain.remote().result(timeout_s=timeout_s)


def transport_error(e: Exception) -> ServingError:
    """What a failed call to another deployment tells the client: a gRPC failure between
    deployments keeps its code and details (an oversized message is RESOURCE_EXHAUSTED), a
    replica that died or cannot be reached is UNAVAILABLE, anything else INTERNAL."""
    import grpc
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    from compat.errors import Internal, Unavailable, from_code

    logger.warning("Call to a model replica failed: %s: %s", type(e).__name__, e)
    if isinstance(e, grpc.aio.AioRpcError):
        return from_code(e.code().value[0], e.details() or e.code().name)
    if isinstance(e, ActorDiedError | ActorUnavailableError):
        return Unavailable("The model's replica is unavailable; retry later")
    return Internal(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
