"""A version answering V2 ModelInfer in-process (``ModelVersion.call``, no Ray), on TF Serving's
half_plus_two: typed in, typed out; raw in, raw out; REST's translation always raw out; the
version in the request log as the Predict it stands for."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from compat.open_inference import pb, to_raw
from serve_app.calls import Api, ModelCall, Wire, v2_spec
from serve_app.runtime.model import ModelVersion


@pytest.fixture(scope="module")
def version(testdata: Path) -> Iterator[ModelVersion]:
    path = testdata / "saved_model_half_plus_two_cpu" / "00000123"
    v = ModelVersion("half_plus_two", 123, str(path), session={})
    yield v
    v.servable.close()  # type: ignore[union-attr]


def infer(version: ModelVersion, request: pb.ModelInferRequest, wire: Wire = Wire.GRPC):  # type: ignore[no-untyped-def]
    call = ModelCall(Api.MODEL_INFER, v2_spec(request), request, wire)
    reply = asyncio.run(version.call(call))
    return pb.ModelInferResponse.FromString(reply.raise_for_status())


def typed_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="half_plus_two", id="a")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 1]).contents.fp32_contents.extend(
        [1.0, 2.0]
    )
    return request


def test_typed_in_typed_out(version: ModelVersion) -> None:
    response = infer(version, typed_request())
    assert (response.model_name, response.model_version, response.id) == (
        "half_plus_two",
        "123",
        "a",
    )
    (y,) = response.outputs
    assert (y.name, y.datatype, list(y.shape)) == ("y", "FP32", [2, 1])
    assert list(y.contents.fp32_contents) == [2.5, 3.0]
    assert not response.raw_output_contents


def test_raw_in_raw_out(version: ModelVersion) -> None:
    request = pb.ModelInferRequest(model_name="half_plus_two")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(to_raw(np.array([[4.0]], np.float32)))
    response = infer(version, request)
    assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [4.0]


def test_rest_s_translation_always_reads_raw(version: ModelVersion) -> None:
    response = infer(version, typed_request(), Wire.REST)
    assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [2.5, 3.0]


def test_an_output_filter_and_a_signature_parameter(version: ModelVersion) -> None:
    request = pb.ModelInferRequest(model_name="half_plus_two")
    request.parameters["signature_name"].string_param = "regress_x2_to_y3"
    request.inputs.add(name="inputs", datatype="FP32", shape=[2, 1]).contents.fp32_contents.extend(
        [1.0, 2.0]
    )
    request.outputs.add(name="outputs")
    (out,) = infer(version, request).outputs
    assert out.name == "outputs"
    assert list(out.contents.fp32_contents) == [3.5, 4.0]  # 0.5 x2 + 3
