"""``compat.protos``: the one import point re-exports TensorFlow's and TF Serving's own generated
modules (packages ``tensorflow`` and ``tensorflow.serving``), not copies, and their messages
parse what they write; it loads them without importing TensorFlow, whose own code, imported
later, builds the same classes."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from compat import protos

MODULES = [name for name in protos.__all__ if name.endswith("_pb2")]
STUBS = [name for name in protos.__all__ if name.endswith("_pb2_grpc")]


def test_all_names_every_module_imported() -> None:
    imported = {
        n
        for n, v in vars(protos).items()
        if isinstance(v, types.ModuleType) and v.__name__.startswith("tensorflow")
    }
    assert set(protos.__all__) == imported
    assert len(MODULES) + len(STUBS) == len(protos.__all__)


@pytest.mark.parametrize("name", MODULES)
def test_each_module_is_tensorflows_or_tf_servings(name: str) -> None:
    module = getattr(protos, name)
    assert module.__name__.startswith(("tensorflow.", "tensorflow_serving."))
    assert module.DESCRIPTOR.package in {"tensorflow", "tensorflow.serving"}
    messages = module.DESCRIPTOR.message_types_by_name
    assert messages
    for message_name in messages:
        cls = getattr(module, message_name)
        instance = cls()
        assert cls.FromString(instance.SerializeToString()) == instance


@pytest.mark.parametrize(
    ("name", "service", "methods"),
    [
        (
            "prediction_service_pb2_grpc",
            "PredictionService",
            {"Classify", "Regress", "Predict", "MultiInference", "GetModelMetadata"},
        ),
        ("model_service_pb2_grpc", "ModelService", {"GetModelStatus", "HandleReloadConfigRequest"}),
    ],
)
def test_the_stubs_are_tf_servings_services(name: str, service: str, methods: set[str]) -> None:
    module = getattr(protos, name)
    assert module.__name__ == f"tensorflow_serving.apis.{name}"
    assert hasattr(module, f"{service}Stub")
    assert hasattr(module, f"add_{service}Servicer_to_server")
    servicer = getattr(module, f"{service}Servicer")
    assert {m for m in vars(servicer) if not m.startswith("_")} == methods


def test_a_predict_request_parses_with_its_tensors() -> None:
    request = protos.predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.version.value = 123
    tensor = request.inputs["x"]
    tensor.dtype = protos.types_pb2.DT_FLOAT
    tensor.tensor_shape.dim.add(size=1)
    tensor.float_val.append(2.0)
    back = protos.predict_pb2.PredictRequest.FromString(request.SerializeToString())
    assert back.model_spec.version.value == 123
    assert list(back.inputs["x"].float_val) == [2.0]
    assert back.DESCRIPTOR.full_name == "tensorflow.serving.PredictRequest"
    assert type(back.inputs["x"]) is protos.tensor_pb2.TensorProto


def test_the_protos_load_without_tensorflow_and_tensorflow_after_them_uses_them() -> None:
    code = (
        "import sys; from compat import protos; "
        "assert 'tensorflow' not in sys.modules, 'TensorFlow imported'; "
        "assert protos.get_model_status_pb2.GetModelStatusResponse(); print('ok')"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "ok", run.stderr[-2000:]
    import tensorflow as tf

    proto = tf.make_tensor_proto([1.0, 2.0])
    assert type(proto) is protos.tensor_pb2.TensorProto
    assert (
        tf.make_ndarray(protos.tensor_pb2.TensorProto.FromString(proto.SerializeToString()))[1]
        == 2.0
    )
