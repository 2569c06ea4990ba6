"""The ``export`` package: synthetic data, mean IoU, the SavedModel and its command line."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from export.__main__ import main
from export.deeplab import TrainStats, build_model, mean_iou, train
from export.savedmodel import (
    OUTPUT_KEY,
    PREDICT_IMAGES,
    SERVING_DEFAULT,
    ExportVerificationError,
    VersionExistsError,
    export_model,
    save,
    verify,
)
from export.show import read_saved_model, show
from export.synthetic import CLASS_NAMES, NUM_CLASSES, make_batch
from tests.harness import TESTDATA

REPO = Path(__file__).resolve().parents[2]
HALF_PLUS_TWO = TESTDATA / "saved_model_half_plus_two_cpu/00000123"
TINY = {"steps": 4, "size": 32}
PREDICT_METHOD = "tensorflow/serving/predict"


def run_cli(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """``python -m export ARGS`` from the repository root, in a process of its own."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "export", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_main(capsys: pytest.CaptureFixture[str], *args: str | os.PathLike[str]) -> Run:
    """The command line's ``main`` in this process (TensorFlow is imported once, not per
    run): its exit status and what it printed, as ``run_cli`` returns them."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return Run(code, out, err)


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def signatures(version_path: Path) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs of the ``serve`` meta graph in ``version_path/saved_model.pb``."""
    (meta_graph,) = read_saved_model(version_path).meta_graphs
    assert list(meta_graph.meta_info_def.tags) == ["serve"]
    return dict(meta_graph.signature_def)


def shape_of(info: meta_graph_pb2.TensorInfo) -> list[int]:
    assert not info.tensor_shape.unknown_rank
    return [d.size for d in info.tensor_shape.dim]


@pytest.fixture(scope="module")
def tiny_model() -> keras.Model:
    model, stats = train(**TINY, log=None)
    assert stats.steps == TINY["steps"] and 0.0 <= stats.mean_iou <= 1.0
    return model


@pytest.fixture(scope="module")
def exported(tiny_model: keras.Model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<base>/1`` written by the API's :func:`save` (do not modify; copy it first)."""
    base = tmp_path_factory.mktemp("api")
    path = save(tiny_model, base, 1)
    assert path == base / "1"
    return path


SessionRun = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]


@pytest.fixture(scope="module")
def session_run(exported: Path) -> Iterator[SessionRun]:
    """``exported`` loaded once the way TF Serving's C++ ``SavedModelBundle`` loads it (the TF1
    session loader): runs a signature, by key, on feeds by input alias. The session is not
    entered (``with``): that would make its graph the default one for the tests in between."""
    sess = tf.compat.v1.Session(graph=tf.Graph())
    try:
        meta_graph = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(exported))

        def run(signature_key: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            sig = meta_graph.signature_def[signature_key]
            fetches = {alias: info.name for alias, info in sig.outputs.items()}
            return sess.run(fetches, {sig.inputs[a].name: v for a, v in feeds.items()})

        yield run
    finally:
        sess.close()


def one_layer_network() -> keras.Model:
    """A network of the exported kind (float images of any size in, per-pixel class logits
    out) with one 1x1 convolution: as real to save and load as the DeepLab one, and cheap."""
    images = keras.Input(shape=(None, None, 3), name="images")
    return keras.Model(images, keras.layers.Conv2D(NUM_CLASSES, 1)(images))


# --- synthetic data --------------------------------------------------------------------------


def test_synthetic_batch_shapes_and_ranges() -> None:
    images, labels = make_batch(16, 40, seed=3)
    assert images.shape == (16, 40, 40, 3) and images.dtype == np.float32
    assert labels.shape == (16, 40, 40) and labels.dtype == np.int64
    assert images.min() >= 0.0 and images.max() <= 255.0
    assert set(np.unique(labels)) == set(range(NUM_CLASSES))
    assert len(CLASS_NAMES) == NUM_CLASSES and CLASS_NAMES[0] == "background"
    assert all((labels[i] > 0).any() for i in range(16)), "every image has a shape"


def test_synthetic_batch_is_deterministic() -> None:
    a_images, a_labels = make_batch(4, 32, seed=11)
    b_images, b_labels = make_batch(4, 32, seed=11)
    np.testing.assert_array_equal(a_images, b_images)
    np.testing.assert_array_equal(a_labels, b_labels)
    c_images, c_labels = make_batch(4, 32, seed=12)
    assert not np.array_equal(a_images, c_images) and not np.array_equal(a_labels, c_labels)


def test_synthetic_colour_follows_class_with_noise() -> None:
    images, labels = make_batch(64, 32, seed=5)
    means = np.array([images[labels == c].mean(axis=0) for c in range(1, NUM_CLASSES)])
    # circles reddest, squares greenest, triangles bluest on average ...
    assert list(np.argmax(means, axis=0)) == [0, 1, 2]
    # ... but not a fixed colour: shapes of one class vary
    assert images[labels == 1].std(axis=0).min() > 15.0


def test_synthetic_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        make_batch(-1, 32, seed=0)
    with pytest.raises(ValueError):
        make_batch(1, 4, seed=0)


# --- mean IoU --------------------------------------------------------------------------------


def test_mean_iou_by_hand() -> None:
    truth = np.array([[0, 0, 1, 1], [0, 0, 2, 2]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 2, 3]])
    # class 0: 3 / 4; class 1: 2 / 3; class 2: 1 / 2; class 3 (pred only): 0 / 1
    assert mean_iou(pred, truth, 4) == pytest.approx((3 / 4 + 2 / 3 + 1 / 2 + 0) / 4)
    # classes absent from both are ignored
    assert mean_iou(truth, truth, 4) == 1.0
    assert mean_iou(np.zeros((2, 2)), np.zeros((2, 2)), 4) == 1.0
    assert mean_iou(np.ones((3,)), np.zeros((3,)), 2) == 0.0


def test_mean_iou_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        mean_iou(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError):
        mean_iou(np.full((2, 2), 9), np.full((2, 2), 9), 4)


# --- network ---------------------------------------------------------------------------------


def test_network_accepts_any_size() -> None:
    model = build_model()
    for height, width in [(32, 32), (17, 23), (1, 5), (65, 40)]:
        logits = model(np.zeros((2, height, width, 3), np.float32), training=False)
        assert tuple(logits.shape) == (2, height, width, NUM_CLASSES)


# --- SavedModel ------------------------------------------------------------------------------


def test_layout_and_no_leftovers(exported: Path) -> None:
    assert sorted(os.listdir(exported.parent)) == ["1"]
    assert (exported / "saved_model.pb").is_file()
    assert (exported / "variables" / "variables.index").is_file()
    assert oct(exported.stat().st_mode & 0o777) == oct(0o755)


def test_signature_defs(exported: Path) -> None:
    sigs = signatures(exported)
    assert {PREDICT_IMAGES, SERVING_DEFAULT} <= set(sigs)
    assert set(sigs) - {PREDICT_IMAGES, SERVING_DEFAULT} <= {"__saved_model_init_op"}

    predict = sigs[PREDICT_IMAGES]
    assert predict.method_name == PREDICT_METHOD
    assert set(predict.inputs) == {"images", "height", "width"}
    assert predict.inputs["images"].dtype == types_pb2.DT_FLOAT
    assert shape_of(predict.inputs["images"]) == [-1, -1, -1, 3]
    for alias in ("height", "width"):
        assert predict.inputs[alias].dtype == types_pb2.DT_INT32
        assert shape_of(predict.inputs[alias]) == [-1]

    default = sigs[SERVING_DEFAULT]
    assert default.method_name == PREDICT_METHOD
    assert set(default.inputs) == {"images"}
    assert default.inputs["images"].dtype == types_pb2.DT_FLOAT
    assert shape_of(default.inputs["images"]) == [-1, -1, -1, 3]

    for sig in (predict, default):
        assert set(sig.outputs) == {OUTPUT_KEY}
        assert sig.outputs[OUTPUT_KEY].dtype == types_pb2.DT_INT64
        assert shape_of(sig.outputs[OUTPUT_KEY]) == [-1, -1, -1]


def test_session_loader_tutorial_request(session_run: SessionRun) -> None:
    """One [1, H, W, 3] image with [1]-shaped height and width, as the DeepLab tutorial sends."""
    images, _ = make_batch(1, 33, seed=1)
    out = session_run(
        PREDICT_IMAGES,
        {"images": images, "height": np.array([50], np.int32), "width": np.array([47], np.int32)},
    )
    seg = out[OUTPUT_KEY]
    assert seg.dtype == np.int64 and seg.shape == (1, 50, 47)
    assert seg.min() >= 0 and seg.max() < NUM_CLASSES


def test_session_loader_batch_of_two(session_run: SessionRun) -> None:
    images = make_batch(2, 25, seed=2)[0][:, :, :19]
    feeds = {
        "images": images,
        "height": np.array([25], np.int32),
        "width": np.array([19], np.int32),
    }
    seg = session_run(PREDICT_IMAGES, feeds)[OUTPUT_KEY]
    default = session_run(SERVING_DEFAULT, {"images": images})[OUTPUT_KEY]
    for out in (seg, default):
        assert out.dtype == np.int64 and out.shape == (2, 25, 19)
    # at the input's own size, resizing the logits changes (almost) nothing
    assert np.mean(seg == default) >= 0.99


def test_tf2_loader_matches_in_memory_model(exported: Path, tiny_model: keras.Model) -> None:
    images, _ = make_batch(3, 32, seed=4)
    loaded = tf.saved_model.load(str(exported))
    seg = loaded.signatures[SERVING_DEFAULT](images=tf.constant(images))[OUTPUT_KEY].numpy()
    expected = np.argmax(tiny_model(images, training=False), axis=-1)
    assert seg.dtype == np.int64
    assert np.mean(seg == expected) >= 0.99
    resized = loaded.signatures[PREDICT_IMAGES](
        images=tf.constant(images), height=tf.constant([32]), width=tf.constant([32])
    )[OUTPUT_KEY].numpy()
    assert np.mean(resized == seg) >= 0.99


def test_verify_accepts_an_export_of_its_model_only(tmp_path: Path) -> None:
    """``save`` verifies what it writes (the ``exported`` fixture's DeepLab export passed it);
    ``verify`` accepts an export of the model it is given and refuses one of another."""
    network, other = one_layer_network(), one_layer_network()
    path = save(network, tmp_path, 1)
    verify(path, network)
    verify(path)  # the two loaders agree, with no model to compare
    with pytest.raises(ExportVerificationError, match="exported and in-memory model agree on"):
        verify(path, other)


def test_refuses_existing_version(exported: Path, tiny_model: keras.Model) -> None:
    before = (exported / "variables" / "variables.data-00000-of-00001").read_bytes()
    with pytest.raises(VersionExistsError, match="already exists"):
        save(tiny_model, exported.parent, 1)
    with pytest.raises(VersionExistsError):  # refused before any training
        export_model(exported.parent, 1, steps=10**9, log=None)
    assert sorted(os.listdir(exported.parent)) == ["1"]
    assert (exported / "variables" / "variables.data-00000-of-00001").read_bytes() == before


def test_rejects_bad_version(tiny_model: keras.Model, tmp_path: Path) -> None:
    for version in (-1, "2", 1.5):
        with pytest.raises(ValueError, match="version"):
            save(tiny_model, tmp_path, version)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


# --- command line ----------------------------------------------------------------------------


def test_cli_export_refuse_and_overwrite(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An existing version is refused before any training; ``--overwrite`` trains with the
    command line's steps, size and seed, printing its progress, and replaces the version whole
    with the trained network. The training is recorded (``train`` is tested above); what it
    returns is a one-layer network, whose export ``save`` checks as it checks any."""
    import export.savedmodel

    trained: list[dict[str, Any]] = []
    network = one_layer_network()

    def recorded_train(**options: Any) -> tuple[keras.Model, TrainStats]:
        trained.append(options)
        options["log"]("step 1/2 loss 1.0000 elapsed 0.1s")
        return network, TrainStats(2, 16, 1, 0.5, 1.0, 0.25)

    monkeypatch.setattr(export.savedmodel, "train", recorded_train)
    base = tmp_path / "models" / "deeplab"
    old = base / "7"
    for name in ("saved_model.pb", "variables/variables.index", "assets.extra/old"):
        (old / name).parent.mkdir(parents=True, exist_ok=True)
        (old / name).write_bytes(b"an old version")
    tiny = ["--steps", "2", "--size", "16"]

    refused = run_main(capsys, "--base-path", base, "--version", "7", *tiny)
    assert refused.returncode == 1
    assert "already exists" in refused.stderr and "--overwrite" in refused.stderr
    assert trained == [] and "step 1/" not in refused.stdout
    assert (old / "assets.extra" / "old").read_bytes() == b"an old version"

    done = run_main(
        capsys, "--base-path", base, "--version", "7", *tiny, "--seed", "3", "--overwrite"
    )
    assert done.returncode == 0, done.stderr
    assert trained == [{"steps": 2, "size": 16, "seed": 3, "log": print}]
    lines = done.stdout.strip().splitlines()
    assert lines == [
        "step 1/2 loss 1.0000 elapsed 0.1s",
        f"exported steps=2 seconds=0.5 mean_iou=0.250 path={base / '7'}",
    ]
    assert sorted(os.listdir(base)) == ["7"]
    assert not (base / "7" / "assets.extra").exists()  # the version replaced whole ...
    verify(base / "7", network)  # ... by the trained network's export
    assert {PREDICT_IMAGES, SERVING_DEFAULT} <= set(signatures(base / "7"))


def test_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    """``python -m export`` itself, in processes of their own (refused before TensorFlow is
    imported: a second each)."""
    assert run_cli("--base-path", tmp_path, "--version", "-2").returncode == 2
    assert run_cli("--version", "1").returncode == 2
    assert run_cli("--base-path", tmp_path, "--version", "1", "--size", "4").returncode == 2
    assert not any(tmp_path.iterdir())


def test_cli_show_all_tf1_model(capsys: pytest.CaptureFixture[str]) -> None:
    done = run_main(capsys, "show", "--dir", HALF_PLUS_TWO, "--all")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "MetaGraphDef with tag-set: 'serve'" in out
    for key in ("serving_default", "classify_x_to_y", "regress_x_to_y", "regress_x2_to_y3"):
        assert f"signature_def['{key}']:" in out
    assert "inputs['x'] tensor_info:" in out and "outputs['y'] tensor_info:" in out
    assert "dtype: DT_FLOAT" in out and "dtype: DT_STRING" in out
    assert "shape: (-1, 1)" in out and "shape: unknown_rank" in out
    assert "name: x:0" in out and "name: tf_example:0" in out
    assert "Method name is: tensorflow/serving/classify" in out
    assert "Method name is: tensorflow/serving/regress" in out


def test_cli_show_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    done = run_main(capsys, "show", "--dir", tmp_path)
    assert done.returncode == 1 and "no saved_model.pb" in done.stderr


def test_show_levels_tf1_model() -> None:
    assert show(HALF_PLUS_TWO).splitlines() == [
        "The given SavedModel contains the following tag-sets:",
        "'serve'",
    ]
    keys = show(HALF_PLUS_TWO, tag_set="serve")
    assert 'SignatureDef key: "serving_default"' in keys
    assert 'SignatureDef key: "regress_x_to_y2"' in keys
    one = show(HALF_PLUS_TWO, tag_set="serve", signature_def="regress_x_to_y2")
    assert "outputs['outputs'] tensor_info:" in one and "name: y2:0" in one
    with pytest.raises(LookupError, match="tag-set"):
        show(HALF_PLUS_TWO, tag_set="gpu")
    with pytest.raises(LookupError, match="nope"):
        show(HALF_PLUS_TWO, signature_def="nope")


def test_show_own_export(exported: Path) -> None:
    out = show(exported, tag_set="serve", signature_def=PREDICT_IMAGES)
    assert "inputs['height'] tensor_info:" in out and "dtype: DT_INT32" in out
    assert "shape: (-1, -1, -1, 3)" in out and "shape: (-1)" in out
    assert "outputs['segmentation_map'] tensor_info:" in out and "dtype: DT_INT64" in out
    assert f"Method name is: {PREDICT_METHOD}" in out
    assert "signature_def['serving_default']:" in show(exported, show_all=True)
