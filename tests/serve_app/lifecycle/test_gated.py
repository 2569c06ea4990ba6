"""Gated rollouts run by the version manager (``lifecycle.gated``), on fakes: a run's routes at
each stage, its counts taken only once every replica routes by the stage's table, the runs
moved by the replicas' counts, and the manager's side (rolled back: unloaded and marked in
status; promoted: routed; the admin port's promote and abort)."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest

from compat.routing import ModelRoutes, RoutingTable
from serve_app.config.args import AppArgs, ModelArgs
from serve_app.lifecycle.faults import Faults
from serve_app.lifecycle.gated import RolloutDriver, Rollouts, Run
from serve_app.lifecycle.gates import RolloutPolicy, Stage
from serve_app.lifecycle.plan import Plan, Staged, plan_model, routing_for
from serve_app.lifecycle.repository import Scan
from serve_app.lifecycle.status import ReplicaReport, Reports, State, Statuses, VersionStatus
from serve_app.runtime.tally import Tally

POLICY = RolloutPolicy(
    shadow_requests=4, canary_weights=[0.2, 0.5], canary_requests=3, max_p99_ratio=2.0
)
OK = grpc.StatusCode.OK


def report(tally: Tally, epoch: int = 5) -> ReplicaReport:
    return ReplicaReport(epoch, {}, time.monotonic(), "", tally.figures())


def shadowed(tally: Tally, n: int, outcome: str = "same") -> None:
    for _ in range(n):
        tally.record_call("m", 1, OK, 0.002)
        tally.record_shadow("m", 2, "", outcome)


def test_a_runs_routes_hold_the_candidate_out_of_latest() -> None:
    rollouts = Rollouts()
    run = rollouts.begin("m", 1, 2, POLICY, epoch=5)
    assert run is not None and run.position.stage is Stage.SHADOW
    assert rollouts.held("m") == {1, 2} and rollouts.held("other") == set()
    plan = Plan(deployed={"m": {1: "/m/1", 2: "/m/2"}})
    models = {"m": ModelArgs(name="m", base_path="/m", rollout=POLICY)}
    table = routing_for(plan, lambda m, v: True, models, {}, 6, staged=rollouts.staged())
    routes = table.models["m"]
    assert routes.latest == 1 and routes.canary is None
    assert routes.shadow is not None and routes.shadow.version == 2
    assert routes.shadow.sampling_rate == 1.0
    staged = {"m": Staged(2, None, 0.2)}
    routes = routing_for(plan, lambda m, v: True, models, {}, 7, staged=staged).models["m"]
    assert routes.latest == 1 and routes.shadow is None
    assert routes.canary is not None and (routes.canary.version, routes.canary.weight) == (2, 0.2)
    assert routing_for(plan, lambda m, v: True, models, {}, 8).models["m"].latest == 2


def test_the_planner_takes_a_runs_shadow_as_the_routes_own() -> None:
    """A run's shadow is no label change to route anew at each poll."""
    model = ModelArgs(name="m", base_path="/m", rollout=POLICY)
    scan = Scan({1: "/m/1", 2: "/m/2"}, {1: "/m/1", 2: "/m/2"}, {})
    run = Rollouts().begin("m", 1, 2, POLICY, 1)
    assert run is not None
    routes = ModelRoutes(versions={1: "a", 2: "b"}, latest=1, shadow=run.staged().shadow)
    statuses = {v: VersionStatus(State.AVAILABLE, loaded=True) for v in (1, 2)}
    deployed = {1: "/m/1", 2: "/m/2"}
    steps = plan_model(model, scan, deployed, statuses, routes, staged=run.staged())
    assert not steps.relabel and steps.unload == {1}  # the manager holds it (``held``)
    assert plan_model(model, scan, deployed, statuses, routes).relabel


def test_a_policy_without_stages_is_no_run() -> None:
    assert (
        Rollouts().begin("m", 1, 2, RolloutPolicy(shadow_requests=0, canary_weights=[]), 1) is None
    )


def test_counts_start_once_every_replica_routes_by_the_stage() -> None:
    rollouts = Rollouts()
    run = rollouts.begin("m", 1, 2, POLICY, epoch=5)
    assert run is not None
    early = Tally()
    shadowed(early, 10, "differed")  # before the shadow's routes: not the candidate's
    assert rollouts.judge([report(early, epoch=4)]) == [] and run.baseline is None
    assert rollouts.judge([report(early, epoch=5), report(Tally(), epoch=4)]) == []
    assert run.baseline is None
    assert rollouts.judge([report(early), report(Tally())]) == []
    assert run.baseline is not None
    shadowed(early, 3)
    assert rollouts.judge([report(early), report(Tally())]) == []  # 3 of 4 compared: held
    assert run.figures.compared == 3 and run.figures.differed == 0


def test_a_good_candidate_goes_through_every_stage() -> None:
    rollouts = Rollouts()
    run = rollouts.begin("m", 1, 2, POLICY, epoch=5)
    assert run is not None
    t = Tally()
    rollouts.judge([report(t)])
    shadowed(t, 4)
    assert rollouts.judge([report(t)]) == [run]
    assert (run.position.stage, run.staged()) == (Stage.CANARY, Staged(2, None, 0.2))
    for weight, stage in ((0.5, Stage.CANARY), (1.0, Stage.FULL)):
        rollouts.judge([report(t)])  # the step's counts start here
        for _ in range(3):
            t.record_call("m", 2, OK, 0.002)
            t.record_call("m", 1, OK, 0.002)
        assert rollouts.judge([report(t)]) == [run]
        assert run.position.stage is stage and run.position.weight(POLICY) == weight
    assert [s["stage"] for s in run.stages] == ["shadow", "canary", "canary"]
    assert [s["verdict"] for s in run.stages] == ["passed"] * 3
    assert run.stages[0]["figures"]["compared"] == 4
    assert run.stages[2]["figures"]["candidate_requests"] == 3


def test_a_canary_step_the_current_answered_none_of_is_judged_on_all_it_answered() -> None:
    rollouts = Rollouts()
    run = rollouts.begin("m", 1, 2, RolloutPolicy(shadow_requests=0, canary_requests=3), 5)
    assert run is not None
    t = Tally()
    for _ in range(20):
        t.record_call("m", 1, OK, 0.002)
    rollouts.judge([report(t)])
    for _ in range(3):
        t.record_call("m", 2, OK, 0.3)  # every request of the step went to the candidate
    assert rollouts.judge([report(t)]) == [run]
    assert run.position.stage is Stage.ROLLED_BACK
    assert run.stages[0]["figures"]["current_requests"] == 0
    assert run.stages[0]["figures"]["current_p99_s"] == pytest.approx(0.002, rel=0.25)


def test_a_slow_canary_is_rolled_back() -> None:
    rollouts = Rollouts()
    run = rollouts.begin("m", 1, 2, RolloutPolicy(shadow_requests=0, canary_requests=3), 5)
    assert run is not None and run.position.stage is Stage.CANARY
    t = Tally()
    rollouts.judge([report(t)])
    for _ in range(3):
        t.record_call("m", 2, OK, 0.3)
        t.record_call("m", 1, OK, 0.002)
    assert rollouts.judge([report(t)]) == [run]
    assert run.position.stage is Stage.ROLLED_BACK
    assert run.position.reason.startswith("canary at 0.01: p99 latency")
    assert run.report()["stages"][-1]["verdict"].startswith("breach: canary at 0.01: p99")


class FakeManager(RolloutDriver):
    """The version manager's parts a rollout uses, recorded."""

    def __init__(self) -> None:
        self.args = AppArgs(models=[ModelArgs(name="m", base_path="/m", rollout=POLICY)])
        self.plan = Plan(
            deployed={"m": {1: "/m/1", 2: "/m/2"}},
            routing=RoutingTable(models={"m": ModelRoutes(versions={1: "m-v1"}, latest=1)}),
        )
        self.status = Statuses(
            m={1: VersionStatus(State.AVAILABLE, loaded=True), 2: VersionStatus(State.LOADING)}
        )
        self._lock = asyncio.Lock()
        self._reports = Reports()
        self._faults = Faults()
        self._rollouts = Rollouts()
        self.calls: list[str] = []

    async def _route_and_apply(self, plan: Plan, exclude=None, drop_model=None) -> None:  # type: ignore[no-untyped-def]
        self.calls.append(f"route {sorted(self._rollouts.staged())}")
        self.plan.routing.epoch += 1

    async def _retire(self, model: str, versions: set[int], drop_model: bool = False) -> None:
        self.calls.append(f"retire {sorted(versions)}")
        self.status[model][2].state = State.END

    async def _reconcile_model(self, model: ModelArgs) -> None:
        self.calls.append(f"reconcile {model.name}")


def test_the_manager_begins_a_run_only_for_a_newer_version_with_a_policy() -> None:
    m = FakeManager()
    m._begin_rollout("m", [])
    m._begin_rollout("m", [1])
    assert not m._rollouts.runs
    m._begin_rollout("m", [2])
    assert m._rollouts.runs["m"].epoch == 1  # the next table's
    m.args.models[0].rollout = None
    m._rollouts = Rollouts()
    m._begin_rollout("m", [2])
    assert not m._rollouts.runs


def test_a_breach_unloads_the_candidate_and_marks_it_in_status() -> None:
    m = FakeManager()
    m._begin_rollout("m", [2])
    run = m._rollouts.runs["m"]
    t = Tally()
    m._rollouts.judge([report(t, 1)])
    shadowed(t, 2, "differed")
    (moved,) = m._rollouts.judge([report(t, 1)])
    asyncio.run(m._moved(moved))
    assert m.calls == ["retire [2]"]
    s = m.status["m"][2]
    assert s.state == State.END and s.load_failed and not s.retry_due(time.monotonic() + 1e6)
    assert s.error_message.startswith("Rolled back: shadow: 2 of 2 answers differed")
    assert m._rollouts.finished["m"] is run and run.outcome == "rolled_back"


def test_the_operator_promotes_or_aborts_and_reads_the_report() -> None:
    m = FakeManager()

    async def act(action: str) -> tuple[str, dict]:
        reply = await m.rollout("m", action)
        return reply.code.name, json.loads(reply.payload) if reply.ok else {"error": reply.message}

    assert asyncio.run(act("")) == ("NOT_FOUND", {"error": "No rollout of model m"})
    assert asyncio.run(act("promote"))[0] == "FAILED_PRECONDITION"
    assert asyncio.run(act("bogus"))[0] == "INVALID_ARGUMENT"
    m._begin_rollout("m", [2])
    code, doc = asyncio.run(act(""))
    assert (code, doc["stage"], doc["candidate"], doc["current"]) == ("OK", "shadow", 2, 1)
    code, doc = asyncio.run(act("promote"))
    assert (doc["stage"], doc["outcome"]) == ("full", "promoted")
    assert doc["stages"][-1]["verdict"] == "promoted by an operator"
    assert m.calls == ["route []", "reconcile m"]
    m._begin_rollout("m", [2])
    code, doc = asyncio.run(act("abort"))
    assert (doc["stage"], doc["outcome"], doc["reason"]) == (
        "rolled_back",
        "rolled_back",
        "aborted by an operator",
    )
    assert m.status["m"][2].error_message == "Rolled back: aborted by an operator"


@pytest.mark.parametrize("versions", [{1: "m-v1"}, {2: "m-v2"}])
def test_a_run_whose_version_is_no_longer_routed_ends(versions: dict[int, str]) -> None:
    m = FakeManager()
    m._begin_rollout("m", [2])
    m.plan.routing.models["m"].versions = versions
    m._end_orphans()
    assert not m._rollouts.runs and m._rollouts.finished["m"].outcome == "ended"


def test_run_is_a_plain_report() -> None:
    run = Run("m", 1, 2, POLICY, Rollouts().begin("m", 1, 2, POLICY, 0).position)  # type: ignore[union-attr]
    assert json.loads(json.dumps(run.report()))["policy"]["canary_weights"] == [0.2, 0.5]


def test_a_stages_time_limit_runs_from_when_its_counts_began() -> None:
    policy = RolloutPolicy(shadow_requests=0, shadow_seconds=30, min_stage_requests=2)
    rollouts = Rollouts()
    run = rollouts.begin("m", 1, 2, policy, epoch=5)
    assert run is not None and run.position.stage is Stage.SHADOW
    t = Tally()
    run.stage_began -= 100  # routed long ago, but a replica only now routes by its table
    rollouts.judge([report(t)])
    shadowed(t, 5)
    assert rollouts.judge([report(t)]) == []  # 5 compared, the limit not reached: held
    run.counted_from -= 30
    assert rollouts.judge([report(t)]) == [run]
    assert run.position.stage is Stage.CANARY
    assert run.stages[0]["figures"]["compared"] == 5
