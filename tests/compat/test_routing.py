"""``compat.routing``: a ModelSpec resolves as TF Serving's ``ServerCore`` and ``BasicManager``
resolve it (``ServableRequestFromModelSpec``, ``GetModelVersionForLabel``, the manager's
``Servable not found for request: Latest(name)`` / ``Specific(name, version)``)."""

from __future__ import annotations

import random

import grpc
import pytest
from pydantic import ValidationError

from compat.errors import InvalidArgument, NotFound
from compat.protos import model_pb2
from compat.routing import Canary, ModelRoutes, Route, RoutingTable

TABLE = RoutingTable(
    models={
        "half_plus_two": ModelRoutes(
            versions={123: "hpt-123", 124: "hpt-124"},
            labels={"stable": 123, "canary": 124, "gone": 122},
            latest=124,
        ),
        "loading": ModelRoutes(versions={}, latest=None),
    }
)


def spec(name: str, version: int | None = None, label: str = "") -> model_pb2.ModelSpec:
    s = model_pb2.ModelSpec(name=name)
    if version is not None:
        s.version.value = version
    if label:
        s.version_label = label
    return s


def test_no_version_is_the_latest() -> None:
    assert TABLE.resolve(spec("half_plus_two")) == Route("half_plus_two", 124, "hpt-124")


def test_a_version_is_that_version() -> None:
    assert TABLE.resolve(spec("half_plus_two", 123)) == Route("half_plus_two", 123, "hpt-123")


def test_a_label_is_its_version() -> None:
    assert TABLE.resolve(spec("half_plus_two", label="stable")).version == 123
    assert TABLE.resolve(spec("half_plus_two", label="canary")).target == "hpt-124"


def test_a_model_spec_without_name_is_invalid() -> None:
    with pytest.raises(InvalidArgument) as e:
        TABLE.resolve(spec(""))
    assert e.value.message == "ModelSpec has no name specified."


@pytest.mark.parametrize(
    ("request_spec", "message"),
    [
        (spec("nope"), "Servable not found for request: Latest(nope)"),
        (spec("loading"), "Servable not found for request: Latest(loading)"),
        (spec("nope", 1), "Servable not found for request: Specific(nope, 1)"),
        (spec("half_plus_two", 7), "Servable not found for request: Specific(half_plus_two, 7)"),
        (spec("half_plus_two", 0), "Servable not found for request: Specific(half_plus_two, 0)"),
        (
            spec("half_plus_two", label="gone"),
            "Servable not found for request: Specific(half_plus_two, 122)",
        ),
    ],
)
def test_what_is_not_available_is_not_found(
    request_spec: model_pb2.ModelSpec, message: str
) -> None:
    with pytest.raises(NotFound) as e:
        TABLE.resolve(request_spec)
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    assert e.value.message == message


@pytest.mark.parametrize("name", ["half_plus_two", "nope"])
def test_an_unknown_label_is_invalid_argument(name: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        TABLE.resolve(spec(name, label="beta"))
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.message == "Unrecognized servable version label: beta"


def test_a_latest_that_is_not_available_is_not_found() -> None:
    table = RoutingTable(models={"m": ModelRoutes(versions={1: "m-1"}, latest=2)})
    with pytest.raises(NotFound) as e:
        table.resolve(spec("m"))
    assert e.value.message == "Servable not found for request: Latest(m)"


def canary_table(weight: float, canary_version: int = 2) -> RoutingTable:
    return RoutingTable(
        models={
            "m": ModelRoutes(
                versions={1: "m-1", 2: "m-2"},
                latest=1,
                canary=Canary(version=canary_version, weight=weight),
            )
        }
    )


def test_a_canary_takes_its_share_of_latest_requests_only() -> None:
    random.seed(0)
    table = canary_table(0.25)
    versions = [table.resolve(spec("m")).version for _ in range(4000)]
    share = versions.count(2) / len(versions)
    assert 0.2 < share < 0.3
    assert set(versions) == {1, 2}
    assert {table.resolve(spec("m", 1)).version for _ in range(200)} == {1}


@pytest.mark.parametrize(("weight", "version"), [(0.0, 1), (1.0, 2)])
def test_canary_weights_zero_and_one(weight: float, version: int) -> None:
    table = canary_table(weight)
    assert {table.resolve(spec("m")).version for _ in range(200)} == {version}


def test_a_canary_version_not_available_is_ignored() -> None:
    table = canary_table(1.0, canary_version=3)
    assert table.resolve(spec("m")) == Route("m", 1, "m-1")


@pytest.mark.parametrize("weight", [-0.1, 1.5])
def test_a_canary_weight_outside_zero_one_is_refused(weight: float) -> None:
    with pytest.raises(ValidationError):
        Canary(version=2, weight=weight)


def test_the_table_survives_a_json_round_trip() -> None:
    """It ships to ingress replicas as a ``user_config`` (JSON): int keys come back ints."""
    back = RoutingTable.model_validate_json(canary_table(0.5).model_dump_json())
    assert back.models["m"].versions == {1: "m-1", 2: "m-2"}
    assert back.resolve(spec("m", 2)) == Route("m", 2, "m-2")
