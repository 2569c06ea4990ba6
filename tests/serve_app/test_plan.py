"""The routing policy and the status table, pure: ``plan.routing_for``, ``plan.invalid_labels``
and ``status.Statuses``, driven with fakes for what is loaded and on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from compat.errors import InvalidArgument, NotFound
from compat.protos import model_pb2
from compat.routing import ModelRoutes, RoutingTable
from serve_app.args import ModelArgs, VersionPolicy
from serve_app.plan import Plan, deployment_name, invalid_labels, routing_for
from serve_app.status import State, Statuses, VersionStatus

pytestmark = pytest.mark.unit

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


def test_ready_means_the_newest_aspired_version_is_available(tmp_path: Path) -> None:
    for v in (1, 2):
        (tmp_path / str(v)).mkdir()
        (tmp_path / str(v) / "saved_model.pb").write_bytes(b"")
    latest = ModelArgs(name="m", base_path=str(tmp_path))
    assert not statuses().newest_available([latest])  # version 2 is END
    pinned = latest.model_copy(
        update={"version_policy": VersionPolicy(kind="specific", versions=[1])}
    )
    assert statuses().newest_available([pinned])
    assert not statuses().newest_available([ModelArgs(name="m", base_path=str(tmp_path / "none"))])


def test_the_snapshot_names_states_and_tells_loads() -> None:
    assert statuses().snapshot() == {
        "status": {"m": {1: "AVAILABLE", 2: "END"}},
        "loads": {"m": {1: {"seconds": 0.5, "warmup_records": 3}}},
    }
