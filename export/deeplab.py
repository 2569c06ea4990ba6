"""A small DeepLab-v3-style segmentation network, its deterministic training and ``mean_iou``.

The network takes float images in 0..255 of any height and width (normalised inside the
graph) and returns per-pixel class logits at the input's height and width:

* backbone: two stride-2 convolutions (output stride 4), a 3x3 convolution, then atrous
  3x3 convolutions (dilation 2 and 4) that widen the receptive field without downsampling;
* ASPP head: a 1x1 branch, three dilated 3x3 branches (rates 2, 4, 6) and an image-level
  pooling branch, concatenated and projected by a 1x1 convolution;
* decoder: the ASPP output is upsampled (bilinear) to the stride-2 features, joined with
  them and refined by a 3x3 convolution, then upsampled to the input size, joined with the
  normalised input and refined again (thin, for sharp edges on small images) before a 1x1
  classifier.

Resizing always targets another tensor's runtime shape, so odd sizes work.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from export.synthetic import NUM_CLASSES, make_batch

DEFAULT_STEPS = 1400
DEFAULT_SIZE = 64
DEFAULT_BATCH = 8
DEFAULT_WIDTH = 32
DEFAULT_LEARNING_RATE = 2e-3
EVAL_IMAGES = 64
"""Held-out images used for the mean IoU that :func:`train` reports."""


class ResizeLike(keras.layers.Layer):
    """Resize ``inputs[0]`` (bilinear) to the height and width of ``inputs[1]``."""

    def call(self, inputs: list[tf.Tensor]) -> tf.Tensor:
        """Resize the first tensor to the spatial size of the second."""
        x, reference = inputs
        return tf.image.resize(x, tf.shape(reference)[1:3], method="bilinear")

    def compute_output_shape(self, input_shape: list[tuple[int | None, ...]]) -> tuple:
        """Batch and channels of the first input, height and width of the second."""
        x_shape, ref_shape = input_shape
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])


def _conv_bn(
    x: keras.KerasTensor, filters: int, kernel: int, *, stride: int = 1, dilation: int = 1
) -> keras.KerasTensor:
    """Convolution, batch normalisation and ReLU."""
    x = keras.layers.Conv2D(
        filters, kernel, strides=stride, dilation_rate=dilation, padding="same", use_bias=False
    )(x)
    x = keras.layers.BatchNormalization()(x)
    return keras.layers.ReLU()(x)


def build_model(width: int = DEFAULT_WIDTH, num_classes: int = NUM_CLASSES) -> keras.Model:
    """The segmentation network; ``width`` is the channel count of the stride-4 layers."""
    images = keras.Input(shape=(None, None, 3), name="images")
    normalised = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(images)
    half = width // 2

    # Backbone: output stride 4, then atrous convolutions.
    x = _conv_bn(normalised, half, 3, stride=2)
    low_level = _conv_bn(x, half, 3)
    x = _conv_bn(low_level, width, 3, stride=2)
    x = _conv_bn(x, width, 3)
    x = _conv_bn(x, width, 3, dilation=2)
    x = _conv_bn(x, width, 3, dilation=4)

    # ASPP: 1x1, dilated 3x3 at three rates, image-level pooling.
    branches = [_conv_bn(x, width, 1)]
    branches += [_conv_bn(x, width, 3, dilation=rate) for rate in (2, 4, 6)]
    pooled = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    pooled = keras.layers.Conv2D(width, 1, activation="relu")(pooled)
    branches.append(ResizeLike()([pooled, x]))
    x = _conv_bn(keras.layers.Concatenate()(branches), width, 1)

    # Decoder: join with the stride-2 features, then with the input at full resolution.
    x = ResizeLike()([x, low_level])
    x = keras.layers.Concatenate()([x, _conv_bn(low_level, half, 1)])
    x = _conv_bn(x, half, 3)
    x = ResizeLike()([x, normalised])
    x = keras.layers.Concatenate()([x, normalised])
    x = _conv_bn(x, half // 2, 3)
    logits = keras.layers.Conv2D(num_classes, 1, name="logits")(x)
    return keras.Model(images, logits, name="deeplab_v3_small")


def mean_iou(pred: np.ndarray, truth: np.ndarray, num_classes: int = NUM_CLASSES) -> float:
    """Mean intersection-over-union over the classes present in ``truth`` or ``pred``.

    ``pred`` and ``truth`` are integer label arrays of the same shape; labels outside
    ``0..num_classes-1`` are ignored.
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape} vs truth {truth.shape}")
    ious = []
    for cls in range(num_classes):
        in_pred, in_truth = pred == cls, truth == cls
        union = np.count_nonzero(in_pred | in_truth)
        if union:
            ious.append(np.count_nonzero(in_pred & in_truth) / union)
    if not ious:
        raise ValueError("no class of 0..num_classes-1 occurs in pred or truth")
    return float(np.mean(ious))


@dataclass(frozen=True)
class TrainStats:
    """Figures from one :func:`train` run."""

    steps: int
    size: int
    batch: int
    seconds: float
    """Wall-clock seconds of the training loop (excluding evaluation)."""
    final_loss: float
    mean_iou: float
    """Mean IoU on :data:`EVAL_IMAGES` held-out images from a seed training never uses."""


def step_seed(seed: int, step: int) -> int:
    """Seed of the training batch at ``step``; disjoint in practice from :func:`eval_seed`."""
    return int(np.random.SeedSequence([seed, 0, step]).generate_state(1)[0])


def eval_seed(seed: int) -> int:
    """Seed of the held-out evaluation images for a training run with ``seed``."""
    return int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])


def predict_labels(
    model: keras.Model, images: np.ndarray, batch: int = DEFAULT_BATCH
) -> np.ndarray:
    """Argmax label maps (int64 ``[n, h, w]``) of ``model`` for float images in 0..255."""
    outputs = [
        np.argmax(model(images[i : i + batch], training=False), axis=-1)
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(outputs).astype(np.int64)


def train(
    steps: int = DEFAULT_STEPS,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    batch: int = DEFAULT_BATCH,
    *,
    width: int = DEFAULT_WIDTH,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    log: Callable[[str], None] | None = print,
    log_every: int = 50,
) -> tuple[keras.Model, TrainStats]:
    """Train a fresh network on synthetic batches, deterministically for a given ``seed``.

    Every step draws a new batch of ``batch`` images of ``size`` x ``size``; the learning rate
    follows a cosine decay. Progress lines go to ``log`` (``None`` for silence). Returns the
    model and its :class:`TrainStats`, whose mean IoU is measured on held-out images.

    Seeds Python's, numpy's and TF's global generators (``keras.utils.set_random_seed``) and
    enables TF op determinism while it runs.
    """
    if steps < 1 or batch < 1:
        raise ValueError(f"steps and batch must be >= 1, got steps={steps} batch={batch}")
    keras.utils.set_random_seed(seed)
    with _op_determinism():
        model = build_model(width)
        schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.02)
        optimizer = keras.optimizers.Adam(schedule)
        # Its slots made now, not in train_step's first call: a tf.function that creates
        # variables traces twice (seconds for this network); the slots start at zero either way.
        optimizer.build(model.trainable_variables)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        @tf.function(reduce_retracing=True)
        def train_step(images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                loss = loss_fn(labels, model(images, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        start = time.perf_counter()
        loss = float("nan")
        for step in range(1, steps + 1):
            images, labels = make_batch(batch, size, step_seed(seed, step))
            loss = float(train_step(tf.constant(images), tf.constant(labels)))
            if log is not None and (step % log_every == 0 or step in (1, steps)):
                elapsed = time.perf_counter() - start
                log(f"step {step}/{steps} loss {loss:.4f} elapsed {elapsed:.1f}s")
        seconds = time.perf_counter() - start

        eval_images, eval_labels = make_batch(EVAL_IMAGES, size, eval_seed(seed))
        iou = mean_iou(predict_labels(model, eval_images), eval_labels)
        stats = TrainStats(
            steps=steps, size=size, batch=batch, seconds=seconds, final_loss=loss, mean_iou=iou
        )
        if log is not None:
            log(f"trained {steps} steps in {seconds:.1f}s, held-out mean IoU {iou:.3f}")
        return model, stats


@contextlib.contextmanager
def _op_determinism() -> Iterator[None]:
    """Enable TF op determinism inside the block, restoring the previous setting after it.

    TF has no public way to turn determinism off again, hence the internal ``config`` module;
    restoring it keeps a training run from changing the behaviour of its host process.
    """
    was_enabled = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not was_enabled:
            tf_config.disable_op_determinism()
