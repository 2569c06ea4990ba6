"""The Open Inference Protocol codec: the datatype table both ways, typed and raw tensors,
BYTES framing, and the protocol's errors naming what is wrong."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.python.framework import dtypes as tf_dtypes

from compat import open_inference as oi
from compat.errors import InvalidArgument
from compat.signatures import Signature, TensorSpec
from tests.allocation import bound, traced
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


# --- a request's memory is bounded by its size ------------------------------------------

HOSTILE_DIMS = st.sampled_from([-1, -(2**40), 3 * 10**8, 2**31, 2**62, 2**63 - 1])


@st.composite
def hostile_shape(draw: st.DrawFn) -> list[int]:
    """Small dims, and most often one hostile dim among them."""
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    if draw(st.integers(0, 3)):
        shape.insert(draw(st.integers(0, len(shape))), draw(HOSTILE_DIMS))
    return shape


@st.composite
def hostile_infer_request(draw: st.DrawFn) -> bytes:
    """A ModelInferRequest of small tensors whose declared shapes may be hostile."""
    request = oi.pb.ModelInferRequest(model_name="m")
    raw = draw(st.booleans())
    for i in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(oi.DATATYPES))
        tensor = request.inputs.add(name=f"x{i}", datatype=kind.name, shape=draw(hostile_shape()))
        if raw:
            request.raw_input_contents.append(draw(st.binary(max_size=64)))
        elif kind.name == "BYTES":
            tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=8), max_size=8)))
        elif kind.contents is not None:
            values = draw(st.lists(st.integers(0, 1), max_size=16))
            field = getattr(tensor.contents, kind.contents)
            field.extend([bool(v) for v in values] if kind.name == "BOOL" else values)
    return request.SerializeToString()


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
@given(hostile_infer_request())
def test_hostile_shapes_are_refused_before_anything_is_allocated(body: bytes) -> None:
    """A few bytes declaring 3e8 (or 2^62) elements: INVALID_ARGUMENT naming the input, and no
    more allocated than the body's size allows (``compat.limits``)."""
    inputs, error, peak = traced(lambda: oi.decode_inputs(oi.pb.ModelInferRequest.FromString(body)))
    assert peak <= bound(len(body)), (peak, len(body))
    if error is not None:
        assert isinstance(error, InvalidArgument), repr(error)
        assert "input 'x" in error.message
        return
    request = oi.pb.ModelInferRequest.FromString(body)
    for tensor in request.inputs:
        assert inputs[tensor.name].shape == tuple(tensor.shape)


def test_bytes_declaring_more_elements_than_their_data_holds_are_refused_at_once() -> None:
    request = oi.pb.ModelInferRequest()
    request.inputs.add(name="s", datatype="BYTES", shape=[3 * 10**8])
    request.raw_input_contents.append(b"")
    _, error, peak = traced(lambda: oi.decode_inputs(request))
    assert isinstance(error, InvalidArgument)
    assert error.message == "input 's': raw BYTES hold fewer than 300000000 elements"
    assert peak < 1 << 20


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([2**62, 4], "input 'x': shape [4611686018427387904, 4] has more than 2^63 - 1 elements"),
        ([0, 2**62, 2**62], "input 'x': shape [0, 4611686018427387904, 4611686018427387904]"),
        ([3, -2], "input 'x' has a negative dimension in its shape [3, -2]"),
    ],
)
def test_shapes_no_tensor_can_have_are_refused(shape: list[int], message: str) -> None:
    request = oi.pb.ModelInferRequest()
    request.inputs.add(name="x", datatype="FP32", shape=shape)
    request.raw_input_contents.append(b"")
    with pytest.raises(InvalidArgument) as e:
        oi.decode_inputs(request)
    assert e.value.message.startswith(message)


@given(st.text(max_size=24))
@settings(deadline=None, derandomize=True)
def test_a_version_is_ascii_digits_or_a_label(text: str) -> None:
    """``²`` and Arabic-Indic ``1`` are digits to ``str.isdigit`` but no version number (TF
    Serving reads versions as ASCII digits): they are labels, which no model has."""
    try:
        version = oi.parse_version(text)
    except InvalidArgument:
        assert text.isascii() and text.isdigit() and int(text) >= 2**63
        return
    if isinstance(version, int):
        assert text.isascii() and text.isdigit() and version == int(text)
    else:
        assert version == (text or None)


@pytest.mark.parametrize("text", ["\u00b2", "\u0661", "\uff11", "1\u00b2"])
def test_unicode_digits_are_labels(text: str) -> None:
    assert oi.parse_version(text) == text
