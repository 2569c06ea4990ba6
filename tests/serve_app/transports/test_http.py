"""serve_app.transports.http, in-process: a REST body read whole before the request is
admitted, then read within ``max_request_bytes`` and decoded as its Content-Encoding says."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from typing import Any

import pytest
from starlette.requests import Request

from compat.http_codec import TooLarge
from serve_app.transports.http import (
    Disconnected,
    content_length,
    read_decoded_body,
    rest_deadline,
    whole_body,
)

pytestmark = pytest.mark.unit


def _client(messages: list[dict[str, object]]) -> Any:
    """An ASGI receive that gives ``messages``, then waits forever (a client that stalls)."""
    pending = list(messages)

    async def receive() -> dict[str, object]:
        if pending:
            return pending.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    return receive


def _chunk(body: bytes, more: bool = True) -> dict[str, object]:
    return {"type": "http.request", "body": body, "more_body": more}


def _drain(receive: Any, n: int) -> list[dict[str, object]]:
    async def go() -> list[dict[str, object]]:
        return [await receive() for _ in range(n)]

    return asyncio.run(go())


def test_a_whole_body_is_read_first_then_replayed() -> None:
    messages = [_chunk(b"ab"), _chunk(b"c", more=False)]
    replay = asyncio.run(whole_body(_client(list(messages)), 3, 100, 5.0))
    assert replay is not None
    assert _drain(replay, 2) == messages


def test_a_body_that_stalls_is_none_after_the_bound() -> None:
    """The bound is on the whole body: a client trickling chunks is still cut off."""
    trickle = [_chunk(b" ") for _ in range(3)]
    assert asyncio.run(whole_body(_client(trickle), 1000, 1 << 20, 0.05)) is None


def test_reading_stops_past_the_limit_and_the_rest_follows() -> None:
    """Past ``limit`` the handler sees the rest of the stream itself (and answers 413); a
    declared length beyond the limit is not read at all."""
    messages = [_chunk(b"x" * 60), _chunk(b"y" * 60), _chunk(b"z" * 60, more=False)]
    client = _client(list(messages))
    replay = asyncio.run(whole_body(client, None, 100, 5.0))
    assert _drain(replay, 3) == messages
    untouched = _client([])
    assert asyncio.run(whole_body(untouched, 10**9, 100, 5.0)) is untouched


def test_a_client_gone_before_its_body_is_whole_is_said() -> None:
    gone = _client([_chunk(b"{"), {"type": "http.disconnect"}])
    with pytest.raises(Disconnected):
        asyncio.run(whole_body(gone, 100, 1 << 20, 5.0))


class Backend:
    def __init__(self, max_request_bytes: int | None = None, rest_timeout_s: float = 0) -> None:
        self.max_request_bytes = max_request_bytes
        self.rest_timeout_s = rest_timeout_s


def read(chunks: list[bytes], backend: Backend, deflate: bool = False, **headers: str) -> bytes:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
    }
    client = _client([_chunk(c, more=i + 1 < len(chunks)) for i, c in enumerate(chunks)])
    return asyncio.run(read_decoded_body(Request(scope, client), backend, deflate))


def test_a_body_is_read_and_decoded_as_its_content_encoding_says() -> None:
    body = b'{"inputs": []}'
    assert read([body[:5], body[5:]], Backend()) == body
    assert read([gzip.compress(body)], Backend(), content_encoding="gzip") == body
    deflated = zlib.compress(body)
    assert read([deflated], Backend(), content_encoding="deflate") == deflated
    assert read([deflated], Backend(), True, content_encoding="deflate") == body


def test_a_body_beyond_max_request_bytes_is_refused_before_it_is_read_whole() -> None:
    with pytest.raises(TooLarge, match="Request body of 11 bytes is larger than the limit of 10"):
        read([b"x" * 11], Backend(10), content_length="11")
    with pytest.raises(TooLarge, match="Request body is larger than the limit of 10 bytes"):
        read([b"x" * 6, b"x" * 6], Backend(10))  # chunked: no Content-Length
    with pytest.raises(TooLarge, match="inflates beyond the limit of 100 bytes"):
        read([gzip.compress(b"x" * 101)], Backend(100), content_encoding="gzip")
    assert read([b"x" * 10], Backend(10), content_length="10") == b"x" * 10


def test_content_length_is_ascii_digits_or_none() -> None:
    assert content_length({"headers": [(b"Content-Length", b"12")]}) == 12
    assert content_length({"headers": [(b"content-length", "\u00b2".encode())]}) is None
    assert content_length({"headers": []}) is None


def test_the_rest_deadline_is_the_backends_timeout_from_now() -> None:
    assert rest_deadline(Backend()) is None
    assert rest_deadline(object()) is None
    deadline = rest_deadline(Backend(rest_timeout_s=30.0))
    assert deadline is not None and deadline > 0
