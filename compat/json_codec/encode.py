"""Tensors -> TF Serving's JSON: ``predictions`` / ``outputs``, and classify / regress
``results``."""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Mapping
from typing import Any, cast

import numpy as np
import orjson

from compat.errors import InvalidArgument
from compat.json_codec.tensor import dtype_string
from compat.json_codec.values import _BYTES_SUFFIX, _DIGITS10, _NON_FINITE, _string, write_decimal
from compat.protos import (
    classification_pb2,
    regression_pb2,
    types_pb2,
)
from compat.tensors import infer_dtype


def _decimal_tokens(array: np.ndarray, ftype: type) -> list[str]:
    """write_decimal() over a whole array."""
    flat: np.ndarray = np.ascontiguousarray(array, dtype=ftype).reshape(-1)
    values = flat.tolist()
    tokens = [format(v, "g") for v in values]
    finite = np.isfinite(flat)
    if tokens:
        parsed: np.ndarray = np.array(tokens, dtype=ftype)
        spec = f".{_DIGITS10[np.dtype(ftype)]}g"
        for i in np.flatnonzero((parsed != flat) & finite).tolist():
            tokens[i] = format(values[i], spec)
    tokens = [t if "." in t or "e" in t else t + ".0" for t in tokens]
    for i in np.flatnonzero(~finite).tolist():
        tokens[i] = _NON_FINITE.get(values[i], "NaN")
    return tokens


def _int_tokens(array: np.ndarray) -> list[str]:
    return list(map(str, array.reshape(-1).tolist()))


def _bool_tokens(array: np.ndarray) -> list[str]:
    return ["true" if v else "false" for v in array.reshape(-1).tolist()]


def _string_tokens(array: np.ndarray) -> list[str]:
    return [_string(_text(v)) for v in array.reshape(-1).tolist()]


def _b64_tokens(array: np.ndarray) -> list[str]:
    return ['{"b64":"' + base64.b64encode(_raw(v)).decode("ascii") + '"}' for v in array.flat]


def _raw(value: Any) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")


def _float32_tokens(array: np.ndarray) -> list[str]:
    return _decimal_tokens(array, np.float32)


#: AddSingleValueAndAdvance(), by dtype. TF Serving cannot write half, bfloat16 or uint16
#: ("Failed to write JSON value for tensor type: half"); we write them as floats / ints.
_JSON_OUT: dict[int, Callable[[np.ndarray], list[str]]] = {
    types_pb2.DT_FLOAT: _float32_tokens,
    types_pb2.DT_DOUBLE: lambda a: _decimal_tokens(a, np.float64),
    types_pb2.DT_HALF: _float32_tokens,
    types_pb2.DT_BFLOAT16: _float32_tokens,
    types_pb2.DT_INT8: _int_tokens,
    types_pb2.DT_INT16: _int_tokens,
    types_pb2.DT_INT32: _int_tokens,
    types_pb2.DT_INT64: _int_tokens,
    types_pb2.DT_UINT8: _int_tokens,
    types_pb2.DT_UINT16: _int_tokens,
    types_pb2.DT_UINT32: _int_tokens,
    types_pb2.DT_UINT64: _int_tokens,
    types_pb2.DT_BOOL: _bool_tokens,
    types_pb2.DT_STRING: _string_tokens,
}


def _tokens(name: str, array: np.ndarray) -> list[str]:
    """JSON text of every element; DT_STRING outputs named ``*_bytes`` as ``{"b64": ...}``."""
    dtype = infer_dtype(array)
    if dtype == types_pb2.DT_STRING and name.endswith(_BYTES_SUFFIX):
        return _b64_tokens(array)
    write = _JSON_OUT.get(dtype)
    if write is None:
        if array.size == 0:
            return []
        raise InvalidArgument(f"Failed to write JSON value for tensor type: {dtype_string(dtype)}")
    return write(array)


def _nest(tokens: list[str], shape: tuple[int, ...], keep: int = 0) -> list[str]:
    """JSON text of each sub-array below the first ``keep`` dims (row-major tokens)."""
    for axis in range(len(shape) - 1, keep - 1, -1):
        size = shape[axis]
        if size == 0:
            tokens = ["[]"] * math.prod(shape[:axis])
        else:
            tokens = [
                "[" + ",".join(tokens[i : i + size]) + "]" for i in range(0, len(tokens), size)
            ]
    return tokens


def encode_predict_response(outputs: Mapping[str, np.ndarray], row_format: bool) -> str:
    """MakeJsonFromTensors(): ``{"predictions": ...}`` (row) or ``{"outputs": ...}``.

    One output is written bare, several as an object keyed by alias (per instance in row
    format, where every output must share the batch size of dim 0).
    """
    if not outputs:
        raise InvalidArgument("Cannot convert empty tensor map to JSON")
    arrays = {name: np.asarray(outputs[name]) for name in sorted(outputs)}
    if not row_format:
        texts = {
            name: _fast_text(a) or _nest(_tokens(name, a), a.shape)[0] for name, a in arrays.items()
        }
        return '{"outputs":' + _join(texts) + "}"
    batch = -1
    for name, array in arrays.items():
        if array.ndim == 0:
            raise InvalidArgument(f"Tensor name: {name} has no shape information ")
        if batch >= 0 and array.shape[0] != batch:
            raise InvalidArgument(
                f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} "
                f"expecting: {batch}"
            )
        batch = array.shape[0]
    if len(arrays) == 1 and (text := _fast_text(next(iter(arrays.values())))):
        return '{"predictions":' + text + "}"
    rows = {name: _rows(name, a) for name, a in arrays.items()}
    if len(rows) == 1:
        items = next(iter(rows.values()))
    else:
        items = [_join({name: r[i] for name, r in rows.items()}) for i in range(batch)]
    return '{"predictions":[' + ",".join(items) + "]}"


def _fast_text(array: np.ndarray) -> str | None:
    """orjson's text of a non-empty integer or bool array: the tokens' text, byte for byte
    (far faster than formatting each number), or None."""
    if array.dtype.kind not in "iub" or array.size == 0 or array.ndim == 0:
        return None
    return orjson.dumps(np.ascontiguousarray(array), option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _rows(name: str, array: np.ndarray) -> list[str]:
    """The JSON text of each entry along dim 0."""
    if array.ndim > 1 and _fast_text(array[:1]) is not None:
        return [cast(str, _fast_text(row)) for row in array]
    return _nest(_tokens(name, array), array.shape, keep=1)


def _join(texts: Mapping[str, str]) -> str:
    """One value bare, several as an object."""
    if len(texts) == 1:
        return next(iter(texts.values()))
    return "{" + ",".join(f"{_string(k)}:{v}" for k, v in texts.items()) + "}"


def encode_classify_response(result: classification_pb2.ClassificationResult) -> str:
    """MakeJsonFromClassificationResult(): ``{"results": [[["label", score], ...], ...]}``."""
    if not result.classifications:
        raise InvalidArgument("Cannot convert empty ClassificationResults to JSON")
    rows = (
        "[" + ",".join(f"[{_string(c.label)},{write_decimal(c.score)}]" for c in r.classes) + "]"
        for r in result.classifications
    )
    return '{"results":[' + ",".join(rows) + "]}"


def encode_regress_response(result: regression_pb2.RegressionResult) -> str:
    """MakeJsonFromRegressionResult(): ``{"results": [value, ...]}``."""
    if not result.regressions:
        raise InvalidArgument("Cannot convert empty RegressionResults to JSON")
    return '{"results":[' + ",".join(write_decimal(r.value) for r in result.regressions) + "]}"
