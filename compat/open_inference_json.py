"""The Open Inference Protocol's (KServe V2) REST JSON, translated to and from its messages
(``compat.open_inference``'s datatype table does the tensors).

- ``infer_request``: an infer body (JSON tensors, then the binary tensor data extension's
  bytes, ``Inference-Header-Content-Length`` long JSON first; ``binary_data_size`` on inputs)
  -> a ``ModelInferRequest`` with every input raw, and which outputs want binary data
  (``binary_data`` on outputs, ``binary_data_output`` on the request);
- ``infer_response``: a ``ModelInferResponse`` (raw outputs) -> the JSON answer, binary outputs
  after it where asked;
- ``metadata_json``: a ``ModelMetadataResponse`` as the protocol's JSON.

Errors are INVALID_ARGUMENT with a message naming the input or output.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import numpy as np

from compat import json_codec
from compat.errors import InvalidArgument
from compat.open_inference import BY_NAME, count_elements, datatype, from_raw, pack_bytes, pb

HEADER_LENGTH = "Inference-Header-Content-Length"


def _parameter_dict(item: dict[str, Any], what: str) -> dict[str, Any]:
    """A copy of an object's ``parameters`` (none: empty), which must be a JSON object."""
    given = item.get("parameters")
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise InvalidArgument(f"{what}: 'parameters' must be an object")
    return dict(given)


def _parameters(target: Any, given: dict[str, Any], what: str) -> None:
    for key, value in given.items():
        parameter = target[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            parameter.int64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        elif isinstance(value, str):
            parameter.string_param = value
        else:
            raise InvalidArgument(f"{what}: parameter '{key}' must be a bool, number or string")


def infer_request(
    body: bytes, header_length: str | None, name: str, version: str
) -> tuple[Any, dict[str, bool]]:
    """A REST infer body (JSON, then binary tensors) -> a ModelInferRequest with every input
    raw, and which outputs want binary data."""
    if header_length is not None:
        if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(
            body
        ):
            raise InvalidArgument(f"{HEADER_LENGTH} {header_length!r} does not fit the body")
        header, binary = body[: int(header_length)], memoryview(body)[int(header_length) :]
    else:
        header, binary = body, memoryview(b"")
    doc = json_codec.parse_json(bytes(header))  # bounded depth, rapidjson's messages
    if not isinstance(doc.get("inputs"), list):
        raise InvalidArgument("The request must be a JSON object with an 'inputs' list")
    message = pb.ModelInferRequest(model_name=name, model_version=version)
    if isinstance(doc.get("id"), str):
        message.id = doc["id"]
    _parameters(message.parameters, _parameter_dict(doc, "request"), "request")
    offset = 0
    for i, item in enumerate(doc["inputs"]):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidArgument(f"input {i} must be an object with a 'name'")
        what = f"input '{item['name']}'"
        kind = datatype(item.get("datatype"), what)
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and -(2**63) <= d < 2**63 for d in shape
        ):
            raise InvalidArgument(f"{what} needs a 'shape' list of integers")
        count = count_elements(shape, what)
        tensor = message.inputs.add(name=item["name"], datatype=kind.name, shape=shape)
        parameters = _parameter_dict(item, what)
        size = parameters.pop("binary_data_size", None)
        _parameters(tensor.parameters, parameters, what)
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidArgument(f"{what}: binary_data_size {size} does not fit the body")
            raw = bytes(binary[offset : offset + size])
            offset += size
            from_raw(raw, kind, shape, what)  # checked here, with the input's name
        else:
            raw = _json_data(item.get("data"), kind, shape, count, what)
        message.raw_input_contents.append(raw)
    if offset != len(binary):
        raise InvalidArgument(f"{len(binary) - offset} bytes of binary data belong to no input")
    wanted = _binary_outputs(doc, message)
    return message, wanted


def _json_data(data: Any, datatype: Any, shape: list[int], count: int, what: str) -> bytes:
    """An input's JSON ``data`` as raw bytes (only the values given are ever allocated; their
    count must be the shape's)."""
    if data is None:
        raise InvalidArgument(f"{what} has neither 'data' nor binary_data_size")
    if datatype.name == "BYTES":
        flat = list(_flatten(data))
        if not all(isinstance(v, str) for v in flat):
            raise InvalidArgument(f"{what}: BYTES data must be strings")
        values: Any = flat
    else:
        try:
            array = np.asarray(data, dtype=datatype.numpy)
        except (ValueError, TypeError, OverflowError) as e:
            raise InvalidArgument(f"{what}: data is not {datatype.name}: {e}") from None
        if datatype.name == "BOOL" and not all(isinstance(v, bool) for v in _flatten(data)):
            raise InvalidArgument(f"{what}: BOOL data must be true or false")
        values = array.ravel()
    if len(values) != count:
        raise InvalidArgument(f"{what} has {len(values)} values, but shape {shape} holds {count}")
    if datatype.name == "BYTES":
        return pack_bytes(v.encode() for v in values)
    return np.ascontiguousarray(values).tobytes()


def _flatten(data: Any) -> Any:
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def _binary_outputs(doc: dict[str, Any], message: Any) -> dict[str, bool]:
    """Output name -> binary or JSON; "" is the default for outputs not named."""
    everything = bool(_parameter_dict(doc, "request").get("binary_data_output", False))
    wanted = {"": everything}
    for i, item in enumerate(doc.get("outputs") or []):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidArgument(f"output {i} must be an object with a 'name'")
        parameters = _parameter_dict(item, f"output '{item['name']}'")
        wanted[item["name"]] = bool(parameters.pop("binary_data", everything))
        requested = message.outputs.add(name=item["name"])
        _parameters(requested.parameters, parameters, f"output '{item['name']}'")
    return wanted


class InferBody(NamedTuple):
    """A REST infer answer: JSON alone, or JSON then the binary outputs."""

    content: bytes
    header_length: int | None
    """The JSON header's length (``Inference-Header-Content-Length``); None: JSON only."""


def infer_response(response: Any, wanted: dict[str, bool]) -> InferBody:
    """A ModelInferResponse (raw outputs) -> JSON, and binary data where it was asked for."""
    header: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": [],
    }
    if response.id:
        header["id"] = response.id
    chunks: list[bytes] = []
    for i, tensor in enumerate(response.outputs):
        shape = list(tensor.shape)
        raw = response.raw_output_contents[i]
        out: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": shape}
        if wanted.get(tensor.name, wanted[""]):
            out["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            array = from_raw(raw, BY_NAME[tensor.datatype], shape, f"output '{tensor.name}'")
            if tensor.datatype == "BYTES":
                out["data"] = [v.decode(errors="replace") for v in array.ravel()]
            else:
                out["data"] = array.ravel().tolist()
        header["outputs"].append(out)
    text = json.dumps(header, separators=(",", ":")).encode()
    if not chunks:
        return InferBody(text, None)
    return InferBody(b"".join([text, *chunks]), len(text))


def metadata_json(response: Any) -> dict[str, Any]:
    """ModelMetadataResponse as the protocol's REST JSON (shapes as numbers)."""

    def tensors(items: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {
        "name": response.name,
        "versions": list(response.versions),
        "platform": response.platform,
        "inputs": tensors(response.inputs),
        "outputs": tensors(response.outputs),
    }
