"""The data plane (``runtime.dataplane.DataPlane``) in-process, on fakes of a version, of a model
deployment's handle and of the version manager's: a call goes to the version the routing table
names, held here or in its own deployment; failures and deadlines become TF Serving's codes; the
version manager's answers come through the typed client, its failures as ``ServingError``s;
the transports take the plane as their ``Plane``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from grpc_health.v1 import health_pb2
from ray.exceptions import ActorUnavailableError
from ray.serve.exceptions import BackPressureError

from compat.errors import ServingError, StatusCode
from compat.protos import get_model_status_pb2, model_pb2, predict_pb2
from compat.routing import ModelRoutes, RoutingTable
from serve_app.calls import ModelCall, ModelReply
from serve_app.deployments import ManagerClient, Snapshot, VersionState
from serve_app.runtime.dataplane import DataPlane
from serve_app.runtime.replica_config import IngressConfig
from serve_app.transports.health import Health
from serve_app.transports.listeners import Listeners

pytestmark = pytest.mark.unit

TABLE = RoutingTable(models={"m": ModelRoutes(versions={1: "m-v1", 2: "m-v2"}, latest=2)})


class Version:
    """A version held in the process: answers each call with its target's name."""

    def __init__(self, name: str, wait_s: float = 0.0) -> None:
        self.name = name
        self.wait_s = wait_s
        self.calls: list[ModelCall] = []

    async def call(self, call: ModelCall) -> ModelReply:
        self.calls.append(call)
        await asyncio.sleep(self.wait_s)
        return ModelReply(payload=self.name.encode())


class Response:
    """A ``DeploymentResponse``: awaitable once, cancellable."""

    def __init__(self, answer: Callable[[], Awaitable[Any]]) -> None:
        self.answer = answer
        self.cancelled = False

    def __await__(self) -> Any:
        return self.answer().__await__()

    def cancel(self) -> None:
        self.cancelled = True


class Method:
    def __init__(self, answer: Callable[..., Awaitable[Any]]) -> None:
        self.answer = answer
        self.args: list[tuple[Any, ...]] = []
        self.responses: list[Response] = []

    def remote(self, *args: Any) -> Response:
        self.args.append(args)
        response = Response(lambda: self.answer(*args))
        self.responses.append(response)
        return response


class Handle:
    """A deployment handle whose methods answer with ``answers[name](*args)``."""

    def __init__(self, **answers: Callable[..., Awaitable[Any]]) -> None:
        for name, answer in answers.items():
            setattr(self, name, Method(answer))


def returning(value: Any) -> Callable[..., Awaitable[Any]]:
    async def answer(*args: Any) -> Any:
        return value

    return answer


def raising(error: Exception) -> Callable[..., Awaitable[Any]]:
    async def answer(*args: Any) -> Any:
        raise error

    return answer


def plane(manager: Handle | None = None, **local: Version) -> DataPlane:
    p = DataPlane(ManagerClient(manager or Handle()), "app", 1 << 20)  # type: ignore[arg-type]
    p.configure(IngressConfig(routing=TABLE))
    p.local.update(local)
    return p


def predict(version: int | None = None, deadline: float | None = None) -> Any:
    spec = model_pb2.ModelSpec(name="m")
    if version is not None:
        spec.version.value = version
    return predict_pb2.PredictRequest(model_spec=spec).SerializeToString(), deadline


def test_a_call_goes_to_the_version_its_spec_resolves_to_held_here() -> None:
    v1, v2 = Version("m-v1"), Version("m-v2")
    p = plane(**{"m-v1": v1, "m-v2": v2})
    assert asyncio.run(p.Predict(*predict())).payload == b"m-v2"  # latest
    assert asyncio.run(p.Predict(*predict(1))).payload == b"m-v1"
    assert [c.spec.name for c in v1.calls + v2.calls] == ["m", "m"]


def test_unknown_models_and_versions_get_tf_servings_errors_without_a_call() -> None:
    v2 = Version("m-v2")
    p = plane(**{"m-v2": v2})
    reply = asyncio.run(p.Predict(*predict(7)))
    assert (reply.code, reply.message) == (
        StatusCode.NOT_FOUND,
        "Servable not found for request: Specific(m, 7)",
    )
    reply = asyncio.run(p.Predict(b"\xff", None))
    assert reply.message == "Could not parse request as tensorflow.serving.PredictRequest"
    assert not v2.calls


def test_a_version_in_its_own_deployment_gets_the_call_through_its_handle() -> None:
    p = plane()
    handle = Handle(call=returning(ModelReply(payload=b"remote")))
    p._handles["m-v2"] = handle  # type: ignore[assignment]
    assert asyncio.run(p.Predict(*predict())).payload == b"remote"
    (call,) = handle.call.args[0]  # type: ignore[attr-defined]
    assert isinstance(call, ModelCall) and call.spec.name == "m"


def test_a_passed_deadline_is_deadline_exceeded_here_and_cancels_a_remote_call() -> None:
    slow = Version("m-v1", wait_s=5.0)
    p = plane(**{"m-v1": slow})

    async def remote(*args: Any) -> Any:
        await asyncio.sleep(5.0)

    handle = Handle(call=remote)
    p._handles["m-v2"] = handle  # type: ignore[assignment]
    soon = time.time() + 0.05
    assert asyncio.run(p.Predict(*predict(1, soon))).code == StatusCode.DEADLINE_EXCEEDED
    assert asyncio.run(p.Predict(*predict(2, time.time() + 0.05))).code == (
        StatusCode.DEADLINE_EXCEEDED
    )
    assert handle.call.responses[0].cancelled  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (BackPressureError(num_queued_requests=5, max_queued_requests=5), "RESOURCE_EXHAUSTED"),
        (ActorUnavailableError("gone", None), "UNAVAILABLE"),
        (RuntimeError("boom"), "INTERNAL"),
    ],
)
def test_a_failed_forward_is_a_code_never_a_ray_traceback(error: Exception, code: str) -> None:
    p = plane()
    p._handles["m-v2"] = Handle(call=raising(error))  # type: ignore[assignment]
    reply = asyncio.run(p.Predict(*predict()))
    assert reply.code == StatusCode[code]
    assert "Traceback" not in reply.message


def test_the_version_managers_answers_come_typed_through_the_plane() -> None:
    status = ModelReply(payload=b"status")
    snapshot = Snapshot(status={"m": {2: VersionState.AVAILABLE}})
    manager = Handle(
        ready=returning(True),
        get_status=returning(status),
        reload_config=returning(ModelReply(payload=b"reloaded")),
        set_label_weight=returning(ModelReply(payload=b"{}")),
        snapshot=returning(snapshot),
    )
    p = plane(manager)
    raw = get_model_status_pb2.GetModelStatusRequest().SerializeToString()
    assert asyncio.run(p.ready()) is True
    assert asyncio.run(p.model_status(raw)) is status
    assert asyncio.run(p.GetModelStatus(raw, None)) is status
    assert asyncio.run(p.HandleReloadConfigRequest(b"r", None)).payload == b"reloaded"
    assert asyncio.run(p.set_label_weight("m", "canary", 0.5)).payload == b"{}"
    assert manager.set_label_weight.args == [("m", "canary", 0.5)]  # type: ignore[attr-defined]
    assert asyncio.run(p.manager.snapshot()) == snapshot


def test_a_version_manager_that_cannot_answer_is_unavailable_or_not_serving() -> None:
    gone = raising(ActorUnavailableError("restarting", None))
    manager = Handle(ready=gone, get_status=gone, reload_config=gone, snapshot=gone)
    p = plane(manager)
    with pytest.raises(ServingError) as e:
        asyncio.run(p.ready())
    assert e.value.code == StatusCode.UNAVAILABLE
    with pytest.raises(ServingError):
        asyncio.run(p.metrics_text())
    assert asyncio.run(p.GetModelStatus(b"", None)).code == StatusCode.UNAVAILABLE
    assert asyncio.run(p.HandleReloadConfigRequest(b"", None)).code == StatusCode.UNAVAILABLE
    check = health_pb2.HealthCheckRequest().SerializeToString()
    reply = asyncio.run(Health(p).Check(check, None))
    assert health_pb2.HealthCheckResponse.FromString(reply.payload).status == (
        health_pb2.HealthCheckResponse.NOT_SERVING
    )


def test_configure_swaps_the_table_and_unload_lets_go_of_the_rest() -> None:
    p = plane(**{"m-v1": Version("m-v1"), "m-v2": Version("m-v2")})
    assert (p.cors, p.rest_timeout_s, p.prometheus_path) == (False, 30.0, None)
    config = IngressConfig(cors=True, rest_api_timeout_in_ms=0, prometheus_path="/metrics")
    p.configure(config)
    assert (p.table, p.cors, p.rest_timeout_s, p.prometheus_path) == (
        config.routing,
        True,
        None,
        "/metrics",
    )
    p.unload(keep=["m-v2"])
    assert list(p.local) == ["m-v2"]
    assert not p.colocated  # no version options: it loads nothing itself


def test_the_listeners_serve_every_service_over_the_plane() -> None:
    p = plane()
    listeners = Listeners(p, "127.0.0.1", 0, 0)
    assert listeners.rest.backend is p and listeners.v2.backend is p
    assert set(listeners.servicers) == {
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
    }
