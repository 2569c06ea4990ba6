"""Versions on a local or shared file system (``<base>/<version>/saved_model.pb``): the
``VersionStore`` every node reads in place, with nothing to download or cache.

A directory still being written (no ``saved_model.pb`` yet) is not a version yet; an exporter
that renames a finished temporary directory into place is picked up atomically.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from serve_app.storage.versions import EXPECTED, ScanError, VersionStore, version_number


class LocalStore(VersionStore):
    """A base path on a file system this process reads."""

    @property
    def location(self) -> str:
        return str(Path(self.base).resolve())

    def _children(self) -> list[tuple[int, Path]]:
        """(version, directory) of each version directory; ``ScanError`` when the base path
        does not exist or cannot be listed (TF Serving: "Could not find base path")."""
        base = Path(self.base)
        if not base.is_dir():
            raise ScanError(f"Could not find base path {base}")
        try:
            children = list(base.iterdir())
        except OSError as e:
            raise ScanError(f"Cannot list base path {base}: {e.strerror or e}") from None
        found = []
        for child in children:
            number = version_number(child.name)
            if number is not None and child.is_dir():
                found.append((number, child))
        return found

    def versions(self) -> dict[int, str]:
        return {number: str(child) for number, child in self._children()}

    def ready(self) -> dict[int, str]:
        """Numeric children that hold a ``saved_model.pb`` (or ``.pbtxt``)."""
        return {
            number: str(child)
            for number, child in self._children()
            if (child / "saved_model.pb").is_file() or (child / "saved_model.pbtxt").is_file()
        }

    def stamp(self, version: str) -> str:
        """Every file under the version: its path, size and mtime (a directory's own mtime
        misses a file rewritten in place, or one replaced under ``variables/``)."""
        entries = []
        try:
            for dirpath, _, files in os.walk(version):
                for name in files:
                    st = os.stat(os.path.join(dirpath, name))
                    relative = os.path.relpath(os.path.join(dirpath, name), version)
                    entries.append((relative, st.st_size, st.st_mtime_ns))
        except OSError:
            return ""
        return hashlib.sha256(repr(sorted(entries)).encode()).hexdigest()[:16] if entries else ""

    def fetch(self, version: str, max_bytes: int) -> Path:
        """The version's own directory: read in place."""
        return Path(version)

    def release(self, local: Path) -> None:
        """Nothing was taken."""

    def incomplete(self, version: str) -> str:
        """TF's SavedModel reader's error."""
        return (
            "Could not find SavedModel .pb or .pbtxt at supplied export directory path: "
            f"{version}. Check that the directory exists and that you have the right "
            "permissions for accessing it."
        )

    def no_versions(self) -> str:
        return (
            f"no numeric version directory under {str(Path(self.base))!r} "
            f"(expected {EXPECTED}, e.g. <base_path>/1/saved_model.pb)."
        )

    def unusable(self) -> str | None:
        if not Path(self.base).is_dir():
            return f"model_base_path {str(Path(self.base))!r} does not exist (expected {EXPECTED})."
        return super().unusable()

    def unusable_for_reload(self) -> str | None:
        return None if Path(self.base).is_dir() else "does not exist"
