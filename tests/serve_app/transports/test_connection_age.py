"""Connection age bounds of the client ports (``serve_app.transports.listeners``): gRPC's max
connection age moves a long-lived channel to a new connection with no failed call, and REST
connections past their age are closed after their next answer."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from serve_app.transports.connections import (
    MAX_MESSAGE_BYTES,
    ConnectionAges,
    closing,
    grpc_server_options,
)

pytestmark = pytest.mark.unit


def test_grpc_options_bound_the_connection_age_and_channel_arguments_win() -> None:
    options = grpc_server_options(1000, 300.0, 30.0)
    assert options["grpc.max_connection_age_ms"] == 300_000
    assert options["grpc.max_connection_age_grace_ms"] == 30_000
    assert options["grpc.so_reuseport"] == 1
    assert options["grpc.max_receive_message_length"] == 1000
    assert options["grpc.max_send_message_length"] == MAX_MESSAGE_BYTES
    unbounded = grpc_server_options(1000, 0.0, 30.0)
    assert "grpc.max_connection_age_ms" not in unbounded
    theirs = grpc_server_options(1000, 300.0, 30.0, {"grpc.max_connection_age_ms": 2000})
    assert theirs["grpc.max_connection_age_ms"] == 2000
    assert theirs["grpc.max_connection_age_grace_ms"] == 30_000
    assert grpc_server_options(1, 1e9, 1e9)["grpc.max_connection_age_ms"] == 2**31 - 1


def test_a_long_lived_channel_moves_to_new_connections_without_a_failed_call() -> None:
    """A real grpc.aio server with a 0.3 s connection age: one channel's calls arrive over
    several connections (client ports), and every call succeeds."""

    async def run() -> tuple[set[str], int]:
        peers: set[str] = set()

        async def echo(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            peers.add(context.peer())
            await asyncio.sleep(0.01)
            return raw

        server = grpc.aio.server(options=list(grpc_server_options(1 << 20, 0.3, 5.0).items()))
        handler = grpc.unary_unary_rpc_method_handler(echo)
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("test.Echo", {"Echo": handler})]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ok = 0
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary("/test.Echo/Echo")
                loop = asyncio.get_running_loop()
                end = loop.time() + 5.0
                for _ in range(5000):  # until a third connection served, within 5 s
                    if loop.time() > end or len(peers) >= 3:
                        break
                    assert await call(b"x", timeout=10) == b"x"
                    ok += 1
        finally:
            await server.stop(None)
        return peers, ok

    peers, ok = asyncio.run(run())
    assert ok > 10
    assert len(peers) >= 3, peers


def test_rest_connections_past_their_age_are_closed_after_their_next_answer() -> None:
    now = [0.0]
    ages = ConnectionAges(10.0, clock=lambda: now[0])
    assert not ages.expired(("127.0.0.1", 5000))
    now[0] = 5.0
    assert not ages.expired(("127.0.0.1", 5000))
    assert not ages.expired(("127.0.0.1", 5001))  # a newer connection: its own age
    now[0] = 10.0
    assert ages.expired(("127.0.0.1", 5000))
    assert not ages.expired(("127.0.0.1", 5001))
    assert not ages.expired(None)  # no client address (a Unix socket): never
    assert not ConnectionAges(0.0).expired(("127.0.0.1", 1))  # 0: no bound


def test_the_connection_table_stays_small() -> None:
    now = [0.0]
    ages = ConnectionAges(300.0, clock=lambda: now[0])
    for port in range(ConnectionAges.PRUNE_AT):
        ages.expired(("127.0.0.1", port))
    now[0] = 100.0  # the old ones idle beyond a minute: gone once the table overflows
    ages.expired(("127.0.0.1", 70000))
    assert len(ages) == 1


def testclosing_adds_connection_close_to_the_answer() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        close_after = closing(send)
        await close_after({"type": "http.response.start", "status": 200, "headers": [(b"a", b"b")]})
        await close_after({"type": "http.response.body", "body": b"{}"})

    asyncio.run(run())
    assert sent[0]["headers"] == [(b"a", b"b"), (b"connection", b"close")]
    assert sent[1] == {"type": "http.response.body", "body": b"{}"}
