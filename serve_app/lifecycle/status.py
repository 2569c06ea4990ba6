"""What the version manager knows of every version, and the answers read from it: TF Serving's
GetModelStatus, the server's readiness and the snapshot operators and the CLI read.

``Statuses`` is the table (model -> version -> ``VersionStatus``); the version manager
(``serve_app.lifecycle.rollout``) changes it as versions load (``record``, with the applier's
``LoadOutcome``), become AVAILABLE (``mark_available``) and go; the answers only read it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from compat.errors import InvalidArgument, NotFound, StatusCode
from compat.protos import get_model_status_pb2
from compat.routing import ModelRoutes, RoutingTable
from serve_app.config.args import ModelArgs
from serve_app.deployments import LoadInfo, Snapshot, VersionState
from serve_app.lifecycle.repository import Scan, aspired_versions

State = get_model_status_pb2.ModelVersionStatus.State

RETRY_AFTER_S = 60.0
"""A version that failed to load is tried again this long after its first failure (TF
Serving's ``load_retry_interval_micros`` default), then twice as long after each next one."""

REPORT_TTL_S = 5.0
"""A serving replica that has not reported for this long is taken for gone."""


@dataclass
class VersionStatus:
    state: int
    error_code: int = 0
    error_message: str = ""
    path: str = ""
    stamp: str = ""
    """What the version's files looked like when it was loaded (``VersionStore.stamp``)."""
    loaded: bool = False
    """Loaded and warmed up; becomes AVAILABLE once the ingress routes to it."""
    load_seconds: float = 0.0
    """How long its load (and warmup) took, in the replica that reported it."""
    warmup_records: int = 0
    """Records of its warmup file replayed."""
    failures: int = 0
    """Failed loads in a row."""
    failed_at: float = 0.0
    """When the last one failed (monotonic)."""

    def record(self, outcome: LoadOutcome) -> None:
        """How its load went: loaded (AVAILABLE once routed), or END with the error."""
        if outcome.code == StatusCode.OK:
            self.loaded = True
            self.load_seconds = outcome.load_seconds
            self.warmup_records = outcome.warmup_records
        else:
            self.state, self.error_code = State.END, outcome.code.value[0]
            self.error_message = outcome.message
            self.failures += 1
            self.failed_at = time.monotonic()

    @property
    def load_failed(self) -> bool:
        """It ended with a load error (not an unload, which ends with OK)."""
        return self.state == State.END and bool(self.error_code)

    def retry_due(self, now: float) -> bool:
        """A version that failed to load is tried again once its files change, and also after
        ``RETRY_AFTER_S`` doubling with each failure (up to an hour): what failed for a storage
        blip loads once the store is back, with nobody touching its files."""
        if not self.load_failed or not self.failures:
            return False
        wait = min(RETRY_AFTER_S * 2 ** min(self.failures - 1, 10), 3600.0)
        return now - self.failed_at >= wait

    @classmethod
    def incomplete(cls, path: str, message: str) -> VersionStatus:
        """A version without a whole SavedModel: END, NOT_FOUND with its store's message
        (``VersionStore.incomplete``: TF's reader's for a directory)."""
        return cls(State.END, StatusCode.NOT_FOUND.value[0], message, path=path)


@dataclass(frozen=True)
class LoadOutcome:
    """How a version's load went (the applier's answer): OK, or the error it ended with."""

    code: StatusCode = StatusCode.OK
    """OK; FAILED_PRECONDITION: it failed to load; UNAVAILABLE: its deployment failed;
    DEADLINE_EXCEEDED: it did not load in time."""
    message: str = ""
    """The error's message."""
    load_seconds: float = 0.0
    """How long the load (and warmup) took."""
    warmup_records: int = 0
    """Records of the warmup file replayed."""


class Statuses(dict[str, dict[int, VersionStatus]]):
    """model -> version -> its status."""

    def model_status(
        self, spec: Any, routing: RoutingTable
    ) -> get_model_status_pb2.GetModelStatusResponse:
        """GetModelStatus (get_model_status_impl.cc): every version of the model, newest
        first, or the one its spec names (a version or a label)."""
        name = spec.name
        if not name:
            raise InvalidArgument("ModelSpec has no name specified.")
        versions = self.get(name)
        if not versions:
            raise NotFound(f"Could not find any versions of model {name}")
        wanted: int | None = None
        if spec.HasField("version"):
            wanted = spec.version.value
        elif spec.version_label:
            labels = routing.models.get(name, ModelRoutes()).labels
            if spec.version_label not in labels:
                raise InvalidArgument(f"Unrecognized servable version label: {spec.version_label}")
            wanted = labels[spec.version_label]
        response = get_model_status_pb2.GetModelStatusResponse()
        for v in sorted(versions, reverse=True):
            if wanted is not None and v != wanted:
                continue
            s = versions[v]
            entry = response.model_version_status.add(version=v, state=s.state)
            entry.status.error_code = s.error_code
            entry.status.error_message = s.error_message
        if wanted is not None and not response.model_version_status:
            raise NotFound(f"Could not find version {wanted} of model {name}")
        return response

    def mark_available(self, routing: RoutingTable) -> list[tuple[str, int]]:
        """Loaded versions that ``routing`` routes to become AVAILABLE; returns them. (Only
        once every serving replica routes with it: a client told AVAILABLE is served by any.)"""
        now = []
        for model, routes in routing.models.items():
            for v in routes.versions:
                s = self.get(model, {}).get(v)
                if s is not None and s.loaded and s.state == State.LOADING:
                    s.state = State.AVAILABLE
                    now.append((model, v))
        return now

    def loaded(self, model: str, version: int) -> bool:
        s = self.get(model, {}).get(version)
        return s is not None and s.loaded

    def newest_available(self, models: Iterable[ModelArgs], scans: Mapping[str, Scan]) -> bool:
        """Every model's newest aspired version (in its last successful scan: readiness reads
        state, never storage) is AVAILABLE. A version that failed to load is not aspired: a
        bad version on disk must not take the server out of its load balancer while the
        version before it serves."""
        for model in models:
            scan = scans.get(model.name)
            if scan is None:
                return False
            versions = self.get(model.name, {})
            loadable = {
                v: p
                for v, p in scan.complete.items()
                if not (v in versions and versions[v].load_failed)
            }
            aspired = aspired_versions(loadable, model.version_policy)
            if not aspired:
                return False
            s = self.get(model.name, {}).get(max(aspired))
            if s is None or s.state != State.AVAILABLE:
                return False
        return True

    def snapshot(self) -> Snapshot:
        """States by name, and how each loaded version's load went (seconds, warmup records)."""
        return Snapshot(
            status={
                m: {v: VersionState(State.Name(s.state)) for v, s in vs.items()}
                for m, vs in self.items()
            },
            loads={
                m: {
                    v: LoadInfo(seconds=s.load_seconds, warmup_records=s.warmup_records)
                    for v, s in vs.items()
                    if s.loaded
                }
                for m, vs in self.items()
            },
        )


@dataclass
class ReplicaReport:
    """What a serving replica last said it holds."""

    epoch: int
    """The routing table's epoch."""
    loads: dict[str, Any]
    """Co-located version (deployment name) -> its ``LoadState``."""
    at: float
    """When (monotonic)."""
    build: str = ""
    """The version its deployment was built with (``launch.app``'s hash of the serving
    replicas' settings), as the replica was started: the manager adopts a deployment that runs
    under another version only when it was built the same (``Applier.adopt_running``)."""
    figures: dict[str, Any] | None = None
    """Its per-version counts since it started (``runtime.tally.Tally.figures``)."""


class Reports(dict[str, ReplicaReport]):
    """Serving replica -> its last heartbeat (``VersionManager.report_replica``)."""

    def report(
        self,
        replica: str,
        epoch: int,
        loads: dict[str, Any],
        build: str = "",
        figures: dict[str, Any] | None = None,
    ) -> None:
        self[replica] = ReplicaReport(epoch, loads, time.monotonic(), build, figures)

    def live(self) -> list[ReplicaReport]:
        """Reports of the serving replicas alive now (a dead one stops reporting)."""
        now = time.monotonic()
        for replica in [r for r, rep in self.items() if now - rep.at > REPORT_TTL_S]:
            del self[replica]
        return list(self.values())

    def all_hold(self, replicas: int, check: Callable[[ReplicaReport], bool]) -> bool:
        """``check`` holds for every live serving replica, and ``replicas`` of them report."""
        live = self.live()
        return len(live) >= replicas and all(check(r) for r in live)
