"""``--rest_api_enable_cors_support`` in ``transports.rest``, in-process on a fake backend: TF
Serving's CORS headers (``AddCORSHeaders``, http_rest_api_util.cc) on every REST API answer,
errors included, and a preflight answered 200; nothing without the flag or outside the API."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request

from compat.errors import NotFound
from serve_app.calls import ModelCall, ModelReply
from serve_app.transports import rest

CORS = {
    "access-control-allow-origin": "*",
    "access-control-allow-methods": "POST, GET",
    "access-control-allow-headers": "Content-Type",
}


class Backend:
    def __init__(self, cors: bool) -> None:
        self.cors = cors
        self.calls = 0

    async def call_model(self, call: ModelCall) -> ModelReply:
        self.calls += 1
        raise NotFound("Servable not found for request: Latest(m)")

    async def model_status(self, raw: bytes) -> ModelReply:
        self.calls += 1
        raise NotFound("Could not find any versions of model m")


def answer(backend: Backend, method: str, path: str) -> Any:
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"origin", b"http://page.example"), (b"content-type", b"application/json")],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b'{"instances": [1.0]}', "more_body": False}

    return asyncio.run(rest.RestApi(backend).handle(Request(scope, receive)))


def cors_headers(response: Any) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


def test_a_preflight_is_answered_with_tf_servings_cors_headers() -> None:
    backend = Backend(cors=True)
    response = answer(backend, "OPTIONS", "/v1/models/m:predict")
    assert (response.status_code, response.body) == (200, b"")
    assert cors_headers(response) == CORS
    assert backend.calls == 0  # a preflight runs nothing


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/v1/models/m", 404), ("POST", "/v1/models/m:predict", 404)],
)
def test_every_api_answer_carries_them_errors_included(method: str, path: str, status: int) -> None:
    response = answer(Backend(cors=True), method, path)
    assert response.status_code == status
    assert cors_headers(response) == CORS
    assert response.headers["content-type"] == "application/json"


def test_none_without_the_flag_or_outside_the_api() -> None:
    plain = answer(Backend(cors=False), "GET", "/v1/models/m")
    assert plain.status_code == 404 and cors_headers(plain) == {}
    preflight = answer(Backend(cors=False), "OPTIONS", "/v1/models/m:predict")
    assert preflight.status_code == 400 and cors_headers(preflight) == {}
    outside = answer(Backend(cors=True), "GET", "/healthz")
    assert cors_headers(outside) == {}
