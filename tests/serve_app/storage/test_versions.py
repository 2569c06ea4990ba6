"""The store seam (``storage.versions``, ``storage.factory``): the factory picks the store from
the path, the interface's checks word a refusal as TF Serving does, and the Source
(``lifecycle.repository.scan``) reads any store through the interface. A fake store stands in
for an object store; real directories for the local one. No server, no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from compat.errors import InvalidArgument
from serve_app.lifecycle.repository import check_base_path, scan
from serve_app.storage.factory import Stores, open_store
from serve_app.storage.local import LocalStore
from serve_app.storage.store import ObjectStore
from serve_app.storage.versions import ScanError, VersionStore

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("s3://bucket/models/m", ObjectStore),
        ("gs://bucket/m", ObjectStore),
        ("gcs://bucket/m", ObjectStore),
        ("/models/m", LocalStore),
        ("relative/m", LocalStore),
        ("s3:/not-a-uri", LocalStore),
    ],
)
def test_the_factory_picks_the_store_by_the_path_s_scheme(path: str, kind: type) -> None:
    store = open_store(path)
    assert type(store) is kind and store.base == path


def test_a_local_path_is_located_absolutely_an_object_store_uri_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert open_store("m").location == str(tmp_path.resolve() / "m")
    assert open_store("s3://b/m/").location == "s3://b/m/"


def test_stores_are_opened_once_per_base_path_and_kept() -> None:
    stores = Stores()
    first = stores["s3://b/m"]
    assert stores["s3://b/m"] is first and stores["s3://b/other"] is not first
    assert isinstance(stores["/m"], LocalStore)


def test_a_local_version_is_read_in_place(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    (tmp_path / "1").mkdir()
    assert store.fetch(str(tmp_path / "1"), 0) == tmp_path / "1"
    store.release(tmp_path / "1")  # nothing to give back
    assert (tmp_path / "1").is_dir()
    assert store.incomplete(str(tmp_path / "1")).startswith(
        f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {tmp_path}/1."
    )


def test_an_object_store_names_an_unfinished_upload_as_such() -> None:
    store = open_store("s3://b/m")
    assert store.incomplete("s3://b/m/1") == (
        "The SavedModel at s3://b/m/1 is not complete (files still being uploaded, or missing); "
        "it is loaded once whole"
    )
    assert "cannot be read with this node's credentials" in store.no_versions()


class FakeStore(VersionStore):
    """Versions held in a dict; ``broken`` makes every listing fail; counts the stamps asked."""

    def __init__(self, versions: dict[int, bool], broken: str = "") -> None:
        super().__init__("fake://m")
        self.whole = versions
        self.broken = broken
        self.stamped: list[str] = []

    def _check(self) -> None:
        if self.broken:
            raise ScanError(self.broken)

    def versions(self) -> dict[int, str]:
        self._check()
        return {v: f"fake://m/{v}" for v in self.whole}

    def ready(self) -> dict[int, str]:
        self._check()
        return {v: f"fake://m/{v}" for v, whole in self.whole.items() if whole}

    def stamp(self, version: str) -> str:
        self.stamped.append(version)
        return f"stamp of {version}"

    def fetch(self, version: str, max_bytes: int) -> Path:
        raise NotImplementedError

    def release(self, local: Path) -> None:
        raise NotImplementedError

    def incomplete(self, version: str) -> str:
        return f"{version} is not whole"


def test_the_source_reads_any_store_through_the_interface() -> None:
    store = FakeStore({1: True, 2: False, 3: True})
    found = scan(store, stamp=[2, 3, 4])
    assert found.complete == {1: "fake://m/1", 3: "fake://m/3"}
    assert set(found.numeric) == {1, 2, 3}
    assert found.stamps == {3: "stamp of fake://m/3"}  # only the asked-for whole versions
    assert store.stamped == ["fake://m/3"]
    with pytest.raises(ScanError, match="gone"):
        scan(FakeStore({1: True}, broken="gone"))


def test_a_store_is_refused_at_startup_when_unreadable_or_empty_and_at_reload_when_unreadable() -> (
    None
):
    assert FakeStore({1: False}).unusable() is None  # a broken version still gets a status
    assert FakeStore({}).unusable() == (
        "no numeric version under 'fake://m' (expected <base_path>/<version>/saved_model.pb)."
    )
    assert FakeStore({}, broken="Cannot list fake://m: 403").unusable() == (
        "Cannot list fake://m: 403"
    )
    assert FakeStore({}).unusable_for_reload() is None  # versions may come later
    assert FakeStore({}, broken="down").unusable_for_reload() == "cannot be used: down"


def test_a_reload_refuses_a_local_base_path_that_does_not_exist(tmp_path: Path) -> None:
    check_base_path(str(tmp_path))  # there, though it holds no version yet
    with pytest.raises(InvalidArgument) as e:
        check_base_path(str(tmp_path / "nope"))
    assert e.value.message == f"Model base path {tmp_path / 'nope'} does not exist"
