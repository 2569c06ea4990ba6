"""A serving replica's versions under a memory budget (``runtime.paging``), on fake versions and
fake peers: the data plane pages a version in for its call, within the caller's deadline, and
says RESOURCE_EXHAUSTED when it cannot fit; a call for a version placement does not page in
here goes one hop and its answer is the caller's; a hop that cannot be made, or that comes
back unanswered, is answered here; a hop received is answered here, never sent on; what is held
or being paged in is told to the routers once per burst of changes; a rollout keeps the
versions this replica owns first and the others only into free room; a version pinned by a
reload is paged in at once. Serve's side of a hop (``ServePeers``, on a fake handle): one handle
per version, routed by it as multiplexed model id; a replica gone answers None; a hop past its
deadline is cancelled where it went."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from compat.errors import ResourceExhausted, StatusCode
from serve_app.calls import Api, ModelCall, ModelReply
from serve_app.runtime import paging
from serve_app.runtime.dataplane import DataPlane
from serve_app.runtime.model import LoadState
from serve_app.runtime.paging import ADVERTISE_S, Pager
from serve_app.runtime.placement import HOT_CALLS, Load, owner
from serve_app.runtime.replica_config import LocalVersion, VersionConfig
from serve_app.runtime.residency import Residency
from tests.serve_app.runtime.test_dataplane import Handle, plane, predict
from tests.serve_app.runtime.test_residency import Fake, Loads

pytestmark = pytest.mark.unit

MB = 1 << 20


class Answering(Fake):
    """A fake version that answers its target's name, after ``wait_s``."""

    wait_s = 0.0

    def reconfigure(self, config: object) -> None:
        """Batching knobs: nothing to do."""

    async def call(self, call: object) -> ModelReply:
        await asyncio.sleep(self.wait_s)
        return ModelReply(payload=self.target.encode())


class Peers:
    """The other replicas: each hop is recorded and answered ``answer`` (None: unanswered)."""

    def __init__(self, answer: bytes | None = b"elsewhere") -> None:
        self.answer = answer
        self.hops: list[str] = []
        self.advertised: list[list[str]] = []

    async def call(self, target: str, call: ModelCall) -> ModelReply | None:
        self.hops.append(target)
        return None if self.answer is None else ModelReply(payload=self.answer)

    def advertise(self, targets: list[str]) -> None:
        self.advertised.append(targets)

    def forget(self, keep: set[str]) -> None:
        """Nothing kept per version."""


def pager(
    budget_mb: int, sizes: dict[str, int], peers: Peers | None = None, replicas: int = 1
) -> tuple[Pager, Loads]:
    """A pager whose versions (``<model>-v<version>``) are fakes loaded at rollout in order."""
    loads = Loads(sizes)
    loads.make = Answering
    p = Pager(None, "r", peers)  # type: ignore[arg-type]  # the fakes need no options
    p.residency = Residency(budget_mb * MB, loads, on_change=p._changed)  # type: ignore[arg-type]
    p.placement.replicas = replicas
    for target in sizes:
        model, version = target.rsplit("-v", 1)
        spec = LocalVersion(model=model, version=int(version), path="/nowhere")
        p.paged[target] = (spec, LoadState(True))
        p.residency.admit(target, model, spec.version, Answering(target), sizes[target], False)  # type: ignore[arg-type]
    return p, loads


def paged_plane(budget_mb: int, sizes: dict[str, int], peers: Peers | None = None) -> DataPlane:
    p: DataPlane = plane(Handle())
    p.pager, _ = pager(budget_mb, sizes, peers, replicas=2 if peers else 1)
    return p


def call() -> ModelCall:
    return ModelCall(Api.PREDICT, None, None)


async def answers(p: Pager, *targets: str) -> list[bytes]:
    return [(await p.call(t, call())).payload for t in targets]


def test_the_data_plane_pages_a_version_in_for_its_call_and_says_when_it_cannot_fit() -> None:
    p = paged_plane(4, {"m-v1": 3 * MB, "m-v2": 3 * MB})
    assert p.pager is not None
    loads = p.pager.residency._load
    assert set(p.pager.residency.resident()) == {"m-v2"}
    assert asyncio.run(p.Predict(*predict(1))).payload == b"m-v1"  # paged in for its call
    assert set(p.pager.residency.resident()) == {"m-v1"} and loads.count == {"m-v1": 1}  # type: ignore[attr-defined]
    assert set(p.load_states()) == {"m-v1", "m-v2"}  # both still AVAILABLE to the manager
    p.pager.residency.entries["m-v2"].nbytes = 5 * MB
    reply = asyncio.run(p.Predict(*predict(2)))
    assert reply.code == StatusCode.RESOURCE_EXHAUSTED
    assert "model memory budget of 4 MB" in reply.message


def test_a_call_waiting_for_its_page_in_gets_deadline_exceeded_at_its_deadline() -> None:
    p = paged_plane(4, {"m-v1": 3 * MB, "m-v2": 3 * MB})
    assert p.pager is not None
    loads: Loads = p.pager.residency._load  # type: ignore[assignment]
    loads.gate.clear()

    async def run() -> ModelReply:
        reply = await p.Predict(*predict(1, deadline=time.time() + 0.1))
        loads.gate.set()  # the load goes on (its thread ends) once the call has its answer
        return reply

    assert asyncio.run(run()).code == StatusCode.DEADLINE_EXCEEDED


def test_a_cold_call_goes_one_hop_until_its_version_is_hotter_here_than_what_it_would_evict() -> (
    None
):
    peers = Peers()
    p, loads = pager(4, {"a-v1": 3 * MB, "b-v1": 3 * MB}, peers, replicas=2)
    p.placement.load = Load(clock=lambda: 100.0)  # no decay between the calls
    assert set(p.residency.resident()) == {"b-v1"}

    n = int(HOT_CALLS) + 1

    async def run() -> None:
        assert await answers(p, *["b-v1"] * n) == [b"b-v1"] * n  # held: no hop
        assert await answers(p, *["a-v1"] * n) == [b"elsewhere"] * n  # hot, not hotter than b
        assert peers.hops == ["a-v1"] * n and "a-v1" not in loads.count
        assert await answers(p, "a-v1") == [b"a-v1"]  # one call more than b's now: paged in
        assert set(p.residency.resident()) == {"a-v1"} and loads.count == {"a-v1": 1}
        assert await answers(p, "a-v1") == [b"a-v1"] and len(peers.hops) == n

    asyncio.run(run())


def test_a_version_that_fits_in_free_room_or_a_hop_unanswered_is_paged_in_here() -> None:
    peers = Peers(answer=None)
    p, loads = pager(10, {"a-v1": 3 * MB, "b-v1": 3 * MB, "c-v1": 3 * MB}, peers, replicas=2)
    p.residency._close(p.residency.entries["a-v1"])  # as if evicted: it fits in free room

    async def run() -> None:
        assert await answers(p, "a-v1") == [b"a-v1"] and not peers.hops
        p.residency.budget = 8 * MB  # a page-in of b would evict
        p.residency._close(p.residency.entries["b-v1"])
        assert await answers(p, "b-v1") == [b"b-v1"]  # the hop came back unanswered
        assert peers.hops == ["b-v1"]

    asyncio.run(run())
    assert loads.count == {"a-v1": 1, "b-v1": 1}


def test_a_hop_received_is_answered_here_never_sent_on() -> None:
    peers = Peers()
    p = paged_plane(4, {"m-v1": 3 * MB, "m-v2": 3 * MB}, peers)
    pager = p.pager
    assert pager is not None

    async def run() -> None:
        for _ in range(int(HOT_CALLS) * 2):
            await p.Predict(*predict(2))  # m-v2 is busy here
        reply = await p.answer_hop("m-v1", call())
        assert reply is not None and reply.payload == b"m-v1"  # paged in, though m-v2 is busier
        assert not peers.hops
        assert await p.answer_hop("m-v9", call()) is None  # not served here: the sender answers
        pager.residency.entries["m-v2"].nbytes = 5 * MB
        reply = await p.answer_hop("m-v2", call())
        assert reply is not None and reply.code == StatusCode.RESOURCE_EXHAUSTED

    asyncio.run(run())
    assert plane(Handle()).pager is None  # no budget: no pager


def test_what_is_held_or_paging_in_is_told_to_the_routers_once_per_burst_of_changes() -> None:
    peers = Peers()
    p, _ = pager(10, {"a-v1": 3 * MB, "b-v1": 3 * MB, "c-v1": 3 * MB}, peers, replicas=2)
    assert not peers.advertised  # no event loop at rollout here: nothing routes yet

    async def run() -> None:
        p.residency._close(p.residency.entries["a-v1"])
        p.residency.drop(keep={"a-v1", "b-v1"})
        await p.call("a-v1", call())  # paged in again: three changes in all
        await asyncio.sleep(ADVERTISE_S * 3)

    asyncio.run(run())
    assert peers.advertised == [["a-v1", "b-v1"]]


def test_a_rollout_keeps_the_versions_this_replica_owns_first_then_others_into_free_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    targets = [f"m{i}-v1" for i in range(8)]
    mine = [t for t in targets if owner(t, 2) == 1]
    assert 0 < len(mine) < len(targets)
    loaded: list[str] = []

    def measured_load(self: Pager, spec: LocalVersion) -> tuple[Any, int]:
        target = f"{spec.model}-v{spec.version}"
        loaded.append(target)
        v = Answering(target)
        v.load_state = lambda: LoadState(True)  # type: ignore[attr-defined]
        v.servable = SimpleNamespace(signatures={})  # type: ignore[attr-defined]
        v.model = spec.model  # type: ignore[attr-defined]
        return v, 3 * MB

    monkeypatch.setattr(paging.Pager, "_measured_load", measured_load)
    p = Pager(None, "r", Peers())  # type: ignore[arg-type]
    wanted = {t: LocalVersion(model=t[:-3], version=1, path="/nowhere") for t in targets}
    budget_mb = 3 * (len(mine) + 1)  # room for what it owns, and one more
    asyncio.run(p.load(wanted, VersionConfig(), budget_mb, rank=1, replicas=2))
    assert loaded[: len(mine)] == mine and sorted(loaded) == sorted(targets)  # every one checked
    others = [t for t in targets if t not in mine]
    assert set(p.residency.resident()) == {*mine, others[0]}  # the first other fit, no more
    assert set(p.paged) == set(targets)  # every version AVAILABLE

    alone = Pager(None, "r", Peers())  # type: ignore[arg-type]
    loaded.clear()
    asyncio.run(alone.load(wanted, VersionConfig(), 6, rank=0, replicas=1))
    assert loaded == targets  # alone: the config's order, least recently used evicted
    assert set(alone.residency.resident()) == set(targets[-2:])


def test_a_version_pinned_by_a_reload_is_paged_in_at_once_and_never_evicted() -> None:
    p, loads = pager(4, {"a-v1": 3 * MB, "b-v1": 3 * MB})
    assert set(p.residency.resident()) == {"b-v1"}
    wanted = {
        t: LocalVersion(model=t[0], version=1, path="/nowhere", pinned=t == "a-v1")
        for t in ("a-v1", "b-v1")
    }
    asyncio.run(p.load(wanted, VersionConfig(), 4))
    assert set(p.residency.resident()) == {"a-v1"} and loads.count == {"a-v1": 1}
    with pytest.raises(ResourceExhausted, match="besides pinned models"):
        asyncio.run(p.call("b-v1", call()))  # no room beside the pinned one: it is not evicted
    assert set(p.residency.resident()) == {"a-v1"}


class Response:
    """A fake ``DeploymentResponse``: awaits ``outcome`` (a reply, or an error raised)."""

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.cancelled = False

    def __await__(self) -> Any:
        if isinstance(self.outcome, float):
            yield from asyncio.sleep(self.outcome).__await__()
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome

    def cancel(self) -> None:
        self.cancelled = True


class IngressHandle:
    """A fake handle of the serving replicas' deployment: records each hop's options."""

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.models: list[str] = []
        self.responses: list[Response] = []

    def options(self, multiplexed_model_id: str) -> Any:
        self.models.append(multiplexed_model_id)
        handle = self

        class Method:
            @staticmethod
            def remote(target: str, call: ModelCall) -> Response:
                handle.responses.append(Response(handle.outcome))
                return handle.responses[-1]

        return SimpleNamespace(forwarded=Method)


def test_serve_peers_route_by_the_version_and_answer_none_when_the_replica_went_away() -> None:
    from ray.exceptions import ActorDiedError

    peers = paging.ServePeers("app", "Ingress")
    handle = peers._handle = IngressHandle(ModelReply(payload=b"there"))
    reply = asyncio.run(peers.call("m-v1", call()))
    assert reply is not None and reply.payload == b"there" and handle.models == ["m-v1"]
    asyncio.run(peers.call("m-v1", call()))
    assert handle.models == ["m-v1"]  # one handle per version, made once
    handle.outcome = ActorDiedError()
    assert asyncio.run(peers.call("m-v1", call())) is None  # answered where it arrived


def test_a_hop_past_its_deadline_is_cancelled_on_the_replica_it_went_to() -> None:
    peers = paging.ServePeers("app", "Ingress")
    handle = peers._handle = IngressHandle(5.0)  # answers in 5 s

    async def run() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(peers.call("m-v1", call()), 0.05)

    asyncio.run(run())
    assert handle.responses[0].cancelled
