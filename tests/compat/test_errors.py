"""The one error type and the one gRPC -> HTTP table."""

from __future__ import annotations

import grpc
import pytest

from compat import errors


def test_truncation_matches_tf_serving() -> None:
    long = "x" * 2000
    assert errors.truncate(long) == "x" * 1024 + "...TRUNCATED"
    assert errors.truncate("short") == "short"
    assert errors.InvalidArgument(long).message == long  # REST keeps the whole message


@pytest.mark.parametrize(
    ("code", "http"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.FAILED_PRECONDITION, 400),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.UNIMPLEMENTED, 501),
        (grpc.StatusCode.INTERNAL, 500),
        (grpc.StatusCode.CANCELLED, 499),
    ],
)
def test_every_code_has_one_class_and_one_http_status(code: grpc.StatusCode, http: int) -> None:
    error = errors.from_code(code, "m")
    assert error.code == code and error.http_status == http
    assert errors.from_code(code.value[0], "m").code == code  # integer codes from replies
