"""Hostile TensorProtos and PredictRequests, by hypothesis, through the data plane in-process.

Every input either decodes to exactly what TensorFlow's own ``Tensor::FromProto`` gives
(``tf.io.parse_tensor`` as the oracle), or is refused with ValueError (the data plane turns that
into TF Serving's ``INVALID_ARGUMENT: tensor parsing error: <alias>``); nothing else escapes, and
no input makes the decoder allocate beyond ``compat.limits``'s bound: a refusal costs at most
``FACTOR`` x the request's bytes + ``ALLOWANCE``, a decoded tensor that much plus its own size,
which exceeds the values sent by ``MAX_FILL_BYTES`` at most (TF's fill).
Both ways round: any array a signature takes, encoded by us, TensorFlow reads back as that
array, and encoded by TensorFlow, we do. The seed is fixed (``derandomize``) and the number of
examples bounded; set ``RTFS_FUZZ_EXAMPLES`` for a longer run.
"""

from __future__ import annotations

import math
import os
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf

from compat import dataplane, tensors
from compat.errors import ServingError
from compat.limits import FACTOR
from compat.protos import predict_pb2, tensor_pb2, types_pb2
from compat.signatures import Signature, TensorSpec
from tests.allocation import bound, traced

EXAMPLES = int(os.environ.get("RTFS_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
DTYPES = [
    types_pb2.DT_FLOAT,
    types_pb2.DT_DOUBLE,
    types_pb2.DT_INT32,
    types_pb2.DT_INT64,
    types_pb2.DT_UINT8,
    types_pb2.DT_BOOL,
    types_pb2.DT_STRING,
    types_pb2.DT_HALF,
]
dims = st.one_of(
    st.integers(0, 4),
    st.sampled_from([-1, -(2**40), 10**6, 3 * 10**8, 10**12, 2**62, 2**63 - 1]),
)


@st.composite
def hostile_tensor(draw: st.DrawFn) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto()
    proto.dtype = draw(st.one_of(st.sampled_from(DTYPES), st.integers(0, 200)))
    for size in draw(st.lists(dims, max_size=4)):
        proto.tensor_shape.dim.add().size = size
    if draw(st.booleans()):
        proto.tensor_shape.unknown_rank = draw(st.booleans())
    kind = draw(st.sampled_from(["content", "float", "int", "string", "none"]))
    if kind == "content":
        proto.tensor_content = draw(st.binary(max_size=64))
    elif kind == "float":
        proto.float_val.extend(draw(st.lists(st.floats(width=32), max_size=8)))
    elif kind == "int":
        proto.int_val.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8)))
    elif kind == "string":
        proto.string_val.extend(draw(st.lists(st.binary(max_size=16), max_size=4)))
    return proto


def _tf_decodes(proto: tensor_pb2.TensorProto) -> np.ndarray | None:
    """TensorFlow's own decoding, or None where it refuses (or would allocate too much)."""
    try:
        shape = tensors.shape_of(proto)
    except ValueError:
        return None
    if math.prod(shape) > 4096:
        return None  # not asked of TF: it would really allocate it
    try:
        return tf.io.parse_tensor(proto.SerializeToString(), tf.as_dtype(proto.dtype)).numpy()
    except Exception:
        return None


def _surplus(proto: tensor_pb2.TensorProto) -> bool:
    """More values than elements (``test_tensors.STRICTER_THAN_TF``: refused on purpose)."""
    count = math.prod(tensors.shape_of(proto))
    if proto.tensor_content:
        return count == 0
    field = tensors._CODECS[proto.dtype].field
    return len(getattr(proto, field)) > count


@FUZZ
@given(hostile_tensor())
def test_hostile_tensors_decode_as_tensorflow_or_are_refused(
    proto: tensor_pb2.TensorProto,
) -> None:
    ours, error, peak = traced(lambda: tensors.to_numpy(proto))
    if error is not None:
        assert isinstance(error, ValueError), repr(error)
        assert peak <= bound(proto.ByteSize()), peak
    else:
        grown = ours.size * (8 if ours.dtype.kind == "O" else ours.itemsize)
        assert grown <= FACTOR * proto.ByteSize() + tensors.MAX_FILL_BYTES
        assert peak <= bound(proto.ByteSize(), grown), peak
    decoded = _tf_decodes(proto)
    if ours is None:
        # refused where TF decodes: only dtypes no signature here takes (quantized, resource,
        # variant) and the surplus TF's C++ decoder silently drops
        assert decoded is None or proto.dtype not in tensors.NUMPY_DTYPES or _surplus(proto)
        return
    if decoded is not None:
        expected = np.asarray(decoded, dtype=object if ours.dtype.kind == "O" else None)
        assert ours.shape == expected.shape
        if ours.dtype.kind == "O":
            # flat: tolist() of a [10^12, 0] array would build 10^12 empty lists
            assert ours.ravel().tolist() == expected.ravel().tolist()
        else:
            np.testing.assert_array_equal(ours, expected.astype(ours.dtype))


NUMERIC = {
    types_pb2.DT_FLOAT: np.float32,
    types_pb2.DT_DOUBLE: np.float64,
    types_pb2.DT_INT32: np.int32,
    types_pb2.DT_INT64: np.int64,
    types_pb2.DT_UINT8: np.uint8,
    types_pb2.DT_BOOL: np.bool_,
    types_pb2.DT_HALF: np.float16,
}


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    """Any array a signature here takes: each numeric dtype (NaN, infinities and extremes
    included) or bytes, of rank 0 to 3, empty dimensions too."""
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    dt = draw(st.sampled_from([*NUMERIC, types_pb2.DT_STRING]))
    if dt == types_pb2.DT_STRING:
        values = draw(
            st.lists(st.binary(max_size=8), min_size=math.prod(shape), max_size=math.prod(shape))
        )
        array = np.empty(math.prod(shape), dtype=object)
        array[:] = values
        return array.reshape(shape)
    return draw(hnp.arrays(NUMERIC[dt], shape))


def same(got: object, expected: np.ndarray) -> None:
    # TF gives a scalar as a numpy scalar, or bytes
    ours = np.asarray(got, dtype=object if expected.dtype.kind == "O" else None)
    assert ours.shape == expected.shape
    if expected.dtype.kind == "O":
        assert ours.ravel().tolist() == expected.ravel().tolist()
    else:
        assert ours.dtype == expected.dtype
        np.testing.assert_array_equal(ours, expected)  # NaN where NaN


@FUZZ
@given(arrays())
def test_any_array_round_trips_through_tensorflow_both_ways(array: np.ndarray) -> None:
    """Ours to TensorFlow's: what ``from_numpy`` and ``tensor_bytes`` write (typed field or
    ``tensor_content``), TensorFlow's ``Tensor::FromProto`` reads back as the array; TensorFlow's
    to ours: what ``tf.make_tensor_proto`` writes, ``to_numpy`` reads back as the array."""
    dtype = tensors.infer_dtype(array)
    tf_dtype = tf.as_dtype(dtype)
    for content in (False, True):
        wire = tensors.tensor_bytes(array, tensor_content=content)
        assert wire == tensors.from_numpy(array, tensor_content=content).SerializeToString()
        same(tf.io.parse_tensor(wire, tf_dtype).numpy(), array)
        same(tensors.to_numpy(tensor_pb2.TensorProto.FromString(wire)), array)
    theirs = tf.make_tensor_proto(array, dtype=tf_dtype)
    same(tensors.to_numpy(tensor_pb2.TensorProto.FromString(theirs.SerializeToString())), array)


def test_a_shape_of_a_trillion_elements_with_one_value_is_refused_before_allocating() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    for size in (10**6, 10**6):
        proto.tensor_shape.dim.add().size = size
    for content in ({"float_val": [1.0]}, {"tensor_content": b"\0\0\0\0"}, {}):
        trial = tensor_pb2.TensorProto()
        trial.CopyFrom(proto)
        for field, value in content.items():
            if field == "float_val":
                trial.float_val.extend(value)  # type: ignore[arg-type]
            else:
                trial.tensor_content = value  # type: ignore[assignment]
        tracemalloc.start()
        with pytest.raises(ValueError):
            tensors.to_numpy(trial)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 1 << 20


def test_a_broadcast_within_the_bound_is_tensorflows() -> None:
    proto = tf.make_tensor_proto(0.5, shape=[1, 64, 64, 3])
    np.testing.assert_array_equal(tensors.to_numpy(proto), tf.make_ndarray(proto))


SIGNATURE = Signature(
    "serving_default",
    "tensorflow/serving/predict",
    {"x": TensorSpec("x:0", types_pb2.DT_FLOAT, (-1, 1))},
    {"y": TensorSpec("y:0", types_pb2.DT_FLOAT, (-1, 1))},
)


class _Servable:
    """Just enough of compat.servable.Servable for request validation."""

    signatures = {"serving_default": SIGNATURE}

    def signature(self, name: str) -> Signature:
        from compat.errors import FailedPrecondition

        if name not in self.signatures:
            raise FailedPrecondition(f'Serving signature key "{name}" not found.')
        return self.signatures[name]


@FUZZ
@given(
    st.dictionaries(st.sampled_from(["x", "y", "", "../x"]), hostile_tensor(), max_size=2),
    st.sampled_from(["", "serving_default", "nope", "../../etc"]),
    st.lists(st.sampled_from(["y", "z", ""]), max_size=2),
)
def test_hostile_predict_requests_get_a_serving_error_or_decode(
    inputs: dict[str, tensor_pb2.TensorProto], signature: str, output_filter: list[str]
) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.model_spec.signature_name = signature
    for alias, proto in inputs.items():
        request.inputs[alias].CopyFrom(proto)
    request.output_filter.extend(output_filter)
    call, error, peak = traced(
        lambda: dataplane.prepare_predict(_Servable(), request)  # type: ignore[arg-type]
    )
    if error is not None:
        assert isinstance(error, ServingError), repr(error)
        assert error.message
        assert peak <= bound(request.ByteSize()), peak
        return
    grown = sum(v.size * (8 if v.dtype.kind == "O" else v.itemsize) for v in call.inputs.values())
    assert peak <= bound(request.ByteSize(), grown), peak
    assert set(call.inputs) == {"x"}
    assert call.output_aliases == ["y"]
