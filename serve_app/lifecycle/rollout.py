"""The version manager (TF Serving's AspiredVersionsManager): the loop that polls the Source,
asks the planner for the next steps and hands each to the applier, and the model-status RPCs.

It lives in the application as a one-replica deployment, so ``serve run serve_app:app`` (which
leaves no driver loop of ours running) and the CLI behave alike. Each poll scans every base path
(``repository.scan``), plans each model (``plan.plan_model``: the version policy and the
rollout order, pure) and applies the plan step by step (``applier.Applier``: a redeploy of the
same application with the builder it was handed, then the waits): deployments keep a stable
internal version, so Ray leaves unchanged ones running, reconfigures the ingress in place for
routing changes, starts added versions and stops removed ones. Availability-preserving order
(TF Serving's default): add green, wait until it is loaded, warmed up and healthy, switch
routing, then remove blue. Resource-preserving: unroute and remove blue first, then add green.
The statuses (``serve_app.lifecycle.status``) answer GetModelStatus, readiness and the snapshot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from compat.errors import InvalidArgument, NotFound, ServingError, StatusCode
from compat.protos import get_model_status_pb2, model_management_pb2, status_pb2
from compat.routing import ModelRoutes
from serve_app.calls import ModelReply, parse_request
from serve_app.config.args import AppArgs, ModelArgs, models_from_config
from serve_app.deployments import Snapshot
from serve_app.lifecycle import gated, probe, repository
from serve_app.lifecycle import plan as planner
from serve_app.lifecycle.applier import Applier, Builder
from serve_app.lifecycle.config_source import ConfigFileSource
from serve_app.lifecycle.faults import Faults
from serve_app.lifecycle.plan import ModelSteps, Plan
from serve_app.lifecycle.status import Reports, State, Statuses, VersionStatus
from serve_app.runtime import request_log
from serve_app.storage.factory import Stores
from serve_app.storage.versions import ScanError, VersionStore

logger = logging.getLogger("ray.serve")

MAX_BACKOFF_S = 60.0
"""The longest wait before a failed step of the version manager is tried again."""


class VersionManager(gated.RolloutDriver):
    """Owns the plan: polls base paths, rolls versions out (``gated``), answers status, reloads."""

    def __init__(
        self,
        args: dict[str, Any],
        plan: dict[str, Any],
        builder: Builder,
        _versions: list[Any] | None = None,
        build: str = "",
    ) -> None:
        # ``_versions`` keeps the model-version deployments in the application graph; ``builder``
        # is ``app.build_app`` (no import back to it); ``build``: this deployment's version.
        self.args = AppArgs.model_validate(args)
        self.plan = Plan.model_validate(plan)
        self.status = Statuses()
        for model, versions in self.plan.deployed.items():
            for v, path in versions.items():
                self.status.setdefault(model, {})[v] = VersionStatus(State.LOADING, path=path)
        self._lock = asyncio.Lock()
        self._label_weights: dict[str, tuple[str, float]] = {}
        """Model -> (label, weight): that label's share of ``latest`` traffic (canary)."""
        self._reports = Reports()
        """Serving replica -> what it last reported holding (``report_replica``)."""
        self._applier = Applier(builder, self._reports, self.args.serving_replicas_least, build)
        self._started = False
        self._draining = False
        """Set on SIGTERM (``drain``): readiness and health say not serving, requests still are."""
        self._scans: dict[str, repository.Scan] = {}
        """Model -> its last successful scan: readiness reads it, never storage."""
        self._stores = Stores()
        """Base path -> its store, kept across polls (an object store's state is in it)."""
        self._faults = Faults()
        """Failing steps, each logged once per distinct cause and counted."""
        self._probes = probe.Probes(spare=probe.wants_spare(self.args))
        """The new versions' load probes running now."""
        self._config_file = ConfigFileSource(self._faults, self.args.request_log_allowed_dirs)
        """The model config file, read again at each poll."""
        self._task = asyncio.get_event_loop().create_task(self._poll_forever())
        self._start_rollouts()

    # --- background loop ---------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        """Poll, plan and apply, forever. A step that fails (a listing, a config file, a Serve
        call) is logged once per distinct cause, counted (``lifecycle_errors``) and retried
        with a backoff; nothing ends this loop but the replica's end."""
        await asyncio.sleep(0)
        failures = 0
        while True:
            try:
                if self._started:
                    self._reread_config_file()
                async with self._lock:
                    if not self._started:
                        await self._settle_initial()
                        self._started = True
                    await self._reconcile()
                failures = 0
                self._faults.clear("poll")
            except asyncio.CancelledError:
                raise
            except Exception as e:
                stopping = "after shutdown" in str(e) or "interpreter shutdown" in str(e)
                if isinstance(e, RuntimeError) and stopping:
                    return  # the replica is stopping: its executor is gone
                failures += 1
                self._faults.report("poll", "", f"{type(e).__name__}: {e}", exc=e)
            await asyncio.sleep(self._next_wait(failures))

    def _next_wait(self, failures: int) -> float:
        """The poll interval; after ``failures`` failed steps in a row, a backoff from one
        second doubling up to ``MAX_BACKOFF_S`` (never longer than the interval itself)."""
        wait = self.args.file_system_poll_wait_seconds
        wait = float(wait) if wait > 0 else 3600.0
        if failures:
            return min(wait, MAX_BACKOFF_S, float(2 ** min(failures - 1, 10)))
        return wait

    def _reread_config_file(self) -> None:
        """The model config file again (``lifecycle.config_source``), when it is polled."""
        path = self.args.model_config_file
        if not path or self.args.model_config_file_poll_wait_seconds <= 0:
            return
        models = self._config_file.read(path, self.args.models)
        if models is not None:
            self.args.models = models

    async def _settle_initial(self) -> None:
        """The versions deployed with the app: learn whether each loaded.

        First the application is deployed again from here, before any version is AVAILABLE:
        an application deployed from a Serve config (``serve deploy``) carries the config's
        code version on every deployment instead of ours, and with ``accelerator=auto`` a
        builder that ran before Ray was connected could not see the cluster's GPUs. Replicas
        built as ours would be are kept running under the version they have
        (``Applier.adopt_running``), this replica too (a successor would only import TF again);
        what differs is replaced now, never later under load."""
        await self._applier.adopt_running(self.plan)
        await self._apply(self.plan.copy_deep())
        for model, versions in list(self.plan.deployed.items()):
            for v in list(versions):
                await self._await_loaded(model, v)
        ended = planner.failed(self.status)
        if ended:
            plan = self.plan.copy_deep()
            for m, v in ended:
                plan.deployed.get(m, {}).pop(v, None)
            await self._route_and_apply(plan)
        self._mark_available()

    # --- one reconciliation step -------------------------------------------------------------

    async def _reconcile(self) -> None:
        for gone in planner.models_gone(self.plan.deployed, self.args.models):
            await self._retire(gone, set(self.plan.deployed[gone]), drop_model=True)
        for model in self.args.models:
            await self._reconcile_model(model)

    async def _scan(self, model: ModelArgs) -> repository.Scan:
        """The Source: the base path now, with the stamps of the versions that failed. Read in
        a thread: a listing (an object store's, a slow mount's) must not hold up the replica's
        event loop, where Serve's own calls to it are answered too."""
        now = time.monotonic()
        ended = [  # failed versions, retried once their files change or their wait is over
            v
            for v, s in self.status.get(model.name, {}).items()
            if s.state == State.END and not s.retry_due(now)
        ]
        try:
            scan = await asyncio.to_thread(repository.scan, self._stores[model.base_path], ended)
        except ScanError as e:
            self._faults.report("scan", model.name, str(e))
            raise
        self._faults.clear("scan", model.name)
        self._scans[model.name] = planner.holding(scan, self.plan.deployed.get(model.name, {}))
        return scan

    async def _steps(self, model: ModelArgs) -> ModelSteps:
        """The planner's next steps for ``model``, from a fresh scan."""
        return planner.plan_model(
            model,
            await self._scan(model),
            self.plan.deployed.get(model.name, {}),
            self.status.get(model.name, {}),
            self.plan.routing.models.get(model.name, ModelRoutes()),
            resource_preserving=self.args.rollout == "resource_preserving",
            staged=self._rollouts.staged().get(model.name),
        )

    async def _reconcile_model(self, model: ModelArgs) -> None:
        """One model's step. A base path that cannot be read changes nothing: every served
        version keeps serving (TF Serving: a failed poll emits no aspired versions)."""
        try:
            await self._reconcile_model_steps(model)
        except ScanError:
            return

    async def _reconcile_model_steps(self, model: ModelArgs) -> None:
        name = model.name
        statuses = self.status.setdefault(name, {})
        steps = await self._steps(model)
        store = self._stores[model.base_path]
        for v, path in steps.incomplete.items():
            statuses[v] = VersionStatus.incomplete(str(path), store.incomplete(str(path)))
        if steps.unload_first:  # TF Serving's resource-preserving policy: unload before loading
            await self._retire(name, steps.unload_first)
        if steps.load:
            proven = await self._probe(name, steps.load, store)
            if proven:
                await self._add(name, proven, store)
        # After the loads the plan is made again: a version that failed drops out of the
        # aspired set, so the version it was meant to replace keeps serving (availability
        # first, as TF Serving does); the directory may have changed while versions loaded.
        steps = await self._steps(model)
        if steps.unload - self._rollouts.held(name):
            await self._retire(name, steps.unload - self._rollouts.held(name))
        elif steps.relabel:  # a label the config added or moved (a retire reroutes anyway)
            await self._route_and_apply(self.plan.copy_deep())

    async def _probe(
        self, model: str, versions: dict[int, str], store: VersionStore
    ) -> dict[int, str]:
        """The versions of ``versions`` that loaded in a process of their own
        (``lifecycle.probe``); the others are END with the reason. The lock is let go while
        the probes run: status, reloads and label weights are answered meanwhile."""
        if not probe.enabled(self.args, model):
            return versions
        statuses = self.status.setdefault(model, {})
        for v, path in versions.items():
            statuses[v] = VersionStatus(State.LOADING, path=str(path), stamp=store.stamp(path))
            logger.info("Probing %s version %d from %s in a process of its own", model, v, path)
        runs = [self._probes.start(self.args, model, v, str(p)) for v, p in versions.items()]
        self._lock.release()
        try:
            outcomes = await asyncio.gather(*runs)
        finally:
            await self._lock.acquire()
        proven = {}
        deployed = self.plan.deployed.get(model, {})
        for (v, path), outcome in zip(versions.items(), outcomes, strict=True):
            if v in deployed:  # a reload (or the poll) added it while the lock was let go
                continue
            if outcome.code == StatusCode.OK:
                proven[v] = path
                continue
            statuses[v].record(outcome)
            self._faults.report("probe", model, f"version {v}: {outcome.message}")
            logger.error("%s version %d will not be served: %s", model, v, outcome.message)
        return proven

    async def _add(self, model: str, versions: dict[int, str], store: VersionStore) -> None:
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
        self._begin_rollout(model, [v for v in versions if v in plan.deployed[model]])
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
        """Recompute the plan's routing from the version states (``plan.routing_for``), then
        apply the plan."""
        plan.routing = planner.routing_for(
            plan,
            self.status.loaded,
            {m.name: m for m in self.args.models},
            self._label_weights,
            epoch=self.plan.routing.epoch + 1,
            exclude=exclude,
            drop_model=drop_model,
            staged=self._rollouts.staged(),
        )
        await self._apply(plan)

    async def _apply(self, plan: Plan) -> None:
        """The applier deploys ``plan`` and waits; then it is the plan."""
        await self._applier.apply(self.args, plan)
        self.plan = plan
        self._mark_available()

    def _mark_available(self) -> None:
        for model, v in self.status.mark_available(self.plan.routing):
            logger.info("%s version %d is AVAILABLE", model, v)

    async def _await_loaded(self, model: str, version: int) -> None:
        """Wait for a version's load; it is then loaded, or END with its error."""
        own = self.args.own_scaling(model) is not None
        self.status[model][version].record(await self._applier.await_loaded(model, version, own))

    # --- what the serving replicas hold -------------------------------------------------------

    async def report_replica(
        self, replica: str, epoch: int, loads: dict[str, Any], build: str = "", figures: Any = None
    ) -> None:
        """A serving replica's heartbeat: its routing epoch, the versions it holds, the version
        it was built with and its counts. This and the other small RPCs are ``async`` so Serve
        answers them on the replica's event loop, without a hop through its thread pool."""
        self._reports.report(replica, epoch, loads, build, figures)

    # --- RPCs ----------------------------------------------------------------------------------

    async def get_status(self, raw: bytes) -> ModelReply:
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

    async def __del__(self) -> None:
        """Serve's shutdown of this replica: the poll loop ends first, quietly."""
        self._task.cancel()
        self._probes.close()

    async def drain(self) -> None:
        """The server is about to stop: from now on readiness (``/readyz``) is 503 and gRPC
        health NOT_SERVING, so load balancers send new traffic elsewhere; requests are still
        answered until the ports close."""
        logger.info("Draining: readiness and health now say not serving")
        self._draining = True

    async def ready(self) -> bool:
        """True when every configured model's newest aspired version is AVAILABLE (and the
        server is not draining)."""
        if not self._started or self._draining:
            return False
        return self.status.newest_available(self.args.models, self._scans)

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
            models = request_log.confine(models, self.args.request_log_allowed_dirs)
            for m in models:  # every base path the startup config takes, object stores too
                await asyncio.to_thread(repository.check_base_path, m.base_path)
        except ServingError as e:
            response.status.CopyFrom(
                status_pb2.StatusProto(error_code=e.code.value[0], error_message=e.message)
            )
            return ModelReply(payload=response.SerializeToString(), code=e.code, message=e.message)
        async with self._lock:
            # As ServerCore::ReloadConfig: labels are checked against the versions AVAILABLE
            # now, before any model changes; an invalid label leaves the served models as they
            # were.
            allow = self.args.allow_version_labels_for_unavailable_models
            bad_labels = planner.invalid_labels(models, self.plan.routing, allow)
            if not bad_labels:
                self.args.models = models
                self.args.model_config_file = None
                await self._reconcile()
        if bad_labels:
            code = StatusCode.FAILED_PRECONDITION
            status = status_pb2.StatusProto(error_code=code.value[0], error_message=bad_labels)
            response.status.CopyFrom(status)
            return ModelReply(payload=response.SerializeToString(), code=code, message=bad_labels)
        response.status.CopyFrom(status_pb2.StatusProto(error_code=StatusCode.OK.value[0]))
        return ModelReply(payload=response.SerializeToString())

    async def snapshot(self) -> Snapshot:
        """Plan and statuses, for tests and operators; ``loads``: how each loaded version's
        load went (seconds, warmup records replayed)."""
        snapshot = self.status.snapshot()
        snapshot.plan = self.plan.model_dump(mode="json")
        return snapshot
