"""Classify and regress requests: ``{"context"?, "examples": [...]}`` -> ``Input``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from compat.errors import InvalidArgument
from compat.json_codec.parse import parse_json, signature_name
from compat.json_codec.tensor import _LOSSLESS_FLOAT, _decode_b64, _is_b64, _is_int64
from compat.json_codec.values import Json, _as_double, _is_double, _json_type, _pretty
from compat.protos import (
    example_pb2,
    feature_pb2,
    input_pb2,
)

_FEATURE_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}


def _unexpected(value: Json, name: str) -> tuple[str, Any]:
    raise InvalidArgument(
        f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}"
    )


def _number_feature(value: Json, name: str) -> tuple[str, Any]:
    if _is_double(value):
        return "float_list", value
    return "int64_list", value


def _object_feature(value: Json, name: str) -> tuple[str, Any]:
    if not _is_b64(value):
        _unexpected(value, name)
    return "bytes_list", value


#: AddValueToFeature(): JSON type -> feature list kind.
_FEATURE_KINDS: dict[type, Callable[[Json, str], tuple[str, Any]]] = {
    bool: lambda v, name: ("int64_list", v),
    str: lambda v, name: ("bytes_list", v),
    int: _number_feature,
    float: _number_feature,
    dict: _object_feature,
}


def _feature_value(kind: str, value: Json, name: str) -> Any:
    """Validate and convert one value once its kind is known compatible."""
    if kind == "bytes_list":
        return (
            _decode_b64(value)
            if isinstance(value, dict)
            else value.encode("utf-8", "surrogatepass")
        )
    if kind == "float_list":
        _LOSSLESS_FLOAT.check(value)
        return _as_double(value)
    if type(value) is int and not _is_int64(value):
        raise InvalidArgument(f"Feature: {name} has uint64 element. Only int64 is supported.")
    return int(value)


def _fill_example(value: Json, example: example_pb2.Example) -> None:
    """MakeExampleFromJsonObject(): each key a feature of one value or a list of values."""
    if not isinstance(value, dict):
        raise InvalidArgument(f"Example must be JSON object but got JSON {_json_type(value)}")
    for name, content in value.items():
        kind: str | None = None
        values: list = []
        for item in content if isinstance(content, list) else [content]:
            item_kind, item = _FEATURE_KINDS.get(type(item), _unexpected)(item, name)
            if kind is not None and item_kind != kind:
                raise InvalidArgument(
                    f"Unexpected element type in feature: {name} "
                    f"expecting type: {_FEATURE_KIND_NAMES[kind]}"
                )
            kind = item_kind
            values.append(_feature_value(kind, item, name))
        feature: feature_pb2.Feature = example.features.feature[name]
        if kind is not None:
            getattr(feature, kind).value.extend(values)


def decode_examples_request(body: bytes | str | Json) -> input_pb2.Input:
    """FillClassifyRegressRequestFromJson(): the request's tf.Examples as an ``Input``.

    ``context`` (optional) makes it an ``example_list_with_context``; the caller reads
    ``signature_name`` with :func:`signature_name`.
    """
    doc = parse_json(body)
    signature_name(doc)
    request_input = input_pb2.Input()
    has_context = "context" in doc
    if has_context:
        _fill_example(doc["context"], request_input.example_list_with_context.context)
    if "examples" not in doc:
        raise InvalidArgument(
            f"JSON Value: {_pretty(doc)} When method is classify, key 'examples' "
            "is expected and was not found"
        )
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise InvalidArgument(
            f"JSON Value: {_pretty(doc)} Expecting 'examples' value to be an list/array"
        )
    if not examples:
        raise InvalidArgument(f"JSON Value: {_pretty(doc)} 'examples' value is an empty array")
    target = (
        request_input.example_list_with_context.examples
        if has_context
        else request_input.example_list.examples
    )
    for example in examples:
        _fill_example(example, target.add())
    return request_input
