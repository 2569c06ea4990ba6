"""What the HTTP transports share (TF Serving's REST API in ``rest``, V2's ``/v2`` routes in
``open_inference``, and the client ports in ``listeners``): a body read whole within a time
bound before the request is admitted (``whole_body``), read within ``max_request_bytes``
(``read_body``: 413 as ``TooLarge``) and decoded as its Content-Encoding says
(``compat.http_codec``), and the REST deadline (``--rest_api_timeout_in_ms``)."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request

from compat import http_codec
from compat.http_codec import INT32_MAX, TooLarge


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it is known to exceed ``limit`` bytes (its Content-Length,
    or the bytes received so far)."""
    declared = content_length(request.scope)
    if declared is not None and declared > limit:
        raise TooLarge(
            f"Request body of {declared} bytes is larger than the limit of {limit} bytes "
            "(max_request_bytes)"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(
                f"Request body is larger than the limit of {limit} bytes (max_request_bytes)"
            )
        chunks.append(chunk)
    return b"".join(chunks)


Receive = Callable[[], Awaitable[dict[str, Any]]]


class Disconnected(Exception):
    """The client went away before its body was whole: nothing to answer."""


async def whole_body(receive: Receive, declared: int | None, limit: int, timeout_s: float) -> Any:
    """A REST request's body read whole, within ``timeout_s``: a receive that replays it, or
    None when it did not arrive in time. Reading stops past ``limit`` bytes (the handler then
    answers 413: it sees the bytes past the limit still coming), and a body whose declared
    Content-Length is beyond it is not read at all (413 from the header alone). A client that
    goes away meanwhile raises ``Disconnected``."""
    if declared is not None and declared > limit:
        return receive
    messages: collections.deque[dict[str, Any]] = collections.deque()
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    raise Disconnected
                messages.append(message)
                size += len(message.get("body", b""))
                if not message.get("more_body", False) or size > limit:
                    break
    except TimeoutError:
        return None

    async def replay() -> dict[str, Any]:
        if messages:
            return messages.popleft()
        return await receive()

    return replay


def content_length(scope: Mapping[str, Any]) -> int | None:
    """An ASGI request's Content-Length; None when it has none (chunked) or it is no number."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def read_decoded_body(request: Request, backend: Any, deflate: bool = False) -> bytes:
    """The body, within the backend's ``max_request_bytes``, gunzipped (and, with ``deflate``,
    inflated) as its Content-Encoding says, to at most ``INFLATE_RATIO`` times its size."""
    limit = getattr(backend, "max_request_bytes", None) or INT32_MAX
    body = await read_body(request, limit)
    return http_codec.decode(body, request.headers.get("content-encoding", ""), limit, deflate)


def rest_deadline(backend: Any) -> float | None:
    """When a REST request's time is up: the backend's ``rest_timeout_s`` from now, if any."""
    timeout = getattr(backend, "rest_timeout_s", None)
    return time.time() + timeout if timeout else None
