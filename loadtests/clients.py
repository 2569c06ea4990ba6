"""Closed-loop load generators: ``concurrency`` requests always in flight, from ONE process.

Requests are pre-serialized (gRPC with identity serializers, REST with a ready JSON body), so
the client's own cost per request is one gRPC / HTTP round trip on its event loop. Every run
is bounded in time and in count; the client's CPU use is measured so that a client-bound cell
can be recognised.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

#: Per-request deadline; a bench request never waits longer than this.
CALL_TIMEOUT_S = 30.0
#: After the window closes, outstanding requests get this long before they are cancelled.
DRAIN_S = 5.0

Call = Callable[[], Awaitable[None]]
"""One request; raises on any failure."""


@dataclass
class LoadResult:
    """What one closed-loop run measured (only requests started and finished in the window)."""

    requests: int
    errors: int
    wall_s: float
    latencies_ms: list[float] = field(default_factory=list)
    client_cpu_s: float = 0.0
    first_error: str = ""
    statuses: dict[int, int] = field(default_factory=dict)
    """HTTP status -> count, for those that were not 2xx (h2load only)."""

    @property
    def throughput(self) -> float:
        return self.requests / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class _Window:
    start: float = float("inf")
    end: float = float("inf")
    ok: int = 0
    errors: int = 0


async def closed_loop(
    caller: AbstractAsyncContextManager[Call],
    concurrency: int,
    seconds: float,
    warmup_s: float,
    max_requests: int,
    on_window: Callable[[], None] | None = None,
) -> LoadResult:
    """Keep ``concurrency`` calls (from ``grpc_caller`` or ``rest_caller``) in flight for
    ``warmup_s`` (not recorded), then record for ``seconds`` or until ``max_requests`` calls,
    whichever comes first. ``on_window`` is called just before the window opens and just after
    it closes (e.g. to sample CPU)."""
    async with caller as call:
        return await _closed_loop(call, concurrency, seconds, warmup_s, max_requests, on_window)


async def _closed_loop(
    call: Call,
    concurrency: int,
    seconds: float,
    warmup_s: float,
    max_requests: int,
    on_window: Callable[[], None] | None,
) -> LoadResult:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    state = _Window()
    latencies: list[float] = []
    first_error: list[str] = []

    async def worker() -> None:
        while not done.done():
            t0 = time.perf_counter()
            try:
                await call()
                failed = False
            except Exception as e:  # any failure counts as an error
                failed = True
                if not first_error:
                    first_error.append(f"{type(e).__name__}: {e}"[:500])
            t1 = time.perf_counter()
            if t0 >= state.start and t1 <= state.end:
                if failed:
                    state.errors += 1
                else:
                    state.ok += 1
                    latencies.append((t1 - t0) * 1000.0)
                if state.ok + state.errors >= max_requests and not done.done():
                    state.end = t1
                    done.set_result(None)
            if failed:
                await asyncio.sleep(0.001)  # a failing server must not turn this into a spin

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        await asyncio.sleep(warmup_s)
        if on_window is not None:
            on_window()
        cpu0 = time.process_time()
        state.start = time.perf_counter()
        state.end = state.start + seconds
        try:
            await asyncio.wait_for(asyncio.shield(done), seconds)
        except TimeoutError:
            if not done.done():
                done.set_result(None)
        end = min(state.end, time.perf_counter())
        cpu = time.process_time() - cpu0
        if on_window is not None:
            on_window()
        _, pending = await asyncio.wait(tasks, timeout=DRAIN_S)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if pending:
        first_error.append(f"{len(pending)} requests still running {DRAIN_S}s after the window")
    return LoadResult(
        requests=state.ok,
        errors=state.errors,
        wall_s=end - state.start,
        latencies_ms=latencies,
        client_cpu_s=cpu,
        first_error=first_error[0] if first_error else "",
    )


@asynccontextmanager
async def grpc_caller(
    target: str, method: str, payload: bytes, connections: int = 1
) -> AsyncIterator[Call]:
    """Unary calls of ``method`` (``/package.Service/Method``) with a pre-serialized request,
    spread round-robin over ``connections`` channels of their own (gRPC otherwise shares one
    connection between channels to the same target), so that an L4 spread over several
    serving processes sees them all, as with ``rest_caller``'s connections."""
    import grpc

    options = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(connections)]
    try:
        stubs = itertools.cycle(
            [
                c.unary_unary(method, request_serializer=None, response_deserializer=None)
                for c in channels
            ]
        )

        async def call() -> None:
            await next(stubs)(payload, timeout=CALL_TIMEOUT_S)

        yield call
    finally:
        for channel in channels:
            await channel.close()


@asynccontextmanager
async def rest_caller(url: str, body: bytes, connections: int) -> AsyncIterator[Call]:
    """POSTs of a ready JSON body over ``connections`` keep-alive connections."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def call() -> None:
            async with session.post(url, data=body, headers=headers) as response:
                text = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {text[:200]!r}")

        yield call
