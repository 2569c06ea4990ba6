"""A serving replica's versions under a memory budget (``--model_memory_budget_mb``, issue 27):
loaded at rollout, kept where placement says, paged in and out, and answered here or one hop
away.

- **Rollout** (``Pager.load``): each new version is loaded and warmed up once, one at a time,
  its load state kept for the version manager (so it is AVAILABLE once it loads, resident or
  not), then kept by placement (``runtime.placement``: the versions this replica owns first,
  the others only into free room) within the budget (``runtime.residency``).
- **A call** (``Pager.call``) for a version held here runs here. One for a version not held
  here is paged in here when placement says so (it fits in free room, or it is hot here);
  otherwise it goes one hop (``Peers``) to a replica that holds the version, where it runs in
  that version's batching queue under the same deadline. Serve routes the hop: each replica
  tells Serve's routers what it holds or is paging in (``ray_patches.advertise_models``) and
  the hop is a handle call with the version as multiplexed model id; where no replica holds it,
  Serve picks the replica holding the fewest, which pages it in. A replica that receives a hop
  answers it itself, paging in if it must (never a second hop). A hop that cannot be made (the
  replica went away, or its table does not know the version yet) is answered here.
- **Bytes**: TF Serving's estimate from a version's files, corrected by what its load grew: this
  process's RSS or, on a GPU replica, the card's bytes in use (``residency.measured``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

from compat.errors import ServingError, Unavailable
from serve_app.calls import ModelCall, ModelReply
from serve_app.metrics import learn_signatures
from serve_app.metrics.paging import PagingMetrics
from serve_app.runtime.model import LoadState, ModelVersion
from serve_app.runtime.placement import Placement
from serve_app.runtime.replica_config import LocalVersion, VersionConfig, VersionOptions
from serve_app.runtime.residency import Residency, measured

logger = logging.getLogger("ray.serve")

ADVERTISE_S = 0.1
"""Changes to what a replica holds are told to Serve's routers at most this often (Serve's own
``PUSH_MULTIPLEXED_MODEL_IDS_INTERVAL_S``)."""


class Peers(Protocol):
    """The other serving replicas, as a replica under a budget reaches them."""

    async def call(self, target: str, call: ModelCall) -> ModelReply | None:
        """``call`` answered by a replica holding ``target``; None: no replica answered it
        (the caller answers it itself)."""

    def advertise(self, targets: list[str]) -> None:
        """Tell the routers that this replica holds (or is paging in) ``targets``."""

    def forget(self, keep: set[str]) -> None:
        """Versions not in ``keep`` are no longer served: nothing is kept for them."""


class ServePeers:
    """``Peers`` through Serve: the serving replicas' own deployment (``deployment`` of
    ``app_name``, its handle made at the first hop), by multiplexed model id."""

    def __init__(self, app_name: str, deployment: str) -> None:
        self._app_name = app_name
        self._deployment = deployment
        self._handle: Any = None
        self._by_target: dict[str, Any] = {}

    async def call(self, target: str, call: ModelCall) -> ModelReply | None:
        handle = self._by_target.get(target)
        if handle is None:
            if self._handle is None:
                from ray import serve

                self._handle = serve.get_deployment_handle(self._deployment, self._app_name)
            handle = self._by_target[target] = self._handle.options(multiplexed_model_id=target)
        response = handle.forwarded.remote(target, call)
        try:
            reply: ModelReply | None = await response
        except asyncio.CancelledError:  # the caller's deadline: the hop's call stops too
            response.cancel()
            raise
        except Exception as e:  # the replica went away mid-call: answered here instead
            logger.warning("The hop for %s failed (%s); answering it here", target, e)
            return None
        return reply

    def advertise(self, targets: list[str]) -> None:
        from serve_app.ray_patches import advertise_models

        try:
            advertise_models(targets)
        except Exception as e:  # the controller restarting: the next change tells it
            logger.warning("Could not tell Serve's routers what this replica holds: %s", e)

    def forget(self, keep: set[str]) -> None:
        for target in set(self._by_target) - keep:
            del self._by_target[target]


class Pager:
    """The versions of one serving replica under a memory budget."""

    def __init__(self, options: VersionOptions, replica: str, peers: Peers | None = None) -> None:
        self._options = options
        self.metrics = PagingMetrics(replica)
        """What the residency reports; the heartbeat ``refresh``-es its gauges."""
        self.residency: Residency[PagedVersion] = Residency(
            0, self._page_in, self.metrics, on_change=self._changed
        )
        self.paged: dict[str, tuple[LocalVersion, LoadState]] = {}
        """Each version loaded at rollout -> how its load went."""
        self.placement = Placement()
        self.peers = peers
        self._versions = VersionConfig()
        self._advertising = False

    # --- rollout ----------------------------------------------------------------------------

    async def load(
        self,
        wanted: dict[str, LocalVersion],
        versions: VersionConfig,
        budget_mb: int,
        rank: int = 0,
        replicas: int = 1,
    ) -> None:
        """Each new version loaded (and warmed up) once, one at a time, its load state kept,
        then held if placement keeps it: owned versions first, evicting for their room, then
        the others into free room; a version pinned by a reload is paged in now; the resident
        ones take the new batching knobs."""
        self._versions = versions
        residency, placement = self.residency, self.placement
        residency.budget = budget_mb << 20
        placement.rank, placement.replicas = rank, replicas
        ordered = sorted(wanted.items(), key=lambda item: not placement.owns(item[0]))
        for target, spec in ordered:
            if target in self.paged:
                entry = residency.entries.get(target)
                if entry is not None and entry.pinned != spec.pinned:
                    entry.pinned = spec.pinned
                    if spec.pinned:  # pinned by a reload: resident from now on
                        with contextlib.suppress(ServingError):
                            async with residency.use(target):
                                pass
                continue
            async with residency.load_lock:
                v, nbytes = await asyncio.to_thread(self._measured_load, spec)
            self.paged[target] = (spec, v.load_state())
            if v.servable is None:
                v.close()
                continue
            learn_signatures(v.model, v.servable.signatures)
            v.reconfigure(versions)
            evict = placement.alone or placement.owns(target)
            residency.admit(target, spec.model, spec.version, v, nbytes, spec.pinned, evict)
        for v in residency.resident().values():
            v.reconfigure(versions)

    def _measured_load(self, spec: LocalVersion) -> tuple[PagedVersion, int]:
        """Load one version (in a worker thread) and the bytes it is counted for: TF Serving's
        estimate from its files, corrected by what the load grew (``residency.measured``)."""
        return measured(
            lambda: PagedVersion(spec.model, spec.version, spec.path, **dict(self._options)),
            lambda v: v.files or spec.path,
        )

    def _page_in(self, target: str) -> tuple[PagedVersion, int]:
        """``Residency``'s loader: a version again, for a call; its load's error if it fails."""
        v, nbytes = self._measured_load(self.paged[target][0])
        if v.servable is None:
            error = v.error
            v.close()
            raise error or Unavailable(f"{v.model} version {v.version} did not load")
        v.reconfigure(self._versions)
        return v, nbytes

    def unload(self, keep: set[str]) -> None:
        """Let go of the versions not in ``keep``; each closes once its last call is done."""
        for target in set(self.paged) - keep:
            del self.paged[target]
        self.residency.drop(keep)
        self.placement.load.forget(keep)
        if self.peers is not None:
            self.peers.forget(keep)

    # --- calls ------------------------------------------------------------------------------

    def serves(self, target: str) -> bool:
        """``target`` is a version under this budget that loaded at rollout."""
        return target in self.residency.entries

    async def call(self, target: str, call: ModelCall, hop: bool = False) -> ModelReply:
        """Answer ``call`` for ``target``: here if it is held here, if placement pages it in
        here, or if the call is a hop already; else one hop to a replica that holds it."""
        residency = self.residency
        entry = residency.entries[target]
        self.placement.load.record(target)
        peers = self.peers
        if (
            not hop
            and peers is not None
            and not entry.charged
            and not self.placement.keep_here(target, residency.victims(target))
        ):
            reply = await peers.call(target, call)
            if reply is not None:
                self.metrics.forwarded(entry.model, entry.version)
                return reply
        async with residency.use(target) as version:
            return await version.call(call)

    # --- what the routers are told ----------------------------------------------------------

    def _changed(self) -> None:
        """What is held changed: told to the routers once the changes of the next
        ``ADVERTISE_S`` are in."""
        if self.peers is None or self._advertising:
            return
        with contextlib.suppress(RuntimeError):  # no event loop: nothing routes here yet
            asyncio.get_running_loop().call_later(ADVERTISE_S, self.advertise)
            self._advertising = True

    def advertise(self) -> None:
        self._advertising = False
        if self.peers is not None:
            self.peers.advertise(sorted(self.residency.held_or_loading()))


class PagedVersion(ModelVersion):
    """A version under the memory budget: freed when it is evicted (``close``), not once the
    garbage collector finds it."""

    @property
    def files(self) -> Any:
        """Its local directory (an object-store version's download), None if it has none."""
        return self._local

    def close(self) -> None:
        self.__del__()
        self.servable = self._local = None
        self._pool.shutdown(wait=False)  # its threads go now, not at the next collection
