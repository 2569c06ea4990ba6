"""A new version proves it loads before the serving replicas load it.

Every serving replica loads a co-located version in its own process, all of them at once: a
version that crashes TF, runs out of memory or never finishes its load (or its warmup) would
take every one of them down with it. So the version manager (``lifecycle.rollout``) first loads
it once in a process of its own (a Ray actor, ``Prober``, that loads one version and is then
ended), with the same loader and warmup (``serve_app.runtime.model.ModelVersion``) and

- a memory bound (``RLIMIT_DATA``): the memory the process holds once TF is imported, plus
  ``load_probe_memory_mb``, or by default the node's available memory shared out between the
  serving replicas, since each of them would hold a copy: a version that needs more fails here,
  with TF's or Python's out-of-memory error, instead of in every replica;
- a time bound (``load_probe_timeout_seconds``): a load or warmup still running then is killed
  with its process.

Only a version whose probe loaded goes to the serving replicas; any other is END with the
reason, and the versions serving now keep serving. The manager waits for a probe without
holding its lock, so status, reloads and label weights are answered meanwhile.

Starting a process and importing TensorFlow takes seconds, the load of a small version a
fraction of one; so with ``load_probe_spare``, once a server's probes are over, one prober is
started ahead, imports TF and waits for the next new version (not while the server starts:
its import would slow the serving replicas' loads). A probe still has a process of its own:
the spare has loaded nothing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
import time
from collections.abc import Awaitable
from typing import Any

import ray

from compat.errors import StatusCode
from serve_app.config.args import AppArgs
from serve_app.lifecycle.status import LoadOutcome

logger = logging.getLogger("ray.serve")


def _proc_bytes(path: str, key: str) -> int:
    """A ``kB`` figure of ``/proc``, in bytes: ``VmData`` of ``/proc/self/status`` is the
    process's private writable memory (what ``RLIMIT_DATA`` bounds), ``MemAvailable`` of
    ``/proc/meminfo`` the node's memory available now."""
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


@ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)
class Prober:
    """A process for one probe: TF is imported when it starts (the spare waits so), the bound
    is set and the version loaded when ``load`` is called; then the manager ends it."""

    def __init__(self) -> None:
        from serve_app.runtime.model import freeze_once

        freeze_once()  # TF imported here, before the bound is set (``compat.protos`` does not)

    def load(
        self,
        model: str,
        version: int,
        path: str,
        options: dict[str, Any],
        budget_bytes: int,
        sharing: int,
    ) -> dict[str, Any]:
        return _load(model, version, path, options, budget_bytes, sharing)


def _load(
    model: str, version: int, path: str, options: dict[str, Any], budget_bytes: int, sharing: int
) -> dict[str, Any]:
    """In the probe's own process: load and warm up the version under the memory bound."""
    from serve_app.runtime.model import ModelVersion

    budget = budget_bytes or _proc_bytes("/proc/meminfo", "MemAvailable") // max(1, sharing)
    limit = _proc_bytes("/proc/self/status", "VmData") + budget
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    started = time.monotonic()
    try:
        loaded = ModelVersion(model, version, path, **options)
    except MemoryError:
        return {"ok": False, "oom": True, "message": "out of memory"}
    state = loaded.load_state()
    message = state.message
    return {
        "ok": state.ok,
        "oom": "OOM" in message or "MemoryError" in message or "bad_alloc" in message,
        "message": message,
        "seconds": time.monotonic() - started,
        "budget_mb": budget // 2**20,
    }


def options(args: AppArgs) -> dict[str, Any]:
    """``ModelVersion``'s keyword arguments in the probe: as the replicas load, on one core,
    without a GPU (the probe proves the SavedModel and its warmup, not the device)."""
    session = {
        "intra_op_parallelism": 1,
        "inter_op_parallelism": 1,
        "allow_gpu": False,
        "tags": list(args.saved_model_tags),
    }
    return {
        "session": session,
        "warmup": args.enable_model_warmup,
        "check_method_name": args.enable_signature_method_name_check,
    }


async def probe(
    args: AppArgs, model: str, version: int, path: str, prober: Any = None
) -> LoadOutcome:
    """Load ``version`` once in a process of its own (``prober``, a ``Prober`` started ahead,
    or a new one); OK, or why it cannot be served. The process is ended in every case."""
    prober = prober or Prober.remote()  # type: ignore[attr-defined]
    try:
        return await _probe(args, model, version, path, prober)
    finally:
        ray.kill(prober, no_restart=True)


async def _probe(args: AppArgs, model: str, version: int, path: str, prober: Any) -> LoadOutcome:
    timeout = args.load_probe_timeout_s
    budget = args.load_probe_memory_mb * 2**20
    replicas = args.serving_replicas_most
    ref = prober.load.remote(model, version, path, options(args), budget, replicas)
    answer: asyncio.Future[Any] = asyncio.ensure_future(ref)  # type: ignore[arg-type]
    # Once given up on, the answer fails when its process is ended: that is no news.
    answer.add_done_callback(lambda f: f.cancelled() or f.exception())
    try:
        result = await asyncio.wait_for(asyncio.shield(answer), timeout)
    except TimeoutError:
        return LoadOutcome(
            StatusCode.DEADLINE_EXCEEDED,
            f"Loading version {version} of {model} did not finish within {timeout:g} s "
            "(load_probe_timeout_seconds) in a process of its own; it was stopped, and the "
            "serving replicas never loaded it",
        )
    except Exception as e:  # the process died: a crash, or the node's OOM killer
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return LoadOutcome(
            StatusCode.UNAVAILABLE,
            f"Loading version {version} of {model} ended its process ({type(e).__name__}: "
            f"{first}); the serving replicas never loaded it",
        )
    if result["ok"]:
        return LoadOutcome(load_seconds=result.get("seconds", 0.0))
    if result.get("oom"):
        return LoadOutcome(
            StatusCode.RESOURCE_EXHAUSTED,
            f"Loading version {version} of {model} needs more than the {result.get('budget_mb')}"
            f" MB a serving replica can spare (load_probe_memory_mb): {result['message']}",
        )
    return LoadOutcome(StatusCode.FAILED_PRECONDITION, result["message"])


def enabled(args: AppArgs, model: str) -> bool:
    """Probed: versions the serving replicas hold themselves (a model in deployments of its
    own takes only those down), unless ``load_probe_timeout_seconds`` is 0."""
    return args.load_probe_timeout_s > 0 and args.own_scaling(model) is None


def wants_spare(args: AppArgs) -> bool:
    """A spare prober is kept when asked for (``load_probe_spare``) and versions are probed: not
    where every model listed has deployments of its own (a reload may list others later)."""
    probed = not args.models or any(enabled(args, m.name) for m in args.models)
    return args.load_probe_spare and args.load_probe_timeout_s > 0 and probed


class Probes:
    """The probes running now, by (model, version, path): a reload that asks for a version
    being probed waits for the same probe. With ``spare``, one prober is kept started ahead."""

    def __init__(self, spare: bool = False) -> None:
        self._running: dict[tuple[str, int, str], asyncio.Future[LoadOutcome]] = {}
        self._want_spare = spare
        self._spare: Any = None
        """Started once the first probes are over, never while a server starts: its TF import
        would compete with the serving replicas' loads."""

    def warm(self) -> None:
        """Start the spare prober, unless one is waiting (or none is wanted)."""
        if self._want_spare and self._spare is None:
            self._spare = Prober.remote()  # type: ignore[attr-defined]

    def _take_spare(self) -> Any:
        spare, self._spare = self._spare, None
        return spare

    def start(self, args: AppArgs, model: str, version: int, path: str) -> Awaitable[LoadOutcome]:
        key = (model, version, path)
        run = self._running.get(key)
        if run is None:
            run = asyncio.ensure_future(probe(args, model, version, path, self._take_spare()))
            self._running[key] = run
            run.add_done_callback(functools.partial(self._done, key))
        return asyncio.shield(run)

    def _done(self, key: tuple[str, int, str], _: object) -> None:
        self._running.pop(key, None)
        if not self._running:  # the next new version's process, once these loads are over
            self.warm()

    def close(self) -> None:
        """End the spare (the manager stops)."""
        if self._spare is not None:
            ray.kill(self._spare, no_restart=True)
            self._spare = None
