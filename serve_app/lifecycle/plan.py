"""The planner, pure: which model versions have deployments, and how requests are routed.

The plan is the declarative state the version manager (``lifecycle.rollout``) moves forward one
step at a time (add green, switch routing, remove blue); ``build_app`` turns a plan into a Serve
application, the applier (``lifecycle.applier``) deploys it. Everything here is a function of
its arguments (the config, a scan of the base path, the version statuses, the routing table):
``plan_model`` is TF Serving's version policy (which versions to load and unload, in which
order), ``routing_for`` the routing policy (what the plan routes to, given what is loaded).
The same functions plan the first rollout and every poll after it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel

from compat.routing import Canary, ModelRoutes, RoutingTable, Shadow
from serve_app.config.args import ModelArgs, ShadowArgs
from serve_app.deployments import deployment_name
from serve_app.lifecycle.repository import Scan, aspired_versions
from serve_app.lifecycle.status import State, VersionStatus


class Plan(BaseModel):
    """Deployed versions and the routing table shipped to the ingress."""

    deployed: dict[str, dict[int, str]] = {}
    """Model -> version -> SavedModel directory, each with its own deployment."""
    routing: RoutingTable = RoutingTable()
    """What the ingress routes to (only AVAILABLE versions)."""

    def copy_deep(self) -> Plan:
        return self.model_copy(deep=True)


@dataclass(frozen=True)
class Staged:
    """A model's rollout in progress (``lifecycle.gated``): its candidate is held out of
    ``latest``, and gets the shadow, or a canary share of ``latest``."""

    candidate: int
    shadow: Shadow | None = None
    weight: float = 0.0


def routing_for(
    plan: Plan,
    loaded: Callable[[str, int], bool],
    models: Mapping[str, ModelArgs],
    label_weights: Mapping[str, tuple[str, float]],
    epoch: int,
    exclude: Mapping[str, set[int]] | None = None,
    drop_model: str | None = None,
    staged: Mapping[str, Staged] | None = None,
) -> RoutingTable:
    """The routing table for ``plan``: per model, its deployed versions that are ``loaded``
    (but ``exclude``'s, on their way out), the newest as ``latest`` (but a shadowed one, or a
    ``staged`` candidate), the config's labels that name one of them, a label's canary weight
    (``label_weights``) when its version is routed, and the shadow (``ModelArgs.shadow``); a
    staged rollout's shadow and canary weight take their place. ``drop_model`` is left out
    whole."""
    exclude = exclude or {}
    staged = staged or {}
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
        shadow = _shadow(model.shadow if model else None, labels, set(ok))
        canary = _canary(label_weights.get(name), labels, set(ok))
        rollout = staged.get(name)
        held = None
        if rollout is not None and rollout.candidate in ok and len(ok) > 1:
            held, shadow = rollout.candidate, rollout.shadow
            if rollout.weight:
                canary = Canary(version=held, weight=rollout.weight)
        serving = [v for v in ok if v != held and (shadow is None or v != shadow.version)]
        routing.models[name] = ModelRoutes(
            versions=ok,
            latest=max(serving) if serving else None,
            labels=labels,
            canary=canary,
            shadow=shadow,
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


def _shadow(
    args: ShadowArgs | None, labels: Mapping[str, int], available: set[int]
) -> Shadow | None:
    """The shadow of a model's routes: the version its ``shadow`` block names (by number,
    label, or else the newest), when it is available and another version is too (one that
    serves); else None."""
    if args is None or len(available) < 2:
        return None
    if args.version is not None:
        version: int | None = args.version
    elif args.version_label is not None:
        version = labels.get(args.version_label)
    else:
        version = max(available)
    if version not in available:
        return None
    return Shadow(
        version=version,
        sampling_rate=args.sampling_rate,
        atol=args.atol,
        rtol=args.rtol,
        max_pending=args.max_pending,
    )


def invalid_labels(
    models: list[ModelArgs], routing: RoutingTable, allow_unavailable: bool = False
) -> str:
    """TF Serving's message for the first label (``version_labels``) that names a version not
    AVAILABLE now; "" when every label may be assigned (``ServerCore::ReloadConfig``). With
    ``allow_unavailable`` (``--allow_version_labels_for_unavailable_models``) a label not in
    use yet, or naming the version it names now, may name any version."""
    for m in models:
        routes = routing.models.get(m.name, ModelRoutes())
        for label, v in m.version_labels.items():
            unused = routes.labels.get(label, v) == v
            if v not in routes.versions and not (allow_unavailable and unused):
                return (
                    f"Request to assign label to version {v} of model {m.name}, which is "
                    "not currently available for inference"
                )
    return ""


@dataclass
class ModelSteps:
    """What one reconciliation does to one model, in this order."""

    incomplete: dict[int, str] = field(default_factory=dict)
    """Version directories without a whole SavedModel, not deployed: END with NOT_FOUND."""
    unload_first: set[int] = field(default_factory=set)
    """``resource_preserving``: deployed versions no longer aspired, unloaded before any load."""
    load: dict[int, str] = field(default_factory=dict)
    """Aspired versions not deployed yet: version -> path."""
    unload: set[int] = field(default_factory=set)
    """Deployed versions no longer aspired, unloaded once the loads are done; never the last
    servable one while no aspired version is up (availability first, as TF Serving)."""
    relabel: bool = False
    """The config's labels (or shadow) differ from those routed: the routing is recomputed."""


def gave_up(status: VersionStatus | None, stamp: str | None) -> bool:
    """A version that failed to load is retried only once its directory changed (``stamp``,
    from the scan, is what it looks like now)."""
    if status is None or not status.load_failed:
        return False
    return status.stamp == stamp


def aspired(model: ModelArgs, scan: Scan, statuses: Mapping[int, VersionStatus]) -> dict[int, str]:
    """The version policy applied to the whole versions on disk that have not failed to load."""
    loadable = {
        v: p for v, p in scan.complete.items() if not gave_up(statuses.get(v), scan.stamps.get(v))
    }
    return aspired_versions(loadable, model.version_policy)


def holding(scan: Scan, deployed: Mapping[int, str]) -> Scan:
    """``scan`` with the deployed versions whose directory is still there but no longer whole
    (their files vanished, a mount half back) counted whole: they keep serving from memory, and
    only a listing without their directory unloads them."""
    held = {v: p for v, p in deployed.items() if v in scan.numeric and v not in scan.complete}
    if not held:
        return scan
    return Scan({**scan.complete, **held}, scan.numeric, scan.stamps)


def plan_model(
    model: ModelArgs,
    scan: Scan,
    deployed: Mapping[int, str],
    statuses: Mapping[int, VersionStatus],
    routes: ModelRoutes,
    resource_preserving: bool = False,
    staged: Staged | None = None,
) -> ModelSteps:
    """The next steps for ``model``: from its config (version policy, labels), the scan of its
    base path, its deployed versions, their statuses and its routes now. The manager plans
    again, with a new scan, after the loads, and takes ``unload`` and ``relabel`` from that.
    A ``staged`` rollout's shadow is the one its routes should have."""
    scan = holding(scan, deployed)
    wanted = aspired(model, scan, statuses)
    steps = ModelSteps(
        incomplete={
            v: p for v, p in scan.numeric.items() if v not in scan.complete and v not in deployed
        },
        load={v: p for v, p in wanted.items() if v not in deployed},
    )
    gone = {v for v in deployed if v not in wanted}
    if resource_preserving:
        steps.unload_first = gone
    servable = [v for v in wanted if v in deployed and _loaded(statuses.get(v))]
    steps.unload = gone if servable or not wanted else set()
    labels = {label: v for label, v in model.version_labels.items() if v in routes.versions}
    shadow = _shadow(model.shadow, labels, set(routes.versions))
    if staged is not None and staged.candidate in routes.versions and len(routes.versions) > 1:
        shadow = staged.shadow
    steps.relabel = labels != routes.labels or shadow != routes.shadow
    return steps


def _loaded(status: VersionStatus | None) -> bool:
    return status is not None and status.loaded


def models_gone(deployed: Iterable[str], models: Iterable[ModelArgs]) -> list[str]:
    """Deployed models no longer configured: unrouted, then removed whole."""
    wanted = {m.name for m in models}
    return [m for m in deployed if m not in wanted]


def failed(statuses: Mapping[str, Mapping[int, VersionStatus]]) -> list[tuple[str, int]]:
    """(model, version) of every version that ended (failed to load, or unloaded)."""
    return [(m, v) for m, vs in statuses.items() for v, s in vs.items() if s.state == State.END]
