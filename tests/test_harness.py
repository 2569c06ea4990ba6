"""The harness's check of the test data: a missing model fails the whole run at once, naming
what is missing and where to get it (no test skips for want of one)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import conftest, harness


def fake_testdata(root: Path, *leave_out: str) -> Path:
    """Every file and folder of ``REQUIRED_TESTDATA`` under ``root`` (empty), but ``leave_out``."""
    for name in harness.REQUIRED_TESTDATA:
        if name in leave_out:
            continue
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix:
            path.write_bytes(b"")
        else:
            path.mkdir(exist_ok=True)
    return root


def test_a_complete_tree_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "TESTDATA", fake_testdata(tmp_path / "tfserving"))
    assert harness.require_test_data() is None


def test_a_missing_model_is_named_with_where_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = "saved_model_half_plus_three/00000123/saved_model.pb"
    copy = fake_testdata(tmp_path / "tfserving", gone)
    monkeypatch.setattr(harness, "TESTDATA", copy)
    problem = harness.require_test_data()
    assert problem is not None
    assert gone in problem
    assert "saved_model_half_plus_two_cpu" not in problem
    assert str(copy) in problem and "github.com/tensorflow/serving" in problem


def test_the_run_stops_at_its_start_with_the_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pytest_sessionstart`` ends the session with a usage error and the message."""
    copy = fake_testdata(tmp_path / "tfserving", "good_model_config.txt")
    monkeypatch.setattr(harness, "TESTDATA", copy)
    with pytest.raises(pytest.exit.Exception) as stopped:
        conftest.pytest_sessionstart(SimpleNamespace())  # type: ignore[arg-type]
    assert stopped.value.returncode == pytest.ExitCode.USAGE_ERROR
    assert "good_model_config.txt" in stopped.value.msg and str(copy) in stopped.value.msg
    monkeypatch.setattr(harness, "TESTDATA", fake_testdata(tmp_path / "whole"))
    conftest.pytest_sessionstart(SimpleNamespace())  # type: ignore[arg-type]  # no exit
