"""Gated rollouts, run: the version manager's side of a model's ``rollout`` block.

When a new version of a model with a rollout policy (``config.model_args.RolloutPolicy``) has
loaded and warmed up next to the version serving now, it is not routed as ``latest``: a
``Run`` begins (``Rollouts.begin``), and the candidate gets the shadow (every Predict answered
by the current version mirrored to it, ``runtime.shadow``), then the canary weights one by one,
then everything. The routes come from the run (``Run.staged``, ``plan.routing_for``); the
current version is held deployed meanwhile (``Rollouts.held``).

Each stage is judged by ``lifecycle.gates`` on the figures since it began: the serving
replicas' counts (``runtime.tally``, sent with their heartbeats) added up, less those taken
when every replica had the stage's routing table (``Run.baseline``), so a stage counts only
requests routed its way; the judging is on counts of requests (and a stage's time, from then,
where the policy limits it), checked every ``TICK_S``. A breach rolls back: the candidate is
unrouted and unloaded, END in GetModelStatus with the reason (ABORTED), and not loaded again
until its files change; a candidate through every stage is promoted (routed as ``latest``;
the version policy then unloads the one before). An operator reads a run (stage, figures, the
stages behind it: the rollout report) and promotes or aborts it on the admin port
(``RolloutDriver.rollout``).

A run lives in the manager's memory: a manager that restarts mid-rollout routes as TF Serving
would (the newest version serves).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from compat.errors import FailedPrecondition, InvalidArgument, NotFound, ServingError, StatusCode
from compat.routing import Shadow
from serve_app.calls import ModelReply
from serve_app.config.args import AppArgs, ModelArgs
from serve_app.lifecycle import gates
from serve_app.lifecycle.faults import Faults
from serve_app.lifecycle.gates import Figures, Position, RolloutPolicy, Stage
from serve_app.lifecycle.plan import Plan, Staged
from serve_app.lifecycle.status import ReplicaReport, Reports, Statuses
from serve_app.runtime.tally import Totals, merge

logger = logging.getLogger("ray.serve")

TICK_S = 0.25
"""How often running rollouts are judged."""


@dataclass
class Run:
    """One model's rollout: the candidate, the version it is judged against, where it is."""

    model: str
    current: int
    candidate: int
    policy: RolloutPolicy
    position: Position
    epoch: int = 0
    """The routing epoch of this stage: its counts start once every replica routes by it."""
    baseline: Totals | None = None
    """The counts when they started (None: not every replica routes by ``epoch`` yet)."""
    counted_from: float = 0.0
    """When they started (``time.monotonic``): a stage's time limit runs from there."""
    figures: Figures = field(default_factory=Figures)
    """This stage's figures, as last judged."""
    stage_began: float = field(default_factory=time.monotonic)
    began_at: float = field(default_factory=time.time)
    stages: list[dict[str, Any]] = field(default_factory=list)
    """The stages behind it: stage, weight, seconds, figures, verdict."""
    outcome: str = ""
    """"" while it runs; then promoted, rolled_back or superseded."""

    def staged(self) -> Staged:
        """Its routes now (``plan.routing_for``)."""
        stage = self.position.stage
        shadow = None
        if stage is Stage.SHADOW:
            p = self.policy
            shadow = Shadow(version=self.candidate, sampling_rate=1.0, atol=p.atol, rtol=p.rtol)
        weight = self.position.weight(self.policy) if stage is Stage.CANARY else 0.0
        return Staged(self.candidate, shadow, weight)

    def judge(self, totals: Totals) -> bool:
        """Move on (or back) by the counts since the stage began; True when it moved."""
        if self.baseline is None:
            return False
        self.figures = figures_of(totals.since(self.baseline), self.model, self, totals)
        seconds = time.monotonic() - self.counted_from
        return self.move(gates.advance(self.policy, self.position, self.figures, seconds))

    def move(self, to: Position) -> bool:
        """Go to ``to``, closing the stage it leaves; False when it is where it was."""
        if to == self.position:
            return False
        verdict = "passed" if to.stage is not Stage.ROLLED_BACK else f"breach: {to.reason}"
        if to.reason and to.stage is Stage.FULL:
            verdict = to.reason
        self.stages.append(
            {
                "stage": self.position.stage.value,
                "weight": self.position.weight(self.policy),
                "seconds": round(time.monotonic() - self.stage_began, 3),
                "figures": asdict(self.figures),
                "verdict": verdict,
            }
        )
        self.position, self.baseline, self.figures = to, None, Figures()
        self.stage_began = time.monotonic()
        return True

    def report(self) -> dict[str, Any]:
        """The rollout report (JSON): where it is, its figures, the stages behind it."""
        return {
            "model": self.model,
            "current": self.current,
            "candidate": self.candidate,
            "stage": self.position.stage.value,
            "weight": self.position.weight(self.policy),
            "reason": self.position.reason,
            "outcome": self.outcome,
            "began_at": self.began_at,
            "policy": self.policy.model_dump(),
            "figures": asdict(self.figures),
            "stages": list(self.stages),
        }


def figures_of(counts: Totals, model: str, run: Run, everything: Totals) -> Figures:
    """A stage's figures (``counts``): the candidate's shadow outcomes (a mirrored call that
    failed counts as an answer that differed) and both versions' calls. When the current
    version answered none in the stage (a canary step's few requests may all go to the
    candidate), its p99 is that of all it answered (``everything``)."""
    shadow = counts.outcomes(model, run.candidate)
    differed = shadow.get("differed", 0) + shadow.get("failed", 0)
    candidate, current = counts.version(model, run.candidate), counts.version(model, run.current)
    return Figures(
        compared=shadow.get("same", 0) + differed,
        differed=differed,
        candidate_requests=candidate.requests,
        candidate_errors=candidate.errors,
        candidate_p99_s=candidate.p99(),
        current_requests=current.requests,
        current_errors=current.errors,
        current_p99_s=current.p99() or everything.version(model, run.current).p99(),
    )


class Rollouts:
    """The runs in progress, by model, and each model's last finished one."""

    def __init__(self) -> None:
        self.runs: dict[str, Run] = {}
        self.finished: dict[str, Run] = {}

    def begin(
        self, model: str, current: int, candidate: int, policy: RolloutPolicy, epoch: int
    ) -> Run | None:
        """A run for ``candidate`` against ``current`` (one in progress is superseded), its
        counts taken from routing ``epoch`` on; None when the policy has no stage before full."""
        if model in self.runs:
            self.end(model, "superseded")
        position = gates.start(policy)
        if position.stage is Stage.FULL:
            return None
        run = Run(model, current, candidate, policy, position, epoch)
        self.runs[model] = run
        return run

    def end(self, model: str, outcome: str = "") -> Run:
        """The run of ``model`` is over; its ``outcome`` is set once the routes say so."""
        run = self.runs.pop(model)
        run.outcome = outcome
        self.finished[model] = run
        return run

    def staged(self) -> dict[str, Staged]:
        return {m: r.staged() for m, r in self.runs.items()}

    def held(self, model: str) -> set[int]:
        """The versions a run keeps deployed (the version policy would unload the current)."""
        run = self.runs.get(model)
        return {run.current, run.candidate} if run else set()

    def judge(self, reports: list[ReplicaReport]) -> list[Run]:
        """Judge every run on the replicas' reports; the runs that moved (to route anew)."""
        if not reports or not self.runs:
            return []
        totals = merge(r.figures or {} for r in reports)
        moved = []
        for run in self.runs.values():
            if run.baseline is None:
                if all(r.epoch >= run.epoch for r in reports):
                    run.baseline, run.counted_from = totals, time.monotonic()
                continue
            if run.judge(totals):
                moved.append(run)
        return moved

    def report(self, model: str) -> dict[str, Any] | None:
        run = self.runs.get(model) or self.finished.get(model)
        return run.report() if run else None


class RolloutDriver:
    """The version manager's rollout side (``lifecycle.rollout.VersionManager`` is one)."""

    args: AppArgs
    plan: Plan
    status: Statuses
    _lock: asyncio.Lock
    _reports: Reports
    _faults: Faults
    _task: asyncio.Task[None]

    async def _route_and_apply(
        self, plan: Plan, exclude: dict[str, set[int]] | None = None, drop_model: str | None = None
    ) -> None:
        raise NotImplementedError

    async def _retire(self, model: str, versions: set[int], drop_model: bool = False) -> None:
        raise NotImplementedError

    async def _reconcile_model(self, model: ModelArgs) -> None:
        raise NotImplementedError

    def _start_rollouts(self) -> None:
        self._rollouts = Rollouts()
        task = asyncio.get_event_loop().create_task(self._judge_forever())
        self._task.add_done_callback(lambda _: task.cancel())  # ends with the poll loop

    def _begin_rollout(self, model: str, loaded: list[int]) -> None:
        """New versions of ``model`` have loaded: the newest is a candidate when the model has
        a rollout policy and a version serves now (routed as ``latest``)."""
        policy = next((m.rollout for m in self.args.models if m.name == model), None)
        routes = self.plan.routing.models.get(model)
        current = routes.latest if routes else None
        if policy is None or current is None or not loaded or max(loaded) <= current:
            return
        candidate = max(loaded)
        if self._rollouts.begin(model, current, candidate, policy, self.plan.routing.epoch + 1):
            logger.info("Rolling %s version %d out against version %d", model, candidate, current)

    async def _judge_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            if not self._rollouts.runs:
                continue
            try:
                async with self._lock:
                    self._end_orphans()
                    for run in self._rollouts.judge(self._reports.live()):
                        await self._moved(run)
                self._faults.clear("rollout")
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._faults.report("rollout", "", f"{type(e).__name__}: {e}", exc=e)

    def _end_orphans(self) -> None:
        """Runs whose candidate or current version is no longer routed (unloaded, the model
        gone from the config) end."""
        for model, run in list(self._rollouts.runs.items()):
            routes = self.plan.routing.models.get(model)
            if routes is None or not {run.current, run.candidate} <= set(routes.versions):
                self._rollouts.end(model, "ended")

    async def _moved(self, run: Run) -> None:
        """Route as ``run`` says now: its next stage, promoted, or rolled back."""
        stage, model = run.position.stage, run.model
        if stage is Stage.ROLLED_BACK:
            self._rollouts.end(model)
            reason = run.position.reason
            logger.warning("%s version %d rolled back: %s", model, run.candidate, reason)
            await self._retire(model, {run.candidate})
            s = self.status.get(model, {}).get(run.candidate)
            if s is not None:  # END, not loaded again until its files change
                s.error_code = StatusCode.ABORTED.value[0]
                s.error_message = f"Rolled back: {run.position.reason}"
                s.failures = 0
            run.outcome = "rolled_back"  # once done: the report says so only then
            return
        if stage is Stage.FULL:
            self._rollouts.end(model)
            logger.info("%s version %d promoted", model, run.candidate)
        await self._route_and_apply(self.plan.copy_deep())
        run.epoch = self.plan.routing.epoch
        if stage is Stage.FULL:  # the version policy unloads the one before now
            for m in self.args.models:
                if m.name == model:
                    await self._reconcile_model(m)
            run.outcome = "promoted"

    async def rollout(self, model: str, action: str = "") -> ModelReply:
        """The admin port's: a model's rollout report, after ``promote`` or ``abort`` it when
        asked."""
        try:
            if action not in ("", "promote", "abort"):
                raise InvalidArgument(f"Unknown rollout action: {action}")
            if action:
                async with self._lock:
                    run = self._rollouts.runs.get(model)
                    if run is None:
                        raise FailedPrecondition(f"No rollout of model {model} is in progress")
                    if action == "promote":
                        run.move(Position(Stage.FULL, reason="promoted by an operator"))
                    else:
                        run.move(Position(Stage.ROLLED_BACK, reason="aborted by an operator"))
                    await self._moved(run)
            report = self._rollouts.report(model)
            if report is None:
                raise NotFound(f"No rollout of model {model}")
        except ServingError as e:
            return ModelReply.error(e)
        return ModelReply(payload=json.dumps(report).encode())
