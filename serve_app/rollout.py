"""The version manager: discovered versions -> Serve deployment updates, blue/green.

It lives in the application as a one-replica deployment, so ``serve run serve_app:app`` (which
leaves no driver loop of ours running) and the CLI behave alike. Each step is a redeploy of the
same application with an updated plan (``build_app``): deployments keep a stable internal version,
so Ray leaves unchanged ones running, reconfigures the ingress in place for routing changes,
starts added versions and stops removed ones. Availability-preserving order (TF Serving's
default): add green, wait until it is loaded, warmed up and healthy, switch routing, then remove
blue. Resource-preserving: unroute and remove blue first, then add green.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

from ray import serve

from compat import model_config
from compat.errors import InvalidArgument, NotFound, ServingError, StatusCode
from compat.protos import get_model_status_pb2, model_management_pb2, status_pb2
from compat.routing import ModelRoutes
from serve_app import store
from serve_app.args import AppArgs, ModelArgs, models_from_config
from serve_app.calls import ModelReply, parse_request
from serve_app.plan import Plan, deployment_name, invalid_labels, routing_for
from serve_app.repository import aspired_versions, scan_all_numeric, scan_versions
from serve_app.status import ReplicaReport, Reports, State, Statuses, VersionStatus

logger = logging.getLogger("ray.serve")

LOAD_TIMEOUT_S = 600.0


class VersionManager:
    """Owns the plan: polls base paths, rolls versions out, answers model status and reloads."""

    def __init__(
        self, args: dict[str, Any], plan: dict[str, Any], _versions: list[Any] | None = None
    ) -> None:
        # ``_versions`` only keeps the model-version deployments in the application graph.
        self.args = AppArgs.model_validate(args)
        self.plan = Plan.model_validate(plan)
        self.status = Statuses()
        for model, versions in self.plan.deployed.items():
            for v, path in versions.items():
                self.status.setdefault(model, {})[v] = VersionStatus(State.LOADING, path=path)
        self._lock = asyncio.Lock()
        self._label_weights: dict[str, tuple[str, float]] = {}
        """Model -> (label, weight): that label's share of ``latest`` traffic (canary)."""
        self._app_name = serve.get_replica_context().app_name
        self._reports = Reports()
        """Serving replica -> what it last reported holding (``report_replica``)."""
        self._started = False
        self._draining = False
        """Set on SIGTERM (``drain``): readiness and health say not serving, requests still are."""
        self._task = asyncio.get_event_loop().create_task(self._poll_forever())

    # --- background loop ---------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        await asyncio.sleep(0)
        while True:
            try:
                async with self._lock:
                    if not self._started:
                        await self._settle_initial()
                        self._started = True
                    await self._reconcile()
            except Exception:
                logger.exception("Version manager step failed; retrying")
            wait = self.args.file_system_poll_wait_seconds
            await asyncio.sleep(wait if wait > 0 else 3600)
            if self.args.model_config_file and self.args.model_config_file_poll_wait_seconds > 0:
                self._reread_config_file()

    def _reread_config_file(self) -> None:
        assert self.args.model_config_file
        try:
            models = models_from_config(model_config.read_file(self.args.model_config_file))
        except ServingError as e:
            logger.warning("Ignoring model config file: %s", e.message)
            return
        self.args.models = models

    async def _settle_initial(self) -> None:
        """The versions deployed with the app: learn whether each loaded.

        First the application is deployed again from here, before any version is AVAILABLE,
        for two reasons: an application deployed from a Serve config (``serve deploy``) carries
        the config's code version on every deployment instead of ours, so the first redeploy
        from here would otherwise restart every replica later, under load; and with
        ``accelerator=auto``, a builder that ran before Ray was connected could not see the
        cluster's GPUs. Serve changes nothing when the versions already match (the CLI's
        deploy); otherwise this replica, too, is replaced, and its successor finds them
        matching."""
        await self._apply(self.plan.copy_deep())
        for model, versions in list(self.plan.deployed.items()):
            for v in list(versions):
                await self._await_loaded(model, v)
        failed = [
            (m, v) for m, vs in self.status.items() for v, s in vs.items() if s.state == State.END
        ]
        if failed:
            plan = self.plan.copy_deep()
            for m, v in failed:
                plan.deployed.get(m, {}).pop(v, None)
            await self._route_and_apply(plan)
        self._mark_available()

    # --- one reconciliation step -------------------------------------------------------------

    async def _reconcile(self) -> None:
        wanted = {m.name: m for m in self.args.models}
        # Models no longer configured: unroute, then remove.
        for gone in [m for m in self.plan.deployed if m not in wanted]:
            await self._retire(gone, set(self.plan.deployed[gone]), drop_model=True)
        for model in wanted.values():
            await self._reconcile_model(model)

    async def _reconcile_model(self, model: ModelArgs) -> None:
        name = model.name
        statuses = self.status.setdefault(name, {})
        on_disk = scan_versions(model.base_path)
        for v, path in scan_all_numeric(model.base_path).items():
            if v not in on_disk and v not in self.plan.deployed.get(name, {}):
                statuses[v] = VersionStatus(
                    State.END,
                    error_code=StatusCode.NOT_FOUND.value[0],  # TF's SavedModel reader's
                    error_message=(
                        f"The SavedModel at {path} is not complete (files still being uploaded, "
                        "or missing); it is loaded once whole"
                        if store.is_remote(path)
                        else "Could not find SavedModel .pb or .pbtxt at supplied export "
                        f"directory path: {path}. Check that the directory exists and that you "
                        "have the right permissions for accessing it."
                    ),
                    path=str(path),
                )
        deployed = self.plan.deployed.get(name, {})
        aspired = self._aspired(model, on_disk)
        to_add = {v: p for v, p in aspired.items() if v not in deployed}
        if self.args.rollout == "resource_preserving":
            retired = {v for v in deployed if v not in aspired}
            if retired:  # TF Serving's resource-preserving policy: unload before loading
                await self._retire(name, retired)
        if to_add:
            await self._add(name, to_add)
        # After the loads: a version that failed drops out of the aspired set, so the version
        # it was meant to replace keeps serving (availability first, as TF Serving does). The
        # directory is read again: it may have changed while versions loaded.
        deployed = self.plan.deployed.get(name, {})
        aspired = self._aspired(model, scan_versions(model.base_path))
        to_remove = {v for v in deployed if v not in aspired}
        if aspired and not any(self.status[name][v].loaded for v in aspired if v in deployed):
            to_remove = set()  # never unload the last servable version for one that is not up
        if to_remove:
            await self._retire(name, to_remove)
        routes = self.plan.routing.models.get(name, ModelRoutes())
        labels = {label: v for label, v in model.version_labels.items() if v in routes.versions}
        if labels != routes.labels:  # a label the config added or moved
            plan = self.plan.copy_deep()
            await self._route_and_apply(plan)

    def _aspired(self, model: ModelArgs, on_disk: dict[int, str]) -> dict[int, str]:
        """The policy applied to the versions on disk that have not failed to load."""
        loadable = {v: p for v, p in on_disk.items() if not self._gave_up(model.name, v, p)}
        return aspired_versions(loadable, model.version_policy)

    def _gave_up(self, model: str, version: int, path: str) -> bool:
        """A version that failed to load is retried only if its directory changed."""
        s = self.status.get(model, {}).get(version)
        if s is None or s.state != State.END or not s.error_code:
            return False
        return s.stamp == store.stamp(path)

    async def _add(self, model: str, versions: dict[int, str]) -> None:
        """Deploy green next to blue, wait until loaded, then route to it."""
        plan = self.plan.copy_deep()
        for v, path in versions.items():
            plan.deployed.setdefault(model, {})[v] = str(path)
            self.status.setdefault(model, {})[v] = VersionStatus(
                State.LOADING, path=str(path), stamp=store.stamp(path)
            )
            logger.info("Loading %s version %d from %s", model, v, path)
        await self._apply(plan)
        for v in versions:
            await self._await_loaded(model, v)
        plan = self.plan.copy_deep()
        for v in versions:
            if not self.status[model][v].loaded:
                plan.deployed[model].pop(v, None)
        await self._route_and_apply(plan)

    async def _retire(self, model: str, versions: set[int], drop_model: bool = False) -> None:
        """Unroute the versions, wait until the ingress switched, then remove their deployments."""
        for v in versions:
            if v in self.status.get(model, {}):
                self.status[model][v].state = State.UNLOADING
                self.status[model][v].loaded = False
            logger.info("Unloading %s version %d", model, v)
        plan = self.plan.copy_deep()
        await self._route_and_apply(
            plan, exclude={model: versions}, drop_model=model if drop_model else None
        )
        for v in versions:
            plan.deployed.get(model, {}).pop(v, None)
        if drop_model or not plan.deployed.get(model):
            plan.deployed.pop(model, None)
        await self._apply(plan)
        for v in versions:
            s = self.status.get(model, {}).get(v)
            if s is not None:
                s.state = State.END
        if drop_model:
            self.status.pop(model, None)

    def _reroute(
        self, plan: Plan, exclude: dict[str, set[int]] | None = None, drop_model: str | None = None
    ) -> None:
        """The plan's routing from what is loaded now (``plan.routing_for``)."""

        def loaded(model: str, version: int) -> bool:
            s = self.status.get(model, {}).get(version)
            return s is not None and s.loaded

        plan.routing = routing_for(
            plan,
            loaded,
            {m.name: m for m in self.args.models},
            self._label_weights,
            epoch=self.plan.routing.epoch + 1,
            exclude=exclude,
            drop_model=drop_model,
        )

    async def set_label_weight(self, model: str, label: str, weight: float) -> ModelReply:
        """Send ``weight`` of the requests for ``latest`` to ``label``'s version, now."""
        if not 0.0 <= weight <= 1.0:
            return ModelReply.error(InvalidArgument("'weight' must be a number between 0 and 1"))
        async with self._lock:
            routes = self.plan.routing.models.get(model)
            if routes is None:
                return ModelReply.error(NotFound(f"Could not find any versions of model {model}"))
            if label not in routes.labels:
                return ModelReply.error(
                    InvalidArgument(f"Unrecognized servable version label: {label}")
                )
            self._label_weights[model] = (label, weight)
            plan = self.plan.copy_deep()
            await self._route_and_apply(plan)
        body = {"model": model, "label": label, "version": routes.labels[label], "weight": weight}
        return ModelReply(payload=json.dumps(body).encode())

    async def _route_and_apply(
        self, plan: Plan, exclude: dict[str, set[int]] | None = None, drop_model: str | None = None
    ) -> None:
        """Recompute the plan's routing from the version states, then apply the plan."""
        self._reroute(plan, exclude, drop_model)
        await self._apply(plan)

    async def _apply(self, plan: Plan) -> None:
        """Redeploy the application with ``plan`` and wait until Ray has settled it."""
        from serve_app.app import build_app

        app = build_app(self.args, plan)
        target = serve.RunTarget(target=app, name=self._app_name, route_prefix=None)
        await asyncio.to_thread(serve.run_many, [target], wait_for_applications_running=False)
        self.plan = plan
        await self._await_settled(plan)
        self._mark_available()

    def _mark_available(self) -> None:
        """Versions every serving replica now routes to are AVAILABLE to clients (not before:
        a client told AVAILABLE is served by any replica)."""
        for model, routes in self.plan.routing.models.items():
            for v in routes.versions:
                s = self.status.get(model, {}).get(v)
                if s is not None and s.loaded and s.state == State.LOADING:
                    s.state = State.AVAILABLE
                    logger.info("%s version %d is AVAILABLE", model, v)

    async def _await_settled(self, plan: Plan) -> None:
        """Every serving replica routes with ``plan``'s table (their reports say so as soon as
        their reconfigure ends), every deployment of the plan is HEALTHY and no other is left
        (Serve's status)."""
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        names = {deployment_name(m, v) for m, vs in plan.deployed.items() for v in vs}
        names |= {"Ingress", "VersionManager"}
        while time.monotonic() < deadline:
            if self._all_serving_replicas(lambda r: r.epoch >= plan.routing.epoch):
                status = await asyncio.to_thread(serve.status)
                app = status.applications.get(self._app_name)
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

    async def _await_loaded(self, model: str, version: int) -> None:
        """Wait for a version's deployment; AVAILABLE if it loaded, END with its error if not."""
        s = self.status[model][version]
        name = deployment_name(model, version)
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        if self.args.own_scaling(model) is None:
            await self._await_loaded_locally(s, model, version)
            return
        while time.monotonic() < deadline:
            status = await asyncio.to_thread(serve.status)
            app = status.applications.get(self._app_name)
            d = app.deployments.get(name) if app else None
            if d is not None and d.status == "HEALTHY":
                break
            if d is not None and d.status in ("DEPLOY_FAILED", "UNHEALTHY"):
                s.state, s.error_code, s.error_message = State.END, 14, d.message
                logger.error("%s version %d failed to deploy: %s", model, version, d.message)
                return
            await asyncio.sleep(0.2)
        else:
            s.state, s.error_code, s.error_message = State.END, 4, "Timed out loading"
            return
        handle = serve.get_deployment_handle(name, self._app_name)
        self._record_load(s, model, version, await handle.load_state.remote())

    async def _await_loaded_locally(self, s: VersionStatus, model: str, version: int) -> None:
        """Co-located: every serving replica loads the version in its reconfigure and reports
        how it went; AVAILABLE once all of them hold it, END with the error if one failed."""
        target = deployment_name(model, version)
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while time.monotonic() < deadline:
            live = self._live_reports()
            failed = [r.loads[target] for r in live if target in r.loads and not r.loads[target].ok]
            if failed:
                self._record_load(s, model, version, failed[0])
                return
            if self._all_serving_replicas(lambda r: target in r.loads):
                self._record_load(s, model, version, live[0].loads[target])
                return
            await asyncio.sleep(0.2)
        s.state, s.error_code, s.error_message = State.END, 4, "Timed out loading"

    def _record_load(self, s: VersionStatus, model: str, version: int, state: Any) -> None:
        if state.ok:
            s.loaded = True
            s.load_seconds = state.load_seconds
            s.warmup_records = getattr(state, "warmup_records", 0)
            logger.info("%s version %d loaded in %.2fs", model, version, state.load_seconds)
        else:
            s.state, s.error_code, s.error_message = State.END, 9, state.message
            logger.error("%s version %d failed to load: %s", model, version, state.message)

    # --- what the serving replicas hold -------------------------------------------------------

    def report_replica(self, replica: str, epoch: int, loads: dict[str, Any]) -> None:
        """A serving replica's heartbeat: its routing epoch and the versions it holds."""
        self._reports.report(replica, epoch, loads)

    def _live_reports(self) -> list[ReplicaReport]:
        return self._reports.live()

    def _all_serving_replicas(self, check: Any) -> bool:
        """``check`` holds for every live serving replica, and all of them have reported."""
        return self._reports.all_hold(self.args.ingress_replicas, check)

    # --- RPCs ----------------------------------------------------------------------------------

    def get_status(self, raw: bytes) -> ModelReply:
        """GetModelStatus: every version of the model, newest first."""
        try:
            request = parse_request(get_model_status_pb2.GetModelStatusRequest, raw)
            if not request.HasField("model_spec"):
                raise InvalidArgument("Missing ModelSpec")
            return ModelReply(payload=self.model_status(request.model_spec).SerializeToString())
        except ServingError as e:
            return ModelReply.error(e)

    def model_status(self, spec: Any) -> get_model_status_pb2.GetModelStatusResponse:
        return self.status.model_status(spec, self.plan.routing)

    def drain(self) -> None:
        """The server is about to stop: from now on readiness (``/readyz``) is 503 and gRPC
        health NOT_SERVING, so load balancers send new traffic elsewhere; requests are still
        answered until the ports close."""
        logger.info("Draining: readiness and health now say not serving")
        self._draining = True

    def ready(self) -> bool:
        """True when every configured model's newest aspired version is AVAILABLE (and the
        server is not draining)."""
        if not self._started or self._draining:
            return False
        return self.status.newest_available(self.args.models)

    async def reload_config(self, raw: bytes) -> ModelReply:
        """HandleReloadConfigRequest: the new config replaces the old, then waits for loads."""
        try:
            request = parse_request(model_management_pb2.ReloadConfigRequest, raw)
        except ServingError as e:
            return ModelReply.error(e)
        response = model_management_pb2.ReloadConfigResponse()
        try:
            if request.config.WhichOneof("config") != "model_config_list":  # model_service_impl.cc
                raise InvalidArgument(
                    "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                    "ModelConfigList is currently supported"
                )
            models = models_from_config(request.config)
            for m in models:
                if not os.path.isdir(m.base_path):
                    raise InvalidArgument(f"Model base path {m.base_path} does not exist")
        except ServingError as e:
            response.status.CopyFrom(
                status_pb2.StatusProto(error_code=e.code.value[0], error_message=e.message)
            )
            return ModelReply(payload=response.SerializeToString(), code=e.code, message=e.message)
        async with self._lock:
            # As ServerCore::ReloadConfig: labels are checked against the versions AVAILABLE
            # now, before any model changes; an invalid label leaves the served models as they
            # were.
            bad_labels = invalid_labels(models, self.plan.routing)
            if not bad_labels:
                self.args.models = models
                self.args.model_config_file = None
                await self._reconcile()
        if bad_labels:
            code = StatusCode.FAILED_PRECONDITION
            status = status_pb2.StatusProto(error_code=code.value[0], error_message=bad_labels)
            response.status.CopyFrom(status)
            return ModelReply(payload=response.SerializeToString(), code=code, message=bad_labels)
        response.status.CopyFrom(status_pb2.StatusProto(error_code=0))
        return ModelReply(payload=response.SerializeToString())

    def snapshot(self) -> dict[str, Any]:
        """Plan and statuses, for tests and operators; ``loads``: how each loaded version's
        load went (seconds, warmup records replayed)."""
        return {"plan": self.plan.model_dump(mode="json"), **self.status.snapshot()}
