"""Version discovery over ``base_path``, as TF Serving's FileSystemStoragePathSource does it,
through the base path's ``VersionStore`` (``serve_app.storage``: a local or shared filesystem,
or an object store). ``scan`` is the Source's one look at a base path that the planner
(``serve_app.lifecycle.plan``) reads; the version policy (``aspired_versions``) is pure; the
startup and reload checks refuse a base path with TF Serving's messages."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from compat.errors import InvalidArgument
from serve_app.config.args import ModelArgs, VersionPolicy
from serve_app.storage.factory import open_store
from serve_app.storage.versions import ScanError, VersionStore

__all__ = [
    "ModelPathError",
    "Scan",
    "ScanError",
    "aspired_versions",
    "check_base_path",
    "check_model_path",
    "scan",
]

logger = logging.getLogger("ray.serve")


class ModelPathError(ValueError):
    """A model's base path is missing or holds no version: startup refuses it by name."""


@dataclass(frozen=True)
class Scan:
    """One look at a model's base path."""

    complete: dict[int, str] = field(default_factory=dict)
    """Versions ready to load (``VersionStore.ready``): version -> path."""
    numeric: dict[int, str] = field(default_factory=dict)
    """Every numeric version, whole or not (``VersionStore.versions``)."""
    stamps: dict[int, str] = field(default_factory=dict)
    """What the asked-for whole versions look like now (``VersionStore.stamp``): a failed
    version is retried once its stamp changed."""


def scan(store: VersionStore, stamp: Iterable[int] = ()) -> Scan:
    """The versions under ``store``'s base path, and the stamps of those of ``stamp`` found
    whole. Raises ``ScanError`` when the base path cannot be read: the caller changes nothing."""
    complete = store.ready()
    stamps = {v: store.stamp(complete[v]) for v in stamp if v in complete}
    return Scan(complete, store.versions(), stamps)


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
    problem = open_store(model.base_path).unusable()
    if problem:
        raise ModelPathError(f"Model '{model.name}': {problem}")


def check_base_path(base_path: str) -> None:
    """A reload's base path is there (HandleReloadConfigRequest): a local directory, or an
    object-store prefix that can be listed and holds objects; INVALID_ARGUMENT otherwise."""
    problem = open_store(base_path).unusable_for_reload()
    if problem:
        raise InvalidArgument(f"Model base path {base_path} {problem}")
