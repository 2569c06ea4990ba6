"""The quiet start's story (``launch.startup``) read from the version manager's typed snapshot:
one line per version whose state changed, the load's figures once AVAILABLE, and where a model
that is not AVAILABLE stands."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from serve_app.deployments import LoadInfo, Snapshot, VersionState
from serve_app.launch.startup import Progress, _where

pytestmark = pytest.mark.unit


def test_each_state_change_is_told_once(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress({"m": {1: "/nowhere/1"}})
    loading = Snapshot(status={"m": {1: VersionState.LOADING}})
    available = Snapshot(
        status={"m": {1: VersionState.AVAILABLE}},
        loads={"m": {1: LoadInfo(seconds=1.25, warmup_records=3)}},
    )
    for snapshot in (loading, loading, available, available):
        progress.states(snapshot)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "ray-tfserving: m version 1 is loading"
    assert lines[1].startswith(
        "ray-tfserving: m version 1 is AVAILABLE (loaded in 1.2s, 3 warmup records replayed, "
    )
    assert len(lines) == 2


def test_where_a_model_stands_is_its_newest_versions_state() -> None:
    model = SimpleNamespace(name="m", base_path="/models/m")
    assert _where(model, {}) == "m: no version found under /models/m"
    assert _where(model, {9: VersionState.AVAILABLE, 10: VersionState.LOADING}) == (
        "m: version 10 is LOADING"
    )
    assert _where(model, {9: VersionState.LOADING, 10: VersionState.AVAILABLE}) == ""
