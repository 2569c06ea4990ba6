"""``compat.signatures``: SignatureDefs of TF Serving's own test models (their ``saved_model.pb``,
as SIGNATURES.txt in the test data lists them) as plain views: aliases, tensor names, dtypes and
shapes, with -1 for an unknown dimension and ``None`` for an unknown rank."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import tensorflow as tf

from compat.protos import meta_graph_pb2, types_pb2
from compat.servable import read_meta_graph
from compat.signatures import (
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    DTYPE_SHORT_NAMES,
    PREDICT_METHOD,
    REGRESS_METHOD,
    Signature,
    TensorSpec,
    signatures_of,
)


def signatures(testdata: Path, model: str, version: str = "00000123") -> dict[str, Signature]:
    return signatures_of(read_meta_graph(testdata / model / version))


def test_the_constants_are_tensorflows() -> None:
    from tensorflow.python.saved_model import signature_constants as sc

    assert PREDICT_METHOD == sc.PREDICT_METHOD_NAME
    assert CLASSIFY_METHOD == sc.CLASSIFY_METHOD_NAME
    assert REGRESS_METHOD == sc.REGRESS_METHOD_NAME
    assert DEFAULT_SIGNATURE == sc.DEFAULT_SERVING_SIGNATURE_DEF_KEY


def test_half_plus_two(testdata: Path) -> None:
    sigs = signatures(testdata, "saved_model_half_plus_two_cpu")
    assert set(sigs) == {
        "classify_x_to_y",
        "regress_x2_to_y3",
        "regress_x_to_y",
        "regress_x_to_y2",
        "serving_default",
    }
    assert sigs["serving_default"] == Signature(
        key="serving_default",
        method_name=PREDICT_METHOD,
        inputs={"x": TensorSpec("x:0", types_pb2.DT_FLOAT, (-1, 1))},
        outputs={"y": TensorSpec("y:0", types_pb2.DT_FLOAT, (-1, 1))},
    )
    classify = sigs["classify_x_to_y"]
    assert classify.method_name == CLASSIFY_METHOD
    assert classify.inputs == {"inputs": TensorSpec("tf_example:0", types_pb2.DT_STRING, None)}
    assert classify.outputs == {"scores": TensorSpec("y:0", types_pb2.DT_FLOAT, (-1, 1))}
    assert sigs["regress_x2_to_y3"].method_name == REGRESS_METHOD
    assert sigs["regress_x2_to_y3"].inputs["inputs"].name == "x2:0"


def test_unknown_rank_and_scalars(testdata: Path) -> None:
    """saved_model_counter: an input of unknown rank, and scalar outputs (rank 0, ``()``)."""
    sigs = signatures(testdata, "saved_model_counter")
    delta = sigs["incr_counter_by"].inputs["delta"]
    assert delta == TensorSpec("delta:0", types_pb2.DT_FLOAT, None)
    assert delta.shape is None
    assert sigs["get_counter"].inputs == {}
    assert sigs["get_counter"].outputs["output"].shape == ()
    assert sigs["get_counter"].outputs["output"].dtype == types_pb2.DT_FLOAT_REF


def test_no_tensor_shape_is_unknown_rank(testdata: Path) -> None:
    """half_plus_three's serving_default has no ``tensor_shape`` at all: rank unknown."""
    sigs = signatures(testdata, "saved_model_half_plus_three")
    assert sigs["serving_default"].inputs["x"].shape is None
    assert set(sigs) == {"serving_default", "tensorflow/serving/regress"}


def test_a_3d_batched_signature(testdata: Path) -> None:
    sigs = signatures(testdata, "_batching_testdata/matrix_half_plus_two", "1")
    assert sigs["serving_default"].inputs["x"].shape == (-1, 3, 3)


def test_a_tf2_model_lists_its_init_op_too(testdata: Path) -> None:
    sigs = signatures(testdata, "saved_model_half_plus_two_tf2_cpu")
    assert sigs["serving_default"].inputs["x"] == TensorSpec(
        "serving_default_x:0", types_pb2.DT_FLOAT, (1,)
    )
    assert {s.method_name for k, s in sigs.items() if k != "__saved_model_init_op"} == {
        PREDICT_METHOD
    }


def test_shapes_from_tensor_infos() -> None:
    """Every case of a TensorInfo's shape, written by TF's own ``build_tensor_info``."""
    graph = tf.Graph()
    with graph.as_default():
        cases = {
            "scalar": (tf.compat.v1.placeholder(tf.int64, []), ()),
            "vector": (tf.compat.v1.placeholder(tf.string, [None]), (-1,)),
            "fixed": (tf.compat.v1.placeholder(tf.bool, [2, 3]), (2, 3)),
            "any": (tf.compat.v1.placeholder(tf.half), None),
        }
        sig = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
        for alias, (tensor, _) in cases.items():
            sig.inputs[alias].CopyFrom(tf.compat.v1.saved_model.build_tensor_info(tensor))
    view = Signature.from_proto("k", sig)
    assert {a: s.shape for a, s in view.inputs.items()} == {a: c[1] for a, c in cases.items()}
    assert view.inputs["scalar"].dtype == types_pb2.DT_INT64
    assert view.inputs["vector"].dtype_name == "string"
    assert view.inputs["any"].dtype_name == "half"


@pytest.mark.parametrize("dtype", list(DTYPE_SHORT_NAMES))
def test_dtype_names_are_tfs_data_type_string(dtype: int) -> None:
    """TF's ``DataTypeString`` (what its error messages print) is the name of the dtype
    without ``tf.``: tf.float32.name is 'float32', but DataTypeString(DT_FLOAT) is 'float'."""
    spec = TensorSpec("t:0", dtype, ())
    expected = {
        types_pb2.DT_FLOAT: "float",
        types_pb2.DT_DOUBLE: "double",
        types_pb2.DT_HALF: "half",
    }.get(dtype, tf.dtypes.as_dtype(dtype).name)
    assert spec.dtype_name == expected


def test_a_dtype_without_a_short_name_prints_its_enum_name() -> None:
    assert TensorSpec("t:0", types_pb2.DT_RESOURCE, ()).dtype_name == "DT_RESOURCE"


def test_signatures_pickle(testdata: Path) -> None:
    """They cross Ray processes with the Predict they validate."""
    sigs = signatures(testdata, "saved_model_half_plus_two_cpu")
    assert pickle.loads(pickle.dumps(sigs)) == sigs
