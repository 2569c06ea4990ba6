"""``serve_app.transports.unix_socket`` with real gRPC servers on real Unix sockets (no Ray): two
"replicas" share one path; the path follows the survivor when its publisher goes."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import grpc

from serve_app.transports.unix_socket import WATCH_INTERVAL_S, UnixSocket


def echo_server(name: bytes) -> grpc.aio.Server:
    async def who(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return name

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Who", {"Who": grpc.unary_unary_rpc_method_handler(who)}
            )
        ]
    )
    return server


async def replica(path: Path, name: bytes, pid: int) -> tuple[grpc.aio.Server, UnixSocket]:
    """What a serving replica does: bind its own socket, then publish or watch."""
    unix = UnixSocket(path, pid=pid)
    server = echo_server(name)
    server.add_insecure_port(unix.address)
    await server.start()
    unix.bound()
    unix.start()
    return server, unix


async def who(path: Path) -> bytes | None:
    """One call through the path on a new connection; None when nobody answers."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(f"unix:{path}", options=options) as channel:
        try:
            return await channel.unary_unary("/test.Who/Who")(b"", timeout=2.0)
        except grpc.aio.AioRpcError:
            return None


async def answered_by(path: Path, name: bytes, tries: int = 20) -> int:
    """How many calls it took until ``name`` answers through the path (bounded)."""
    for attempt in range(tries):
        if await who(path) == name:
            return attempt
        await asyncio.sleep(WATCH_INTERVAL_S / 2)
    raise AssertionError(f"{name!r} never answered on {path}")


def test_two_replicas_share_the_path_and_the_survivor_takes_it_over(tmp_path: Path) -> None:
    path = tmp_path / "tf-serving.sock"
    pid = os.getpid()

    async def scenario() -> None:
        first, first_unix = await replica(path, b"first", pid)
        second, second_unix = await replica(path, b"second", pid + 1_000_000)
        # the first published the path; the second saw it served and left it
        assert await who(path) == b"first"
        assert path.stat().st_ino == first_unix.private.stat().st_ino
        assert second_unix.private.exists()
        # the publisher dies without cleaning up (SIGKILL): its socket stops answering
        first_unix._task.cancel()  # type: ignore[union-attr]
        await first.stop(None)
        await answered_by(path, b"second")
        assert path.stat().st_ino == second_unix.private.stat().st_ino
        # the last one to stop removes its socket and the path it published
        second_unix.remove()
        await second.stop(None)
        assert not path.exists() and not second_unix.private.exists()

    asyncio.run(scenario())


def test_a_stale_path_left_by_a_dead_server_is_taken_over_at_start(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: ECONNREFUSED
    unix = UnixSocket(path)
    assert not unix.served()

    async def scenario() -> None:
        server, unix = await replica(path, b"new", os.getpid())
        assert await who(path) == b"new"
        unix.remove()
        await server.stop(None)

    asyncio.run(scenario())


def test_sockets_of_dead_replicas_are_swept_when_another_publishes(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    dead_pid = 2**22 + 12345  # beyond pid_max's default: no such process
    stale = path.with_name(f".{path.name}.{dead_pid}.sock")
    stale.touch()
    alive = path.with_name(f".{path.name}.1.sock")  # pid 1 is alive
    alive.touch()

    async def scenario() -> None:
        server, unix = await replica(path, b"x", os.getpid())
        assert not stale.exists() and alive.exists()
        unix.remove()
        await server.stop(None)

    asyncio.run(scenario())
