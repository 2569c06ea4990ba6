"""The one import point for TF Serving's protos and stubs, without importing TensorFlow.

TF Serving's generated modules import TensorFlow's (``tensorflow.core.*_pb2``), and Python runs
``tensorflow/__init__.py`` (all of TensorFlow: 4-6 s and 500 MB) for the first of them. A
process that needs only the messages (the CLI, the Serve config's builder, the version manager,
clients) loads them with ``tensorflow`` standing for the bare package directory, then takes that
stand-in away: the message modules stay loaded under their own names, and a later ``import
tensorflow`` runs TensorFlow's ``__init__`` as ever and finds them (the same classes:
``tf.make_tensor_proto`` builds our ``TensorProto``). Where TensorFlow is already imported,
nothing is stood in. The stand-in is there while this module's imports run, which happen at the
importing process's start, before it has threads that import TensorFlow.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def _stand_in_for_tensorflow() -> types.ModuleType | None:
    """The bare ``tensorflow`` package (its directory, no ``__init__`` run) in ``sys.modules``,
    or None where TensorFlow is imported already or cannot be found."""
    if "tensorflow" in sys.modules:
        return None
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        return None
    stand_in = types.ModuleType("tensorflow")
    stand_in.__path__ = list(spec.submodule_search_locations)
    sys.modules["tensorflow"] = stand_in
    return stand_in


_stand_in = _stand_in_for_tensorflow()
try:
    from tensorflow.core.example import example_pb2, feature_pb2
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        get_model_status_pb2,
        inference_pb2,
        input_pb2,
        model_management_pb2,
        model_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_log_pb2,
        prediction_service_pb2_grpc,
        regression_pb2,
        status_pb2,
    )
    from tensorflow_serving.config import model_server_config_pb2
finally:
    if _stand_in is not None and sys.modules.get("tensorflow") is _stand_in:
        del sys.modules["tensorflow"]
    del _stand_in

__all__ = [
    "classification_pb2",
    "example_pb2",
    "feature_pb2",
    "get_model_metadata_pb2",
    "get_model_status_pb2",
    "inference_pb2",
    "input_pb2",
    "meta_graph_pb2",
    "model_management_pb2",
    "model_pb2",
    "model_server_config_pb2",
    "model_service_pb2_grpc",
    "predict_pb2",
    "prediction_log_pb2",
    "prediction_service_pb2_grpc",
    "regression_pb2",
    "saved_model_pb2",
    "status_pb2",
    "tensor_pb2",
    "tensor_shape_pb2",
    "types_pb2",
]
