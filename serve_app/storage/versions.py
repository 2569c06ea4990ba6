"""What a place that holds a model's versions offers (``VersionStore``), whatever it is: TF
Serving's FileSystemStoragePathSource reads a base path through TF's file systems; here each kind
of path is one implementation (``storage.local``: a local or shared file system;
``storage.store``: an object store), chosen from the path by ``storage.factory.open_store``.

A store is opened on a model's base path. Listing (``versions``, ``ready``) reads that base
path; ``stamp``, ``fetch`` and ``release`` take the path of one of its versions, as the listing
gave it. An instance may keep state between listings (an object store's readiness is two
listings alike): whoever polls a base path keeps its store.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path

INT64_MAX = 2**63 - 1

EXPECTED = "<base_path>/<version>/saved_model.pb"
"""The layout a base path must have, as the refusals name it."""


class ScanError(OSError):
    """A look at a base path that failed (it vanished, a mount or an object store erred, the
    credentials expired): as TF Serving's FileSystemStoragePathSource, a failed poll changes
    nothing; only a successful listing that lacks a version unloads it."""


def version_number(name: str) -> int | None:
    """A child's name as TF Serving reads a version directory's (``safe_strto64``, without the
    sign and blanks it also takes): ASCII digits within int64, ``00000123`` is 123; anything
    else (``²``, ``1.5``, ``tmp``) is no version and is ignored."""
    if not name or not name.isascii() or not name.isdigit():
        return None
    number = int(name)
    return number if number <= INT64_MAX else None


class VersionStore(ABC):
    """The versions under one base path: listed, stamped, and fetched to a local directory."""

    def __init__(self, base: str | os.PathLike[str]) -> None:
        self.base = str(base)
        """The base path as it was given."""

    @property
    def location(self) -> str:
        """The base path as every process reads it (a local path made absolute)."""
        return self.base

    @abstractmethod
    def versions(self) -> dict[int, str]:
        """Every numeric version, whole or not (a broken one still gets a status): version ->
        its path. ``ScanError`` when the base path cannot be read."""

    @abstractmethod
    def ready(self) -> dict[int, str]:
        """The versions ready to load: their SavedModel whole (in an object store, and listed
        the same as at the previous call). ``ScanError`` when the base path cannot be read."""

    @abstractmethod
    def stamp(self, version: str) -> str:
        """What changes when a version's files change (a failed version is retried then); ""
        when it cannot be read."""

    @abstractmethod
    def fetch(self, version: str, max_bytes: int) -> Path:
        """A local directory holding the version, held (not evicted, where there is a cache)
        until ``release``; ``max_bytes``: the bound of such a cache."""

    @abstractmethod
    def release(self, local: Path) -> None:
        """A fetched version is no longer served by this process."""

    @abstractmethod
    def incomplete(self, version: str) -> str:
        """The error of a version without a whole SavedModel (NOT_FOUND)."""

    def no_versions(self) -> str:
        """Why startup refuses a base path that was read and holds no version."""
        return f"no numeric version under {self.base!r} (expected {EXPECTED})."

    def unusable(self) -> str | None:
        """Why startup refuses this base path (it cannot be read, it holds no version), or
        None."""
        try:
            numeric = self.versions()
        except ScanError as e:
            return str(e)
        return None if numeric else self.no_versions()

    def unusable_for_reload(self) -> str | None:
        """Why a reload refuses this base path (HandleReloadConfigRequest: ``Model base path
        <path> ...``), or None: the base path must be there; its versions may come later."""
        try:
            self.versions()
        except ScanError as e:
            return f"cannot be used: {e}"
        return None
