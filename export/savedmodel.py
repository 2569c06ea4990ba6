"""Versioned, atomic SavedModel export of the segmentation network with TF Serving signatures.

The SavedModel at ``<base_path>/<version>`` has two signatures, both with method name
``tensorflow/serving/predict`` and one output, ``segmentation_map`` (int64 ``[batch, h, w]``,
the per-pixel argmax class):

* ``predict_images`` - inputs ``images`` (float32 ``[batch, H, W, 3]``, 0..255), ``height`` and
  ``width`` (int32 ``[batch]``); the map is at ``height[0]`` x ``width[0]`` (logits resized
  bilinearly), as in TF Serving's DeepLab tutorial, where a client sends ``[1, H, W, 3]`` and
  ``[1]``-shaped sizes. The batch dimension is free so that a server can stack requests.
* ``serving_default`` - input ``images`` only; the map is at the input's ``H`` x ``W``.

The model is written to a hidden temporary directory inside ``base_path``, checked with both
TF2 ``tf.saved_model.load`` and the TF1 session loader (the way TF Serving's C++
``SavedModelBundle`` loads it), and only then renamed to its numeric version directory, so a
server watching ``base_path`` never sees a partial version.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from export.deeplab import DEFAULT_SIZE, DEFAULT_STEPS, predict_labels, train
from export.synthetic import NUM_CLASSES, make_batch

PREDICT_IMAGES = "predict_images"
SERVING_DEFAULT = "serving_default"
OUTPUT_KEY = "segmentation_map"
SERVE_TAG = "serve"
_TMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"
_MIN_AGREEMENT = 0.99
"""Share of pixels on which :func:`verify`'s loaders and the in-memory model must agree."""


class VersionExistsError(FileExistsError):
    """The version directory exists and ``overwrite`` was not asked for."""


class ExportVerificationError(RuntimeError):
    """A freshly written SavedModel failed :func:`verify`."""


def _images_spec() -> tf.TensorSpec:
    return tf.TensorSpec([None, None, None, 3], tf.float32, name="images")


def _segmentation_map(logits: tf.Tensor) -> dict[str, tf.Tensor]:
    return {OUTPUT_KEY: tf.argmax(logits, axis=-1, output_type=tf.int64)}


def build_archive(model: keras.Model) -> keras.export.ExportArchive:
    """A Keras ``ExportArchive`` holding ``model`` behind the two serving signatures.

    ``ExportArchive``, unlike a ``tf.Module`` holding the Keras model, saves the plain TF
    variables the signatures use, so the TF1 session loader restores exactly the variables
    the graph reads. The archive tracks them through the endpoints; ``track(model)`` would
    save every variable a second time.
    """
    archive = keras.export.ExportArchive()

    def predict_images(images: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> dict:
        logits = model(images, training=False)
        size = tf.stack([height[0], width[0]])
        return _segmentation_map(tf.image.resize(logits, size, method="bilinear"))

    def serving_default(images: tf.Tensor) -> dict:
        return _segmentation_map(model(images, training=False))

    archive.add_endpoint(
        PREDICT_IMAGES,
        predict_images,
        input_signature=[
            _images_spec(),
            tf.TensorSpec([None], tf.int32, name="height"),
            tf.TensorSpec([None], tf.int32, name="width"),
        ],
    )
    archive.add_endpoint(SERVING_DEFAULT, serving_default, input_signature=[_images_spec()])
    return archive


def version_dir(base_path: str | os.PathLike[str], version: int) -> Path:
    """``<base_path>/<version>``, after checking that ``version`` is a non-negative int."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"version must be a non-negative integer, got {version!r}")
    return Path(base_path) / str(version)


def save(
    model: keras.Model, base_path: str | os.PathLike[str], version: int, overwrite: bool = False
) -> Path:
    """Write ``model`` as ``<base_path>/<version>`` atomically and return that path.

    Raises :class:`VersionExistsError` if the version exists and ``overwrite`` is false. With
    ``overwrite`` the old version is moved aside, the new one renamed in, and the old one
    deleted (two renames: the version is absent only between them).
    """
    final = version_dir(base_path, version)
    _refuse_existing(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{version}-", dir=final.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a server may run as another user
        build_archive(model).write_out(str(tmp), verbose=False)
        verify(tmp, model)
        _refuse_existing(final, overwrite)
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def export_model(
    base_path: str | os.PathLike[str],
    version: int,
    *,
    steps: int | None = None,
    size: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Train a network (defaults: the full training) and :func:`save` it; return its path.

    Refuses an existing version before training. Progress and a final summary line (steps,
    seconds, mean IoU, path) go to ``log``.
    """
    _refuse_existing(version_dir(base_path, version), overwrite)
    model, stats = train(
        steps=DEFAULT_STEPS if steps is None else steps,
        size=DEFAULT_SIZE if size is None else size,
        seed=seed,
        log=log,
    )
    path = save(model, base_path, version, overwrite=overwrite)
    if log is not None:
        log(
            f"exported steps={stats.steps} seconds={stats.seconds:.1f} "
            f"mean_iou={stats.mean_iou:.3f} path={path}"
        )
    return path


def verify(path: str | os.PathLike[str], model: keras.Model | None = None) -> None:
    """Check the SavedModel at ``path`` with both loaders on a batch of two odd-sized images.

    Runs ``predict_images`` and ``serving_default`` through ``tf.saved_model.load`` and through
    the TF1 session loader and checks every output's shape, dtype and value range, and that
    the loaders agree with each other and (given ``model``) with the in-memory network on at
    least 99% of pixels. Raises :class:`ExportVerificationError` on any failure.
    """
    images, _ = make_batch(2, 21, seed=7)
    images = images[:, :, :19]
    out_hw = np.array([13], np.int32), np.array([27], np.int32)
    feeds = {
        PREDICT_IMAGES: {"images": images, "height": out_hw[0], "width": out_hw[1]},
        SERVING_DEFAULT: {"images": images},
    }
    expected_shapes = {PREDICT_IMAGES: (2, 13, 27), SERVING_DEFAULT: (2, 21, 19)}

    loaded = tf.saved_model.load(str(path))
    tf2 = {
        key: loaded.signatures[key](**{k: tf.constant(v) for k, v in feed.items()})[OUTPUT_KEY]
        for key, feed in feeds.items()
    }
    with _quiet_tf_logging(), tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta_graph = tf.compat.v1.saved_model.loader.load(sess, [SERVE_TAG], str(path))
        tf1 = {}
        for key, feed in feeds.items():
            sig = meta_graph.signature_def[key]
            tf1[key] = sess.run(
                sig.outputs[OUTPUT_KEY].name,
                feed_dict={sig.inputs[name].name: value for name, value in feed.items()},
            )

    for key, shape in expected_shapes.items():
        for loader, result in (("tf.saved_model.load", tf2[key]), ("session loader", tf1[key])):
            out = np.asarray(result)
            _check(
                out.shape == shape and out.dtype == np.int64,
                f"{key} via {loader}: got {out.dtype}{out.shape}, want int64{shape}",
            )
            _check(out.min() >= 0 and out.max() < NUM_CLASSES, f"{key} via {loader}: bad labels")
        _check_agreement(tf1[key], np.asarray(tf2[key]), f"{key}: the two loaders")
    if model is not None:
        _check_agreement(
            tf1[SERVING_DEFAULT], predict_labels(model, images), "exported and in-memory model"
        )


def _check(condition: bool | np.bool_, message: str) -> None:
    if not condition:
        raise ExportVerificationError(message)


def _check_agreement(a: np.ndarray, b: np.ndarray, what: str) -> None:
    agreement = float(np.mean(a == b))
    _check(agreement >= _MIN_AGREEMENT, f"{what} agree on {agreement:.1%} of pixels only")


@contextlib.contextmanager
def _quiet_tf_logging() -> Iterator[None]:
    """Hide TF's Python warnings (the TF1 loader's deprecation notice) inside the block."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _refuse_existing(final: Path, overwrite: bool) -> None:
    if final.exists() and not overwrite:
        raise VersionExistsError(
            f"version directory {final} already exists; pass overwrite=True (--overwrite) "
            "to replace it"
        )


def _publish(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``, moving an existing ``final`` aside first."""
    if not final.exists():
        os.rename(tmp, final)
        return
    old = final.parent / f"{_OLD_PREFIX}{final.name}-{uuid.uuid4().hex}"
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except OSError:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)
