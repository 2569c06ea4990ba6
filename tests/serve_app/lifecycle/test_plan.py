"""The planner, the routing policy and the status table, pure: ``plan.plan_model`` (every
version policy, both rollout orders, every failure), ``plan.routing_for``,
``plan.invalid_labels`` and ``status.Statuses``, driven with fakes for what is loaded and on
disk."""

from __future__ import annotations

import pytest

from compat.errors import InvalidArgument, NotFound, StatusCode
from compat.protos import model_pb2
from compat.routing import ModelRoutes, RoutingTable
from serve_app.config.args import ModelArgs, ShadowArgs, VersionPolicy
from serve_app.deployments import LoadInfo, Snapshot, VersionState, deployment_name
from serve_app.lifecycle.plan import (
    Plan,
    failed,
    invalid_labels,
    models_gone,
    plan_model,
    routing_for,
)
from serve_app.lifecycle.repository import Scan
from serve_app.lifecycle.status import LoadOutcome, State, Statuses, VersionStatus

MODEL = ModelArgs(name="m", base_path="/b", version_labels={"stable": 1, "canary": 2})


def plan(*versions: int) -> Plan:
    return Plan(deployed={"m": {v: f"/b/{v}" for v in versions}})


def routes(table: RoutingTable) -> ModelRoutes:
    return table.models["m"]


def test_only_loaded_versions_are_routed_the_newest_as_latest() -> None:
    table = routing_for(plan(1, 2, 3), lambda m, v: v != 3, {"m": MODEL}, {}, epoch=7)
    r = routes(table)
    assert r.versions == {1: deployment_name("m", 1), 2: deployment_name("m", 2)}
    assert (r.latest, r.labels, r.canary, table.epoch) == (2, {"stable": 1, "canary": 2}, None, 7)


def test_a_label_whose_version_is_not_routed_is_left_out() -> None:
    r = routes(routing_for(plan(1, 2), lambda m, v: v == 1, {"m": MODEL}, {}, epoch=1))
    assert (r.versions.keys(), r.labels) == ({1}, {"stable": 1})


def test_excluded_versions_go_first_and_a_dropped_model_goes_whole() -> None:
    table = routing_for(plan(1, 2), lambda m, v: True, {"m": MODEL}, {}, 2, exclude={"m": {2}})
    assert routes(table).latest == 1
    assert routing_for(plan(1), lambda m, v: True, {"m": MODEL}, {}, 2, drop_model="m").models == {}


def test_nothing_loaded_means_no_latest() -> None:
    r = routes(routing_for(plan(1), lambda m, v: False, {"m": MODEL}, {}, epoch=1))
    assert (r.versions, r.latest) == ({}, None)


def test_a_canary_weight_applies_only_while_its_label_is_routed() -> None:
    weights = {"m": ("canary", 0.25)}
    r = routes(routing_for(plan(1, 2), lambda m, v: True, {"m": MODEL}, weights, epoch=1))
    assert r.canary is not None and (r.canary.version, r.canary.weight) == (2, 0.25)
    r = routes(routing_for(plan(1, 2), lambda m, v: v == 1, {"m": MODEL}, weights, epoch=1))
    assert r.canary is None


def test_a_model_no_longer_configured_keeps_its_versions_but_no_labels() -> None:
    r = routes(routing_for(plan(1), lambda m, v: True, {}, {}, epoch=1))
    assert (r.versions.keys(), r.labels) == ({1}, {})


def test_labels_may_only_name_available_versions() -> None:
    table = RoutingTable(models={"m": ModelRoutes(versions={1: "m-v1"}, latest=1)})
    assert (
        invalid_labels([ModelArgs(name="m", base_path="/b", version_labels={"a": 1})], table) == ""
    )
    assert invalid_labels([MODEL], table) == (
        "Request to assign label to version 2 of model m, which is not currently available "
        "for inference"
    )


def test_with_the_flag_an_unused_label_may_name_a_version_not_yet_available() -> None:
    """--allow_version_labels_for_unavailable_models (ServerCore's label check): a label not in
    use yet, or naming the version it names now, may name a version not yet AVAILABLE; a label
    in use moves only to an AVAILABLE version."""
    table = RoutingTable(
        models={"m": ModelRoutes(versions={1: "m-v1"}, latest=1, labels={"stable": 1})}
    )

    def check(labels: dict[str, int], allow: bool = True) -> str:
        return invalid_labels(
            [ModelArgs(name="m", base_path="/b", version_labels=labels)], table, allow
        )

    assert check({"canary": 2}) == ""  # a new label on version 2, not loaded yet
    assert check({"stable": 1, "canary": 2}) == ""
    refused = (
        "Request to assign label to version 2 of model m, which is not currently available "
        "for inference"
    )
    assert check({"stable": 2}) == refused  # in use, moved to a version not available
    assert check({"canary": 2}, allow=False) == refused  # without the flag, as before
    other = RoutingTable(models={"n": ModelRoutes(versions={1: "n-v1"}, latest=1)})
    assert invalid_labels([MODEL], other, True) == ""  # a model not served yet


def statuses() -> Statuses:
    s = Statuses()
    s["m"] = {
        1: VersionStatus(State.AVAILABLE, loaded=True, load_seconds=0.5, warmup_records=3),
        2: VersionStatus(State.END, error_code=9, error_message="broken"),
    }
    return s


def test_model_status_lists_versions_newest_first_or_the_one_asked_for() -> None:
    routing = RoutingTable(models={"m": ModelRoutes(labels={"stable": 1})})
    response = statuses().model_status(model_pb2.ModelSpec(name="m"), routing)
    assert [
        (v.version, v.state, v.status.error_message) for v in response.model_version_status
    ] == [
        (2, State.END, "broken"),
        (1, State.AVAILABLE, ""),
    ]
    by_label = statuses().model_status(
        model_pb2.ModelSpec(name="m", version_label="stable"), routing
    )
    assert [v.version for v in by_label.model_version_status] == [1]


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        (model_pb2.ModelSpec(), InvalidArgument, "ModelSpec has no name specified."),
        (model_pb2.ModelSpec(name="x"), NotFound, "Could not find any versions of model x"),
        (
            model_pb2.ModelSpec(name="m", version_label="nope"),
            InvalidArgument,
            "Unrecognized servable version label: nope",
        ),
    ],
)
def test_model_status_errors_are_tf_serving_s(spec, error, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error) as e:
        statuses().model_status(spec, RoutingTable())
    assert e.value.message == message


def test_ready_means_the_newest_aspired_version_is_available() -> None:
    """Readiness reads the last successful scan (state), never storage."""
    scans = {"m": on_disk(1, 2, 3)}
    latest = ModelArgs(name="m", base_path="/b")
    assert not statuses().newest_available([latest], scans)  # version 3 is not loaded yet
    pinned = latest.model_copy(
        update={"version_policy": VersionPolicy(kind="specific", versions=[1])}
    )
    assert statuses().newest_available([pinned], scans)
    # Version 2 failed to load: version 1 serving is what the server can do, and it is ready.
    assert statuses().newest_available([latest], {"m": on_disk(1, 2)})
    assert not statuses().newest_available([latest], {"m": on_disk()})
    assert not statuses().newest_available([latest], {})  # never scanned yet


def test_the_snapshot_names_states_and_tells_loads() -> None:
    snapshot = statuses().snapshot()
    assert snapshot == Snapshot(
        status={"m": {1: VersionState.AVAILABLE, 2: VersionState.END}},
        loads={"m": {1: LoadInfo(seconds=0.5, warmup_records=3)}},
    )
    # The states are an enum whose values are TF Serving's names (the metrics' labels).
    assert snapshot.model_dump(mode="json")["status"] == {"m": {"1": "AVAILABLE", "2": "END"}}


# --- the planner: plan_model over a fake scan ------------------------------------------------


def on_disk(
    *versions: int, incomplete: tuple[int, ...] = (), stamps: dict[int, str] | None = None
) -> Scan:
    complete = {v: f"/b/{v}" for v in versions}
    numeric = {**complete, **{v: f"/b/{v}" for v in incomplete}}
    return Scan(complete, numeric, stamps or {})


def up(*versions: int) -> dict[int, VersionStatus]:
    return {v: VersionStatus(State.AVAILABLE, loaded=True) for v in versions}


def broken(stamp: str) -> VersionStatus:
    return VersionStatus(State.END, StatusCode.FAILED_PRECONDITION.value[0], "bad", stamp=stamp)


def deployed(*versions: int) -> dict[int, str]:
    return {v: f"/b/{v}" for v in versions}


def policy(kind: str, **kw: object) -> ModelArgs:
    return ModelArgs(name="m", base_path="/b", version_policy=VersionPolicy(kind=kind, **kw))  # type: ignore[arg-type]


NO_ROUTES = ModelRoutes()


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (policy("latest"), {3}),
        (policy("latest", num_versions=2), {2, 3}),
        (policy("all"), {1, 2, 3}),
        (policy("specific", versions=[1, 3, 7]), {1, 3}),
    ],
)
def test_each_version_policy_loads_what_it_aspires_to(model: ModelArgs, expected: set[int]) -> None:
    steps = plan_model(model, on_disk(1, 2, 3), {}, {}, NO_ROUTES)
    assert (set(steps.load), steps.unload, steps.unload_first) == (expected, set(), set())
    assert steps.load == {v: f"/b/{v}" for v in expected}


def test_a_new_version_loads_before_the_old_one_goes() -> None:
    """Availability first: while 2 loads, 1 stays; once 2 is up, 1 is unloaded."""
    steps = plan_model(policy("latest"), on_disk(1, 2), deployed(1), up(1), NO_ROUTES)
    assert (steps.load, steps.unload_first) == ({2: "/b/2"}, set())
    after = plan_model(policy("latest"), on_disk(1, 2), deployed(1, 2), up(1, 2), NO_ROUTES)
    assert (after.load, after.unload) == ({}, {1})


def test_resource_preserving_unloads_first() -> None:
    steps = plan_model(
        policy("latest"), on_disk(1, 2), deployed(1), up(1), NO_ROUTES, resource_preserving=True
    )
    assert (steps.unload_first, steps.load) == ({1}, {2: "/b/2"})


def test_a_version_that_failed_to_load_is_not_retried_and_the_old_one_keeps_serving() -> None:
    statuses = {**up(1), 2: broken("t0")}
    steps = plan_model(
        policy("latest"), on_disk(1, 2, stamps={2: "t0"}), deployed(1), statuses, NO_ROUTES
    )
    assert (steps.load, steps.unload) == ({}, set())


def test_a_failed_version_is_retried_once_its_directory_changed() -> None:
    statuses = {**up(1), 2: broken("t0")}
    steps = plan_model(
        policy("latest"), on_disk(1, 2, stamps={2: "t1"}), deployed(1), statuses, NO_ROUTES
    )
    assert steps.load == {2: "/b/2"}
    # ... and while it is not up, the version serving now is never unloaded for it.
    assert steps.unload == set()


def test_all_versions_failing_loads_nothing_and_unloads_nothing() -> None:
    statuses = {1: broken("a"), 2: broken("b")}
    scan = on_disk(1, 2, stamps={1: "a", 2: "b"})
    steps = plan_model(policy("all"), scan, {}, statuses, NO_ROUTES)
    assert (steps.load, steps.unload, steps.unload_first, steps.incomplete) == (
        {},
        set(),
        set(),
        {},
    )


def test_a_version_whose_path_vanished_is_unloaded() -> None:
    """Only a successful listing without a version's directory unloads it (a base path that
    cannot be read is a ``ScanError``: the manager plans nothing then)."""
    steps = plan_model(policy("all"), on_disk(2), deployed(1, 2), up(1, 2), NO_ROUTES)
    assert (steps.load, steps.unload) == ({}, {1})
    # A base path listed empty: nothing is aspired, the last version goes too (TF Serving).
    steps = plan_model(policy("latest"), on_disk(), deployed(2), up(2), NO_ROUTES)
    assert steps.unload == {2}


def test_a_served_version_whose_files_vanished_keeps_serving_from_memory() -> None:
    """Its directory is still listed but no longer whole: it stays, nothing loads for it."""
    scan = on_disk(1, incomplete=(2,))
    steps = plan_model(policy("latest"), scan, deployed(2), up(2), NO_ROUTES)
    assert (steps.load, steps.unload, steps.incomplete) == ({}, set(), {})
    # ... and under "all", version 1 (whole) loads beside it, version 2 stays.
    steps = plan_model(policy("all"), scan, deployed(2), up(2), NO_ROUTES)
    assert (steps.load, steps.unload) == ({1: "/b/1"}, set())


def test_a_failed_version_is_retried_after_its_wait_even_unchanged() -> None:
    """A load that failed (a storage blip) is tried again after ``RETRY_AFTER_S``, then twice
    as long after each failure, up to an hour; one that loaded or never failed is not "due"."""
    from serve_app.lifecycle.status import RETRY_AFTER_S

    status = VersionStatus(State.LOADING)
    status.record(LoadOutcome(StatusCode.UNAVAILABLE, "the store is down"))
    failed_at = status.failed_at
    assert not status.retry_due(failed_at + RETRY_AFTER_S - 1)
    assert status.retry_due(failed_at + RETRY_AFTER_S + 0.5)
    status.record(LoadOutcome(StatusCode.UNAVAILABLE, "still down"))
    assert not status.retry_due(status.failed_at + RETRY_AFTER_S + 0.5)
    assert status.retry_due(status.failed_at + 2 * RETRY_AFTER_S + 0.5)
    for _ in range(20):
        status.record(LoadOutcome(StatusCode.UNAVAILABLE, "down for good"))
    assert not status.retry_due(status.failed_at + 3599)
    assert status.retry_due(status.failed_at + 3600.5)
    assert not VersionStatus(State.AVAILABLE, loaded=True).retry_due(1e12)
    assert not VersionStatus.incomplete("/b/2", "not whole").retry_due(1e12)  # loads once whole


def test_an_incomplete_directory_gets_a_status_and_is_not_loaded() -> None:
    steps = plan_model(policy("latest"), on_disk(1, incomplete=(2,)), deployed(1), up(1), NO_ROUTES)
    assert (steps.incomplete, steps.load, steps.unload) == ({2: "/b/2"}, {}, set())
    status = VersionStatus.incomplete("/b/2", "not whole")
    assert (status.state, status.error_code) == (State.END, StatusCode.NOT_FOUND.value[0])
    assert status.error_message == "not whole"


def test_labels_are_rerouted_only_when_the_config_moved_one() -> None:
    routes = ModelRoutes(versions={1: "m-v1", 2: "m-v2"}, latest=2, labels={"stable": 1})
    moved = ModelArgs(name="m", base_path="/b", version_labels={"stable": 2})
    steps = plan_model(moved, on_disk(1, 2), deployed(1, 2), up(1, 2), routes)
    assert steps.relabel
    same = ModelArgs(name="m", base_path="/b", version_labels={"stable": 1})
    assert not plan_model(same, on_disk(1, 2), deployed(1, 2), up(1, 2), routes).relabel


def test_a_label_on_a_missing_version_changes_nothing() -> None:
    """A label naming a version not routed is left out of the routes (and refused by a
    reload: ``invalid_labels``), so it asks for no reroute."""
    routes = ModelRoutes(versions={1: "m-v1"}, latest=1)
    model = ModelArgs(name="m", base_path="/b", version_labels={"next": 9})
    steps = plan_model(model, on_disk(1), deployed(1), up(1), routes)
    assert (steps.relabel, steps.load, steps.unload) == (False, {}, set())
    assert "version 9 of model m" in invalid_labels([model], RoutingTable(models={"m": routes}))


def test_models_no_longer_configured_and_ended_versions() -> None:
    assert models_gone(["m", "old"], [MODEL]) == ["old"]
    assert failed(statuses()) == [("m", 2)]


def test_a_load_outcome_makes_the_status_loaded_or_ended() -> None:
    ok, bad = VersionStatus(State.LOADING), VersionStatus(State.LOADING)
    ok.record(LoadOutcome(load_seconds=1.5, warmup_records=2))
    bad.record(LoadOutcome(StatusCode.DEADLINE_EXCEEDED, "Timed out loading"))
    assert (ok.loaded, ok.state, ok.load_seconds, ok.warmup_records) == (
        True,
        State.LOADING,
        1.5,
        2,
    )
    assert (bad.loaded, bad.state, bad.error_code, bad.error_message) == (
        False,
        State.END,
        StatusCode.DEADLINE_EXCEEDED.value[0],
        "Timed out loading",
    )
    table = Statuses({"m": {1: ok}})
    routing = RoutingTable(models={"m": ModelRoutes(versions={1: "m-v1"}, latest=1)})
    assert table.mark_available(routing) == [("m", 1)] and ok.state == State.AVAILABLE


def shadowed(**shadow: object) -> ModelArgs:
    return MODEL.model_copy(update={"shadow": ShadowArgs.model_validate(shadow)})


def test_a_shadow_version_is_held_out_of_latest_while_another_serves() -> None:
    every = lambda m, v: True  # noqa: E731
    r = routes(routing_for(plan(1, 2), every, {"m": shadowed(atol=0.5)}, {}, epoch=1))
    assert r.latest == 1 and set(r.versions) == {1, 2}  # the shadow is still routed by number
    assert r.shadow is not None and (r.shadow.version, r.shadow.atol) == (2, 0.5)
    by_label = routes(
        routing_for(plan(1, 2, 3), every, {"m": shadowed(version_label="stable")}, {}, 1)
    )
    assert (by_label.shadow.version, by_label.latest) == (1, 3)  # type: ignore[union-attr]
    # Alone, or not loaded, or naming no version here: no shadow, and latest as TF Serving's.
    for table in (
        routing_for(plan(2), every, {"m": shadowed()}, {}, 1),
        routing_for(plan(1, 2), lambda m, v: v == 1, {"m": shadowed(version=2)}, {}, 1),
        routing_for(plan(1, 2), every, {"m": shadowed(version=9)}, {}, 1),
    ):
        assert routes(table).shadow is None
        assert routes(table).latest == max(routes(table).versions)


def test_a_shadow_added_by_a_new_config_reroutes() -> None:
    r = routes(routing_for(plan(1, 2), lambda m, v: True, {"m": MODEL}, {}, epoch=1))
    scan = on_disk(1, 2)
    assert not plan_model(MODEL, scan, deployed(1, 2), up(1, 2), r).relabel
    assert plan_model(shadowed(), scan, deployed(1, 2), up(1, 2), r).relabel
