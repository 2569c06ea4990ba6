"""Version discovery over ``base_path``, as TF Serving's FileSystemStoragePathSource does it."""

from __future__ import annotations

import logging
from pathlib import Path

from serve_app.args import ModelArgs, VersionPolicy

logger = logging.getLogger("ray.serve")


class ModelPathError(ValueError):
    """A model's base path is missing or holds no version: startup refuses it by name."""


def scan_versions(base_path: str | Path) -> dict[int, Path]:
    """Numeric children of ``base_path`` that hold a ``saved_model.pb`` (``00000123`` is 123).

    A directory still being written (no ``saved_model.pb`` yet) is not a version yet; an
    exporter that renames a finished temporary directory into place is picked up atomically.
    """
    base = Path(base_path)
    found: dict[int, Path] = {}
    try:
        children = list(base.iterdir())
    except OSError:
        return found
    for child in children:
        if not child.name.isdigit() or not child.is_dir():
            continue
        if (child / "saved_model.pb").is_file() or (child / "saved_model.pbtxt").is_file():
            found[int(child.name)] = child
    return found


def scan_all_numeric(base_path: str | Path) -> dict[int, Path]:
    """Every numeric child directory, complete or not (a broken model still gets a status)."""
    base = Path(base_path)
    try:
        return {int(c.name): c for c in base.iterdir() if c.name.isdigit() and c.is_dir()}
    except OSError:
        return {}


def aspired_versions(available: dict[int, Path], policy: VersionPolicy) -> dict[int, Path]:
    """The versions the policy wants served, out of those on disk."""
    if policy.kind == "all":
        return dict(available)
    if policy.kind == "specific":
        return {v: p for v, p in available.items() if v in policy.versions}
    newest = sorted(available, reverse=True)[: policy.num_versions]
    return {v: available[v] for v in newest}


def check_model_path(model: ModelArgs) -> None:
    """Refuse a base path that does not exist or holds no numeric version directory."""
    base = Path(model.base_path)
    if not base.is_dir():
        raise ModelPathError(
            f"Model '{model.name}': model_base_path {str(base)!r} does not exist "
            "(expected <base_path>/<version>/saved_model.pb)."
        )
    if not scan_all_numeric(base):
        raise ModelPathError(
            f"Model '{model.name}': no numeric version directory under {str(base)!r} "
            "(expected <base_path>/<version>/saved_model.pb, e.g. <base_path>/1/saved_model.pb)."
        )
