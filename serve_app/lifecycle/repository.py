"""Version discovery over ``base_path``, as TF Serving's FileSystemStoragePathSource does it:
a local or shared filesystem, or an object store (``serve_app.storage.store``). ``scan`` is the
Source's one look at a base path that the planner (``serve_app.lifecycle.plan``) reads; the version
policy (``aspired_versions``) is pure."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from compat.errors import InvalidArgument
from serve_app.config.args import ModelArgs, VersionPolicy
from serve_app.storage import store
from serve_app.storage.store import ScanError, version_number

logger = logging.getLogger("ray.serve")


class ModelPathError(ValueError):
    """A model's base path is missing or holds no version: startup refuses it by name."""


_SCANNER = store.Scanner()


@dataclass(frozen=True)
class Scan:
    """One look at a model's base path."""

    complete: dict[int, str] = field(default_factory=dict)
    """Versions that hold a whole SavedModel: version -> path (``scan_versions``)."""
    numeric: dict[int, str] = field(default_factory=dict)
    """Every numeric version directory, whole or not (``scan_all_numeric``)."""
    stamps: dict[int, str] = field(default_factory=dict)
    """What the asked-for whole versions look like now (``store.stamp``): a failed version is
    retried once its stamp changed."""


def scan(base_path: str | Path, stamp: Iterable[int] = ()) -> Scan:
    """The versions under ``base_path``, and the stamps of those of ``stamp`` found whole.
    Raises ``ScanError`` when the base path cannot be read: the caller changes nothing."""
    complete = scan_versions(base_path)
    stamps = {v: store.stamp(complete[v]) for v in stamp if v in complete}
    return Scan(complete, scan_all_numeric(base_path), stamps)


def _children(base: Path) -> list[tuple[int, Path]]:
    """(version, directory) of each version directory of a local base path; ``ScanError`` when
    the base path does not exist or cannot be listed (TF Serving: "Could not find base path")."""
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


def scan_versions(base_path: str | Path) -> dict[int, str]:
    """Numeric children of ``base_path`` that hold a ``saved_model.pb`` (``00000123`` is 123).

    A directory still being written (no ``saved_model.pb`` yet) is not a version yet; an
    exporter that renames a finished temporary directory into place is picked up atomically.
    In an object store, a version is one once whole and unchanged since the previous scan.
    Raises ``ScanError`` when the base path cannot be read.
    """
    if store.is_remote(base_path):
        return _SCANNER.ready(str(base_path))
    found: dict[int, str] = {}
    for number, child in _children(Path(base_path)):
        if (child / "saved_model.pb").is_file() or (child / "saved_model.pbtxt").is_file():
            found[number] = str(child)
    return found


def scan_all_numeric(base_path: str | Path) -> dict[int, str]:
    """Every numeric child directory, complete or not (a broken model still gets a status).
    Raises ``ScanError`` when the base path cannot be read."""
    if store.is_remote(base_path):
        return _SCANNER.numeric(str(base_path))
    return {number: str(child) for number, child in _children(Path(base_path))}


def aspired_versions(available: dict[int, str], policy: VersionPolicy) -> dict[int, str]:
    """The versions the policy wants served, out of those on disk."""
    if policy.kind == "all":
        return dict(available)
    if policy.kind == "specific":
        return {v: p for v, p in available.items() if v in policy.versions}
    newest = sorted(available, reverse=True)[: policy.num_versions]
    return {v: available[v] for v in newest}


def check_model_path(model: ModelArgs) -> None:
    """Refuse a base path that does not exist or holds no numeric version directory."""
    if store.is_remote(model.base_path):
        try:
            numeric = scan_all_numeric(model.base_path)
        except ScanError as e:
            raise ModelPathError(f"Model '{model.name}': {e}") from None
        if not numeric:
            raise ModelPathError(
                f"Model '{model.name}': no numeric version under {model.base_path!r} (or it "
                "cannot be read with this node's credentials; expected "
                "<base_path>/<version>/saved_model.pb)."
            )
        return
    base = Path(model.base_path)
    if not base.is_dir():
        raise ModelPathError(
            f"Model '{model.name}': model_base_path {str(base)!r} does not exist "
            "(expected <base_path>/<version>/saved_model.pb)."
        )
    try:
        numeric = scan_all_numeric(base)
    except ScanError as e:
        raise ModelPathError(f"Model '{model.name}': {e}") from None
    if not numeric:
        raise ModelPathError(
            f"Model '{model.name}': no numeric version directory under {str(base)!r} "
            "(expected <base_path>/<version>/saved_model.pb, e.g. <base_path>/1/saved_model.pb)."
        )


def check_base_path(base_path: str) -> None:
    """A reload's base path is there (HandleReloadConfigRequest): a local directory, or an
    object-store prefix that can be listed and holds objects; INVALID_ARGUMENT otherwise."""
    if not store.is_remote(base_path):
        if not Path(base_path).is_dir():
            raise InvalidArgument(f"Model base path {base_path} does not exist")
        return
    try:
        store.list_versions(base_path)
    except ScanError as e:
        raise InvalidArgument(f"Model base path {base_path} cannot be used: {e}") from None
