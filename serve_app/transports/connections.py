"""A serving replica's client connections: the bound on requests in flight (``Admission``,
whose time average is the load the replica reports to Serve's autoscaler), and the bounds on a
connection's age that spread long-lived clients over replicas added later (gRPC's
``grpc.max_connection_age_ms``; ``ConnectionAges`` for REST)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

MAX_MESSAGE_BYTES = 2**31 - 1
"""TF Serving's gRPC server accepts messages up to INT_MAX (main.cc sets no smaller limit)."""


class Admission:
    """The bound on requests in flight in one serving replica (``max_concurrent_requests``),
    gRPC and REST together: beyond it a request is answered at once with RESOURCE_EXHAUSTED
    (REST: 429), as TF Serving's gRPC server answers when its threads are all busy, instead of
    queueing without bound (memory and latency grow with the queue). A REST request enters once
    its body is whole (``http.whole_body``, within ``rest_body_timeout_s``, else 408): a client
    that trickles its body holds a connection, not a slot."""

    def __init__(self, limit: int, clock: Any = time.monotonic) -> None:
        self.limit = limit
        self.in_flight = 0
        self.refused = 0
        self._clock = clock
        self._area = 0.0
        """Requests in flight integrated over time since ``_since`` (``mean_in_flight``)."""
        self._at = self._since = clock()

    def message(self) -> str:
        return (
            f"The server is overloaded: {self.in_flight} requests in flight in this replica "
            f"(max_concurrent_requests={self.limit}); retry later"
        )

    def enter(self) -> bool:
        if self.in_flight >= self.limit:
            self.refused += 1
            return False
        self._advance()
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self._advance()
        self.in_flight -= 1

    def _advance(self) -> None:
        now = self._clock()
        self._area += self.in_flight * (now - self._at)
        self._at = now

    def mean_in_flight(self) -> float:
        """The time-averaged count of requests in flight since the previous call (the current
        count when no time has passed): what the replica reports to Serve's autoscaler."""
        self._advance()
        span = self._at - self._since
        value = self._area / span if span > 0 else float(self.in_flight)
        self._area, self._since = 0.0, self._at
        return value


def grpc_server_options(
    max_request_bytes: int,
    max_connection_age_s: float,
    max_connection_age_grace_s: float,
    channel_arguments: Mapping[str, int | str] = {},
) -> dict[str, int | str]:
    """The gRPC server's arguments: ``SO_REUSEPORT``, the message limits and the connection age
    bound (0: none), then ``--grpc_channel_arguments``, which win over ours."""
    options: dict[str, int | str] = {
        "grpc.so_reuseport": 1,
        "grpc.max_receive_message_length": max_request_bytes,
        "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    }
    if max_connection_age_s > 0:
        options["grpc.max_connection_age_ms"] = _millis(max_connection_age_s)
        options["grpc.max_connection_age_grace_ms"] = _millis(max_connection_age_grace_s)
    return {**options, **channel_arguments}


def _millis(seconds: float) -> int:
    return min(int(seconds * 1000), 2**31 - 1)


class ConnectionAges:
    """When each REST connection (its client address) was first seen, to close those older than
    ``max_age_s`` after their next answer (HTTP/1.1 has no GOAWAY: ``connection: close`` is
    its counterpart). Addresses not seen for a while are forgotten, so the table stays small."""

    PRUNE_AT = 4096
    """Entries beyond which those of connections likely closed are dropped."""

    def __init__(self, max_age_s: float, clock: Any = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self._clock = clock
        self._seen: dict[Any, tuple[float, float]] = {}
        """Client address -> (first seen, last seen)."""

    def expired(self, client: Any) -> bool:
        """Whether this request's connection is older than ``max_age_s`` (it is then
        forgotten: the connection closes after this answer)."""
        if client is None or self.max_age_s <= 0:
            return False
        now = self._clock()
        first, _ = self._seen.get(client, (now, now))
        if now - first >= self.max_age_s:
            self._seen.pop(client, None)
            return True
        self._seen[client] = (first, now)
        if len(self._seen) > self.PRUNE_AT:
            idle = min(self.max_age_s, 60.0)
            self._seen = {c: t for c, t in self._seen.items() if now - t[1] < idle}
        return False

    def __len__(self) -> int:
        return len(self._seen)


def closing(send: Any) -> Any:
    """``send`` with ``connection: close`` added to the answer's headers."""

    async def closing_send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            headers.append((b"connection", b"close"))
            message = {**message, "headers": headers}
        await send(message)

    return closing_send
