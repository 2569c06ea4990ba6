"""The Source's look at a local base path (``lifecycle.repository`` over ``storage.local``):
version directories named as TF Serving reads them, and a look that fails raising ``ScanError``
(a failed poll changes nothing) rather than answering "no versions". Real directories, no
server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from serve_app.config.args import ModelArgs
from serve_app.lifecycle.repository import ModelPathError, Scan, ScanError, check_model_path
from serve_app.lifecycle.repository import scan as scan_store
from serve_app.storage.local import LocalStore
from serve_app.storage.versions import version_number


@pytest.mark.parametrize(
    ("name", "number"),
    [
        ("1", 1),
        ("00000123", 123),
        ("9223372036854775807", 2**63 - 1),
        ("9223372036854775808", None),  # past int64
        ("²", None),  # str.isdigit() says yes, int() raises
        ("١٢", None),  # Arabic-Indic digits: int() takes them, TF Serving does not
        ("-1", None),
        ("+1", None),
        (" 1", None),
        ("1.5", None),
        ("", None),
        ("tmp", None),
    ],
)
def test_version_names_are_read_as_tf_serving_reads_them(name: str, number: int | None) -> None:
    assert version_number(name) == number


def version(base: Path, name: str, whole: bool = True) -> Path:
    path = base / name
    path.mkdir(parents=True)
    if whole:
        (path / "saved_model.pb").write_bytes(b"")
    return path


def test_stray_names_are_ignored(tmp_path: Path) -> None:
    version(tmp_path, "1")
    version(tmp_path, "²")
    version(tmp_path, "99999999999999999999")
    version(tmp_path, "2", whole=False)
    (tmp_path / "3").write_text("a file, not a directory")
    assert LocalStore(tmp_path).ready() == {1: str(tmp_path / "1")}
    assert set(LocalStore(tmp_path).versions()) == {1, 2}
    check_model_path(ModelArgs(name="m", base_path=str(tmp_path)))


def scan(base: Path, stamp: list[int] | None = None) -> Scan:
    return scan_store(LocalStore(base), stamp or [])


def test_a_base_path_that_cannot_be_read_is_an_error_not_an_empty_listing(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    with pytest.raises(ScanError, match=f"Could not find base path {gone}"):
        scan(gone)
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(ScanError):
        scan(a_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert scan(empty).complete == {}  # read, and empty: a listing that lacks every version


def test_startup_refuses_a_base_path_by_name_without_a_traceback(tmp_path: Path) -> None:
    version(tmp_path, "²")
    with pytest.raises(ModelPathError, match="no numeric version directory"):
        check_model_path(ModelArgs(name="m", base_path=str(tmp_path)))
    with pytest.raises(ModelPathError, match="does not exist"):
        check_model_path(ModelArgs(name="m", base_path=str(tmp_path / "nope")))


def test_a_failed_version_is_retried_when_any_of_its_files_changes(tmp_path: Path) -> None:
    """The stamp covers every file: a variables file rewritten in place changes it, though
    the version directory's own mtime does not move."""
    path = version(tmp_path, "1")
    (path / "variables").mkdir()
    index = path / "variables" / "variables.index"
    index.write_bytes(b"a")
    before = scan(tmp_path, stamp=[1]).stamps[1]
    assert before and scan(tmp_path, stamp=[1]).stamps[1] == before
    index.write_bytes(b"bb")
    assert scan(tmp_path, stamp=[1]).stamps[1] != before
    shutil.rmtree(path / "variables")
    assert scan(tmp_path, stamp=[1]).stamps[1] not in ("", before)
