"""``compat.servable``: the MetaGraph loaded is the one tagged with exactly the tags asked for
(``--saved_model_tags``), as TF's loader and TF Serving match a tag set; ``compat.platforms``:
the factory loads a version by its ``model_platform``, refuses one not served with TF Serving's
error, and the data plane runs over any ``LoadedModel`` (a fake platform's here)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from compat import dataplane, model_config, platforms, tensors
from compat.errors import FailedPrecondition
from compat.protos import meta_graph_pb2, predict_pb2, types_pb2
from compat.servable import Servable, SessionOptions
from compat.signatures import Signature, TensorSpec


@pytest.fixture(scope="module")
def gpu_tagged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """y = 2x, exported under the tags {serve, gpu} only (TF1's builder)."""
    path = tmp_path_factory.mktemp("tagged") / "1"
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        y = tf.multiply(x, 2.0, name="y")
        signature = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": y})
        builder = tf.compat.v1.saved_model.Builder(str(path))
        builder.add_meta_graph_and_variables(
            session, ["serve", "gpu"], signature_def_map={"serving_default": signature}
        )
        builder.save()
    return path


def test_the_meta_graph_with_exactly_the_tags_asked_for_is_loaded(gpu_tagged: Path) -> None:
    servable = Servable(gpu_tagged, SessionOptions(tags=("gpu", "serve")))  # a set: any order
    signature = servable.signature("serving_default")
    out = servable.run(signature, {"x": np.array([1.5, 2.0], np.float32)}, ["y"])
    assert out["y"].tolist() == [3.0, 4.0]
    assert servable.tags == ("gpu", "serve")


def test_a_tag_set_the_model_lacks_is_tf_servings_error(gpu_tagged: Path, testdata: Path) -> None:
    with pytest.raises(FailedPrecondition) as e:
        Servable(gpu_tagged)  # {serve} alone is no meta graph of this model
    assert e.value.message.startswith(
        "Could not find meta graph def matching supplied tags: { serve }."
    )
    with pytest.raises(FailedPrecondition) as e:
        Servable(
            testdata / "saved_model_half_plus_two_cpu" / "00000123",
            SessionOptions(tags=("serve", "gpu")),
        )
    assert "matching supplied tags: { serve gpu }" in e.value.message


def test_the_session_config_text_is_applied_under_the_flags() -> None:
    """--tensorflow_session_config_file: its ConfigProto, with the thread flags (where set) and
    the GPU memory flag over it, as TF Serving applies its flags over the file."""
    from compat.servable import session_config

    text = (
        "intra_op_parallelism_threads: 3 inter_op_parallelism_threads: 5 "
        "use_per_session_threads: true gpu_options { per_process_gpu_memory_fraction: 0.25 }"
    )
    config = session_config(SessionOptions(config_text=text))
    assert (config.intra_op_parallelism_threads, config.inter_op_parallelism_threads) == (3, 5)
    assert config.use_per_session_threads and config.allow_soft_placement
    assert config.gpu_options.per_process_gpu_memory_fraction == 0.25
    assert not config.gpu_options.allow_growth
    config = session_config(
        SessionOptions(
            intra_op_parallelism=2,
            inter_op_parallelism=-1,
            per_process_gpu_memory_fraction=0.5,
            config_text=text,
        )
    )
    assert (config.intra_op_parallelism_threads, config.inter_op_parallelism_threads) == (2, -1)
    assert config.gpu_options.per_process_gpu_memory_fraction == 0.5
    assert session_config(SessionOptions()).gpu_options.allow_growth


def test_mixed_precision_bfloat16_turns_on_tfs_rewrite() -> None:
    from tensorflow.core.protobuf import rewriter_config_pb2

    from compat.servable import session_config

    on = rewriter_config_pb2.RewriterConfig.ON
    rewrite = session_config(SessionOptions(mixed_precision="bfloat16")).graph_options
    assert rewrite.rewrite_options.auto_mixed_precision_onednn_bfloat16 == on
    default = session_config(SessionOptions()).graph_options.rewrite_options
    assert default.auto_mixed_precision_onednn_bfloat16 != on


def test_a_version_loads_and_runs_under_a_session_config_and_bfloat16(
    gpu_tagged: Path,
) -> None:
    servable = Servable(
        gpu_tagged,
        SessionOptions(
            tags=("serve", "gpu"),
            config_text="intra_op_parallelism_threads: 1 inter_op_parallelism_threads: 1",
            mixed_precision="bfloat16",
        ),
    )
    try:
        sig = servable.signature("serving_default")
        out = servable.run(sig, {"x": np.array([1.0, 2.0], np.float32)}, ["y"])
        assert out["y"].tolist() == [2.0, 4.0]
    finally:
        servable.close()


# --- the model-format seam: compat.platforms ----------------------------------------------


class DoublingModel:
    """A LoadedModel of another platform: y = 2x, run in numpy (no TF session)."""

    def __init__(self, path: str | os.PathLike[str], options: SessionOptions) -> None:
        self.path = str(path)
        self.tags = tuple(options.tags)
        x, y = (TensorSpec(f"{n}:0", types_pb2.DT_FLOAT, (-1,)) for n in "xy")
        predict = "tensorflow/serving/predict"
        self.signatures = {
            "serving_default": Signature("serving_default", predict, {"x": x}, {"y": y})
        }
        self.meta_graph = meta_graph_pb2.MetaGraphDef()
        self.closed = False

    def signature(self, key: str) -> Signature:
        return self.signatures[key]

    def run(
        self, signature: Signature, inputs: Mapping[str, np.ndarray], output_aliases: Sequence[str]
    ) -> dict[str, np.ndarray]:
        return {a: inputs["x"] * 2 for a in output_aliases}

    def close(self) -> None:
        self.closed = True


def test_the_tensorflow_platform_loads_a_tf1_session_servable(testdata: Path) -> None:
    model = platforms.load(testdata / "saved_model_half_plus_two_cpu" / "00000123")
    try:
        assert isinstance(model, Servable) and model.tags == ("serve",)
        out = model.run(
            model.signature("serving_default"), {"x": np.array([2.0], np.float32)}, ["y"]
        )
        assert out["y"].tolist() == [3.0]
    finally:
        model.close()


@pytest.mark.parametrize("platform", ["tflite", "pytorch", "", "TensorFlow"])
def test_a_platform_not_served_is_tf_servings_failed_precondition(
    testdata: Path, platform: str
) -> None:
    with pytest.raises(FailedPrecondition) as e:
        platforms.load(testdata / "saved_model_half_plus_two_cpu" / "00000123", platform=platform)
    assert e.value.message == f"PlatformConfigMap has no entry for platform {platform}"


def test_another_platform_is_one_entry_for_the_config_the_loader_and_the_data_plane(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A platform in ``PLATFORMS`` is taken by the config check and loaded by the factory, and
    the data plane runs over its model through the Protocol alone."""
    config = model_config.parse_text(
        'model_config_list { config { name: "m" base_path: "/m" model_platform: "doubling" } }'
    )
    with pytest.raises(FailedPrecondition):
        model_config.entries(config)
    monkeypatch.setitem(platforms.PLATFORMS, "doubling", DoublingModel)
    assert [e.name for e in model_config.entries(config)] == ["m"]
    model = platforms.load("/m/1", SessionOptions(tags=("serve",)), platform="doubling")
    assert isinstance(model, DoublingModel)
    request = predict_pb2.PredictRequest()
    request.inputs["x"].CopyFrom(tensors.from_numpy(np.array([1.5, 4.0], np.float32)))
    call = dataplane.prepare_predict(model, request)
    call.outputs = model.run(call.signature, call.inputs, call.output_aliases)
    response = dataplane.finish_predict(call, "m", 1)
    assert tensors.to_numpy(response.outputs["y"]).tolist() == [3.0, 8.0]
