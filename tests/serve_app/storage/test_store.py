"""Models served from ``s3://``: a real S3 endpoint on loopback (moto's standalone server, an HTTP
S3 API, not a patched client), written with boto3 and read by the server with its credentials
from the environment. A version uploaded later rolls out under load; one whose upload is not
finished is never loaded.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from serve_app.storage import cache, store
from serve_app.storage.factory import open_store
from tests.harness import TESTDATA, Server, free_ports, start_server
from tests.serve_app.test_serving_path import Load, predict_request

BUCKET = "models"
PREFIX = "half_plus_two"
SOURCE = TESTDATA / "saved_model_half_plus_two_cpu" / "00000123"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    (port,) = free_ports(1)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    url = f"http://127.0.0.1:{port}"
    try:
        client(url).create_bucket(Bucket=BUCKET)
        yield url
    finally:
        moto.stop()


def client(url: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
    )


def upload(
    url: str, version: str, skip: tuple[str, ...] = (), bucket: str = BUCKET, prefix: str = PREFIX
) -> list[str]:
    """Upload SOURCE as ``<prefix>/<version>/``, but for the files named in ``skip``. (Moto's
    servers in one process share their buckets: each test module keeps to a bucket or prefix
    of its own.)"""
    s3 = client(url)
    sent = []
    for path in sorted(SOURCE.rglob("*")):
        rel = path.relative_to(SOURCE).as_posix()
        if path.is_file() and rel not in skip:
            s3.upload_file(str(path), bucket, f"{prefix}/{version}/{rel}")
            sent.append(rel)
    return sent


@pytest.fixture
def environment(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for key, value in {**CREDENTIALS, "AWS_ENDPOINT_URL_S3": endpoint}.items():
        monkeypatch.setenv(key, value)
    return endpoint


# --- the store, against the endpoint --------------------------------------------------------


SHARD = "variables/variables.data-00000-of-00001"


@pytest.mark.parametrize(
    ("files", "whole"),
    [
        ({"saved_model.pb", "variables/variables.index", SHARD}, True),
        ({"saved_model.pb"}, True),  # a model without variables
        ({"saved_model.pb", "variables/variables.index"}, False),  # shards not there yet
        ({"variables/variables.index", SHARD}, False),  # the graph not there yet
        (
            {
                "saved_model.pb",
                "variables/variables.index",
                "variables/variables.data-00000-of-00002",
            },
            False,
        ),
    ],
)
def test_a_version_is_whole_only_with_every_file(files: set[str], whole: bool) -> None:
    assert store.Listing({f: (1, "") for f in files}).whole is whole


def test_scanner_waits_for_a_stable_listing(
    environment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_TFSERVING_CACHE", str(tmp_path / "cache"))
    base = f"s3://{BUCKET}/scan"
    s3 = client(environment)
    scanner = open_store(base)  # the factory's object store: it keeps the previous listing
    assert isinstance(scanner, store.ObjectStore)
    for path in sorted(SOURCE.rglob("*")):
        if path.is_file():
            rel = path.relative_to(SOURCE).as_posix()
            s3.upload_file(str(path), BUCKET, f"scan/7/{rel}")
    assert scanner.ready() == {}  # whole, but not yet seen twice
    assert scanner.ready() == {7: f"{base}/7"}
    assert open_store(base).ready() == {}  # another instance has seen nothing yet
    s3.put_object(Bucket=BUCKET, Key="scan/7/assets.extra/new", Body=b"x")  # still uploading
    assert scanner.ready() == {}
    local = scanner.fetch(f"{base}/7", cache.DEFAULT_MAX_BYTES) if scanner.ready() else None
    assert (
        local is not None
        and (local / "saved_model.pb").read_bytes() == (SOURCE / "saved_model.pb").read_bytes()
    )
    assert (local / "assets.extra" / "new").read_bytes() == b"x"
    assert store.fetch(f"{base}/7") == local  # cached, not fetched again


def test_version_0_is_fetched(
    environment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 0 is a version, as TF Serving reads it (``fetch`` once looked it up as -1)."""
    monkeypatch.setenv("RAY_TFSERVING_CACHE", str(tmp_path / "cache"))
    upload(environment, "0", prefix="zero")
    local = store.fetch(f"s3://{BUCKET}/zero/0")
    assert (local / "saved_model.pb").read_bytes() == (SOURCE / "saved_model.pb").read_bytes()


@pytest.mark.parametrize("fault", ["403"])  # 503 and reset, slower to fail: test_bad_day
def test_a_listing_that_fails_is_an_error_never_no_versions(
    environment: str, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """Expired credentials, an overloaded store, one that cannot be reached: ``ScanError``,
    which the version manager takes as "change nothing"; the scanner's memory of the last
    good listing survives it (a version seen whole before is ready at the next good scan)."""
    from tests.faultproxy import FaultProxy

    upload(environment, "5", prefix="faulty")
    proxy = FaultProxy(environment)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    base = f"s3://{BUCKET}/faulty"
    scanner = store.ObjectStore(base)
    try:
        scanner.ready()
        proxy.mode = fault
        with pytest.raises(store.ScanError, match=f"Cannot list {base}"):
            scanner.ready()
        assert scanner.stamp(f"{base}/5") == ""
        assert proxy.requests[fault] > 0
        proxy.mode = "pass"
        assert 5 in scanner.ready()
    finally:
        proxy.stop()


def test_an_empty_prefix_is_no_base_path(environment: str) -> None:
    """As TF Serving's FileExists on an object store: no object under the prefix, no base path
    (an error that unloads nothing), while a prefix with only other objects lists no version."""
    with pytest.raises(store.ScanError, match="Could not find base path"):
        store.list_versions(f"s3://{BUCKET}/nothing-here")
    client(environment).put_object(Bucket=BUCKET, Key="others/README", Body=b"x")
    client(environment).put_object(Bucket=BUCKET, Key="others/²/saved_model.pb", Body=b"x")
    assert store.list_versions(f"s3://{BUCKET}/others") == {}


# --- a live server --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    upload(endpoint, "00000123")
    cache = tmp_path_factory.mktemp("model-cache")
    s = start_server(
        "model_name=half_plus_two",
        f"model_base_path=s3://{BUCKET}/{PREFIX}",
        "file_system_poll_wait_seconds=0.5",
        wait_for=("half_plus_two",),
        env={**CREDENTIALS, "AWS_ENDPOINT_URL_S3": endpoint, "RAY_TFSERVING_CACHE": str(cache)},
    )
    yield s
    s.stop()


def states(server: Server) -> dict[int, int]:
    from tensorflow_serving.apis import get_model_status_pb2

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "half_plus_two"
    response = server.model_stub().GetModelStatus(request, 10.0)
    return {s.version: s.state for s in response.model_version_status}


def test_served_from_s3(server: Server) -> None:
    response = server.prediction_stub().Predict(predict_request(), 10.0)
    assert response.outputs["y"].float_val == [3.0]
    assert response.model_spec.version.value == 123


def test_an_unfinished_upload_is_never_loaded_and_the_finished_one_rolls_out(
    server: Server, endpoint: str
) -> None:
    from tensorflow_serving.apis import get_model_status_pb2

    state = get_model_status_pb2.ModelVersionStatus
    available, end = state.AVAILABLE, state.END
    with Load(server) as load:
        load.wait_ok_after(time.monotonic(), 50)
        upload(endpoint, "124", skip=(SHARD,))  # the weights are still on their way
        deadline = time.monotonic() + 8  # 16 polls of the manager
        while time.monotonic() < deadline:
            assert states(server).get(124) in (None, end)  # never LOADING, never AVAILABLE
            time.sleep(0.25)
        assert "Loading half_plus_two version 124" not in server.log()
        client(endpoint).upload_file(str(SOURCE / SHARD), BUCKET, f"{PREFIX}/124/{SHARD}")
        deadline = time.monotonic() + 180
        while states(server) != {124: available, 123: end}:
            assert time.monotonic() < deadline, states(server)
            time.sleep(0.25)
        load.wait_ok_after(time.monotonic(), 50)
    failed = [c for c in load.calls if c[2] != grpc.StatusCode.OK]
    assert failed == [] and load.wrong == []
    response = server.prediction_stub().Predict(predict_request(), 10.0)
    assert response.model_spec.version.value == 124


def test_a_reload_takes_object_store_base_paths(server: Server, endpoint: str) -> None:
    """HandleReloadConfigRequest takes every base path the startup config takes: a model added
    from another S3 prefix is served; a prefix that holds nothing is INVALID_ARGUMENT, and the
    served models stay as they were."""
    from tensorflow_serving.apis import model_management_pb2

    from tests.serve_app.test_bad_day import State, wait_state

    s3 = client(endpoint)
    for path in sorted(SOURCE.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), BUCKET, f"copy/7/{path.relative_to(SOURCE).as_posix()}")

    def reload(*entries: tuple[str, str]) -> Any:
        request = model_management_pb2.ReloadConfigRequest()
        for name, base in entries:
            config = request.config.model_config_list.config.add()
            config.name, config.base_path, config.model_platform = name, base, "tensorflow"
        return server.model_stub().HandleReloadConfigRequest(request, 120.0)

    served = ("half_plus_two", f"s3://{BUCKET}/{PREFIX}")
    with pytest.raises(grpc.RpcError) as refused:
        reload(served, ("copy", f"s3://{BUCKET}/no-such-prefix"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"s3://{BUCKET}/no-such-prefix" in (refused.value.details() or "")
    assert reload(served, ("copy", f"s3://{BUCKET}/copy")).status.error_code == 0
    wait_state(server, 7, State.AVAILABLE, model="copy")
    request = predict_request()
    request.model_spec.name = "copy"
    assert server.prediction_stub().Predict(request, 10.0).outputs["y"].float_val == [3.0]


# --- the cache: private, names checked, partial downloads cleaned, bounded --------------------


@contextlib.contextmanager
def held_by_another_process(path: Path, kind: str = "LOCK_SH") -> Iterator[None]:
    """Another process holds ``flock(kind)`` on the directory ``path`` (a replica serving a
    cached version, or one downloading into it) until the block ends."""
    script = (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
        f"fcntl.flock(fd, fcntl.{kind}); print('held', flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "held\n"
        yield
    finally:
        child.communicate("", timeout=30)


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv(cache.ENV, str(path))
    return path


def test_the_cache_is_made_private_to_the_server_s_user(cache_dir: Path) -> None:
    assert store.cache_root() == cache_dir
    info = cache_dir.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o700, os.getuid())


@pytest.mark.parametrize("problem", ["group writable", "world writable", "symlink", "owner"])
def test_a_configured_cache_that_is_not_private_is_refused(
    cache_dir: Path, tmp_path: Path, problem: str
) -> None:
    if problem == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        cache_dir.symlink_to(tmp_path / "elsewhere")
    else:
        cache_dir.mkdir()
        cache_dir.chmod({"group writable": 0o770, "world writable": 0o777}.get(problem, 0o700))
    if problem == "owner":
        if os.geteuid() != 0:
            pytest.skip("giving a directory to another user needs root")
        os.chown(cache_dir, 65534, 65534)
    with pytest.raises(PermissionError) as e:
        store.cache_root()
    why = {
        "group writable": "may be written by group or others (mode 770)",
        "world writable": "may be written by group or others (mode 777)",
        "symlink": "is not a directory (a symlink?)",
        "owner": f"belongs to uid 65534, not to this server's user (uid {os.getuid()})",
    }[problem]
    assert str(e.value) == (
        f"The object-store cache {cache_dir} {why}: it must be private to the server's user "
        "(a 0700 directory of its own; set $RAY_TFSERVING_CACHE to another path)"
    )


def test_a_default_cache_someone_else_made_is_replaced_by_a_fresh_private_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(cache.ENV, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(cache, "_roots", {})
    squatted = tmp_path / f"rtfs-cache-{os.getuid()}"
    squatted.mkdir()
    squatted.chmod(0o777)
    (squatted / "planted").mkdir()
    root = store.cache_root()
    assert root != squatted and root.parent == tmp_path
    assert stat.S_IMODE(root.stat().st_mode) == 0o700 and not any(root.iterdir())


def test_partial_downloads_are_deleted_at_start_but_not_one_under_way(cache_dir: Path) -> None:
    cache_dir.mkdir(mode=0o700)
    for name in (".tmp-dead-1", ".tmp-live-2", ".evict-old-3", "kept"):
        (cache_dir / name / "variables").mkdir(parents=True)
        (cache_dir / name / "variables" / "variables.index").write_bytes(b"x" * 100)
    with held_by_another_process(cache_dir / ".tmp-live-2", "LOCK_EX"):
        store.cache_root()
        assert sorted(p.name for p in cache_dir.iterdir()) == [".tmp-live-2", "kept"]


@pytest.mark.parametrize(
    ("name", "checked"),
    [
        ("saved_model.pb", "saved_model.pb"),
        ("variables/variables.data-00000-of-00001", "variables/variables.data-00000-of-00001"),
        ("assets.extra/..warmup", "assets.extra/..warmup"),
        ("variables/", None),  # a folder marker: nothing to write
    ],
)
def test_plain_object_names_are_kept(name: str, checked: str | None) -> None:
    assert cache.relative_path(name) == checked


@pytest.mark.parametrize(
    "name", ["../../x", "a/../../x", "/etc/x", "a//b", "./a", "a/.", "", "a\0b", ".complete"]
)
def test_object_names_that_could_leave_the_version_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="is not a plain relative path"):
        cache.relative_path(name)


def make_entry(directory: Path, name: str, size: int, used: float) -> Path:
    entry = directory / name
    (entry / "variables").mkdir(parents=True)
    (entry / "variables" / "variables.data-00000-of-00001").write_bytes(b"x" * size)
    (entry / cache.COMPLETE).write_text("")
    os.utime(entry / cache.COMPLETE, (used, used))
    return entry


def test_eviction_deletes_the_least_recently_used_entries_no_process_holds(
    cache_dir: Path,
) -> None:
    root = store.cache_root()
    entries = [make_entry(root, f"e{i}", 1000, 1_000_000 + i) for i in range(4)]
    assert cache.hold(entries[0])  # served by this process (which makes it the newest)
    with held_by_another_process(entries[1]):  # served by another replica of the node
        assert cache.evict(root, 3500) == ["e2"]  # the oldest nobody serves
        assert cache.evict(root, 3500) == []
        cache.release(entries[0])  # 3000 bytes left: within the bound, nothing more goes
        assert sorted(p.name for p in root.iterdir()) == ["e0", "e1", "e3"]
        assert cache.evict(root, 0) == ["e3", "e0"]  # e0 was used last (its hold)
    assert [p.name for p in root.iterdir()] == ["e1"]
    assert cache.hold(entries[1])  # now nobody else holds it; hold marks it used
    assert (entries[1] / cache.COMPLETE).stat().st_mtime > 1_000_003
    cache.release(entries[1])  # released past a bound of 0: evicted
    assert not any(root.iterdir())


# --- the cache, against the endpoint ----------------------------------------------------------


def upload_version(url: str, prefix: str, extra: dict[str, bytes] | None = None) -> None:
    s3 = client(url)
    for path in sorted(SOURCE.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(SOURCE).as_posix()}")
    for key, body in (extra or {}).items():
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{key}", Body=body)


@pytest.mark.parametrize(
    "key", ["../../escaped", "/rtfs-escaped-{id}/x", "variables/../../../escaped", ".complete"]
)
def test_a_version_with_an_object_name_that_would_leave_it_is_not_downloaded(
    environment: str, cache_dir: Path, key: str
) -> None:
    unique = uuid.uuid4().hex[:8]
    key = key.format(id=unique)
    base = f"s3://{BUCKET}/hostile-{unique}"
    upload_version(environment, f"hostile-{unique}/7", {key: b"planted"})
    with pytest.raises(ValueError) as e:
        store.fetch(f"{base}/7")
    assert str(e.value) == (
        f"{base}/7: object name {key!r} is not a plain relative path; the version is not downloaded"
    )
    outside = [cache_dir.parent / "escaped", Path(f"/rtfs-escaped-{unique}")]
    assert not any(p.exists() for p in outside)
    assert not cache_dir.exists() or not any(cache_dir.iterdir())  # not even a partial one


def test_versions_no_longer_served_are_evicted_beyond_the_bound(
    environment: str, cache_dir: Path
) -> None:
    base = f"s3://{BUCKET}/evicted-{uuid.uuid4().hex[:8]}"
    for v in (1, 2, 3):
        upload_version(environment, f"{base.removeprefix(f's3://{BUCKET}/')}/{v}")
    one = sum(p.stat().st_size for p in SOURCE.rglob("*") if p.is_file())
    bound = int(one * 1.5)  # room for one version
    first = store.fetch(f"{base}/1", max_bytes=bound)
    second = store.fetch(f"{base}/2", max_bytes=bound)  # both served: both kept, over the bound
    assert first.is_dir() and second.is_dir() and first != second
    assert store.fetch(f"{base}/1", max_bytes=bound) == first  # cached: no download
    store.release(first)
    assert first.is_dir()  # still held once
    store.release(first)  # no longer served: evicted, the bound being passed
    assert not first.exists() and second.is_dir()
    third = store.fetch(f"{base}/3", max_bytes=bound)
    assert second.is_dir()  # still served
    store.release(second)
    assert sorted(cache_dir.iterdir()) == [third]
    assert (third / "saved_model.pb").read_bytes() == (SOURCE / "saved_model.pb").read_bytes()
    store.release(third)
