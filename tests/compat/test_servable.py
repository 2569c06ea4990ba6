"""``compat.servable``: the MetaGraph loaded is the one tagged with exactly the tags asked for
(``--saved_model_tags``), as TF's loader and TF Serving match a tag set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from compat.errors import FailedPrecondition
from compat.servable import Servable, SessionOptions


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
