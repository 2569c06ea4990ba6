"""Classify, Regress and MultiInference: TF Serving's tf.Example APIs over one loaded
model (``compat.platforms.LoadedModel``).

Pure and synchronous (no Ray): a transport resolves the servable, calls :func:`classify`,
:func:`regress` or :func:`multi_inference`, and sends back the response proto. Semantics and
error messages are TF Serving's (``tensorflow_serving/servables/tensorflow/``):

* ``classifier.cc`` / ``regressor.cc``: ``Get{Classification,Regression}SignatureDef``,
  ``PreProcess*`` (signature checks) and ``PostProcess*Result`` (output checks, result protos);
* ``util.cc``: ``InputToSerializedExampleTensor`` (the signature's one input is fed the vector
  of serialized ``tf.Example``s; with ``example_list_with_context`` each entry is the serialized
  context followed by the serialized example) and ``MakeModelSpec`` (responses echo the model
  name, the servable's version and the signature name, ``serving_default`` when none was given);
* ``multi_inference.cc``: all tasks checked first, then one session run over the same input.

``check_method_name`` is the model server's ``--enable_signature_method_name_check`` flag
(default false). Off, a signature qualifies by its aliases alone (an ``inputs`` input and
``classes``/``scores`` or ``outputs`` outputs), which is how native TF2 SavedModels, whose every
``method_name`` is ``tensorflow/serving/predict``, are classified; on, ``method_name`` must also
be ``tensorflow/serving/classify`` or ``tensorflow/serving/regress``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from google.protobuf import text_format

from compat.dataplane import set_model_spec, signature_name
from compat.errors import InvalidArgument, Unimplemented
from compat.limits import growth_allowed
from compat.platforms import LoadedModel
from compat.protos import (
    classification_pb2,
    inference_pb2,
    input_pb2,
    model_pb2,
    regression_pb2,
    types_pb2,
)
from compat.signatures import CLASSIFY_METHOD, REGRESS_METHOD, Signature, TensorSpec
from compat.tensors import infer_dtype

#: Aliases fixed by TF's signature_constants.py.
INPUTS = "inputs"
CLASSES = "classes"
SCORES = "scores"
OUTPUTS = "outputs"

_PLACEHOLDER_OPS = frozenset({"Placeholder", "PlaceholderWithDefault"})
#: Per servable: placeholder node name -> the DataType the graph declares for it.
_PLACEHOLDER_DTYPES: weakref.WeakKeyDictionary[LoadedModel, dict[str, int]] = (
    weakref.WeakKeyDictionary()
)

_Response = TypeVar(
    "_Response", classification_pb2.ClassificationResponse, regression_pb2.RegressionResponse
)


# --- output checks and result protos (PostProcess*Result) --------------------------------


def _shape(tensor: np.ndarray) -> str:
    """``TensorShape::DebugString()``: ``[2,1]``."""
    return "[" + ",".join(str(d) for d in tensor.shape) + "]"


def _dtype(tensor: np.ndarray) -> str:
    """``DataType_Name``: ``DT_FLOAT``."""
    return types_pb2.DataType.Name(infer_dtype(tensor))


def _classification_result(
    num_examples: int,
    outputs: Mapping[str, np.ndarray],
    result: classification_pb2.ClassificationResult,
) -> None:
    """PostProcessClassificationResult (classifier.cc): ``classes`` and/or ``scores``."""
    for alias, dtype in ((CLASSES, types_pb2.DT_STRING), (SCORES, types_pb2.DT_FLOAT)):
        tensor = outputs.get(alias)
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise InvalidArgument(
                f"Expected Tensor shape: [batch_size num_classes] but got {_shape(tensor)}"
            )
        if infer_dtype(tensor) != dtype:
            raise InvalidArgument(
                f"Expected {alias} Tensor of {types_pb2.DataType.Name(dtype)}. "
                f"Got: {_dtype(tensor)}"
            )
        if tensor.shape[0] != num_examples:
            raise InvalidArgument(
                f"Expected {alias} output batch size of {num_examples}. Got: {tensor.shape[0]}"
            )
    classes, scores = outputs.get(CLASSES), outputs.get(SCORES)
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise InvalidArgument(
            "Tensors class and score should match in dim_size(1). "
            f"Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    num_classes = next(t for t in (classes, scores) if t is not None).shape[1]
    # Labels are bytes; the proto field is a str (TF Serving copies the raw bytes).
    labels = None
    if classes is not None:
        labels = [[label.decode("utf-8", "replace") for label in row] for row in classes.tolist()]
    values = scores.tolist() if scores is not None else None
    for i in range(num_examples):
        classifications = result.classifications.add()
        for c in range(num_classes):
            cls = classifications.classes.add()
            if labels is not None:
                cls.label = labels[i][c]
            if values is not None:
                cls.score = values[i][c]


def _regression_result(
    num_examples: int, outputs: Mapping[str, np.ndarray], result: regression_pb2.RegressionResult
) -> None:
    """PostProcessRegressionResult (regressor.cc): ``outputs`` float ``[batch]`` or ``[batch, 1]``.

    Its last check (element count == batch size) follows from the shape checks, so is omitted.
    """
    tensor = outputs[OUTPUTS]
    if not (tensor.ndim == 1 or (tensor.ndim == 2 and tensor.shape[1] == 1)):
        raise InvalidArgument(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
            f"{_shape(tensor)}"
        )
    if tensor.shape[0] != num_examples:
        raise InvalidArgument(
            "Input batch size did not match output batch size: "
            f"{num_examples} vs. {tensor.shape[0]}"
        )
    if infer_dtype(tensor) != types_pb2.DT_FLOAT:
        raise InvalidArgument(f"Expected output Tensor of DT_FLOAT.  Got: {_dtype(tensor)}")
    for value in tensor.reshape(-1).tolist():
        result.regressions.add(value=value)


# --- the two APIs, as data ---------------------------------------------------------------


@dataclass(frozen=True)
class _Api:
    """What differs between Classify and Regress (classifier.cc vs regressor.cc)."""

    noun: str
    method_name: str
    output_counts: tuple[int, ...]
    output_count_error: str
    """Message when the signature has a wrong number of outputs (``{n}``: how many)."""
    outputs: tuple[str, ...]
    no_outputs_error: str
    """Message prefix when none of ``outputs`` is in the signature (then its DebugString)."""
    result_field: str
    """The field of ``InferenceResult`` a MultiInference task fills."""
    post_process: Callable[[int, Mapping[str, np.ndarray], Any], None]


CLASSIFY = _Api(
    noun="classification",
    method_name=CLASSIFY_METHOD,
    output_counts=(1, 2),
    output_count_error="Expected one or two output Tensors, found {n}",
    outputs=(CLASSES, SCORES),
    no_outputs_error=(
        f'Expected classification signature outputs to contain at least one of "{CLASSES}" '
        f'or "{SCORES}". Signature was: '
    ),
    result_field="classification_result",
    post_process=_classification_result,
)
REGRESS = _Api(
    noun="regression",
    method_name=REGRESS_METHOD,
    output_counts=(1,),
    output_count_error="Expected one output Tensor.",
    outputs=(OUTPUTS,),
    no_outputs_error="No regression outputs found in SignatureDef: ",
    result_field="regression_result",
    post_process=_regression_result,
)
#: MultiInference tasks name their API by method_name.
_APIS: dict[str, _Api] = {api.method_name: api for api in (CLASSIFY, REGRESS)}


@dataclass(frozen=True)
class _Task:
    """A signature checked for one API: the tensor it feeds and the outputs it fetches."""

    api: _Api
    signature_name: str
    input: TensorSpec
    outputs: dict[str, TensorSpec]
    """The API's output aliases the signature has."""

    def fetched(self, results: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """This task's outputs by alias, from a run's results keyed by tensor name."""
        return {alias: results[spec.name] for alias, spec in self.outputs.items()}


def _debug_string(servable: LoadedModel, signature: Signature) -> str:
    """``SignatureDef::DebugString()``: the proto in text format."""
    return text_format.MessageToString(servable.meta_graph.signature_def[signature.key])


def _task(api: _Api, servable: LoadedModel, name: str, check_method_name: bool) -> _Task:
    """PreProcessClassification / PreProcessRegression, on signature ``name`` (known to exist)."""
    signature = servable.signatures[name]
    if check_method_name and signature.method_name != api.method_name:
        raise InvalidArgument(
            f"Expected {api.noun} signature method_name to be {api.method_name}. "
            f"Was: {signature.method_name}"
        )
    if len(signature.inputs) != 1:
        raise InvalidArgument("Expected one input Tensor.")
    if len(signature.outputs) not in api.output_counts:
        raise InvalidArgument(api.output_count_error.format(n=len(signature.outputs)))
    spec = signature.inputs.get(INPUTS)
    if spec is None:
        raise InvalidArgument(
            f"No {api.noun} inputs found in SignatureDef: {_debug_string(servable, signature)}"
        )
    outputs = {a: signature.outputs[a] for a in api.outputs if a in signature.outputs}
    if not outputs:
        raise InvalidArgument(api.no_outputs_error + _debug_string(servable, signature))
    return _Task(api=api, signature_name=name, input=spec, outputs=outputs)


# --- requests in, one session run ---------------------------------------------------------


def serialized_examples(model_input: input_pb2.Input) -> np.ndarray:
    """The tensor TF Serving feeds: a vector of serialized tf.Examples (util.cc).

    With ``example_list_with_context`` each entry is ``context + example`` as bytes; parsing
    the concatenation merges both, the example's features winning over the context's. That
    copies the context into every example, so the merge is refused (INVALID_ARGUMENT) before
    it is made when it would exceed the input's own size by more than ``MAX_GROWTH_BYTES``
    (``compat.limits``): 100,000 empty examples with a 30 KB context would be 3 GB.
    """
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in model_input.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = model_input.example_list_with_context
        context = with_context.context.SerializeToString()
        _check_merge(len(context), with_context)
        examples = [context + e.SerializeToString() for e in with_context.examples]
    else:
        examples = []
    if not examples:
        raise InvalidArgument("Input is empty.")
    tensor = np.empty(len(examples), dtype=object)
    tensor[:] = examples
    return tensor


def _check_merge(context: int, with_context: input_pb2.ExampleListWithContext) -> None:
    """Refuse a context merge that would grow the input far beyond its own size."""
    count = len(with_context.examples)
    received = with_context.ByteSize()
    merged = count * context + received
    allowed = growth_allowed(received)
    if count and merged > allowed:
        raise InvalidArgument(
            f"Input of {count} examples with a context of {context} bytes would merge to "
            f"{merged} bytes, more than the {allowed} bytes allowed for a {received}-byte input"
        )


def _placeholder_dtypes(servable: LoadedModel) -> dict[str, int]:
    """Placeholder name -> its dtype in the graph, computed once per servable."""
    dtypes = _PLACEHOLDER_DTYPES.get(servable)
    if dtypes is None:
        dtypes = {
            node.name: node.attr["dtype"].type
            for node in servable.meta_graph.graph_def.node
            if node.op in _PLACEHOLDER_OPS
        }
        _PLACEHOLDER_DTYPES[servable] = dtypes
    return dtypes


def _run(
    servable: LoadedModel, tasks: Iterable[_Task], examples: np.ndarray
) -> dict[str, np.ndarray]:
    """One session run feeding ``examples`` to every task's input; results by tensor name.

    A feed is typed by the graph's placeholder when it is one, else by the signature's
    TensorInfo (TF Serving never reads the TensorInfo, and half_plus_three's says DT_FLOAT for
    a string placeholder), so a signature whose input is not a string fails with TF's own
    "Expects arg[0] to be float but string is provided".
    """
    tasks = list(tasks)
    placeholders = _placeholder_dtypes(servable)
    feeds = {
        t.input.name: TensorSpec(
            t.input.name, placeholders.get(t.input.name.split(":")[0], t.input.dtype), None
        )
        for t in tasks
    }
    fetches = {spec.name: spec for t in tasks for spec in t.outputs.values()}
    run_signature = Signature(key="", method_name="", inputs=feeds, outputs=fetches)
    return servable.run(run_signature, dict.fromkeys(feeds, examples), sorted(fetches))


def _infer(
    api: _Api,
    servable: LoadedModel,
    request: classification_pb2.ClassificationRequest | regression_pb2.RegressionRequest,
    response: _Response,
    model: str,
    version: int,
    check_method_name: bool,
) -> _Response:
    """RunClassify / RunRegress: signature, model spec, input, one run, result."""
    name = signature_name(request.model_spec.signature_name)
    if name not in servable.signatures:
        raise InvalidArgument(f"No signature was found with the name: {name}")
    task = _task(api, servable, name, check_method_name)
    set_model_spec(response.model_spec, model, version, name)
    examples = serialized_examples(request.input)
    results = _run(servable, [task], examples)
    api.post_process(len(examples), task.fetched(results), response.result)
    return response


# --- the public API -----------------------------------------------------------------------


def classify(
    servable: LoadedModel,
    request: classification_pb2.ClassificationRequest,
    model: str,
    version: int,
    *,
    check_method_name: bool = False,
) -> classification_pb2.ClassificationResponse:
    """Classify: ``result.classifications[i].classes[j]`` with label and/or score."""
    return _infer(
        CLASSIFY,
        servable,
        request,
        classification_pb2.ClassificationResponse(),
        model,
        version,
        check_method_name,
    )


def regress(
    servable: LoadedModel,
    request: regression_pb2.RegressionRequest,
    model: str,
    version: int,
    *,
    check_method_name: bool = False,
) -> regression_pb2.RegressionResponse:
    """Regress: ``result.regressions[i].value``."""
    return _infer(
        REGRESS,
        servable,
        request,
        regression_pb2.RegressionResponse(),
        model,
        version,
        check_method_name,
    )


def multi_inference_model_spec(
    request: inference_pb2.MultiInferenceRequest,
) -> model_pb2.ModelSpec:
    """The spec a MultiInference is routed by: its first task's (multi_inference_helper.cc).

    An empty spec when there is none, which routing refuses ("ModelSpec has no name specified.").
    """
    if request.tasks and request.tasks[0].HasField("model_spec"):
        return request.tasks[0].model_spec
    return model_pb2.ModelSpec()


def multi_inference(
    servable: LoadedModel,
    request: inference_pb2.MultiInferenceRequest,
    model: str,
    version: int,
    *,
    check_method_name: bool = False,
) -> inference_pb2.MultiInferenceResponse:
    """MultiInference: classify/regress tasks over one input, one session run for all.

    ``model`` is the name the servable was resolved by (:func:`multi_inference_model_spec`);
    ``results[i]`` answers ``tasks[i]`` with its own model spec.
    """
    if not request.tasks:
        raise InvalidArgument("ModelSpec has no name specified.")
    model_name = request.tasks[0].model_spec.name
    tasks: list[_Task] = []
    for requested in request.tasks:
        spec = requested.model_spec
        if not spec.name:
            raise InvalidArgument("Found ModelSpec with an empty model name.")
        if spec.name != model_name:
            raise InvalidArgument(
                "All ModelSpecs in a MultiInferenceRequest must access the same model name."
            )
        name = signature_name(spec.signature_name)
        if any(t.signature_name == name for t in tasks):
            raise InvalidArgument(f"Duplicate evaluation of signature: {name}")
        if name not in servable.signatures:
            raise InvalidArgument(f"Requested signature not found in model graph: {name}")
        api = _APIS.get(requested.method_name)
        if api is None:
            raise Unimplemented(f"Unsupported signature method_name: {requested.method_name}")
        tasks.append(_task(api, servable, name, check_method_name))

    examples = serialized_examples(request.input)
    results = _run(servable, tasks, examples)
    response = inference_pb2.MultiInferenceResponse()
    for task in tasks:
        result = response.results.add()
        task.api.post_process(
            len(examples), task.fetched(results), getattr(result, task.api.result_field)
        )
        set_model_spec(result.model_spec, model, version, task.signature_name)
    return response
