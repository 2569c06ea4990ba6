"""Model base paths in an object store (``s3://bucket/prefix``, ``gs://bucket/prefix``): the
``VersionStore`` ``ObjectStore`` (``storage.versions``), and the listing and download under it.

Every node of a cluster must read the models: a shared filesystem path needs nothing here; an
object-store URI is read with fsspec (s3fs for S3 and S3-compatible stores, gcsfs for GCS when
installed). Credentials come the standard way, never from a request: AWS's environment
variables, profile or instance role (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` for an
S3-compatible store), Google's application default credentials.

- **Versions** are the numeric "directories" under the base path (``<base>/<version>/...``).
- **A half-uploaded version is never loaded.** Objects of a version appear one by one, so a
  version is *ready* only when its SavedModel is whole (``saved_model.pb`` or ``.pbtxt``,
  ``variables/variables.index`` when there are variables, and every shard
  ``variables.data-0000i-of-0000N``) and its listing (names, sizes, ETags) is the same as at the
  previous scan, a poll apart: an upload in progress changes it.
- **Each replica downloads** a version into its node's cache (``storage.cache``: private to
  the server's user, names checked, bounded), into a temporary directory first, checks every
  file's size against the listing, then renames it into place; a version already in the cache
  is used as it is.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serve_app.storage import cache
from serve_app.storage.versions import EXPECTED, ScanError, VersionStore, version_number

logger = logging.getLogger("ray.serve")

SCHEMES = ("s3://", "gs://", "gcs://")
_SHARD = re.compile(r"variables/variables\.data-(\d+)-of-(\d+)$")


def _filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path without the scheme) for ``url``."""
    import fsspec

    options: dict[str, Any] = {}
    if url.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["endpoint_url"] = endpoint
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except ImportError as e:  # gcsfs not installed
        raise ValueError(f"{url}: {e}") from None
    return fs, path.rstrip("/")


@dataclass
class Listing:
    """A version's objects: path relative to the version -> (size, ETag or checksum)."""

    files: dict[str, tuple[int, str]] = field(default_factory=dict)
    name: str = ""
    """The version's name in the store (``00000123`` stays ``00000123``)."""

    @property
    def whole(self) -> bool:
        """Every file the SavedModel needs is there (see the module docstring)."""
        names = set(self.files)
        if not names & {"saved_model.pb", "saved_model.pbtxt"}:
            return False
        shards = [m for m in map(_SHARD.search, names) if m]
        if not shards:  # a model without variables, or shards still missing
            return "variables/variables.index" not in names
        total = int(shards[0].group(2))
        present = {int(m.group(1)) for m in shards if int(m.group(2)) == total}
        return "variables/variables.index" in names and present == set(range(total))

    @property
    def fingerprint(self) -> str:
        blob = repr(sorted(self.files.items())).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def list_versions(base_url: str) -> dict[int, Listing]:
    """Every numeric version under ``base_url`` with its objects (empty if there is none).
    A listing that fails (the store unreachable, a 5xx, expired credentials) raises
    ``ScanError``: it is never read as "no versions"."""
    try:
        fs, root = _filesystem(base_url)
        fs.invalidate_cache(root)
        found = fs.find(root, detail=True)
    except Exception as e:  # botocore's and aiohttp's errors are not all OSErrors
        raise ScanError(f"Cannot list {base_url}: {type(e).__name__}: {e}") from None
    if not found:  # as TF Serving's FileExists on an object store: no object, no base path
        raise ScanError(f"Could not find base path {base_url}")
    versions: dict[int, Listing] = {}
    for key, info in found.items():
        rel = key[len(root) :].lstrip("/")
        version, _, inner = rel.partition("/")
        number = version_number(version)
        if number is None or not inner or info.get("type") == "directory":
            continue
        tag = str(info.get("ETag") or info.get("etag") or info.get("md5Hash") or "")
        listing = versions.setdefault(number, Listing(name=version))
        listing.files[inner] = (int(info["size"]), tag)
    return versions


def version_url(base_url: str, listing: Listing) -> str:
    return f"{base_url.rstrip('/')}/{listing.name}"


class ObjectStore(VersionStore):
    """A base path in an object store. Its versions are ready once whole and listed the same
    at two listings in a row: the instance keeps the previous listing."""

    def __init__(self, base: str) -> None:
        super().__init__(base)
        self._previous: dict[int, str] = {}
        """Version -> its fingerprint at the previous ``ready``, for the whole ones."""

    def versions(self) -> dict[int, str]:
        return {v: version_url(self.base, ls) for v, ls in list_versions(self.base).items()}

    def ready(self) -> dict[int, str]:
        listings = list_versions(self.base)
        seen = {v: listing.fingerprint for v, listing in listings.items() if listing.whole}
        before, self._previous = self._previous, seen
        return {
            v: version_url(self.base, listings[v])
            for v, fingerprint in seen.items()
            if before.get(v) == fingerprint
        }

    def stamp(self, version: str) -> str:
        """The version's listing's fingerprint."""
        base, _, name = version.rstrip("/").rpartition("/")
        number = version_number(name)
        try:
            listing = list_versions(base).get(number) if number is not None else None
        except ScanError:
            return ""
        return listing.fingerprint if listing else ""

    def fetch(self, version: str, max_bytes: int) -> Path:
        return fetch(version, max_bytes=max_bytes)

    def release(self, local: Path) -> None:
        release(local)

    def incomplete(self, version: str) -> str:
        return (
            f"The SavedModel at {version} is not complete (files still being uploaded, or "
            "missing); it is loaded once whole"
        )

    def no_versions(self) -> str:
        return (
            f"no numeric version under {self.base!r} (or it cannot be read with this node's "
            f"credentials; expected {EXPECTED})."
        )


def cache_root() -> Path:
    """This process's cache directory (``serve_app.storage.cache``: private, checked, cleaned)."""
    return cache.root()


def fetch(url: str, retries: int = 3, max_bytes: int = cache.DEFAULT_MAX_BYTES) -> Path:
    """A local copy of the version at ``url``: downloaded atomically and checked, or cached;
    held in the cache (not evicted) until ``release``. Beyond ``max_bytes`` of cache, versions
    no process holds are evicted, least recently used first."""
    base, _, version = url.rstrip("/").rpartition("/")
    number = version_number(version)
    listing = list_versions(base).get(number) if number is not None else None
    if listing is None or not listing.whole:
        raise FileNotFoundError(f"{url} holds no complete SavedModel")
    try:  # every name checked before a byte is written
        files = {
            rel: size
            for name, (size, _) in listing.files.items()
            if (rel := cache.relative_path(name))
        }
    except ValueError as e:
        raise ValueError(f"{url}: {e}; the version is not downloaded") from None
    key = hashlib.sha256(f"{url}#{listing.fingerprint}".encode()).hexdigest()[:24]
    root = cache_root()
    final = root / key
    if cache.hold(final):
        cache.evict(root, max_bytes)
        return final
    fs, remote = _filesystem(url)
    for attempt in range(retries):
        try:
            with cache.staging(root, key) as (tmp, fd):
                started = time.monotonic()
                for rel in files:
                    target = tmp / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    fs.get_file(f"{remote}/{rel}", str(target))
                _verify(tmp, files)
                cache.publish(tmp, fd, final, listing.fingerprint)
            logger.info("Downloaded %s in %.2fs", url, time.monotonic() - started)
            cache.evict(root, max_bytes)
            return final
        except (OSError, ValueError) as e:
            if attempt == retries - 1:
                raise
            logger.warning("Downloading %s failed (%s); retrying", url, e)
    raise AssertionError("unreachable")


def release(path: str | os.PathLike[str]) -> None:
    """A version fetched into the cache is no longer served by this process: it may be
    evicted."""
    cache.release(Path(path))


def _verify(local: Path, files: dict[str, int]) -> None:
    for rel, size in files.items():
        actual = (local / rel).stat().st_size
        if actual != size:
            raise ValueError(f"{rel}: {actual} bytes downloaded, {size} listed")
