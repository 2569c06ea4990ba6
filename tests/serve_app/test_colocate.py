"""The default path (``colocate=true``): the serving replicas run the model themselves, and
versions still roll out blue/green in every one of them with zero failed requests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Server, start_server
from tests.serve_app.lifecycle.test_rollout import (
    MODEL,
    Load,
    State,
    publish_broken,
    publish_version,
    status,
    wait_state,
)


@pytest.fixture(scope="module")
def server(deeplab_copy: Path) -> Iterator[Server]:
    s = start_server(
        f"model_name={MODEL}",
        f"model_base_path={deeplab_copy}",
        "file_system_poll_wait_seconds=0.5",
        "batching.enabled=true",
        wait_for=(MODEL,),
    )
    yield s
    s.stop()


def test_the_serving_replicas_run_the_model(server: Server) -> None:
    assert len(server.replicas("Ingress")) == 2
    assert server.replicas(f"{MODEL}-v1") == []  # no model deployment
    assert status(server)[1] == (State.AVAILABLE, "")


def test_blue_green_in_the_serving_replicas_under_load(server: Server, deeplab_copy: Path) -> None:
    base = deeplab_copy
    with Load(server) as load:
        assert load.versions_after(time.monotonic()) == {1}
        publish_version(base, 1, 2)
        available = wait_state(server, 2, State.AVAILABLE)
        wait_state(server, 1, State.END)
        assert load.versions_after(time.monotonic() + 0.5) == {2}
        first_new = min(t for calls in load.seen for (t, v) in calls if v == 2)
        assert first_new >= available - 1.0  # routed only once AVAILABLE (status polled)
        # A version that fails to load is never routed to; version 2 keeps serving.
        publish_broken(base, 3)
        wait_state(server, 3, State.END)
        assert status(server)[3][1]  # its error is shown
        assert status(server)[2][0] == State.AVAILABLE
        assert load.versions_after(time.monotonic()) == {2}
    assert load.failures == []
    for calls in load.seen:
        assert [v for _, v in calls] == sorted(v for _, v in calls)  # only forward
    assert server.replicas(f"{MODEL}-v2") == []
