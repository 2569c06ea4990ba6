"""The ``VersionStore`` of a path, chosen by its scheme (as MLServer's repository factory): an
object-store URI (``s3://``, ``gs://``, ``gcs://``) is read with fsspec (``storage.store``),
anything else is a local or shared file system path (``storage.local``). The one place that
tells the two apart."""

from __future__ import annotations

import os

from serve_app.storage.local import LocalStore
from serve_app.storage.store import SCHEMES, ObjectStore
from serve_app.storage.versions import VersionStore


def open_store(path: str | os.PathLike[str]) -> VersionStore:
    """The store of a base path (or of the one a version's path is under: the scheme decides)."""
    text = str(path)
    if text.startswith(SCHEMES):
        return ObjectStore(text)
    return LocalStore(text)


class Stores(dict[str, VersionStore]):
    """Base path -> its store, opened at first use and kept: whoever polls base paths holds
    one (an object store's readiness is in its instance)."""

    def __missing__(self, base: str) -> VersionStore:
        store = self[base] = open_store(base)
        return store
