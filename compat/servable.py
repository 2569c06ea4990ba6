"""A loaded SavedModel version, run the way TF Serving runs it: as a TF1 session.

TF Serving loads every SavedModel into a C++ ``SavedModelBundle`` (a session over the meta graph
tagged ``serve``). ``tf.saved_model.load`` cannot load some of TF Serving's own test models
(reference variables, signatures of unknown rank), so we load with the TF1 loader into a
``tf.compat.v1.Session`` and run signatures through a C++ callable
(``Session::MakeCallable``), which, like TF Serving's C++ session, does not refuse a ``[1]`` feed
for a ``[None, 1]`` placeholder (``Session.run`` and ``Session.make_callable`` with a feed list
check shapes in Python and do).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compat.errors import FailedPrecondition, InvalidArgument, ServingError, from_code
from compat.protos import meta_graph_pb2, saved_model_pb2
from compat.signatures import DTYPE_SHORT_NAMES, Signature, signatures_of
from compat.tensors import DT_OF

SERVE_TAG = "serve"


@dataclass(frozen=True)
class SessionOptions:
    """TF session knobs, TF Serving's ``--tensorflow_*_parallelism`` and GPU flags."""

    intra_op_parallelism: int = 0
    inter_op_parallelism: int = 0
    per_process_gpu_memory_fraction: float = 0.0
    allow_gpu: bool = True
    tags: Sequence[str] = (SERVE_TAG,)
    """The MetaGraph to load: the one tagged with exactly these (``--saved_model_tags``)."""
    config_text: str = ""
    """ConfigProto text the knobs above apply over (``--tensorflow_session_config_file``)."""
    mixed_precision: str = ""
    """``bfloat16``: TF's oneDNN bfloat16 auto mixed precision rewrite (``--mixed_precision``)."""


def session_config(options: SessionOptions) -> Any:
    """The session's ConfigProto: ``config_text``'s, with the thread knobs set (0 keeps the
    text's) and the GPU memory knobs, as TF Serving applies its flags over its session config
    file."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2

    config = text_format.Parse(options.config_text, config_pb2.ConfigProto())
    if options.intra_op_parallelism:
        config.intra_op_parallelism_threads = options.intra_op_parallelism
    if options.inter_op_parallelism:
        config.inter_op_parallelism_threads = options.inter_op_parallelism
    config.allow_soft_placement = True
    if options.per_process_gpu_memory_fraction > 0:
        config.gpu_options.per_process_gpu_memory_fraction = options.per_process_gpu_memory_fraction
    elif not config.gpu_options.per_process_gpu_memory_fraction:
        config.gpu_options.allow_growth = True
    if not options.allow_gpu:
        config.device_count["GPU"] = 0
    if options.mixed_precision == "bfloat16":
        rewrite = config.graph_options.rewrite_options
        rewrite.auto_mixed_precision_onednn_bfloat16 = rewriter_config_pb2.RewriterConfig.ON
    return config


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity on Linux; elsewhere every core)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else (os.cpu_count() or 1)


def read_meta_graph(
    path: str | os.PathLike[str], tags: Sequence[str] = (SERVE_TAG,)
) -> meta_graph_pb2.MetaGraphDef:
    """Read the meta graph tagged with exactly ``tags`` (as TF's loader matches a tag set) from
    ``<path>/saved_model.pb`` without loading the model."""
    pb = Path(path) / "saved_model.pb"
    if not pb.is_file():
        raise FailedPrecondition(
            "Could not find SavedModel .pb or .pbtxt at supplied export directory path: "
            f"{path}. Check that the directory exists and that you have the right "
            "permissions for accessing it."
        )
    saved = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    for mg in saved.meta_graphs:
        if set(mg.meta_info_def.tags) == set(tags):
            return mg
    raise FailedPrecondition(
        f"Could not find meta graph def matching supplied tags: {{ {' '.join(tags)} }}. To inspect "
        "available tag-sets in the SavedModel, please use the SavedModel CLI: `saved_model_cli`"
    )


class Servable:
    """One model version: its signatures and a session that runs them (thread-safe)."""

    def __init__(self, path: str | os.PathLike[str], options: SessionOptions | None = None):
        import tensorflow as tf
        from tensorflow.python.util import deprecation

        self.path = str(path)
        options = options or SessionOptions()
        self.tags = tuple(options.tags)
        """The loaded MetaGraph's tags."""
        self.meta_graph = read_meta_graph(self.path, self.tags)
        self.signatures: dict[str, Signature] = signatures_of(self.meta_graph)
        config = session_config(options)
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph, config=config)
        try:
            # TF Serving's loader is TF1's (a Session per version); its deprecation notice
            # says nothing to a server's operator
            with self._graph.as_default(), deprecation.silence():
                tf.compat.v1.saved_model.loader.load(self._session, list(self.tags), self.path)
        except Exception as e:
            self._session.close()
            raise _as_serving_error(e) from None
        self._callables: dict[tuple[tuple[str, ...], tuple[str, ...]], Any] = {}
        self._lock = threading.Lock()

    def signature(self, key: str) -> Signature:
        """The signature ``key`` or FAILED_PRECONDITION, as TF Serving's Predict answers."""
        try:
            return self.signatures[key]
        except KeyError:
            raise FailedPrecondition(f'Serving signature key "{key}" not found.') from None

    def run(
        self,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        output_aliases: Sequence[str],
    ) -> dict[str, np.ndarray]:
        """Run ``signature`` on validated inputs (keyed by alias); outputs keyed by alias."""
        aliases = sorted(inputs)
        for index, alias in enumerate(aliases):
            check_dtype(signature, alias, inputs[alias], index)
        feeds = tuple(signature.inputs[a].name for a in aliases)
        fetches = tuple(signature.outputs[a].name for a in output_aliases)
        fn = self._callable(feeds, fetches)
        try:
            values = fn(*(inputs[a] for a in aliases))
        except Exception as e:
            raise _as_serving_error(e) from None
        return dict(zip(output_aliases, values, strict=True))

    def _callable(self, feeds: tuple[str, ...], fetches: tuple[str, ...]) -> Any:
        key = (feeds, fetches)
        fn = self._callables.get(key)
        if fn is None:
            with self._lock:
                fn = self._callables.get(key)
                if fn is None:
                    # Straight to C++ ``Session::MakeCallable``: no Python-side shape check,
                    # so a feed's shape is checked only by the kernels, as in TF Serving.
                    from tensorflow.core.protobuf import config_pb2

                    options = config_pb2.CallableOptions(feed=list(feeds), fetch=list(fetches))
                    fn = self._session._make_callable_from_options(options)
                    self._callables[key] = fn
        return fn

    def close(self) -> None:
        self._session.close()


def check_dtype(signature: Signature, alias: str, value: np.ndarray, index: int) -> None:
    """Refuse a wrong dtype with the message TF's executor gives (``Expects arg[i] ...``)."""
    expected = signature.inputs[alias].dtype
    got = DT_OF.get(value.dtype)
    if value.dtype == object:
        from compat.protos import types_pb2

        got = types_pb2.DT_STRING
    if got != expected:
        got_name = (
            DTYPE_SHORT_NAMES.get(got, str(value.dtype)) if got is not None else str(value.dtype)
        )
        raise InvalidArgument(
            f"Expects arg[{index}] to be {DTYPE_SHORT_NAMES.get(expected, str(expected))} "
            f"but {got_name} is provided"
        )


def _as_serving_error(e: Exception) -> ServingError:
    """A TF error keeps its canonical code and message; anything else is INTERNAL."""
    if isinstance(e, ServingError):
        return e
    code = getattr(e, "error_code", None)
    message = getattr(e, "message", None) or str(e)
    if code is not None:
        return from_code(int(code), message)
    if isinstance(e, (ValueError, TypeError)):
        return InvalidArgument(message)
    return from_code(13, message)
