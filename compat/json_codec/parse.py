"""Parsing REST bodies: the standard library's JSON with rapidjson's messages, and an orjson
fast path for Predict bodies where it gives the same document."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import orjson

from compat.errors import InvalidArgument
from compat.json_codec.dense import PLACEHOLDER, Dense, dense_arrays
from compat.json_codec.values import Json, _pretty

_MARK = orjson.loads(PLACEHOLDER.format("").encode())

#: Python's json messages -> rapidjson's GetParseError_En() (ParseJson in json_tensor.cc).
_PARSE_ERRORS: dict[str, str] = {
    "Expecting value": "Invalid value.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Extra data": "The document root must not be followed by other values.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid control character at": "Invalid encoding in string.",
    "Invalid \\escape": "Invalid escape character in string.",
    "Invalid \\uXXXX escape": "Incorrect hex digit after \\u escape in string.",
}
_COMMA_ERRORS = {
    "[": "Missing a comma or ']' after an array element.",
    "{": "Missing a comma or '}' after an object member.",
}


def parse_json(body: bytes | str | Json) -> dict[str, Json]:
    """ParseJson(): the request body as a JSON object (already-parsed values pass through)."""
    if isinstance(body, bytes | bytearray | memoryview):
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidArgument(
                f"JSON Parse error: Invalid encoding in string. at offset: {e.start}"
            ) from None
        doc = _loads(text.removeprefix("\ufeff"))  # rapidjson's UTF-8 stream skips a BOM
    elif isinstance(body, str):
        doc = _loads(body)
    else:
        doc = body
    if not isinstance(doc, dict):
        raise InvalidArgument(f"JSON Value: {_pretty(doc)} Is not object")
    return doc


class _FastDoc(dict):
    """A Predict body parsed by orjson (:func:`parse_predict_json`).

    orjson reads integers beyond 64 bits as doubles and cannot tell whether a leaf was a
    ``true``; so only :func:`_numeric` reads its tensors (it refuses what could differ), and
    everything else reads :func:`exact`'s parse, the reference one.
    """

    body: bytes
    has_bools: bool
    """``true`` or ``false`` appears in the body (perhaps in a string)."""
    dense: list[Dense]
    """The big numeric arrays parsed flat (``dense``), in the document where they were."""

    def __reduce__(self) -> tuple[Any, ...]:  # to another process: the body, parsed there
        return (parse_predict_json, (self.body,))


def parse_predict_json(body: bytes | str | Json) -> dict[str, Json]:
    """:func:`parse_json` for Predict bodies, faster on big numeric tensors.

    orjson parses first (faster than the standard library on a big image), big numeric arrays
    flat (``dense``: faster still); any body it
    refuses (NaN, Infinity, lone surrogates, a BOM, every malformed body) goes through
    :func:`parse_json`, so errors are the reference parser's.
    """
    if not isinstance(body, bytes | bytearray | memoryview):
        return parse_json(body)
    raw = bytes(body)
    reduced = dense_arrays(raw)
    try:
        doc = orjson.loads(raw if reduced is None else reduced[0])
    except orjson.JSONDecodeError:
        return parse_json(raw)
    if not isinstance(doc, dict):
        return parse_json(raw)
    fast = _FastDoc(doc)
    # Arrays parsed flat hold numbers only, so the rest of the body tells (a quarter of a
    # millisecond less for DeepLab's 224 KB than searching it whole).
    rest = raw if reduced is None else reduced[0]
    fast.body, fast.has_bools, fast.dense = raw, b"true" in rest or b"false" in rest, []
    if reduced is not None:
        fast.dense = reduced[1]
        _put_back(fast, fast.dense, depth=3)
    return fast


def _put_back(node: dict | list, dense: list[Dense], depth: int) -> None:
    """Each placeholder within ``depth`` containers of the top replaced by its array (one
    deeper stays a string, which no tensor reader takes: the exact parse then reads it)."""
    keys = node.keys() if isinstance(node, dict) else range(len(node))
    for key in keys:
        value = node[key]  # type: ignore[index]
        if isinstance(value, str) and value.startswith(_MARK):
            node[key] = dense[int(value[len(_MARK) :])]  # type: ignore[index]
        elif isinstance(value, dict | list) and depth > 1:
            _put_back(value, dense, depth - 1)


def exact(doc: dict[str, Json]) -> dict[str, Json]:
    """The document as the reference parser reads it (a :class:`_FastDoc` is parsed again)."""
    return parse_json(doc.body) if isinstance(doc, _FastDoc) else doc


def _loads(text: str) -> Json:
    if not text:
        raise InvalidArgument("JSON Parse error: The document is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidArgument(_parse_error(text, e)) from None
    except RecursionError:
        raise InvalidArgument("JSON Parse error: Unspecific syntax error.") from None
    except ValueError:  # an integer literal beyond Python's int_max_str_digits
        raise InvalidArgument("JSON Parse error: Number too big to be stored in double.") from None


def _parse_error(text: str, error: json.JSONDecodeError) -> str:
    offset = len(text[: error.pos].encode("utf-8"))
    if not text.strip():
        return f"JSON Parse error: The document is empty. at offset: {offset}"
    if error.msg == "Expecting ',' delimiter":
        message = _COMMA_ERRORS[_open_container(text, error.pos)]
    else:
        message = _PARSE_ERRORS.get(error.msg, "Unspecific syntax error.")
    return f"JSON Parse error: {message} at offset: {offset}"


def _open_container(text: str, pos: int) -> str:
    """The innermost '[' or '{' open at ``pos`` (outside strings)."""
    stack: list[str] = []
    in_string = escaped = False
    for ch in text[:pos]:
        if escaped:
            escaped = False
        elif in_string:
            escaped, in_string = ch == "\\", ch != '"'
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            stack.append(ch)
        elif ch in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else "["


def signature_name(doc: Mapping[str, Json]) -> str:
    """The request's optional ``signature_name`` ("" when absent), as FillSignature checks it."""
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise InvalidArgument(
            f"JSON Value: {_pretty(exact(dict(doc)))} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return name
