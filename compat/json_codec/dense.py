"""Big numeric arrays in a Predict body, parsed flat: an image's 49,152 pixels as one list.

orjson builds a Python list for every innermost row of a nested array (16,384 of them for a
128x128x3 image) and numpy then walks them all; most of a big REST body's cost. Here each big
array of numbers found outside strings is parsed as one flat list of numbers instead, its shape
read from the brackets, and the document is parsed with a placeholder in its place:

- the array's text holds only numbers, commas, brackets and whitespace (anything else, a
  string, ``true``, ``null``, an object, and it is left to orjson);
- its brackets, with the numbers taken out, are exactly those of a rectangular array of the
  shape its first elements give (``[[,,],[,,]]`` for 2x3): a ragged array is left as it is;
- its numbers, the brackets taken out, parse as a JSON array of numbers (orjson: JSON's number
  grammar), as many as the shape holds;
- numpy infers int64 or float64 from them, as it does from the nested lists.

Whatever is left to orjson, or refused here, is read as before, so the result is the nested
parse's array or nothing (``tests/compat/test_json_fast.py`` holds the two side by side). A body
with a backslash anywhere is left alone (a string could then hide a quote), as are bodies below
``MIN_BODY``.
"""

from __future__ import annotations

import math
import re

import numpy as np
import orjson

MIN_BODY = 16 << 10
"""Smaller bodies parse fast enough nested."""
MIN_ARRAY = 4 << 10
"""Arrays shorter than this (in bytes) stay in the document."""
MAX_RANK = 32
"""Deeper arrays are left to the nested parse (TensorFlow's shapes stop well before)."""
PLACEHOLDER = '"\\u0000rtfs-dense-{}"'
"""What a big array is replaced with: a string no body without a backslash can hold."""

_CHARS = rb"-+0-9.eE,\[\] \t\n\r"
_RUN = re.compile(rb"(?<![%s])[%s]{%d,}+" % (_CHARS, _CHARS, MIN_ARRAY))
"""A maximal run of the characters an array of numbers is made of: it starts only where the
character before is none of them, and never gives back (possessive), so the scan is linear
in the body whatever it holds (a megabyte of ``[`` included)."""
_NUMBERS = b"0123456789.-+eE \t\n\r"
_BRACKETS = bytes.maketrans(b"[]", b"  ")


class Dense(list):  # type: ignore[type-arg]
    """A big array parsed flat, where the document had it (an empty list: only
    ``tensor._numeric`` reads ``array``; any other reader sees nothing and the caller falls
    back to the exact parse)."""

    def __init__(self, array: np.ndarray) -> None:
        super().__init__()
        self.array = array
        self.used = False


def dense_arrays(raw: bytes) -> tuple[bytes, list[Dense]] | None:
    """``raw`` with each big numeric array replaced by a placeholder, and the arrays; None when
    there is none to replace."""
    if len(raw) < MIN_BODY or b"\\" in raw:
        return None
    pieces: list[bytes] = []
    arrays: list[Dense] = []
    last = counted = quotes = 0
    for match in _RUN.finditer(raw):
        run = match.group()
        first, last_close = run.find(b"["), run.rfind(b"]")
        if first < 0 or last_close < first:
            continue
        start, end = match.start() + first, match.start() + last_close + 1
        quotes += raw.count(b'"', counted, start)
        counted = start
        if quotes % 2:  # inside a string
            continue
        array = parse_flat(raw[start:end])
        if array is None:
            continue
        pieces += [raw[last:start], PLACEHOLDER.format(len(arrays)).encode()]
        arrays.append(Dense(array))
        last = end
    if not arrays:
        return None
    pieces.append(raw[last:])
    return b"".join(pieces), arrays


def parse_flat(text: bytes) -> np.ndarray | None:
    """A rectangular array of JSON numbers, parsed flat (None: not one)."""
    skeleton = text.translate(None, _NUMBERS)
    shape = _shape(skeleton)
    if shape is None or _length(shape) != len(skeleton) or _brackets(shape) != skeleton:
        return None
    flat = text.translate(_BRACKETS)
    try:
        values = orjson.loads(b"[" + flat + b"]")
    except orjson.JSONDecodeError:
        return None
    if len(values) != math.prod(shape):
        return None
    try:
        if any(mark in flat for mark in _FLOAT_MARKS):
            array = np.array(values)
        else:  # only integers (JSON's float has a '.' or an exponent): no type discovery
            array = np.fromiter(values, np.int64, len(values))
    except (ValueError, OverflowError):
        return None
    if array.dtype not in (np.int64, np.float64):
        return None
    return array.reshape(shape)


_FLOAT_MARKS = (b".", b"e", b"E")
"""What a JSON number has only when it is no integer (a fraction, an exponent)."""


def _shape(skeleton: bytes) -> list[int] | None:
    """The shape the first element at each depth gives (``[[,,],...`` -> [.., 3]); the
    outermost size is what the skeleton's length leaves for children of that shape (the caller
    checks the whole skeleton against the shape, so only the first group of each inner level is
    read here)."""
    depth = len(skeleton) - len(skeleton.lstrip(b"["))
    if not 0 < depth <= MAX_RANK:  # each level costs a scan of its first group
        return None
    inner_shape = []
    for level in range(1, depth):
        inner = depth - level - 1  # brackets around each child of a group at this level
        end = skeleton.find(b"]" * (depth - level))
        if end < 0:
            return None
        separator = b"]" * inner + b"," + b"[" * inner
        inner_shape.append(skeleton.count(separator, level, end) + 1)
    child = _length(inner_shape) if inner_shape else 0  # a number has no skeleton
    count, rest = divmod(len(skeleton) - 1, child + 1)  # "[" n children, n-1 commas "]"
    if rest:
        return None
    return [count, *inner_shape]  # "[]" is a row of one number or none: the count tells


def _length(shape: list[int]) -> int:
    """``len(_brackets(shape))``, without building it (a few brackets can claim a huge shape)."""
    length = shape[-1] + 1
    for size in reversed(shape[:-1]):
        length = size * length + (size - 1) + 2
    return length


def _brackets(shape: list[int]) -> bytes:
    """The skeleton of a rectangular array of ``shape``: its brackets and commas."""
    text = b"[" + b"," * (shape[-1] - 1) + b"]"
    for size in reversed(shape[:-1]):
        text = b"[" + b",".join([text] * size) + b"]"
    return text
