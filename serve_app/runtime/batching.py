"""Merging concurrent Predict calls into one model run, as TF Serving's batching session does.

Calls are grouped by what makes them stackable: the same signature and outputs, every input with
a batch dimension in the signature, and equal dtypes and non-batch shapes (or, with
``pad_variable_length_inputs``, equal ranks: shorter inputs are zero-padded to the longest and
outputs sliced back). Groups are cut at ``max_batch_size`` rows and padded up to the next of
``allowed_batch_sizes``. Every call gets exactly the rows it sent, or its own error. Calls whose
zero padding would grow their inputs by more than ``compat.limits.MAX_GROWTH_BYTES`` (one input
long in one dim, another in another) run one by one instead.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from compat.dataplane import PredictCall
from compat.errors import DeadlineExceeded, Internal, InvalidArgument, ServingError, Unavailable
from compat.limits import growth_allowed
from compat.platforms import LoadedModel
from serve_app.config.args import BatchingArgs

Result = dict[str, np.ndarray] | ServingError


def batchable(call: PredictCall) -> bool:
    """Stackable along the 0th dimension: every input has the same number of rows and the
    signature does not pin that dimension (unknown rank is fine, as in TF Serving)."""
    if not call.inputs or any(v.ndim == 0 for v in call.inputs.values()):
        return False
    if len({v.shape[0] for v in call.inputs.values()}) != 1:
        return False
    specs = [call.signature.inputs[a] for a in call.inputs] + [
        call.signature.outputs[a] for a in call.output_aliases
    ]
    return all(s.shape is None or (len(s.shape) > 0 and s.shape[0] == -1) for s in specs)


def _group_key(call: PredictCall, pad: bool) -> Hashable:
    inputs = tuple(
        (a, v.dtype.str, v.ndim if pad else v.shape[1:]) for a, v in sorted(call.inputs.items())
    )
    return (call.signature.key, tuple(call.output_aliases), inputs)


def batch_rows(call: PredictCall) -> int:
    return next(iter(call.inputs.values())).shape[0]


def run_batch(
    servable: LoadedModel, calls: Sequence[PredictCall], knobs: BatchingArgs
) -> list[Result]:
    """Run every call, stacking the compatible ones; results in the order of ``calls``."""
    results: list[Result | None] = [None] * len(calls)
    groups: dict[Hashable, list[int]] = defaultdict(list)
    now = time.time()
    for i, call in enumerate(calls):
        if call.deadline is not None and now >= call.deadline:
            results[i] = DeadlineExceeded("Deadline Exceeded")  # expired in the queue: not run
        elif batchable(call):
            groups[_group_key(call, knobs.pad_variable_length_inputs)].append(i)
        else:
            results[i] = _run_one(servable, call)
    for members in groups.values():
        for chunk in _chunks(members, calls, knobs.max_batch_size):
            for i, result in zip(
                chunk, _run_stacked(servable, [calls[i] for i in chunk], knobs), strict=True
            ):
                results[i] = result
    return [r for r in results if r is not None]


def _chunks(members: list[int], calls: Sequence[PredictCall], max_rows: int) -> list[list[int]]:
    chunks: list[list[int]] = [[]]
    rows = 0
    for i in members:
        n = batch_rows(calls[i])
        if chunks[-1] and rows + n > max_rows:
            chunks.append([])
            rows = 0
        chunks[-1].append(i)
        rows += n
    return chunks


def _run_one(servable: LoadedModel, call: PredictCall) -> Result:
    try:
        return servable.run(call.signature, call.inputs, call.output_aliases)
    except ServingError as e:
        return e


def _pad_to(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if value.shape[1:] == shape:
        return value
    widths = [(0, 0)] + [(0, t - s) for s, t in zip(value.shape[1:], shape, strict=True)]
    return np.pad(value, widths)


def _pad_shape(parts: list[np.ndarray]) -> tuple[int, ...]:
    """The non-batch shape every part is padded to: the longest of each dim."""
    if parts[0].ndim <= 1:
        return ()
    return tuple(max(p.shape[d] for p in parts) for d in range(1, parts[0].ndim))


def _padded_bytes(calls: list[PredictCall], pad_shapes: dict[str, tuple[int, ...]]) -> int:
    """What the stacked, padded inputs take (before the rows ``allowed_batch_sizes`` adds)."""
    total = 0
    for alias, shape in pad_shapes.items():
        itemsize = calls[0].inputs[alias].itemsize
        total += sum(batch_rows(c) for c in calls) * math.prod(shape) * itemsize
    return total


def _run_stacked(
    servable: LoadedModel, calls: list[PredictCall], knobs: BatchingArgs
) -> list[Result]:
    if len(calls) == 1 and not knobs.allowed_batch_sizes:
        return [_run_one(servable, calls[0])]
    first = calls[0]
    sizes = [batch_rows(c) for c in calls]
    total = sum(sizes)
    target = total
    if knobs.allowed_batch_sizes:
        at = bisect.bisect_left(knobs.allowed_batch_sizes, total)
        target = knobs.allowed_batch_sizes[min(at, len(knobs.allowed_batch_sizes) - 1)]
        target = max(target, total)
    pad_shapes = {alias: _pad_shape([c.inputs[alias] for c in calls]) for alias in first.inputs}
    if _padded_bytes(calls, pad_shapes) > growth_allowed(
        sum(v.nbytes for c in calls for v in c.inputs.values())
    ):
        return [_run_one(servable, c) for c in calls]  # padding would cost far beyond the calls
    stacked: dict[str, np.ndarray] = {}
    for alias, shape in pad_shapes.items():
        parts = [c.inputs[alias] for c in calls]
        merged = np.concatenate([_pad_to(p, shape) for p in parts], axis=0)
        if target > total:  # pad the batch up to an allowed size with copies of the last row
            merged = np.concatenate([merged, np.repeat(merged[-1:], target - total, axis=0)])
        stacked[alias] = merged
    try:
        outputs = servable.run(first.signature, stacked, first.output_aliases)
    except ServingError:
        return [_run_one(servable, c) for c in calls]  # let each call see its own error
    if any(v.ndim == 0 or v.shape[0] != target for v in outputs.values()):
        return [_run_one(servable, c) for c in calls]  # outputs not batched along dim 0
    results: list[Result] = []
    start = 0
    for call, n in zip(calls, sizes, strict=True):
        piece = {alias: value[start : start + n] for alias, value in outputs.items()}
        if knobs.pad_variable_length_inputs:
            piece = {alias: _slice_back(v, call, pad_shapes) for alias, v in piece.items()}
        results.append(piece)
        start += n
    return results


def _slice_back(
    part: np.ndarray, call: PredictCall, pad_shapes: dict[str, tuple[int, ...]]
) -> np.ndarray:
    """Undo input padding on an output: dims that grew with an input's padding are cut back."""
    for alias, padded in pad_shapes.items():
        original = call.inputs[alias].shape[1:]
        if original == padded:
            continue
        index = [slice(None)] * part.ndim
        for d in range(1, min(part.ndim, len(padded) + 1)):
            if part.shape[d] == padded[d - 1]:
                index[d] = slice(0, original[d - 1])
        return part[tuple(index)]
    return part


@dataclass
class _Batch:
    calls: list[PredictCall] = field(default_factory=list)
    futures: list[asyncio.Future[Result]] = field(default_factory=list)
    rows: int = 0
    opened: float = 0.0
    """``time.monotonic()`` of its first call: the batch timeout counts from here."""


class BatchScheduler:
    """TF Serving's batch queue (``shared_batch_scheduler.h``) on the replica's event loop.

    Calls join the open batch until it is full; ``num_batch_threads`` workers each take the
    oldest closed batch, or the open one once it is full or ``batch_timeout_micros`` old, and
    run it in ``pool``. While every worker is busy, the open batch keeps filling: under load
    batches grow towards ``max_batch_size`` (Ray's ``@serve.batch`` cuts a batch at each
    timeout even while the model is busy, and measured mean batches of 1.1 at 16 clients).
    Admission is TF Serving's, without large-batch splitting: a call larger than a batch is
    INVALID_ARGUMENT, one that needs a new batch while ``max_enqueued_batches`` wait is
    UNAVAILABLE. Knobs change at runtime with ``configure``.
    """

    def __init__(
        self,
        servable: Callable[[], LoadedModel],
        pool: ThreadPoolExecutor,
        knobs: BatchingArgs,
        on_batch: Callable[[list[PredictCall]], None] = lambda calls: None,
    ) -> None:
        self._servable = servable
        self.pool = pool
        self._on_batch = on_batch
        self.knobs = knobs
        self._batches: deque[_Batch] = deque([_Batch()])
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kick: asyncio.Event | None = None
        """Set when a call arrives or the knobs change; made on the loop of the first call."""
        self._workers: list[asyncio.Task[None]] = []

    @property
    def queued_batches(self) -> int:
        """Batches holding calls that have not started running (the open one included)."""
        return sum(1 for batch in self._batches if batch.calls)

    def configure(self, knobs: BatchingArgs) -> None:
        self.knobs = knobs
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._start_workers)
            self._loop.call_soon_threadsafe(self._wake)

    async def submit(self, call: PredictCall) -> Result:
        knobs = self.knobs
        rows = batch_rows(call)
        if rows > knobs.max_batch_size:
            raise InvalidArgument(
                f"Task size {rows} is larger than maximum input batch size {knobs.max_batch_size}"
            )
        tail = self._batches[-1]
        if tail.rows + rows > knobs.max_batch_size:
            if len(self._batches) >= knobs.max_enqueued_batches:
                raise Unavailable(
                    "The batch scheduling queue to which this task was submitted is full; "
                    f"currently {len(self._batches)} batches enqueued and max_enqueued_batches "
                    f"is {knobs.max_enqueued_batches}"
                )
            tail = _Batch()
            self._batches.append(tail)
        if not tail.calls:
            tail.opened = time.monotonic()
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        tail.calls.append(call)
        tail.futures.append(future)
        tail.rows += rows
        if self._loop is not future.get_loop():  # first call (on this loop)
            self._loop, self._kick, self._workers = future.get_loop(), asyncio.Event(), []
            self._start_workers()
        self._wake()
        return await future

    def _wake(self) -> None:
        if self._kick is not None:
            self._kick.set()

    def _start_workers(self) -> None:
        assert self._loop is not None
        self._workers = [w for w in self._workers if not w.done()]
        for index in range(len(self._workers), self.knobs.num_batch_threads):
            self._workers.append(self._loop.create_task(self._work(index)))

    def _schedulable(self) -> _Batch | float | None:
        """A batch to run now, else how long until the open one times out (None: empty)."""
        if len(self._batches) >= 2:
            return self._batches.popleft()
        head = self._batches[0]
        if not head.calls:
            return None
        wait = head.opened + self.knobs.batch_timeout_micros / 1e6 - time.monotonic()
        if head.rows >= self.knobs.max_batch_size or wait <= 0:
            self._batches[0] = _Batch()
            return head
        return wait

    async def _work(self, index: int) -> None:
        assert self._kick is not None
        while index < self.knobs.num_batch_threads:  # fewer threads: the extra workers leave
            self._kick.clear()
            ready = self._schedulable()
            if isinstance(ready, _Batch):
                await self._run(ready)
                continue
            with contextlib.suppress(TimeoutError):  # the open batch timed out
                await asyncio.wait_for(self._kick.wait(), ready)

    async def _run(self, batch: _Batch) -> None:
        live = [i for i, f in enumerate(batch.futures) if not f.done()]  # callers still waiting
        calls = [batch.calls[i] for i in live]
        if not calls:
            return
        self._on_batch(calls)
        try:
            results: list[Result] = await asyncio.get_running_loop().run_in_executor(
                self.pool, run_batch, self._servable(), calls, self.knobs
            )
        except ServingError as e:
            results = [e] * len(calls)
        except Exception as e:  # a worker must survive anything a batch raises
            results = [Internal(f"{type(e).__name__}: {e}")] * len(calls)
        for i, result in zip(live, results, strict=True):
            if not batch.futures[i].done():
                batch.futures[i].set_result(result)
