"""The Open Inference Protocol codec: the datatype table both ways, typed and raw tensors,
BYTES framing, and the protocol's errors naming what is wrong."""

from __future__ import annotations

import numpy as np
import pytest
from tensorflow.python.framework import dtypes as tf_dtypes

from compat import open_inference as oi
from compat.errors import InvalidArgument
from compat.signatures import Signature, TensorSpec
from tests.open_inference_samples import SAMPLES


def test_the_table_covers_the_protocol_and_agrees_with_tensorflow() -> None:
    assert [d.name for d in oi.DATATYPES] == list(SAMPLES)
    for d in oi.DATATYPES:
        assert tf_dtypes.as_dtype(d.dtype).as_numpy_dtype == (
            object if d.name == "BYTES" else d.numpy.type
        ), d.name


def request_of(name: str, array: np.ndarray, raw: bool) -> oi.pb.ModelInferRequest:
    request = oi.pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=name, shape=array.shape)
    if raw:
        request.raw_input_contents.append(oi.to_raw(array))
    else:
        field = oi.BY_NAME[name].contents
        assert field is not None
        getattr(tensor.contents, field).extend(array.ravel().tolist())
    return request


@pytest.mark.parametrize("name", list(SAMPLES))
def test_raw_round_trip(name: str) -> None:
    array = SAMPLES[name]
    decoded = oi.decode_inputs(request_of(name, array, raw=True))["x"]
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    assert decoded.tolist() == array.tolist()
    response = oi.pb.ModelInferResponse()
    oi.encode_outputs(response, {"y": array}, raw=True)
    (out,) = response.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("y", name, [1, 3])
    assert response.raw_output_contents[0] == oi.to_raw(array)


@pytest.mark.parametrize("name", [n for n in SAMPLES if oi.BY_NAME[n].contents])
def test_typed_round_trip(name: str) -> None:
    array = SAMPLES[name]
    decoded = oi.decode_inputs(request_of(name, array, raw=False))["x"]
    assert decoded.dtype == array.dtype and decoded.tolist() == array.tolist()
    response = oi.pb.ModelInferResponse()
    oi.encode_outputs(response, {"y": array}, raw=False)
    assert not response.raw_output_contents
    field = oi.BY_NAME[name].contents
    assert list(getattr(response.outputs[0].contents, field or "")) == array.ravel().tolist()


def test_a_typed_answer_with_an_fp16_output_goes_raw_for_every_output() -> None:
    response = oi.pb.ModelInferResponse()
    oi.encode_outputs(response, {"a": SAMPLES["FP32"], "b": SAMPLES["FP16"]}, raw=False)
    assert len(response.raw_output_contents) == 2
    assert not response.outputs[0].HasField("contents")


def test_bytes_framing_is_little_endian_lengths() -> None:
    assert oi.pack_bytes([b"ab", b""]) == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"
    assert oi.unpack_bytes(b"\x02\x00\x00\x00ab", 1, "x").tolist() == [b"ab"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: setattr(r.inputs[0], "datatype", "FP8"), "input 'x' has datatype 'FP8'"),
        (lambda r: r.raw_input_contents.__setitem__(0, b"\x00"), "input 'x': 1 bytes of raw"),
        (lambda r: r.raw_input_contents.append(b""), "raw_input_contents holds 2 tensors"),
        (lambda r: r.inputs[0].shape.__setitem__(0, -1), "negative dimension"),
        (
            lambda r: (r.inputs.append(r.inputs[0]), r.raw_input_contents.append(b"")),
            "input 'x' is given more than once",
        ),
    ],
)
def test_bad_tensors_are_invalid_argument_naming_the_input(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    request = request_of("FP32", SAMPLES["FP32"], raw=True)
    mutate(request)
    with pytest.raises(InvalidArgument) as e:
        oi.decode_inputs(request)
    assert message in e.value.message


def test_fp16_cannot_travel_typed() -> None:
    request = oi.pb.ModelInferRequest()
    request.inputs.add(name="h", datatype="FP16", shape=[1])
    with pytest.raises(InvalidArgument) as e:
        oi.decode_inputs(request)
    assert "input 'h' is FP16, which has no typed contents" in e.value.message


def test_truncated_raw_bytes_are_refused() -> None:
    with pytest.raises(InvalidArgument) as e:
        oi.unpack_bytes(b"\x05\x00\x00\x00ab", 1, "input 's'")
    assert "runs past the data" in e.value.message


def test_a_datatype_the_signature_does_not_take_is_named() -> None:
    signature = Signature("serving_default", "", inputs={"x": TensorSpec("x:0", 1, (-1, 1))})
    with pytest.raises(InvalidArgument) as e:
        oi.check_dtypes({"x": np.zeros((1, 1), np.float64)}, signature)
    assert e.value.message == (
        "input 'x' has datatype FP64, but signature 'serving_default' takes FP32"
    )


def test_metadata_marks_dynamic_dimensions() -> None:
    signature = Signature(
        "serving_default",
        "",
        inputs={"x": TensorSpec("x:0", 1, (-1, 3)), "s": TensorSpec("s:0", 7, None)},
        outputs={"y": TensorSpec("y:0", 1, (-1, 3))},
    )
    meta = oi.model_metadata("m", [2, 1], signature)
    assert (meta.name, list(meta.versions), meta.platform) == ("m", ["1", "2"], oi.PLATFORM)
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("s", "BYTES", [-1]),
        ("x", "FP32", [-1, 3]),
    ]


@pytest.mark.parametrize(
    ("text", "wanted"), [("", None), ("7", 7), ("00123", 123), ("stable", "stable"), ("1.0", "1.0")]
)
def test_versions_are_numbers_or_labels(text: str, wanted: int | str | None) -> None:
    assert oi.parse_version(text) == wanted


def test_a_version_beyond_int64_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        oi.parse_version(str(2**63))
