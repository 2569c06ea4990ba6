"""What model replicas send back to the ingress: serialized payloads and status, no exceptions.

An exception that crosses a Ray call costs a traceback and, if it reached Ray Serve's gRPC proxy,
would become INTERNAL with a Ray traceback; replicas therefore return status as data.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from compat.errors import ServingError, from_code


@dataclass(frozen=True)
class Reply:
    """A serialized response (proto bytes or JSON) or a status code with TF Serving's message."""

    payload: bytes = b""
    code: int = 0
    """``grpc.StatusCode`` value; 0 is OK."""
    message: str = ""

    @classmethod
    def error(cls, e: ServingError) -> Reply:
        return cls(code=e.code.value[0], message=e.message)

    @property
    def ok(self) -> bool:
        return self.code == 0

    def raise_for_status(self) -> bytes:
        if self.code:
            raise from_code(self.code, self.message)
        return self.payload


STATUS_BY_VALUE = {c.value[0]: c for c in grpc.StatusCode}
