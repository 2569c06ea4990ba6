"""The applier: makes a plan real in Ray Serve and waits until it is (TF Serving's Loader side).

``apply`` redeploys the application built from a plan (the builder is handed in: it is
``launch.app.build_app``, the only place ``.bind()`` happens) and waits until every serving
replica routes with the plan's table and every deployment of it is HEALTHY, nothing else left.
``await_loaded`` waits for one version and says how its load went (``status.LoadOutcome``):
from its own deployment, or, co-located, from the serving replicas' reports. It decides
nothing: the version manager (``serve_app.lifecycle.rollout``) calls it with what the planner
(``serve_app.lifecycle.plan``) chose.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ray import serve
from ray.serve import Application

from compat.errors import StatusCode
from serve_app.config.args import AppArgs
from serve_app.deployments import INGRESS, VERSION_MANAGER, deployment_name
from serve_app.lifecycle.plan import Plan
from serve_app.lifecycle.status import LoadOutcome, ReplicaReport, Reports
from serve_app.ray_patches import deployed_version

logger = logging.getLogger("ray.serve")

LOAD_TIMEOUT_S = 600.0
"""How long a version's load, or a redeploy settling, is waited for."""

ADOPT_WAIT_S = 30.0
"""How long the first apply waits for every serving replica's first report (``adopt_running``):
replicas that cannot start by then are deployed again, as they would be without adoption."""


class Builder(Protocol):
    """``build_app``: the application for a plan. ``adopt`` maps a version it computes for a
    deployment to the version to deploy it under instead (``Applier.adopt_running``)."""

    def __call__(
        self, args: AppArgs, plan: Plan, adopt: Mapping[str, str] | None = None
    ) -> Application: ...


_TIMED_OUT = LoadOutcome(StatusCode.DEADLINE_EXCEEDED, "Timed out loading")


class Applier:
    """Serve calls and waits for one application (the one this replica belongs to)."""

    def __init__(
        self, builder: Builder, reports: Reports, serving_replicas: int, manager_build: str = ""
    ) -> None:
        self._build = builder
        self._manager_build = manager_build
        """The version the builder gave the version manager (this replica)."""
        self._reports = reports
        """Serving replica -> what it last reported holding (``VersionManager.report_replica``)."""
        self._replicas = serving_replicas
        self.app_name = serve.get_replica_context().app_name
        self._adopt: dict[str, str] = {}
        """Our version of the serving replicas -> the version they run under (``adopt_running``)."""

    async def adopt_running(self, plan: Plan) -> None:
        """Keep the replicas that run now through the redeploys to come, when they were built as
        ours would be: the version manager (this replica), the serving replicas, and those of
        ``plan``'s versions in deployments of their own.

        A Serve config's deployments (``serve deploy``, ``serve run config.yaml``) run under the
        config's code version, not under ours: redeployed with ours, every replica would start
        again (seconds each, TF imported anew), a restart of the whole serving path just after
        it came up. Each replica knows the version it was built with (our hash of its
        settings, handed in when the deployment was built): a serving replica reports it, a
        model version's replica answers ``built_with``. When the replicas of a deployment say
        the same, the builder deploys it under the version it runs whenever it computes that
        same hash, so nothing restarts. Settings that changed since give another hash, and the
        replicas are replaced as before. Waits up to ``ADOPT_WAIT_S`` in all for the replicas;
        a deployment that does not answer by then is not adopted."""
        deadline = time.monotonic() + ADOPT_WAIT_S
        running = await asyncio.to_thread(deployed_version, self.app_name, VERSION_MANAGER)
        if running is not None and self._manager_build:
            self._adopt[self._manager_build] = running
        running = await asyncio.to_thread(deployed_version, self.app_name, INGRESS)
        if running is not None:
            while time.monotonic() < deadline and not self._all_serving_replicas(lambda r: True):
                await asyncio.sleep(0.05)
            builds = {r.build for r in self._reports.live()}
            every = self._all_serving_replicas(lambda r: True)
            if every and len(builds) == 1 and "" not in builds:
                self._adopt[builds.pop()] = running
        for model, versions in plan.deployed.items():
            for version in versions:
                name = deployment_name(model, version)
                running = await asyncio.to_thread(deployed_version, self.app_name, name)
                build = await self._built_with(name, deadline) if running is not None else ""
                if build and running is not None:
                    self._adopt[build] = running

    async def _built_with(self, name: str, deadline: float) -> str:
        """What a model version's deployment says it was built with, once it is HEALTHY ("" if
        it fails, or does not answer before ``deadline``)."""
        while time.monotonic() < deadline:
            status = await asyncio.to_thread(serve.status)
            app = status.applications.get(self.app_name)
            d = app.deployments.get(name) if app else None
            if d is None or d.status in ("DEPLOY_FAILED", "UNHEALTHY"):
                return ""
            if d.status == "HEALTHY":
                handle = serve.get_deployment_handle(name, self.app_name)
                try:
                    left = max(deadline - time.monotonic(), 0.1)
                    return str(await asyncio.wait_for(handle.built_with.remote(), left))
                except Exception:  # an older build without the method, or no answer in time
                    return ""
            await asyncio.sleep(0.2)
        return ""

    async def apply(self, args: AppArgs, plan: Plan) -> None:
        """Redeploy the application with ``plan`` and wait until Ray has settled it."""
        target = serve.RunTarget(
            target=self._build(args, plan, self._adopt), name=self.app_name, route_prefix=None
        )
        await asyncio.to_thread(serve.run_many, [target], wait_for_applications_running=False)
        await self._await_settled(plan)

    def _all_serving_replicas(self, check: Callable[[ReplicaReport], bool]) -> bool:
        """``check`` holds for every live serving replica, and all of them have reported."""
        return self._reports.all_hold(self._replicas, check)

    async def _await_settled(self, plan: Plan) -> None:
        """Every serving replica routes with ``plan``'s table (their reports say so as soon as
        their reconfigure ends), every deployment of the plan is HEALTHY and no other is left
        (Serve's status)."""
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        names = {deployment_name(m, v) for m, vs in plan.deployed.items() for v in vs}
        names |= {INGRESS, VERSION_MANAGER}
        while time.monotonic() < deadline:
            if self._all_serving_replicas(lambda r: r.epoch >= plan.routing.epoch):
                status = await asyncio.to_thread(serve.status)
                app = status.applications.get(self.app_name)
                if app is not None:
                    # Ingress too: replicas of an older version are still being stopped while
                    # it is UPDATING (a client could connect to one that is about to go).
                    healthy = all(
                        d.status == "HEALTHY" for n, d in app.deployments.items() if n in names
                    )
                    if healthy and not set(app.deployments) - names:
                        return
            await asyncio.sleep(0.05)
        logger.warning("Application did not settle within %.0fs", LOAD_TIMEOUT_S)

    async def await_loaded(self, model: str, version: int, own_deployment: bool) -> LoadOutcome:
        """Wait for a version: from its deployment (``own_deployment``), or co-located, from
        the serving replicas' reports."""
        outcome = await (
            self._await_deployment(model, version)
            if own_deployment
            else self._await_local(deployment_name(model, version))
        )
        if outcome.code == StatusCode.OK:
            logger.info("%s version %d loaded in %.2fs", model, version, outcome.load_seconds)
        else:
            logger.error("%s version %d failed to load: %s", model, version, outcome.message)
        return outcome

    async def _await_deployment(self, model: str, version: int) -> LoadOutcome:
        """HEALTHY, then its replica's ``load_state``; a failed deployment is UNAVAILABLE."""
        name = deployment_name(model, version)
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while time.monotonic() < deadline:
            status = await asyncio.to_thread(serve.status)
            app = status.applications.get(self.app_name)
            d = app.deployments.get(name) if app else None
            if d is not None and d.status == "HEALTHY":
                handle = serve.get_deployment_handle(name, self.app_name)
                return _outcome(await handle.load_state.remote())
            if d is not None and d.status in ("DEPLOY_FAILED", "UNHEALTHY"):
                return LoadOutcome(StatusCode.UNAVAILABLE, d.message)
            await asyncio.sleep(0.2)
        return _TIMED_OUT

    async def _await_local(self, target: str) -> LoadOutcome:
        """Co-located: every serving replica loads the version in its reconfigure and reports
        how it went; loaded once all of them hold it, failed as soon as one failed."""
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while time.monotonic() < deadline:
            live = self._reports.live()
            failed = [r.loads[target] for r in live if target in r.loads and not r.loads[target].ok]
            if failed:
                return _outcome(failed[0])
            if self._all_serving_replicas(lambda r: target in r.loads):
                return _outcome(live[0].loads[target])
            await asyncio.sleep(0.2)
        return _TIMED_OUT


def _outcome(state: Any) -> LoadOutcome:
    """A replica's ``model.LoadState`` as a ``LoadOutcome``."""
    if not state.ok:
        return LoadOutcome(StatusCode.FAILED_PRECONDITION, state.message)
    return LoadOutcome(
        load_seconds=state.load_seconds, warmup_records=getattr(state, "warmup_records", 0)
    )
