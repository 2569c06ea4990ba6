"""The benchmark's paging row without a server: the model tree it serves (linked copies of TF
Serving's test models, the hot one first) and its table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadtests.bench import paging

pytestmark = pytest.mark.unit


def test_the_model_tree_links_tf_servings_test_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(paging, "BIG", {})  # exports made by the live run only
    adds = paging.build_models(tmp_path, 5)
    assert list(adds) == ["hot", "m000", "m001", "m002", "m003"]
    assert adds["hot"] == 2.0 and adds["m000"] == 3.0  # half_plus_two, half_plus_three
    assert (tmp_path / "hot" / "1" / "saved_model.pb").is_file()
    config = paging.write_config(tmp_path / "c.config", tmp_path, ["hot"]).read_text()
    assert f'base_path: "{tmp_path / "hot"}"' in config


def test_the_table_has_a_row_per_server_and_the_hot_models_ratio() -> None:
    row: dict[str, Any] = {
        "boot_s": 50.0,
        "failed": 0,
        "rps": 200.0,
        "page_ins": 321.0,
        "hops": 123.0,
        "cold_p50_ms": 30.0,
        "cold_p99_ms": 60.0,
        "warm_p50_ms": 1.5,
        "replica_rss_mb": [800.0, 820.0],
        "hot_rps": 2000.0,
        "hot_vs_one": 0.95,
    }
    one = {"boot_s": 35.0, "replica_rss_mb": [677.0, 677.0], "hot_rps": 2100.0}
    lines = paging.table({"budget": row, "all": row, "one": one}).splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["budget", "all", "one"]
    assert "0.95" in lines[1] and "800 820" in lines[1] and "321" in lines[1] and "123" in lines[1]
    assert paging.parse_args([]).budget_mb == 48
