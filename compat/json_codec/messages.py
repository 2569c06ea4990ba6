"""Status and metadata messages as ``http_rest_api_util.cc`` prints them, and the REST error
body (``MakeJsonFromStatus``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from compat.errors import Internal
from compat.protos import (
    get_model_metadata_pb2,
)


def _message_dict(message: Message) -> dict[str, Any]:
    """JsonPrintOptions always_print_primitive_fields + preserve_proto_field_names."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _metadata_dict(response: Message) -> dict[str, Any]:
    """ToJsonString(GetModelMetadataResponse): the Any printed as the bare SignatureDefMap."""
    if "signature_def" not in response.metadata:  # type: ignore[attr-defined]
        raise Internal(
            "Failed to find 'signature_def' key in the GetModelMetadataResponse metadata map."
        )
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    if not response.metadata["signature_def"].Unpack(signature_defs):  # type: ignore[attr-defined]
        raise Internal("Failed to unpack 'Any' object to 'SignatureDefMap'.")
    return {
        "model_spec": _message_dict(response.model_spec),  # type: ignore[attr-defined]
        "metadata": {"signature_def": _message_dict(signature_defs)},
    }


_MESSAGE_DICTS: dict[str, Callable[[Message], dict[str, Any]]] = {
    get_model_metadata_pb2.GetModelMetadataResponse.DESCRIPTOR.full_name: _metadata_dict,
}


def encode_json_message(message: Message) -> str:
    """A response message as TF Serving's REST API prints it (status, metadata...)."""
    to_dict = _MESSAGE_DICTS.get(message.DESCRIPTOR.full_name, _message_dict)
    return json.dumps(to_dict(message), ensure_ascii=False, separators=(",", ":"))


def status_json(response: Message) -> str:
    """``MessageToJsonString`` with ``add_whitespace`` (one-space indent, trailing newline) and
    ``always_print_primitive_fields``, as ``ToJsonString(GetModelStatusResponse)`` prints it."""
    return _pretty_proto_json(json.loads(encode_json_message(response)))


def metadata_json(response: Message) -> str:
    """``ToJsonString(GetModelMetadataResponse)``: the model spec and the unpacked
    SignatureDefMap printed separately and concatenated, layout included."""
    doc = json.loads(encode_json_message(response))
    return (
        '{\n"model_spec":'
        + _pretty_proto_json(doc["model_spec"])
        + ',\n"metadata": {"signature_def": '
        + _pretty_proto_json(doc["metadata"]["signature_def"])
        + "}\n}\n"
    )


def _pretty_proto_json(value: Any) -> str:
    return json.dumps(value, indent=1, ensure_ascii=False) + "\n"


def error_text(message: str) -> str:
    """``{"error": message}`` as rapidjson's PrettyWriter writes it (``MakeJsonFromStatus``)."""
    return '{\n    "error": ' + json.dumps(message, ensure_ascii=False) + "\n}"
