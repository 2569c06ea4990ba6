"""One error type for the whole server, keyed on the canonical gRPC status code.

Both transports derive their status from it: gRPC sets ``code``/``details`` on the context,
REST answers ``HTTP_STATUS[code]`` with ``{"error": message}``, exactly as TF Serving's
``grpc_status_util.cc`` and ``http_server.cc`` convert one ``absl::Status`` at the edge.
"""

from __future__ import annotations

import grpc

StatusCode = grpc.StatusCode

#: TF Serving truncates error messages longer than this (grpc_status_util.cc).
MAX_MESSAGE_LENGTH = 1024
_TRUNCATED = "...TRUNCATED"

#: gRPC status -> HTTP status, as TF Serving's REST handler maps them (http_server.cc).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    StatusCode.OK: 200,
    StatusCode.CANCELLED: 499,
    StatusCode.UNKNOWN: 500,
    StatusCode.INVALID_ARGUMENT: 400,
    StatusCode.DEADLINE_EXCEEDED: 504,
    StatusCode.NOT_FOUND: 404,
    StatusCode.ALREADY_EXISTS: 409,
    StatusCode.PERMISSION_DENIED: 403,
    StatusCode.RESOURCE_EXHAUSTED: 429,
    StatusCode.FAILED_PRECONDITION: 400,
    StatusCode.ABORTED: 409,
    StatusCode.OUT_OF_RANGE: 400,
    StatusCode.UNIMPLEMENTED: 501,
    StatusCode.INTERNAL: 500,
    StatusCode.UNAVAILABLE: 503,
    StatusCode.DATA_LOSS: 500,
    StatusCode.UNAUTHENTICATED: 401,
}

#: TF Serving's error_code strings in status JSON / ``StatusProto`` use the numeric code.
CODE_NAMES: dict[int, grpc.StatusCode] = {c.value[0]: c for c in StatusCode}


def truncate(message: str, limit: int = MAX_MESSAGE_LENGTH) -> str:
    """TF Serving's gRPC edge (``ToGRPCStatus``): the first 1024 characters, then a marker.
    REST answers carry the message whole, as TF Serving's do, but the values of the request
    it quotes are cut the same way (``compat.json_codec.values._pretty``)."""
    if len(message) <= limit:
        return message
    return message[:limit] + _TRUNCATED


class ServingError(Exception):
    """An error with a canonical status code; the only exception type that crosses a transport."""

    code: grpc.StatusCode = StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    def __reduce__(self):  # keep the subclass when pickled across Ray processes
        return (type(self), (self.message,))


class Cancelled(ServingError):
    code = StatusCode.CANCELLED


class Unknown(ServingError):
    code = StatusCode.UNKNOWN


class InvalidArgument(ServingError):
    code = StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(ServingError):
    code = StatusCode.DEADLINE_EXCEEDED


class NotFound(ServingError):
    code = StatusCode.NOT_FOUND


class AlreadyExists(ServingError):
    code = StatusCode.ALREADY_EXISTS


class PermissionDenied(ServingError):
    code = StatusCode.PERMISSION_DENIED


class Aborted(ServingError):
    code = StatusCode.ABORTED


class DataLoss(ServingError):
    code = StatusCode.DATA_LOSS


class Unauthenticated(ServingError):
    code = StatusCode.UNAUTHENTICATED


class ResourceExhausted(ServingError):
    code = StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(ServingError):
    code = StatusCode.FAILED_PRECONDITION


class OutOfRange(ServingError):
    code = StatusCode.OUT_OF_RANGE


class Unimplemented(ServingError):
    code = StatusCode.UNIMPLEMENTED


class Internal(ServingError):
    code = StatusCode.INTERNAL


class Unavailable(ServingError):
    code = StatusCode.UNAVAILABLE


_BY_CODE: dict[grpc.StatusCode, type[ServingError]] = {
    cls.code: cls for cls in ServingError.__subclasses__()
}


def from_code(code: grpc.StatusCode | int, message: str) -> ServingError:
    """Build the error class for a status code (an enum member or its integer value)."""
    if isinstance(code, int):
        code = CODE_NAMES.get(code, StatusCode.UNKNOWN)
    return _BY_CODE.get(code, Unknown)(message)
