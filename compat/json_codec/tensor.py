"""One JSON value -> one tensor of a given dtype: the value-by-value port of json_tensor.cc's
``FillTensorProto`` (its errors too) and the numpy fast paths used only where they agree."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from compat.errors import InvalidArgument, ServingError, Unimplemented
from compat.json_codec.dense import Dense
from compat.json_codec.values import _B64, _FLT_MAX, Json, _as_double, _json_type, _value_to_string
from compat.protos import (
    types_pb2,
)
from compat.signatures import DTYPE_SHORT_NAMES
from compat.tensors import NUMPY_DTYPES


def _is_int32(v: Json) -> bool:
    return type(v) is int and -(2**31) <= v < 2**31


def _is_uint32(v: Json) -> bool:
    return type(v) is int and 0 <= v < 2**32


def _is_int64(v: Json) -> bool:
    return type(v) is int and -(2**63) <= v < 2**63


def _is_uint64(v: Json) -> bool:
    return type(v) is int and 0 <= v < 2**64


def _is_number(v: Json) -> bool:
    return type(v) is int or type(v) is float


class _Lossless(NamedTuple):
    """IsLosslessDecimal<T>(): integers up to 2^digits - 1, doubles within T's range."""

    name: str
    max_int: int
    max_value: float

    def check(self, v: Json) -> None:
        if type(v) is int and -(2**63) <= v < 2**64:
            ok = abs(v) <= self.max_int
        else:
            d = _as_double(v)
            ok = not math.isfinite(d) or -self.max_value <= d <= self.max_value
        if not ok:
            raise InvalidArgument(
                f"Cannot convert JSON value: {_value_to_string(v)} to {self.name} "
                "without loss of precision."
            )


_LOSSLESS_FLOAT = _Lossless("float", 2**24 - 1, _FLT_MAX)
_LOSSLESS_DOUBLE = _Lossless("double", 2**53 - 1, float(np.finfo(np.float64).max))


class _JsonIn(NamedTuple):
    """How AddValueToTensor() takes a JSON leaf for one dtype."""

    accepts: Callable[[Json], bool]
    """rapidjson's Is*() check; failing it is a type error."""
    collect: np.dtype
    """dtype the accepted values are gathered in, before the cast to the tensor's dtype."""
    lossless: _Lossless | None = None
    bounds: tuple[int, int] | None = None
    """Integer range ``accepts`` admits (for the numpy fast path)."""


_INT32 = _JsonIn(_is_int32, np.dtype(np.int64), bounds=(-(2**31), 2**31 - 1))
_JSON_IN: dict[int, _JsonIn] = {
    types_pb2.DT_FLOAT: _JsonIn(_is_number, np.dtype(np.float64), _LOSSLESS_FLOAT),
    types_pb2.DT_DOUBLE: _JsonIn(_is_number, np.dtype(np.float64), _LOSSLESS_DOUBLE),
    types_pb2.DT_INT32: _INT32,
    types_pb2.DT_INT16: _INT32,
    types_pb2.DT_INT8: _INT32,
    types_pb2.DT_UINT8: _INT32,
    types_pb2.DT_INT64: _JsonIn(_is_int64, np.dtype(np.int64), bounds=(-(2**63), 2**63 - 1)),
    types_pb2.DT_UINT32: _JsonIn(_is_uint32, np.dtype(np.uint64), bounds=(0, 2**32 - 1)),
    types_pb2.DT_UINT64: _JsonIn(_is_uint64, np.dtype(np.uint64), bounds=(0, 2**64 - 1)),
    types_pb2.DT_BOOL: _JsonIn(lambda v: type(v) is bool, np.dtype(np.bool_)),
    types_pb2.DT_STRING: _JsonIn(lambda v: type(v) is str, np.dtype(object)),
    # Beyond TF Serving (which answers UNIMPLEMENTED "Conversion of JSON Value..." for these):
    types_pb2.DT_HALF: _JsonIn(_is_number, np.dtype(np.float64), _LOSSLESS_FLOAT),
    types_pb2.DT_BFLOAT16: _JsonIn(_is_number, np.dtype(np.float64), _LOSSLESS_FLOAT),
    types_pb2.DT_UINT16: _INT32,
}

#: Python types of leaves the numpy fast path takes for each kind of dtype.
_FAST_TYPES: dict[str, frozenset[type]] = {
    "f": frozenset({int, float}),
    "i": frozenset({int}),
    "u": frozenset({int}),
    "b": frozenset({bool}),
}


def dtype_string(dtype: int) -> str:
    """TF's DataTypeString() (``float``, ``int64``...), as its messages print dtypes."""
    name = DTYPE_SHORT_NAMES.get(dtype)
    if name is None:
        try:
            name = types_pb2.DataType.Name(dtype)[3:].lower()
        except ValueError:
            name = f"unknown dtype enum ({dtype})"
    return name


def _type_error(value: Json, dtype: int) -> InvalidArgument:
    return InvalidArgument(
        f"JSON Value: {_value_to_string(value)} Type: {_json_type(value)} "
        f"is not of expected type: {dtype_string(dtype)}"
    )


def _is_b64(value: Json) -> bool:
    """IsValBase64Object(): exactly one key, "b64", holding a string."""
    return type(value) is dict and len(value) == 1 and type(value.get(_B64)) is str


def _decode_b64(value: Json) -> bytes:
    """JsonDecodeBase64Object(); absl::Base64Unescape accepts missing padding."""
    if not _is_b64(value):
        raise InvalidArgument(
            f"JSON Value: {_value_to_string(value)} not formatted correctly for base64 data"
        )
    text = value[_B64]
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument("Unable to base64 decode") from None


def _add_value(value: Json, dtype: int, out: list) -> None:
    """AddValueToTensor()."""
    spec = _JSON_IN.get(dtype)
    if spec is None:
        raise Unimplemented(
            f"Conversion of JSON Value: {_value_to_string(value)} to type: {dtype_string(dtype)}"
        )
    if not spec.accepts(value):
        raise _type_error(value, dtype)
    if spec.lossless is not None:
        spec.lossless.check(value)
        value = _as_double(value)
    elif type(value) is str:
        value = value.encode("utf-8", "surrogatepass")
    out.append(value)


def _dense_shape(value: Json) -> list[int]:
    """GetDenseTensorShape(): follow first elements down."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: Json, level: int, shape: list[int], dtype: int, out: list) -> None:
    """FillTensorProto(): values must sit exactly at depth rank, lists must be dense."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise InvalidArgument(
                f"JSON Value: {_value_to_string(value)} found at incorrect level: {level + 1} "
                f"in the JSON DOM. Expected at level: {rank}"
            )
        if isinstance(value, dict):
            if dtype != types_pb2.DT_STRING:
                raise _type_error(value, dtype)
            out.append(_decode_b64(value))
        else:
            _add_value(value, dtype, out)
        return
    if level >= rank:
        raise InvalidArgument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise InvalidArgument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} "
            f"expected size: {shape[level]}"
        )
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


MAX_RANK = 64
"""numpy's most dimensions (TF's TensorShape goes to 254; TF Serving's JSON parser CHECK-fails
beyond that)."""


def _to_array(values: list, dtype: int, shape: list[int] | tuple[int, ...]) -> np.ndarray:
    if len(shape) > MAX_RANK:
        raise InvalidArgument(
            f"JSON value of {len(shape)} dimensions: tensors have at most {MAX_RANK} here"
        )
    target = NUMPY_DTYPES[dtype]
    if target.kind == "O":
        flat = np.empty(len(values), dtype=object)
        flat[:] = values
        return flat.reshape(shape)
    collect = _JSON_IN[dtype].collect
    return np.array(values, dtype=collect).astype(target, copy=False).reshape(shape)


def _tensor_slow(value: Json, dtype: int) -> np.ndarray:
    shape = _dense_shape(value)
    values: list = []
    _fill(value, 0, shape, dtype, values)
    return _to_array(values, dtype, shape)


def _tensor_fast(value: Json, dtype: int) -> np.ndarray | None:
    """The same tensor as _tensor_slow, or None when that is not certain (then go slow)."""
    spec = _JSON_IN.get(dtype)
    target = NUMPY_DTYPES.get(dtype)
    if spec is None or target is None:
        return None
    shape = tuple(_dense_shape(value))
    try:
        grid = np.array(value, dtype=object)
    except ValueError:  # ragged
        return None
    if grid.shape != shape:
        return None
    flat = grid.reshape(-1).tolist()
    if not flat:
        return np.zeros(shape, dtype=target) if target.kind != "O" else grid
    types = set(map(type, flat))
    if target.kind == "O":
        if types != {str}:
            return None
        return _to_array([s.encode("utf-8", "surrogatepass") for s in flat], dtype, shape)
    if not types <= _FAST_TYPES[spec.collect.kind]:
        return None
    bounds = spec.bounds
    if spec.lossless is not None:
        bounds = (-spec.lossless.max_int, spec.lossless.max_int)
    if int in types and bounds is not None:
        ints = flat if len(types) == 1 else [v for v in flat if type(v) is int]
        if not _ints_within(ints, bounds):
            return None
    collected = np.array(flat, dtype=spec.collect)
    if spec.lossless is not None and float in types:
        finite = collected[np.isfinite(collected)]
        if finite.size and np.abs(finite).max() > spec.lossless.max_value:
            return None
    return collected.astype(target, copy=False).reshape(shape)


def _numeric(value: Json, dtype: int) -> np.ndarray | None:
    """A numeric tensor straight from orjson's lists: numpy infers int64 (every leaf an
    integer) or float64 (some a double). None unless that is certainly the reference's tensor:
    int64 within the dtype's range (or, for floating dtypes, within the lossless integers);
    float64 only for floating dtypes and only within their lossless integers (a leaf that
    orjson turned from a huge integer into a double is beyond that, and goes the exact way).
    Leaves that are ``true``/``false`` are excluded by the caller (``_FastDoc.has_bools``)."""
    spec = _JSON_IN.get(dtype)
    target = NUMPY_DTYPES.get(dtype)
    if spec is None or target is None or target.kind not in "fiu" or not isinstance(value, list):
        return None
    array = _dense(value)
    if array is None:
        try:
            array = np.array(value)
        except (ValueError, OverflowError):  # ragged, or beyond every numpy dtype
            return None
    if array.size == 0:
        return None
    if spec.lossless is not None:
        bounds = (-spec.lossless.max_int, spec.lossless.max_int)
    elif spec.bounds is not None and array.dtype == np.int64:
        bounds = spec.bounds
    else:
        return None
    if array.dtype == np.int64:
        if not (bounds[0] <= int(array.min()) and int(array.max()) <= bounds[1]):
            return None
    elif array.dtype == np.float64:
        finite = array[np.isfinite(array)]
        if finite.size and float(np.abs(finite).max()) > bounds[1]:
            return None
    else:
        return None
    return array.astype(target, copy=False)


def _dense(value: list) -> np.ndarray | None:
    """The array of a value parsed flat (``dense.Dense``), or of a list of them (the instances
    of one input): None when ``value`` is neither. A ``Dense`` elsewhere in ``value`` is an
    empty list to numpy, so the array comes out empty or ragged and the caller refuses it."""
    if isinstance(value, Dense):
        value.used = True
        return value.array
    if not value or not all(isinstance(v, Dense) for v in value):
        return None
    if len({v.array.shape for v in value}) != 1:  # ragged instances: the exact parse says how
        return None
    for v in value:
        v.used = True
    return np.stack([v.array for v in value])


def _ints_within(ints: list[int], bounds: tuple[int, int]) -> bool:
    for dtype in (np.int64, np.uint64):
        try:
            array = np.array(ints, dtype=dtype)
        except OverflowError:  # beyond this dtype (numpy would silently pick float64)
            continue
        return bounds[0] <= int(array.min()) and int(array.max()) <= bounds[1]
    return False


def _tensor(value: Json, dtype: int) -> np.ndarray:
    fast = _tensor_fast(value, dtype)
    return fast if fast is not None else _tensor_slow(value, dtype)


def _status_string(error: ServingError) -> str:
    """absl::Status::ToString() of a nested error."""
    return f"{error.code.name}: {error.message}"


def _shape_string(shape: list[int]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def _is_element_object(value: Json) -> bool:
    return isinstance(value, dict) and not _is_b64(value)
