"""The harness's check of the test data: a missing model fails the run, naming what is missing
and where to get it (no test skips for want of one)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests import harness


def test_every_required_file_is_there() -> None:
    assert harness.require_test_data() is None


def test_a_missing_model_is_named_with_where_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "tfserving"
    shutil.copytree(harness.TESTDATA, copy)
    shutil.rmtree(copy / "saved_model_half_plus_three")
    monkeypatch.setattr(harness, "TESTDATA", copy)
    problem = harness.require_test_data()
    assert problem is not None
    assert "saved_model_half_plus_three/00000123/saved_model.pb" in problem
    assert "saved_model_half_plus_two_cpu" not in problem
    assert str(copy) in problem and "github.com/tensorflow/serving" in problem
