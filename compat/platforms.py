"""What a loaded model version offers the data plane (``LoadedModel``, TF Serving's ``Servable``
in ``servable.h``), and the factory that loads one by its model config's ``model_platform``
(TF Serving's platform config map, ``platform_config_util.cc``).

The data plane (``compat.dataplane``, ``compat.inference``, ``compat.warmup``) and the batching
queue use only this Protocol. ``tensorflow`` is the one platform served: a SavedModel run as
TF Serving runs it, in a TF1 session (``compat.servable.Servable``). A config naming any other
platform is refused with TF Serving's error (``compat.model_config.check_platform`` asks
``loader``); a second platform is one more entry in ``PLATFORMS``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np

from compat.errors import FailedPrecondition
from compat.protos import meta_graph_pb2
from compat.servable import Servable, SessionOptions
from compat.signatures import Signature

TENSORFLOW = "tensorflow"
"""The platform of TensorFlow SavedModels, the one served."""


class LoadedModel(Protocol):
    """One loaded model version: its signatures, and a thread-safe ``run`` of one of them."""

    tags: tuple[str, ...]
    """The loaded MetaGraph's tags (the request log's ``saved_model_tags``)."""
    signatures: dict[str, Signature]
    """Signature key -> the signature."""
    meta_graph: meta_graph_pb2.MetaGraphDef
    """Its signature defs as TF Serving describes them (GetModelMetadata, Classify's errors)
    and the graph's placeholders (the feeds' dtypes)."""

    def signature(self, key: str) -> Signature:
        """The signature ``key``, or FAILED_PRECONDITION as TF Serving's Predict answers."""
        ...

    def run(
        self,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        output_aliases: Sequence[str],
    ) -> dict[str, np.ndarray]:
        """Run ``signature`` on validated inputs (keyed by alias); outputs keyed by alias;
        a failure is a ``ServingError``."""
        ...

    def close(self) -> None:
        """Free what it holds; it is not run again."""
        ...


Loader = Callable[[str | os.PathLike[str], SessionOptions], LoadedModel]
"""Loads the version at a local path with the server's session options; a ``ServingError``
when it cannot."""

PLATFORMS: dict[str, Loader] = {TENSORFLOW: Servable}
"""``model_platform`` -> how a version of that platform loads."""


def loader(platform: str) -> Loader:
    """How a version of ``platform`` loads; FAILED_PRECONDITION with TF Serving's message
    (``ServerCore::CreateAdapter``) for a platform not served."""
    found = PLATFORMS.get(platform)
    if found is None:
        raise FailedPrecondition(f"PlatformConfigMap has no entry for platform {platform}")
    return found


def load(
    path: str | os.PathLike[str],
    options: SessionOptions | None = None,
    platform: str = TENSORFLOW,
) -> LoadedModel:
    """The version at ``path`` (a local directory), loaded by its platform's loader."""
    return loader(platform)(path, options or SessionOptions())
