"""compat.inference on TF Serving's own test models, with TF Serving's expected results and errors.

Expected values come from tensorflow_model_server_test.py, classifier_test.cc, regressor_test.cc
and multi_inference_test.cc; messages from classifier.cc, regressor.cc, util.cc and
multi_inference.cc. A small SavedModel written here covers the output checks the test models
cannot reach (wrong dtypes, ranks and batch sizes).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf

from compat import inference
from compat.errors import InvalidArgument, ServingError, Unimplemented
from compat.limits import growth_allowed
from compat.protos import (
    classification_pb2,
    example_pb2,
    inference_pb2,
    input_pb2,
    regression_pb2,
)
from compat.servable import Servable
from compat.signatures import CLASSIFY_METHOD, PREDICT_METHOD, REGRESS_METHOD
from tests.allocation import bound, traced
from tests.harness import TESTDATA

MODEL = "default"
VERSION = 123

# Message prefixes (classifier.cc, regressor.cc, TF's executor).
_SIGDEF = "SignatureDef: inputs {"
_NOT_CLASSIFY = f"Expected classification signature method_name to be {CLASSIFY_METHOD}. Was: "
_NOT_REGRESS = f"Expected regression signature method_name to be {REGRESS_METHOD}. Was: "
_NO_CLASSIFY_OUTPUTS = (
    'Expected classification signature outputs to contain at least one of "classes" or '
    '"scores". Signature was: '
)
_NOT_STRING = "Expects arg[0] to be float but string is provided"


def _servable(relative: str) -> Servable:
    return Servable(TESTDATA / relative)


@pytest.fixture(scope="module")
def half_plus_two() -> Servable:
    return _servable("saved_model_half_plus_two_cpu/00000123")


@pytest.fixture(scope="module")
def two_versions() -> Servable:
    return _servable("saved_model_half_plus_two_2_versions/00000123")


@pytest.fixture(scope="module")
def tf2() -> Servable:
    return _servable("saved_model_half_plus_two_tf2_cpu/00000123")


@pytest.fixture(scope="module")
def half_plus_three() -> Servable:
    return _servable("saved_model_half_plus_three/00000123")


# --- a SavedModel with every malformed output TF Serving checks for -----------------------

# name -> (method, {output alias: tensor builder}); every signature takes serialized examples
# as "inputs" (except two_inputs / no_inputs_alias) and ignores them but for the batch size.
_Builder = Callable[[Any], Any]


def _tile(row: list[Any], dtype: Any) -> _Builder:
    return lambda batch: tf.tile(tf.constant([row], dtype=dtype), [batch, 1])


_ODD_SIGNATURES: dict[str, tuple[str, dict[str, _Builder]]] = {
    "serving_default": (REGRESS_METHOD, {"outputs": lambda b: tf.fill([b], 1.5)}),
    "classes_and_scores": (
        CLASSIFY_METHOD,
        {"classes": _tile(["a", "b"], tf.string), "scores": _tile([0.25, 0.75], tf.float32)},
    ),
    "classes_only": (CLASSIFY_METHOD, {"classes": _tile(["a", "b"], tf.string)}),
    "classes_not_string": (CLASSIFY_METHOD, {"classes": _tile([1.0], tf.float32)}),
    "scores_rank1": (CLASSIFY_METHOD, {"scores": lambda b: tf.fill([b], 1.0)}),
    "scores_int": (CLASSIFY_METHOD, {"scores": _tile([1], tf.int32)}),
    "scores_batch_one": (CLASSIFY_METHOD, {"scores": lambda b: tf.constant([[1.0]])}),
    "classes_scores_mismatch": (
        CLASSIFY_METHOD,
        {"classes": _tile(["a", "b"], tf.string), "scores": _tile([1.0, 2.0, 3.0], tf.float32)},
    ),
    "three_outputs": (
        CLASSIFY_METHOD,
        {n: _tile([1.0], tf.float32) for n in ("classes", "scores", "extra")},
    ),
    "no_classify_outputs": (CLASSIFY_METHOD, {"probabilities": _tile([1.0], tf.float32)}),
    "regress_rank3": (REGRESS_METHOD, {"outputs": lambda b: tf.fill([b, 1, 1], 1.0)}),
    "regress_two_columns": (REGRESS_METHOD, {"outputs": _tile([1.0, 2.0], tf.float32)}),
    "regress_batch_one": (REGRESS_METHOD, {"outputs": lambda b: tf.constant([1.0])}),
    "regress_double": (
        REGRESS_METHOD,
        {"outputs": lambda b: tf.fill([b], tf.constant(1.0, tf.float64))},
    ),
    "regress_two_outputs": (
        REGRESS_METHOD,
        {"outputs": _tile([1.0], tf.float32), "extra": _tile([1.0], tf.float32)},
    ),
    "no_regress_outputs": (REGRESS_METHOD, {"y": _tile([1.0], tf.float32)}),
}


@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory) -> Servable:
    """A TF1 SavedModel whose signatures break TF Serving's rules one at a time."""
    v1 = tf.compat.v1
    path = tmp_path_factory.mktemp("odd") / "1"
    with tf.Graph().as_default(), v1.Session() as session:
        examples = v1.placeholder(tf.string, [None], name="tf_example")
        other = v1.placeholder(tf.string, [None], name="other")
        batch = tf.shape(examples)[0]
        info = v1.saved_model.utils.build_tensor_info
        build = v1.saved_model.signature_def_utils.build_signature_def
        signatures = {
            name: build(
                {"inputs": info(examples)}, {a: info(f(batch)) for a, f in outputs.items()}, method
            )
            for name, (method, outputs) in _ODD_SIGNATURES.items()
        }
        scores = {"scores": info(_tile([1.0], tf.float32)(batch))}
        signatures["two_inputs"] = build(
            {"inputs": info(examples), "other": info(other)}, scores, CLASSIFY_METHOD
        )
        signatures["no_inputs_alias"] = build({"examples": info(examples)}, scores, CLASSIFY_METHOD)
        builder = v1.saved_model.builder.SavedModelBuilder(str(path))
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
        builder.save()
    return Servable(path)


# --- requests ----------------------------------------------------------------------------


def _example(**features: float) -> example_pb2.Example:
    example = example_pb2.Example()
    for key, value in features.items():
        example.features.feature[key].float_list.value.append(value)
    return example


def _input(*xs: float, context: float | None = None) -> input_pb2.Input:
    """Examples with feature x = each of ``xs``; with ``context``, an ExampleListWithContext."""
    model_input = input_pb2.Input()
    if context is None:
        model_input.example_list.examples.extend(_example(x=x) for x in xs)
    else:
        with_context = model_input.example_list_with_context
        with_context.context.CopyFrom(_example(x=context))
        with_context.examples.extend(_example(x=x) for x in xs)
    return model_input


def _classify_request(signature: str, model_input: input_pb2.Input) -> Any:
    request = classification_pb2.ClassificationRequest(input=model_input)
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature
    return request


def _regress_request(signature: str, model_input: input_pb2.Input) -> Any:
    request = regression_pb2.RegressionRequest(input=model_input)
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature
    return request


def _multi_request(
    tasks: list[tuple[str, str]], model_input: input_pb2.Input, names: list[str] | None = None
) -> inference_pb2.MultiInferenceRequest:
    request = inference_pb2.MultiInferenceRequest(input=model_input)
    for i, (signature, method) in enumerate(tasks):
        task = request.tasks.add(method_name=method)
        task.model_spec.name = names[i] if names else MODEL
        task.model_spec.signature_name = signature
    return request


def _scores(response: Any) -> list[list[float]]:
    return [[c.score for c in cs.classes] for cs in response.result.classifications]


def _values(response: Any) -> list[float]:
    return [r.value for r in response.result.regressions]


def _raises(error: type[ServingError], message: str) -> Any:
    """Expect ``error`` whose message starts with ``message``."""
    return pytest.raises(error, match="^" + re.escape(message))


# --- Classify and Regress: results -------------------------------------------------------


def test_classify_half_plus_two(half_plus_two: Servable) -> None:
    """tensorflow_model_server_test.py testClassify: x=2.0 -> score 3.0, no label."""
    request = _classify_request("classify_x_to_y", _input(2.0))
    response = inference.classify(half_plus_two, request, MODEL, VERSION)
    [classifications] = response.result.classifications
    [cls] = classifications.classes
    assert (cls.label, cls.score) == ("", 3.0)
    assert (response.model_spec.name, response.model_spec.version.value) == (MODEL, VERSION)
    assert response.model_spec.signature_name == "classify_x_to_y"


@pytest.mark.parametrize(
    ("signature", "expected"), [("regress_x_to_y", 3.0), ("regress_x_to_y2", 4.0)]
)
def test_regress_half_plus_two(half_plus_two: Servable, signature: str, expected: float) -> None:
    response = inference.regress(
        half_plus_two, _regress_request(signature, _input(2.0)), MODEL, VERSION
    )
    assert _values(response) == [expected]
    assert response.model_spec.signature_name == signature
    assert response.model_spec.version.value == VERSION


def test_several_examples(half_plus_two: Servable) -> None:
    model_input = _input(0.0, 2.0, 4.0)
    regressed = inference.regress(
        half_plus_two, _regress_request("regress_x_to_y", model_input), MODEL, VERSION
    )
    classified = inference.classify(
        half_plus_two, _classify_request("classify_x_to_y", model_input), MODEL, VERSION
    )
    assert _values(regressed) == [2.0, 3.0, 4.0]
    assert _scores(classified) == [[2.0], [3.0], [4.0]]


@pytest.mark.parametrize(
    ("model_input", "expected"),
    [
        (_input(6.0, context=2.0), [5.0]),  # the example's x overrides the context's
        (_input(4.0, 8.0, context=2.0), [4.0, 6.0]),
    ],
)
def test_example_list_with_context(
    half_plus_two: Servable, model_input: input_pb2.Input, expected: list[float]
) -> None:
    request = _regress_request("regress_x_to_y", model_input)
    assert _values(inference.regress(half_plus_two, request, MODEL, VERSION)) == expected


def test_context_supplies_missing_features(half_plus_two: Servable) -> None:
    """Each entry is context + example: a feature only the context has reaches the model."""
    model_input = input_pb2.Input()
    model_input.example_list_with_context.context.CopyFrom(_example(x=2.0))
    model_input.example_list_with_context.examples.extend([_example(), _example(other=1.0)])
    response = inference.regress(
        half_plus_two, _regress_request("regress_x_to_y", model_input), MODEL, VERSION
    )
    assert _values(response) == [3.0, 3.0]


def test_half_plus_three_regress_signature(half_plus_three: Servable) -> None:
    """The signature is literally named "tensorflow/serving/regress"; its TensorInfo says
    DT_FLOAT but the placeholder is a string one, which is what TF Serving feeds."""
    request = _regress_request("tensorflow/serving/regress", _input(2.0))
    response = inference.regress(half_plus_three, request, MODEL, VERSION)
    assert _values(response) == [4.0]
    assert response.model_spec.signature_name == "tensorflow/serving/regress"


def test_tf2_model_classifies_without_method_check(tf2: Servable) -> None:
    """Native TF2 signatures say .../predict; TF Serving's default accepts them by shape."""
    response = inference.classify(
        tf2, _classify_request("classify_x_to_y", _input(2.0)), MODEL, VERSION
    )
    assert _scores(response) == [[3.0]]
    with _raises(
        InvalidArgument,
        _NOT_CLASSIFY + PREDICT_METHOD,
    ):
        inference.classify(
            tf2,
            _classify_request("classify_x_to_y", _input(2.0)),
            MODEL,
            VERSION,
            check_method_name=True,
        )


def test_empty_signature_name_means_serving_default(odd: Servable) -> None:
    """MakeModelSpec (util.cc) echoes "serving_default" for an empty signature name."""
    response = inference.regress(odd, _regress_request("", _input(1.0, 2.0)), MODEL, VERSION)
    assert _values(response) == [1.5, 1.5]
    assert response.model_spec.signature_name == "serving_default"


@pytest.mark.parametrize(
    ("signature", "expected"),
    [
        ("classes_and_scores", [[("a", 0.25), ("b", 0.75)]] * 2),
        ("classes_only", [[("a", 0.0), ("b", 0.0)]] * 2),
    ],
)
def test_classes_and_scores(
    odd: Servable, signature: str, expected: list[list[tuple[str, float]]]
) -> None:
    response = inference.classify(
        odd, _classify_request(signature, _input(1.0, 2.0)), MODEL, VERSION
    )
    got = [[(c.label, c.score) for c in cs.classes] for cs in response.result.classifications]
    assert got == expected


def test_rank1_regression_output(odd: Servable) -> None:
    response = inference.regress(
        odd, _regress_request("serving_default", _input(1.0)), MODEL, VERSION
    )
    assert _values(response) == [1.5]


# --- Classify and Regress: errors ---------------------------------------------------------

CLASSIFY, REGRESS = inference.classify, inference.regress

ERRORS: list[tuple[str, Callable[..., Any], str, bool, type[ServingError], str]] = [
    # (servable fixture, API, signature, method check, error, message prefix)
    (
        "half_plus_two",
        CLASSIFY,
        "nope",
        False,
        InvalidArgument,
        "No signature was found with the name: nope",
    ),
    (
        "half_plus_two",
        REGRESS,
        "nope",
        True,
        InvalidArgument,
        "No signature was found with the name: nope",
    ),
    (
        "half_plus_two",
        CLASSIFY,
        "regress_x_to_y",
        True,
        InvalidArgument,
        _NOT_CLASSIFY + REGRESS_METHOD,
    ),
    (
        "half_plus_two",
        REGRESS,
        "classify_x_to_y",
        True,
        InvalidArgument,
        _NOT_REGRESS + CLASSIFY_METHOD,
    ),
    (
        "half_plus_two",
        CLASSIFY,
        "",
        True,
        InvalidArgument,
        _NOT_CLASSIFY + PREDICT_METHOD,
    ),
    (
        "half_plus_two",
        CLASSIFY,
        "",
        False,
        InvalidArgument,
        f"No classification inputs found in {_SIGDEF}",
    ),
    (
        "half_plus_two",
        REGRESS,
        "serving_default",
        False,
        InvalidArgument,
        f"No regression inputs found in {_SIGDEF}",
    ),
    (
        "half_plus_two",
        CLASSIFY,
        "regress_x_to_y",
        False,
        InvalidArgument,
        _NO_CLASSIFY_OUTPUTS + "inputs {",
    ),
    (
        "half_plus_two",
        REGRESS,
        "classify_x_to_y",
        False,
        InvalidArgument,
        f"No regression outputs found in {_SIGDEF}",
    ),
    # A non-string input: TF's own feed check, INVALID_ARGUMENT, never a crash.
    (
        "half_plus_two",
        REGRESS,
        "regress_x2_to_y3",
        True,
        InvalidArgument,
        _NOT_STRING,
    ),
    (
        "two_versions",
        CLASSIFY,
        "classify_x2_to_y3",
        True,
        InvalidArgument,
        _NOT_STRING,
    ),
    (
        "tf2",
        CLASSIFY,
        "classify_x2_to_y3",
        False,
        InvalidArgument,
        _NOT_STRING,
    ),
    # Signature shapes (PreProcess*).
    ("odd", CLASSIFY, "two_inputs", False, InvalidArgument, "Expected one input Tensor."),
    (
        "odd",
        CLASSIFY,
        "three_outputs",
        False,
        InvalidArgument,
        "Expected one or two output Tensors, found 3",
    ),
    ("odd", REGRESS, "regress_two_outputs", False, InvalidArgument, "Expected one output Tensor."),
    (
        "odd",
        CLASSIFY,
        "no_inputs_alias",
        False,
        InvalidArgument,
        "No classification inputs found in SignatureDef: ",
    ),
    (
        "odd",
        CLASSIFY,
        "no_classify_outputs",
        False,
        InvalidArgument,
        _NO_CLASSIFY_OUTPUTS,
    ),
    (
        "odd",
        REGRESS,
        "no_regress_outputs",
        False,
        InvalidArgument,
        "No regression outputs found in SignatureDef: ",
    ),
    # Outputs (PostProcess*Result), two examples in.
    (
        "odd",
        CLASSIFY,
        "classes_not_string",
        False,
        InvalidArgument,
        "Expected classes Tensor of DT_STRING. Got: DT_FLOAT",
    ),
    (
        "odd",
        CLASSIFY,
        "scores_rank1",
        False,
        InvalidArgument,
        "Expected Tensor shape: [batch_size num_classes] but got [2]",
    ),
    (
        "odd",
        CLASSIFY,
        "scores_int",
        False,
        InvalidArgument,
        "Expected scores Tensor of DT_FLOAT. Got: DT_INT32",
    ),
    (
        "odd",
        CLASSIFY,
        "scores_batch_one",
        False,
        InvalidArgument,
        "Expected scores output batch size of 2. Got: 1",
    ),
    (
        "odd",
        CLASSIFY,
        "classes_scores_mismatch",
        False,
        InvalidArgument,
        "Tensors class and score should match in dim_size(1). Got 2 vs. 3",
    ),
    (
        "odd",
        REGRESS,
        "regress_rank3",
        False,
        InvalidArgument,
        "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got [2,1,1]",
    ),
    (
        "odd",
        REGRESS,
        "regress_two_columns",
        False,
        InvalidArgument,
        "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got [2,2]",
    ),
    (
        "odd",
        REGRESS,
        "regress_batch_one",
        False,
        InvalidArgument,
        "Input batch size did not match output batch size: 2 vs. 1",
    ),
    (
        "odd",
        REGRESS,
        "regress_double",
        False,
        InvalidArgument,
        "Expected output Tensor of DT_FLOAT.  Got: DT_DOUBLE",
    ),
]


@pytest.mark.parametrize(
    ("fixture", "api", "signature", "check", "error", "message"),
    ERRORS,
    ids=[
        f"{e[0]}-{e[1].__name__}-{e[2] or 'default'}-{'check' if e[3] else 'nocheck'}"
        for e in ERRORS
    ],
)
def test_errors(
    request: pytest.FixtureRequest,
    fixture: str,
    api: Callable[..., Any],
    signature: str,
    check: bool,
    error: type[ServingError],
    message: str,
) -> None:
    servable = request.getfixturevalue(fixture)
    build = _classify_request if api is CLASSIFY else _regress_request
    with _raises(error, message):
        api(servable, build(signature, _input(1.0, 2.0)), MODEL, VERSION, check_method_name=check)


@pytest.mark.parametrize(
    "model_input",
    [input_pb2.Input(), _input(), input_pb2.Input(example_list_with_context={})],
    ids=["no-kind", "no-examples", "context-only"],
)
@pytest.mark.parametrize("api", [CLASSIFY, REGRESS], ids=["classify", "regress"])
def test_input_is_empty(
    half_plus_two: Servable, api: Callable[..., Any], model_input: input_pb2.Input
) -> None:
    build, signature = (
        (_classify_request, "classify_x_to_y")
        if api is CLASSIFY
        else (_regress_request, "regress_x_to_y")
    )
    with _raises(InvalidArgument, "Input is empty."):
        api(half_plus_two, build(signature, model_input), MODEL, VERSION)


def test_signature_errors_come_before_input_errors(half_plus_two: Servable) -> None:
    with _raises(InvalidArgument, "No signature was found with the name: nope"):
        inference.classify(
            half_plus_two, _classify_request("nope", input_pb2.Input()), MODEL, VERSION
        )


def test_missing_feature_is_the_models_error(half_plus_two: Servable) -> None:
    """ParseExample's own error comes back as INVALID_ARGUMENT."""
    model_input = input_pb2.Input()
    model_input.example_list.examples.add()
    with pytest.raises(InvalidArgument, match=r"Feature: x .* is required but could not be found"):
        inference.regress(
            half_plus_two, _regress_request("regress_x_to_y", model_input), MODEL, VERSION
        )


# --- MultiInference ----------------------------------------------------------------------


def test_multi_inference_regress_and_classify(half_plus_two: Servable) -> None:
    """multi_inference_test.cc RegressAndClassifySignaturesTest, plus regress_x_to_y2."""
    tasks = [
        ("regress_x_to_y", REGRESS_METHOD),
        ("classify_x_to_y", CLASSIFY_METHOD),
        ("regress_x_to_y2", REGRESS_METHOD),
    ]
    response = inference.multi_inference(
        half_plus_two, _multi_request(tasks, _input(2.0)), MODEL, VERSION, check_method_name=True
    )
    assert [r.WhichOneof("result") for r in response.results] == [
        "regression_result",
        "classification_result",
        "regression_result",
    ]
    assert response.results[0].regression_result.regressions[0].value == 3.0
    assert response.results[1].classification_result.classifications[0].classes[0].score == 3.0
    assert response.results[2].regression_result.regressions[0].value == 4.0
    for result, (signature, _) in zip(response.results, tasks, strict=True):
        spec = result.model_spec
        assert (spec.name, spec.version.value, spec.signature_name) == (MODEL, VERSION, signature)


def test_multi_inference_tf2_feeds_each_signatures_own_input(tf2: Servable) -> None:
    """TF2 signatures have one placeholder each: all are fed the same examples in one run."""
    tasks = [("regress_x_to_y", REGRESS_METHOD), ("classify_x_to_y", CLASSIFY_METHOD)]
    response = inference.multi_inference(
        tf2, _multi_request(tasks, _input(2.0, 4.0)), MODEL, VERSION
    )
    assert [r.value for r in response.results[0].regression_result.regressions] == [3.0, 4.0]
    assert [
        c.classes[0].score for c in response.results[1].classification_result.classifications
    ] == [3.0, 4.0]


def test_multi_inference_default_signature_name(odd: Servable) -> None:
    response = inference.multi_inference(
        odd, _multi_request([("", REGRESS_METHOD)], _input(1.0)), MODEL, VERSION
    )
    assert response.results[0].model_spec.signature_name == "serving_default"


MULTI_ERRORS: list[
    tuple[list[tuple[str, str]], list[str] | None, bool, type[ServingError], str]
] = [
    # (tasks, model names, method check, error, message)
    ([], None, False, InvalidArgument, "ModelSpec has no name specified."),
    (
        [("regress_x_to_y", REGRESS_METHOD)] * 2,
        [MODEL, ""],
        False,
        InvalidArgument,
        "Found ModelSpec with an empty model name.",
    ),
    (
        [("regress_x_to_y", REGRESS_METHOD), ("regress_x_to_y2", REGRESS_METHOD)],
        [MODEL, "ModelDoesNotExist"],
        False,
        InvalidArgument,
        "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
    ),
    (
        [("regress_x_to_y", REGRESS_METHOD)] * 2,
        None,
        False,
        InvalidArgument,
        "Duplicate evaluation of signature: regress_x_to_y",
    ),
    (
        [("ThisSignatureDoesNotExist", REGRESS_METHOD)],
        None,
        False,
        InvalidArgument,
        "Requested signature not found in model graph: ThisSignatureDoesNotExist",
    ),
    (
        [("", PREDICT_METHOD)],
        None,
        False,
        Unimplemented,
        f"Unsupported signature method_name: {PREDICT_METHOD}",
    ),
    (
        [("regress_x_to_y", CLASSIFY_METHOD)],
        None,
        True,
        InvalidArgument,
        _NOT_CLASSIFY + REGRESS_METHOD,
    ),
    (
        [("classify_x_to_y", CLASSIFY_METHOD), ("regress_x2_to_y3", REGRESS_METHOD)],
        None,
        False,
        InvalidArgument,
        "Expects arg[",
    ),
]


@pytest.mark.parametrize(("tasks", "names", "check", "error", "message"), MULTI_ERRORS)
def test_multi_inference_errors(
    half_plus_two: Servable,
    tasks: list[tuple[str, str]],
    names: list[str] | None,
    check: bool,
    error: type[ServingError],
    message: str,
) -> None:
    with _raises(error, message):
        inference.multi_inference(
            half_plus_two,
            _multi_request(tasks, _input(2.0), names),
            MODEL,
            VERSION,
            check_method_name=check,
        )


def test_multi_inference_input_is_empty(half_plus_two: Servable) -> None:
    request = _multi_request([("regress_x_to_y", REGRESS_METHOD)], input_pb2.Input())
    with _raises(InvalidArgument, "Input is empty."):
        inference.multi_inference(half_plus_two, request, MODEL, VERSION)


def test_multi_inference_model_spec() -> None:
    request = _multi_request(
        [("a", REGRESS_METHOD), ("b", REGRESS_METHOD)], _input(1.0), ["first", "second"]
    )
    assert inference.multi_inference_model_spec(request).name == "first"
    assert inference.multi_inference_model_spec(inference_pb2.MultiInferenceRequest()).name == ""


# --- a request's memory is bounded by its size ------------------------------------------


@st.composite
def example_input(draw: st.DrawFn) -> bytes:
    """An Input of up to 100,000 examples, with or without a context of up to 40 KB."""
    model_input = input_pb2.Input()
    count = draw(st.sampled_from([0, 1, 10, 1000, 100_000]))
    example = example_pb2.Example()
    if draw(st.booleans()):
        example.features.feature["x"].float_list.value.extend(
            draw(st.lists(st.floats(width=32), max_size=4))
        )
    if draw(st.booleans()):
        with_context = model_input.example_list_with_context
        context = draw(st.sampled_from([0, 10, 1000, 30_000, 40_000]))
        with_context.context.features.feature["c"].bytes_list.value.append(b"c" * context)
        with_context.examples.extend([example] * count)
    else:
        model_input.example_list.examples.extend([example] * count)
    return model_input.SerializeToString()


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(example_input())
def test_examples_never_expand_far_beyond_the_input(body: bytes) -> None:
    """A context is merged into each example (util.cc): refused, before the merge is made, when
    it would exceed the input's size by more than ``MAX_GROWTH_BYTES``."""
    model_input = input_pb2.Input.FromString(body)
    examples, error, peak = traced(lambda: inference.serialized_examples(model_input))
    if error is not None:
        assert isinstance(error, InvalidArgument), repr(error)
        assert peak <= bound(len(body)), peak
        return
    merged = sum(len(e) for e in examples.tolist())
    assert merged <= growth_allowed(len(body))
    assert peak <= bound(len(body), merged), peak


def test_a_context_merged_into_100000_examples_is_refused() -> None:
    """The live row: 30 KB of context, 100,000 empty examples (224 KB) would be 3 GB."""
    model_input = input_pb2.Input()
    with_context = model_input.example_list_with_context
    with_context.context.features.feature["c"].bytes_list.value.append(b"c" * 30_000)
    with_context.examples.extend([example_pb2.Example()] * 100_000)
    _, error, peak = traced(lambda: inference.serialized_examples(model_input))
    assert isinstance(error, InvalidArgument)
    assert error.message == (
        "Input of 100000 examples with a context of 30023 bytes would merge to 3002530027 "
        "bytes, more than the 67338891 bytes allowed for a 230027-byte input"
    )
    assert peak < 1 << 20
