"""The model config file read again at each poll (``lifecycle.config_source``): a file that
cannot be read, decoded or parsed keeps the last good config and is read again; one that lists
no model is taken only at the second poll in a row. Real files, no server."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from serve_app.config.args import ModelArgs
from serve_app.lifecycle.config_source import ConfigFileSource
from serve_app.lifecycle.faults import Faults

ONE = 'model_config_list { config { name: "a" base_path: "/m/a" model_platform: "tensorflow" } }'
TWO = (
    'model_config_list { config { name: "a" base_path: "/m/a" model_platform: "tensorflow" } '
    'config { name: "b" base_path: "/m/b" model_platform: "tensorflow" } }'
)
SERVING = [ModelArgs(name="a", base_path="/m/a")]


def names(models: list[ModelArgs] | None) -> list[str] | None:
    return None if models is None else [m.name for m in models]


@pytest.mark.parametrize(
    "content",
    [
        ONE.encode() + b"\n\xff\xfe",  # not UTF-8
        b"model_config_list { config { name: ",  # cut short
        b'model_config_list { config { name: "a" } }',  # no base path
        b"custom_model_config { }",
        b'model_config_list { config { name: "a" base_path: "/m/a" model_platform: "x" } }',
    ],
)
def test_a_bad_file_keeps_the_served_models_and_is_read_again(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "models.config"
    path.write_bytes(content)
    faults = Faults()
    source = ConfigFileSource(faults)
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        for _ in range(3):
            assert source.read(str(path), SERVING) is None
    assert len([r for r in caplog.records if "config_file failed" in r.getMessage()]) == 1
    assert ("config_file", "") in faults.now
    path.write_text(TWO)
    assert names(source.read(str(path), SERVING)) == ["a", "b"]
    assert not faults.now


def test_an_unreadable_file_keeps_the_served_models(tmp_path: Path) -> None:
    source = ConfigFileSource(Faults())
    assert source.read(str(tmp_path / "missing.config"), SERVING) is None
    assert source.read(str(tmp_path), SERVING) is None  # a directory


@pytest.mark.parametrize("empty", ["", "model_config_list { }", "# nothing\n"])
def test_no_model_at_all_is_taken_only_at_the_second_poll_in_a_row(
    tmp_path: Path, empty: str
) -> None:
    path = tmp_path / "models.config"
    source = ConfigFileSource(Faults())
    path.write_text(empty)
    assert source.read(str(path), SERVING) is None  # caught between truncate and write
    path.write_text(ONE)
    assert names(source.read(str(path), SERVING)) == ["a"]
    path.write_text(empty)
    assert source.read(str(path), SERVING) is None
    assert source.read(str(path), SERVING) == []  # meant: two polls in a row
    assert source.read(str(path), []) == []  # nothing served: nothing to protect
