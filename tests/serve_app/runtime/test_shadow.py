"""Shadow traffic in the data plane (``runtime.shadow``), on fake versions that answer real
PredictResponses: the client gets the serving version's answer at once; a sample of answered
Predicts is mirrored to the shadow version afterwards, compared, and counted; the mirror's
queue is bounded and shed first."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest

from compat.compare import Tolerance
from compat.errors import Internal
from compat.protos import model_pb2, predict_pb2
from compat.routing import ModelRoutes, RoutingTable, Shadow
from compat.tensors import from_numpy, to_numpy
from serve_app.calls import Api, ModelCall, ModelReply, Wire
from serve_app.runtime.dataplane import DataPlane
from serve_app.runtime.replica_config import IngressConfig
from serve_app.runtime.shadow import Mirror, compare_replies, json_outputs
from tests.serve_app.runtime.test_dataplane import Handle, ManagerClient

pytestmark = pytest.mark.unit


class HalfPlus:
    """A version answering y = 0.5x + ``add``; a gate holds its answers while closed."""

    def __init__(self, add: float, fails: bool = False) -> None:
        self.add = add
        self.fails = fails
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def call(self, call: ModelCall) -> ModelReply:
        self.calls += 1
        await self.gate.wait()
        if self.fails:
            return ModelReply.error(Internal("boom"))
        x = to_numpy(call.request.inputs["x"])
        response = predict_pb2.PredictResponse()
        response.outputs["y"].CopyFrom(from_numpy((0.5 * x + self.add).astype(np.float32)))
        return ModelReply(payload=response.SerializeToString())


class Recorded:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> None:
        self.calls.append(args)

    def outcomes(self) -> list[str]:
        return [c[3] for c in self.calls]


def plane(shadow: Shadow | None, **versions: HalfPlus) -> tuple[DataPlane, Recorded]:
    routes = ModelRoutes(versions={1: "m-1", 2: "m-2"}, latest=1, shadow=shadow)
    p = DataPlane(ManagerClient(Handle()), "app", 1 << 20)  # type: ignore[arg-type]
    p.configure(IngressConfig(routing=RoutingTable(models={"m": routes})))
    p.local.update({f"m-{k[1:]}": v for k, v in versions.items()})
    record = Recorded()
    p.mirror = Mirror(p._call, lambda: p.in_flight, record=record)
    return p, record


def predict(x: float, version: int | None = None) -> ModelCall:
    spec = model_pb2.ModelSpec(name="m")
    if version is not None:
        spec.version.value = version
    request = predict_pb2.PredictRequest(model_spec=spec)
    request.inputs["x"].CopyFrom(from_numpy(np.array([[x]], np.float32)))
    return ModelCall(Api.PREDICT, spec, request)


def y(reply: ModelReply) -> float:
    return float(to_numpy(predict_pb2.PredictResponse.FromString(reply.payload).outputs["y"])[0, 0])


async def settle(p: DataPlane) -> None:
    """Until the mirror has nothing queued or running (bounded)."""
    for _ in range(1000):
        await asyncio.sleep(0.001)
        if not p.mirror._queue and not p.mirror.busy:
            return
    raise AssertionError("the mirror never settled")


def test_the_client_gets_the_serving_answer_and_the_shadow_is_compared() -> None:
    async def run() -> tuple[list[float], Recorded, int]:
        two, three = HalfPlus(2.0), HalfPlus(3.0)
        p, record = plane(Shadow(version=2), v1=two, v2=three)
        three.gate.clear()  # the shadow holds its answers: the clients do not wait for it
        answers = [y(await p.call_model(predict(x))) for x in (1.0, 2.0, 3.0)]
        for _ in range(10):
            await asyncio.sleep(0)  # the mirror's task runs
        waiting = three.calls
        three.gate.set()
        await settle(p)
        return answers, record, waiting

    answers, record, waiting = asyncio.run(run())
    assert answers == [2.5, 3.0, 3.5]  # half_plus_two's, though half_plus_three shadows
    assert waiting == 1  # one mirror at a time, after the answers
    assert record.outcomes() == ["differed"] * 3
    model, version, signature, _, (served_s, shadow_s), worst = record.calls[0]
    assert (model, version, signature, worst) == ("m", 2, "", 1.0)
    assert served_s > 0 and shadow_s > 0


def test_an_equal_answer_is_same_a_failed_one_failed() -> None:
    async def run(shadow_version: HalfPlus) -> list[str]:
        p, record = plane(Shadow(version=2), v1=HalfPlus(2.0), v2=shadow_version)
        await p.call_model(predict(1.0))
        await settle(p)
        return record.outcomes()

    assert asyncio.run(run(HalfPlus(2.0))) == ["same"]
    assert asyncio.run(run(HalfPlus(2.0, fails=True))) == ["failed"]


def test_only_sampled_predicts_served_by_another_version_are_mirrored() -> None:
    async def run(shadow: Shadow, *calls: ModelCall) -> tuple[int, Recorded]:
        shadowed = HalfPlus(3.0)
        p, record = plane(shadow, v1=HalfPlus(2.0), v2=shadowed)
        for call in calls:
            assert (await p.call_model(call)).ok
        await settle(p)
        return shadowed.calls, record

    # A call for the shadow version itself is its own, answered once.
    assert asyncio.run(run(Shadow(version=2), predict(1.0, version=2)))[0] == 1
    assert asyncio.run(run(Shadow(version=2, sampling_rate=0), predict(1.0)))[0] == 0
    calls, record = asyncio.run(run(Shadow(version=2, sampling_rate=0.5), *[predict(1.0)] * 200))
    assert 40 <= len(record.calls) <= 160  # mirrored: binomial, p=0.5, n=200
    assert calls == len(record.calls) - record.outcomes().count("dropped")


def test_the_queue_is_bounded_and_dropped_first() -> None:
    async def run() -> tuple[list[float], Recorded, int]:
        three = HalfPlus(3.0)
        p, record = plane(Shadow(version=2, max_pending=2), v1=HalfPlus(2.0), v2=three)
        three.gate.clear()
        answers = []
        for _ in range(10):
            answers.append(y(await p.call_model(predict(1.0))))
            await asyncio.sleep(0)  # the mirror's task takes the first call
        three.gate.set()
        await settle(p)
        return answers, record, three.calls

    answers, record, calls = asyncio.run(run())
    assert answers == [2.5] * 10
    # One running, two queued: the other seven dropped at once, the three compared later.
    assert sorted(record.outcomes()) == ["differed"] * 3 + ["dropped"] * 7
    assert calls == 3


def test_the_queue_is_bounded_in_bytes_too() -> None:
    async def run() -> tuple[Recorded, int]:
        three = HalfPlus(3.0)
        p, record = plane(Shadow(version=2), v1=HalfPlus(2.0), v2=three)
        p.mirror._max_bytes = 300  # a call and its answer hold about 100 bytes
        three.gate.clear()
        for _ in range(10):
            await p.call_model(predict(1.0))
            await asyncio.sleep(0)
        three.gate.set()
        await settle(p)
        return record, three.calls

    record, calls = asyncio.run(run())
    assert 2 <= calls < 10 and record.outcomes().count("dropped") == 10 - calls


def test_a_busy_replica_sheds_the_mirror() -> None:
    async def run() -> Recorded:
        p, record = plane(Shadow(version=2), v1=HalfPlus(2.0), v2=HalfPlus(3.0))
        p.mirror._shed_in_flight = 1
        p.in_flight = 5  # calls of other clients still being answered
        await p.call_model(predict(1.0))
        await settle(p)
        return record

    assert asyncio.run(run()).outcomes() == ["dropped"]


def test_rest_answers_compare_as_their_json() -> None:
    rows = json.dumps({"predictions": [[2.5], [3.0]]}).encode()
    other = json.dumps({"predictions": [[3.5], [4.0]]}).encode()
    result = compare_replies(Wire.REST, ModelReply(rows), ModelReply(other), Tolerance())
    assert result.diff and result.max_abs_diff == 1.0
    assert not compare_replies(Wire.REST, ModelReply(rows), ModelReply(rows), Tolerance()).diff
    named = json.dumps({"predictions": [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]}).encode()
    assert set(json_outputs(named)) == {"a", "b"}
    assert json_outputs(json.dumps({"outputs": {"y": [1.0]}}).encode())["y"].tolist() == [1.0]
    assert json_outputs(json.dumps({"outputs": [1, 2]}).encode())["outputs"].tolist() == [1, 2]
