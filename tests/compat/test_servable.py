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
