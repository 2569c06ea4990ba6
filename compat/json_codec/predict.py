"""Predict requests: row (``instances``) and columnar (``inputs``) formats decoded against the
signature's inputs."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from compat.errors import InvalidArgument, ServingError
from compat.json_codec.dense import Dense
from compat.json_codec.parse import _FastDoc, exact, parse_json, signature_name
from compat.json_codec.tensor import (
    _dense_shape,
    _fill,
    _is_b64,
    _is_element_object,
    _numeric,
    _shape_string,
    _status_string,
    _tensor,
    _tensor_fast,
    _to_array,
)
from compat.json_codec.values import Json, _pretty, _value_to_string
from compat.signatures import Signature, TensorSpec


class _Instances:
    """FillTensorMapFromInstancesList(), value by value: the reference and the error path."""

    def __init__(self, inputs: Mapping[str, TensorSpec]) -> None:
        self.inputs = inputs
        self.values: dict[str, list] = {}
        self.sizes: dict[str, int] = {}
        self.shapes: dict[str, list[int]] = {}

    def add(self, item: Json, name: str) -> None:
        """AddInstanceItem(): every instance of an input must have the same size and shape."""
        if name not in self.inputs:
            raise InvalidArgument(f"JSON object: does not have named input: {name}")
        shape = _dense_shape(item)
        values: list = []
        _fill(item, 0, shape, self.inputs[name].dtype, values)
        if name not in self.sizes:
            self.sizes[name], self.shapes[name], self.values[name] = len(values), shape, []
        elif self.sizes[name] != len(values):
            raise InvalidArgument(
                f"Expecting tensor size: {self.sizes[name]} but got: {len(values)}"
            )
        elif self.shapes[name] != shape:
            raise InvalidArgument(
                f"Expecting shape {_shape_string(self.shapes[name])} "
                f"but got: {_shape_string(shape)}"
            )
        self.values[name].extend(values)

    def decode(self, instances: list) -> dict[str, np.ndarray]:
        names = sorted(self.inputs)
        if not isinstance(instances[0], dict) and len(names) > 1:
            raise InvalidArgument(
                "instances is a plain list, but expecting list of objects as multiple input "
                "tensors required as per tensorinfo_map"
            )
        objects = _is_element_object(instances[0])
        for count, element in enumerate(instances):
            if objects:
                self._add_object(count, element, names)
            else:
                if _is_element_object(element):
                    raise InvalidArgument(
                        f"Expecting value/list but got object at item {count} of input list"
                    )
                try:
                    self.add(element, names[0])
                except ServingError as e:
                    raise InvalidArgument(
                        f"Failed to process element: {count} of 'instances' list. "
                        f"Error: {_status_string(e)}"
                    ) from None
        return {
            name: _to_array(values, self.inputs[name].dtype, [len(instances), *self.shapes[name]])
            for name, values in self.values.items()
        }

    def _add_object(self, count: int, element: Json, names: list[str]) -> None:
        if not _is_element_object(element):
            raise InvalidArgument(f"Expecting object but got list at item {count} of input list")
        for name, item in element.items():
            try:
                self.add(item, name)
            except ServingError as e:
                raise InvalidArgument(
                    f"Failed to process element: {count} key: {name} of 'instances' list. "
                    f"Error: {_status_string(e)}"
                ) from None
        if set(element) != set(names):
            raise InvalidArgument(
                f"Failed to process element: {count} of 'instances' list. JSON object: "
                f"{_value_to_string(element)} keys must be equal to: {','.join(names)}"
            )


def _instances_fast(
    instances: list, inputs: Mapping[str, TensorSpec], numeric_only: bool = False
) -> dict | None:
    """Whole-batch numpy decoding when every instance is well-formed (else None);
    ``numeric_only`` for orjson's lists (:func:`_numeric` alone)."""
    names = sorted(inputs)
    if not _is_element_object(instances[0]):
        if len(names) > 1:
            return None
        columns = {names[0]: instances}
    else:
        keys = set(names)
        if not all(_is_element_object(e) and e.keys() == keys for e in instances):
            return None
        columns = {name: [e[name] for e in instances] for name in names}
    out = {}
    for name, column in columns.items():
        dtype = inputs[name].dtype
        tensor = _numeric(column, dtype) if numeric_only else _tensor_fast(column, dtype)
        if tensor is None:
            return None
        out[name] = tensor
    return out


def decode_predict_request(
    body: bytes | str | Json, signature: Signature
) -> tuple[dict[str, np.ndarray], bool]:
    """FillPredictRequestFromJson(): (inputs by alias, row_format).

    ``signature`` is the one the request's ``signature_name`` resolved to (the caller resolves
    it, see :func:`signature_name`). Row format is ``{"instances": [...]}``: a list of values
    (single input) or of objects with one key per input, batched along a new first dim.
    Columnar is ``{"inputs": value}`` or ``{"inputs": {alias: value}}``.
    A body from :func:`parse_predict_json` is read by :func:`_numeric` when it can be; else
    by the reference parser's document.
    """
    doc = body if isinstance(body, _FastDoc) else parse_json(body)
    if isinstance(doc, _FastDoc):
        numeric = _decode_numeric(doc, signature.inputs)
        if numeric is not None:
            return numeric
        doc = exact(doc)
    name = signature_name(doc)
    if not signature.inputs:
        raise InvalidArgument(f"Failed to get input map for signature: {name or 'DEFAULT'}")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise InvalidArgument(
            f"JSON Value: {_pretty(doc)} Not formatted correctly expecting only one of "
            "'inputs' or 'instances' keys to exist "
        )
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise InvalidArgument(
                f"JSON Value: {_pretty(doc)} Excepting 'instances' to be an list/array"
            )
        if not instances:
            raise InvalidArgument(f"JSON Value: {_pretty(doc)} No values in 'instances' array")
        fast = _instances_fast(instances, signature.inputs)
        return (fast if fast is not None else _Instances(signature.inputs).decode(instances)), True
    if has_inputs:
        return _decode_columnar(doc["inputs"], signature.inputs), False
    raise InvalidArgument("Missing 'inputs' or 'instances' key")


def _decode_numeric(
    doc: _FastDoc, inputs: Mapping[str, TensorSpec]
) -> tuple[dict[str, np.ndarray], bool] | None:
    """The well-formed numeric request, from orjson's document (None: go the exact way)."""
    if doc.has_bools or not inputs or ("instances" in doc) == ("inputs" in doc):
        return None
    if "instances" in doc:
        instances = doc["instances"]
        if isinstance(instances, Dense) and len(inputs) == 1:  # a list of values, parsed flat
            name = next(iter(inputs))
            tensor = _numeric(instances, inputs[name].dtype)
            decoded = None if tensor is None else {name: tensor}
        elif not isinstance(instances, list) or not instances:
            return None
        else:
            decoded = _instances_fast(instances, inputs, numeric_only=True)
        if decoded is None or not all(d.used for d in doc.dense):
            return None
        return decoded, True
    value, names = doc["inputs"], sorted(inputs)
    if isinstance(value, dict):
        if _is_b64(value) or not set(names) <= set(value):
            return None
        columns = {name: value[name] for name in names}
    elif len(names) == 1:
        columns = {names[0]: value}
    else:
        return None
    out = {}
    for name, column in columns.items():
        tensor = _numeric(column, inputs[name].dtype)
        if tensor is None:
            return None
        out[name] = tensor
    if not all(d.used for d in doc.dense):  # an array somewhere no input reads
        return None
    return out, False


def _decode_columnar(value: Json, inputs: Mapping[str, TensorSpec]) -> dict[str, np.ndarray]:
    """FillTensorMapFromInputsMap()."""
    names = sorted(inputs)
    if not isinstance(value, dict) or _is_b64(value):
        if len(names) > 1:
            raise InvalidArgument(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        return {names[0]: _tensor(value, inputs[names[0]].dtype)}
    out = {}
    for name in names:
        if name not in value:
            raise InvalidArgument(f"Missing named input: {name} in 'inputs' object.")
        out[name] = _tensor(value[name], inputs[name].dtype)
    return out
