"""Deterministic synthetic segmentation data: coloured shapes on noisy backgrounds.

Each image holds one to three shapes (circle, square or triangle) of random position, size
and rotation on a noisy, tinted, shaded background; later shapes occlude earlier ones. Each
class has a typical colour, jittered per shape, and a shape sometimes takes another class's
colour, so a network must use shape as well as colour to label pixels correctly.

Pure numpy; the same ``(n, size, seed)`` always gives the same arrays.
"""

from __future__ import annotations

import numpy as np

NUM_CLASSES = 4
"""Background (0) plus three shape classes."""

CLASS_NAMES: tuple[str, ...] = ("background", "circle", "square", "triangle")
"""Class names, indexed by label."""

_CLASS_COLOURS = np.array(
    [[215.0, 70.0, 60.0], [70.0, 190.0, 80.0], [70.0, 90.0, 215.0]], dtype=np.float64
)
"""Typical RGB colour of classes 1..3."""

_COLOUR_JITTER = 30.0
"""Standard deviation of each shape's colour around its class colour."""

_COLOUR_SWAP_PROB = 0.1
"""Chance that a shape is painted in a random class's colour instead of its own."""

_PIXEL_NOISE = 12.0
"""Standard deviation of the per-pixel Gaussian noise over the whole image."""

_MAX_SHAPES = 3


def make_batch(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Make ``n`` square images of ``size`` x ``size`` pixels and their label maps.

    Returns ``(images, labels)``: ``images`` float32 ``[n, size, size, 3]`` with values in
    0..255, ``labels`` int64 ``[n, size, size]`` with values in ``0..NUM_CLASSES-1``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    images = np.empty((n, size, size, 3), dtype=np.float32)
    labels = np.zeros((n, size, size), dtype=np.int64)
    for i in range(n):
        image = _background(rng, yy, xx, size)
        for _ in range(rng.integers(1, _MAX_SHAPES + 1)):
            cls = int(rng.integers(1, NUM_CLASSES))
            mask = _shape_mask(rng, cls, yy, xx, size)
            image[mask] = _shape_colour(rng, cls)
            labels[i][mask] = cls
        image += rng.normal(0.0, _PIXEL_NOISE, size=image.shape)
        images[i] = np.clip(image, 0.0, 255.0)
    return images, labels


def _background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
    """A greyish, slightly tinted background with a random linear shading."""
    grey = rng.uniform(40.0, 210.0)
    tint = rng.normal(0.0, 20.0, size=3)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    slope = rng.uniform(0.0, 40.0) / size
    shade = slope * ((xx - size / 2) * np.cos(angle) + (yy - size / 2) * np.sin(angle))
    return grey + tint[None, None, :] + shade[:, :, None]


def _shape_colour(rng: np.random.Generator, cls: int) -> np.ndarray:
    """The RGB colour of one shape of class ``cls``."""
    if rng.random() < _COLOUR_SWAP_PROB:
        cls = int(rng.integers(1, NUM_CLASSES))
    return _CLASS_COLOURS[cls - 1] + rng.normal(0.0, _COLOUR_JITTER, size=3)


def _shape_mask(
    rng: np.random.Generator, cls: int, yy: np.ndarray, xx: np.ndarray, size: int
) -> np.ndarray:
    """Boolean ``[size, size]`` mask of one randomly placed shape of class ``cls``."""
    radius = rng.uniform(0.1, 0.22) * size
    cy, cx = rng.uniform(radius, size - radius, size=2)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    dy, dx = yy - cy, xx - cx
    if cls == 1:  # circle
        return np.asarray(dy * dy + dx * dx <= radius * radius)
    if cls == 2:  # square, rotated; half side chosen so its area is close to the circle's
        half = 0.85 * radius
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        return np.asarray((np.abs(u) <= half) & (np.abs(v) <= half))
    # triangle: equilateral, its circumscribed circle enlarged so its area is close, too
    outer = 1.5 * radius
    turns = angle + np.arange(3) * 2 * np.pi / 3
    corners = list(zip(cx + outer * np.cos(turns), cy + outer * np.sin(turns), strict=True))
    inside = np.ones_like(xx, dtype=bool)
    for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1], strict=True):
        inside &= (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0) >= 0
    return inside
