"""The data plane: TF Serving's Predict and GetModelMetadata semantics over one loaded model
(``compat.platforms.LoadedModel``).

Transports are thin over this module: gRPC hands it request protos, REST hands it decoded JSON;
both get the same validation, the same errors and the same outputs. Running the model is split
from validation (``prepare_predict`` / ``finish_predict``) so the serving layer can batch the run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from compat.errors import Internal, InvalidArgument
from compat.platforms import LoadedModel
from compat.protos import get_model_metadata_pb2, model_pb2, predict_pb2
from compat.signatures import (
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    PREDICT_METHOD,
    REGRESS_METHOD,
    Signature,
)
from compat.tensors import from_numpy, length_delimited, tensor_bytes, to_numpy, varint

_PREDICT_METHODS = (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD)


@dataclass
class PredictCall:
    """A validated Predict: what to feed and what to fetch."""

    signature: Signature
    inputs: dict[str, np.ndarray]
    output_aliases: list[str]
    signature_name: str
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    deadline: float | None = None
    """Wall-clock time (``time.time()``) after which the caller no longer waits."""


def signature_name(requested: str) -> str:
    """An empty signature name means ``serving_default``."""
    return requested or DEFAULT_SIGNATURE


def check_predict_signature(
    servable: LoadedModel, name: str, check_method_name: bool = False
) -> Signature:
    """The signature for a Predict, with TF Serving's checks (predict_util.cc); the method-name
    check only with ``--enable_signature_method_name_check``, off by default as in TF Serving."""
    signature = servable.signature(name)
    if check_method_name and signature.method_name not in _PREDICT_METHODS:
        raise Internal(
            "Expected prediction signature method_name to be one of {"
            f"{', '.join(_PREDICT_METHODS)}}}. Was: {signature.method_name}"
        )
    return signature


def check_inputs(signature: Signature, given: Iterable[str]) -> None:
    """TF Serving's input-set checks: size first, then every alias present."""
    request_inputs = sorted(set(given))
    signature_inputs = sorted(signature.inputs)
    if len(request_inputs) != len(signature_inputs):
        extra = sorted(set(request_inputs) - set(signature_inputs))
        missing = sorted(set(signature_inputs) - set(request_inputs))
        raise InvalidArgument(
            f"input size does not match signature: {len(request_inputs)}!={len(signature_inputs)}"
            f" len({{{','.join(request_inputs)}}}) != len({{{','.join(signature_inputs)}}})."
            f" Sent extra: {{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}."
        )
    for alias in signature_inputs:
        if alias not in request_inputs:
            raise InvalidArgument(
                f"Signature input alias: {alias}(feed name: {signature.inputs[alias].name}) not "
                "found in request and no default value provided. Inputs expected to be in the "
                f"request {{{','.join(request_inputs)}}}, or default input alias set: "
            )


def output_aliases(signature: Signature, output_filter: Iterable[str]) -> list[str]:
    """The outputs to fetch: the filter, validated, or every output in alias order."""
    seen: list[str] = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise InvalidArgument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                f"the set {{{','.join(sorted(signature.outputs))}}}."
            )
        if alias in seen:
            raise InvalidArgument(f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return seen or sorted(signature.outputs)


def prepare_predict(
    servable: LoadedModel, request: predict_pb2.PredictRequest, check_method_name: bool = False
) -> PredictCall:
    """Validate a PredictRequest and decode its tensors."""
    name = signature_name(request.model_spec.signature_name)
    signature = check_predict_signature(servable, name, check_method_name)
    check_inputs(signature, request.inputs.keys())
    inputs: dict[str, np.ndarray] = {}
    for alias in sorted(request.inputs):
        try:
            inputs[alias] = to_numpy(request.inputs[alias])
        except ValueError:
            raise InvalidArgument(f"tensor parsing error: {alias}") from None
    return PredictCall(
        signature=signature,
        inputs=inputs,
        output_aliases=output_aliases(signature, request.output_filter),
        signature_name=name,
    )


def prepare_predict_arrays(
    servable: LoadedModel,
    requested_signature: str,
    inputs: Mapping[str, np.ndarray],
    output_filter: Iterable[str] = (),
    check_method_name: bool = False,
) -> PredictCall:
    """Validate an already-decoded Predict (REST's JSON, or an in-process caller)."""
    name = signature_name(requested_signature)
    signature = check_predict_signature(servable, name, check_method_name)
    check_inputs(signature, inputs.keys())
    return PredictCall(
        signature=signature,
        inputs=dict(inputs),
        output_aliases=output_aliases(signature, output_filter),
        signature_name=name,
    )


def finish_predict(call: PredictCall, model: str, version: int) -> predict_pb2.PredictResponse:
    """Encode outputs with typed fields, echoing name, resolved version and signature."""
    response = predict_pb2.PredictResponse()
    set_model_spec(response.model_spec, model, version, call.signature_name)
    for alias in call.output_aliases:
        response.outputs[alias].CopyFrom(from_numpy(call.outputs[alias]))
    return response


def predict_response_bytes(
    call: PredictCall, model: str, version: int, *, tensor_content: bool = False
) -> bytes:
    """``finish_predict``'s response serialized, written field by field (``tensor_bytes`` for
    each output), as the gRPC Predict answers it: one encoding of the outputs, no message.
    ``tensor_content``: numeric outputs as raw bytes
    (``--enable_serialization_as_tensor_content``)."""
    spec = _string(1, model) + length_delimited(2, b"\x08" + varint(version) if version else b"")
    spec += _string(3, call.signature_name)
    entries = [
        length_delimited(
            1,
            _string(1, alias)
            + length_delimited(2, tensor_bytes(call.outputs[alias], tensor_content=tensor_content)),
        )
        for alias in call.output_aliases
    ]
    return b"".join(entries) + length_delimited(2, spec)


def _string(number: int, text: str) -> bytes:
    """A proto3 string field (absent when empty)."""
    return length_delimited(number, text.encode()) if text else b""


def set_model_spec(
    spec: model_pb2.ModelSpec, model: str, version: int, signature: str | None = None
) -> None:
    spec.name = model
    spec.version.value = version
    if signature is not None:
        spec.signature_name = signature


def metadata(
    servable: LoadedModel,
    request: get_model_metadata_pb2.GetModelMetadataRequest,
    model: str,
    version: int,
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """GetModelMetadata: the SignatureDefMap, packed in an Any, as TF Serving returns it."""
    fields = list(request.metadata_field)
    if not fields:
        raise InvalidArgument("GetModelMetadataRequest must specify at least one metadata_field")
    for f in fields:
        if f != "signature_def":
            raise InvalidArgument(f"Metadata field {f} is not supported")
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    set_model_spec(response.model_spec, model, version)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in servable.meta_graph.signature_def.items():
        sig_map.signature_def[key].CopyFrom(sig)
    response.metadata["signature_def"].Pack(sig_map)
    return response
