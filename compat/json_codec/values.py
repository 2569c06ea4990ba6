"""JSON values as rapidjson sees and prints them: types, doubles, ``JSON Value: ...``
rendering, ``WriteDecimal``; and the constants the codec shares."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

Json = Any
"""A value as ``json.loads`` returns it."""

_B64 = "b64"
_BYTES_SUFFIX = "_bytes"
_FLT_MAX = float(np.finfo(np.float32).max)
_RAPIDJSON_FLOAT_RANGE = 3.4028234e38  # rapidjson Value::IsFloat()


# ------------------------------------------------------ rapidjson-style value rendering


def _json_type(value: Json) -> str:
    """JsonTypeString()."""
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    return _TYPE_NAMES.get(type(value), "Number")


_TYPE_NAMES: dict[type, str] = {dict: "Object", list: "Array", str: "String"}


def _is_double(value: Json) -> bool:
    """Whether rapidjson holds this number as a double (ints beyond 64 bits become doubles)."""
    return type(value) is float or (type(value) is int and not -(2**63) <= value < 2**64)


def _as_double(value: Json) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.copysign(math.inf, value)


def _value_to_string(value: Json) -> str:
    """JsonValueToString(): floats via WriteDecimal, everything else pretty-printed."""
    if _is_double(value):
        d = _as_double(value)
        if -_RAPIDJSON_FLOAT_RANGE <= d <= _RAPIDJSON_FLOAT_RANGE:
            return write_decimal(float(np.float32(d)), np.float32)
        return write_decimal(d, np.float64)
    return _pretty(value)


MAX_QUOTED = 1 << 16
"""The most characters of a value an error message quotes: rapidjson's pretty print indents each
level by four more spaces, so a deeply nested body would print quadratically beyond its size."""


class _Full(Exception):
    """The rendering reached ``MAX_QUOTED``."""


def _pretty(value: Json, level: int = 0) -> str:
    """rapidjson PrettyWriter output (4-space indent), as error messages embed values; cut at
    ``MAX_QUOTED`` characters (then ``...``)."""
    out: list[str] = []
    size = 0

    def emit(text: str) -> None:
        nonlocal size
        out.append(text)
        size += len(text)
        if size > MAX_QUOTED:
            raise _Full

    try:
        _write_pretty(value, level, emit)
    except _Full:
        return "".join(out)[:MAX_QUOTED] + "..."
    return "".join(out)


def _write_pretty(value: Json, level: int, emit: Any) -> None:
    if isinstance(value, dict | list) and value:
        inner = "    " * (level + 1)
        emit("{\n" if isinstance(value, dict) else "[\n")
        for i, item in enumerate(value.items() if isinstance(value, dict) else value):
            emit(",\n" + inner if i else inner)
            if isinstance(value, dict):
                key, item = item
                emit(f"{_string(key)}: ")
            _write_pretty(item, level + 1, emit)
        emit("\n" + "    " * level + ("}" if isinstance(value, dict) else "]"))
    elif _is_double(value):
        emit(_rapidjson_double(_as_double(value)))
    else:
        emit(json.dumps(value, ensure_ascii=False))


def _string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def _rapidjson_double(d: float) -> str:
    """rapidjson Writer::Double: shortest digits laid out by dtoa.h's Prettify()."""
    if not math.isfinite(d):
        return _NON_FINITE.get(d, "NaN")
    if d == 0:
        return "-0.0" if math.copysign(1.0, d) < 0 else "0.0"
    sign = "-" if d < 0 else ""
    mantissa, _, exponent = repr(abs(d)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    k = int(exponent or 0) - len(fraction)
    stripped = digits.rstrip("0")
    k += len(digits) - len(stripped)
    digits, length = stripped, len(stripped)
    kk = length + k  # 10^(kk-1) <= |d| < 10^kk
    if k >= 0 and kk <= 21:
        text = digits + "0" * k + ".0"
    elif 0 < kk <= 21:
        text = digits[:kk] + "." + digits[kk:]
    elif -6 < kk <= 0:
        text = "0." + "0" * -kk + digits
    elif length == 1:
        text = f"{digits}e{kk - 1}"
    else:
        text = f"{digits[0]}.{digits[1:]}e{kk - 1}"
    return sign + text


_DIGITS10 = {np.dtype(np.float32): 9, np.dtype(np.float64): 17}  # max_digits10


def write_decimal(value: float, ftype: type = np.float32) -> str:
    """WriteDecimal(): ``%g``, or max_digits10 if that does not round-trip; ``3.0`` not ``3``."""
    if not math.isfinite(value):
        return _NON_FINITE.get(value, "NaN")
    text = format(value, "g")
    if ftype(text) != ftype(value):
        text = format(value, f".{_DIGITS10[np.dtype(ftype)]}g")
    if "." not in text and "e" not in text:
        text += ".0"
    return text
