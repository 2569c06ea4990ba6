"""The serving replica's Ray lifecycle: the ``Ingress`` deployment builds the replica's data plane
(``runtime.dataplane``) and its client ports (``transports.listeners``) over it, and keeps both
in step with what Serve hands it.

Each replica of this deployment binds the client ports itself (with ``SO_REUSEPORT``, so several
replicas per node share them), loads the served versions (``ModelVersion``, batching queue
included) and runs them in its own process: one Python process between the client's socket and
the model. Ray Serve keeps the lifecycle: it starts, health-checks and replaces replicas, and
ships the routing table and the versions to hold as ``user_config`` (blue/green: a replica
loads a new version before its table routes to it). The replica tells the version manager what
it holds (a heartbeat), reports its load to Serve's autoscaler (``record_autoscaling_stats``,
with ``--serving_replicas=auto``), and on shutdown stops taking connections, sends GOAWAY to its
gRPC clients (which move to the other replicas) and lets calls in flight end.

Under a memory budget a replica holds part of the versions (``runtime.paging``): a call for
one it does not hold may come one hop from another replica through this deployment's handle
(``forwarded``).

A model may instead run in deployments of its own (``colocate=false``: its own replicas,
resources and autoscaling); the data plane then forwards the request's bytes to them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app import metrics
from serve_app.calls import ModelCall, ModelReply
from serve_app.deployments import INGRESS, ManagerClient
from serve_app.ray_patches import replica_names
from serve_app.runtime import autoscaling, request_log
from serve_app.runtime.dataplane import DataPlane, share_cores
from serve_app.runtime.model import freeze_once
from serve_app.runtime.paging import ServePeers
from serve_app.runtime.replica_config import (
    IngressConfig,
    ListenConfig,
    VersionConfig,
    VersionOptions,
)
from serve_app.transports.listeners import MAX_MESSAGE_BYTES, Listeners

logger = logging.getLogger("ray.serve")

REPORT_INTERVAL_S = 1.0
"""How often a serving replica tells the version manager what it holds (a heartbeat)."""
ADVERTISE_EVERY = 10
"""Under a budget, every this many heartbeats the replica tells Serve's routers again what it
holds (``runtime.paging``), besides at each change."""


class Ingress:
    """One serving replica: its data plane, its client ports, its heartbeat."""

    def __init__(
        self,
        manager: DeploymentHandle,
        local_options: VersionOptions | None = None,
        listen: ListenConfig | None = None,
        build: str = "",
    ) -> None:
        if local_options is not None:  # TF imported and frozen before a load is measured
            freeze_once()
        self._manager = ManagerClient(manager)
        self._build = build
        """The version this deployment was built with (``launch.app``), reported as started."""
        replicas = listen.replicas if listen else 1
        self._most = replicas
        """The most serving replicas there may be."""
        gpu = (
            local_options is not None
            and local_options.session.allow_gpu
            and bool(ray.get_gpu_ids())
        )
        app_name = serve.get_replica_context().app_name
        self.plane = DataPlane(
            self._manager,
            app_name,
            listen.max_request_bytes if listen else MAX_MESSAGE_BYTES,
            share_cores(local_options, replicas, gpu=gpu),
            replicas,
            replica_names()[0],
            ServePeers(app_name, INGRESS),
        )
        self._listen = listen
        """The ports; None: this replica binds none."""
        self._listeners: Listeners | None = None
        self._replica = replica_names()[0]
        self._heartbeat: asyncio.Task[None] | None = None

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """The routing table arrives as user_config: one atomic swap per replica. Co-located,
        the versions to hold arrive with it: new ones load first (off the event loop, requests
        keep flowing), then the table swaps, then dropped ones go (in-flight calls keep theirs).
        The first time, the client ports are bound only once the versions are loaded."""
        config = IngressConfig.model_validate(user_config)
        plane = self.plane
        if plane.colocated:
            await plane.load(
                config.local,
                config.versions or VersionConfig(),
                config.num_load_threads,
                config.model_memory_budget_mb,
                _placement(self._most),
            )
        plane.configure(config)
        if plane.colocated:
            plane.unload(keep=config.local)
        listen = self._listen
        if self._listeners is None and listen is not None:
            listeners = Listeners(
                plane,
                listen.host,
                listen.grpc_port,
                listen.http_port,
                admin=(listen.admin_host, listen.admin_port),
                max_request_bytes=plane.max_request_bytes,
                health=listen.grpc_health_service,
                reflection=listen.grpc_reflection,
                tls=_tls(listen.ssl_config_file),
                max_concurrent_requests=listen.max_concurrent_requests,
                socket_path=listen.grpc_socket_path,
                channel_arguments=list(listen.grpc_channel_arguments.items()),
                rest_body_timeout_s=listen.rest_body_timeout_s,
                max_connection_age_s=listen.max_connection_age_s,
                max_connection_age_grace_s=listen.max_connection_age_grace_s,
                rest_keepalive_timeout_s=listen.rest_keepalive_timeout_s,
                rest_max_connection_age_s=listen.rest_max_connection_age_s,
            )
            await listeners.start()
            self._listeners = listeners
        await self._report()
        if self._heartbeat is None:
            self._heartbeat = asyncio.get_running_loop().create_task(self._report_forever())

    async def _report(self) -> None:
        """Tell the version manager which routing table and versions this replica holds: it
        moves a rollout on only once every serving replica has them."""
        try:
            await asyncio.wait_for(
                self._manager.report_replica(
                    self._replica,
                    self.plane.table.epoch,
                    self.plane.load_states(),
                    self._build,
                    self.plane.tally.figures(),
                ),
                REPORT_INTERVAL_S * 2,
            )
        except Exception as e:  # the manager restarting: the next heartbeat tells it
            logger.debug("Reporting to the version manager failed: %s", e)

    async def _report_forever(self) -> None:
        beats = 0
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            await self._report()
            pager = self.plane.pager
            if pager is not None:
                pager.metrics.refresh()
                beats += 1
                if beats % ADVERTISE_EVERY == 0:  # a restarted controller learns it again
                    pager.advertise()

    async def forwarded(self, target: str, call: ModelCall) -> ModelReply | None:
        """A call another serving replica sent one hop here, for a version under the memory
        budget that this one holds (``runtime.paging``); None: not served here."""
        return await self.plane.answer_hop(target, call)

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """What says this replica is busy, for Serve's autoscaler (``--serving_replicas=auto``,
        ``serve_app.runtime.autoscaling``): clients talk to the replica directly, so Serve's
        handles see none of its requests."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(0)  # one pass of the event loop
        lag = loop.time() - started
        listeners = self._listeners
        return {
            autoscaling.IN_FLIGHT: listeners.admission.mean_in_flight() if listeners else 0.0,
            autoscaling.QUEUED_BATCHES: float(
                sum(v.queued_batches() for v in self.plane.versions_held())
            ),
            autoscaling.LOOP_LAG: lag,
        }

    def check_health(self) -> None:
        """Serve's health check: a replica whose REST server stopped is replaced."""
        if self._listeners is not None and not self._listeners.alive():
            raise RuntimeError("the REST server of this replica stopped")

    async def __del__(self) -> None:
        """Serve's graceful shutdown: stop taking connections, let calls in flight finish."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        listeners, self._listeners = self._listeners, None
        if listeners is not None:
            await listeners.stop(self._listen.shutdown_grace_s if self._listen else 10.0)
        metrics.flush()
        await asyncio.to_thread(request_log.close_all)


def _placement(most: int) -> tuple[int, int]:
    """This replica's rank among the deployment's replicas (Serve's ranks: a replacement takes
    the rank of the replica it replaces), and how many there may be (``most``: with
    ``--serving_replicas=auto`` its most, since Serve's world size is the configured count)."""
    rank = getattr(serve.get_replica_context().rank, "rank", 0)  # None before Serve sets it
    return rank, max(most, rank + 1)


def _tls(ssl_config_file: str | None) -> Any:
    """The SSLConfig the ports speak (``ssl_config_file``), read in this process; None:
    plaintext."""
    if not ssl_config_file:
        return None
    from compat.text_configs import read_ssl_config

    return read_ssl_config(ssl_config_file)
