"""How much memory a request may cost the server: the bound every decoder keeps.

No decoder allocates beyond ``FACTOR`` times the bytes it was given plus ``ALLOWANCE`` before
it has checked that the data it declares is there: a shape is checked against the payload that
should fill it before any array of that shape is made, so a few bytes declaring 3e8 elements
are refused at once. ``FACTOR`` covers what decoding itself costs per element (a 2-byte string
on the wire is a 35-byte Python ``bytes`` plus its pointers); JSON, parsed into Python objects
first, has ``JSON_FACTOR``.

Three things legitimately grow beyond the bytes received, each by at most ``MAX_GROWTH_BYTES``:
TF's repeat-the-last-value fill of a typed ``TensorProto`` field (``make_tensor_proto(0.0,
shape=[1, 2048, 2048, 3])`` is one value for 48 MiB), a tf.Example list's context merged into
each example, and the zero padding that batches variable-length inputs. Anything beyond is
refused (INVALID_ARGUMENT), or for padding, the calls run unbatched.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

FACTOR = 16
"""Decoding a binary message (protobuf, raw bytes) may cost this many times the bytes it reads."""
JSON_FACTOR = 128
"""Decoding JSON may cost this many times its text: Python's objects for a parsed document take
up to 32x (a list of one value is 64 bytes for the 2 bytes of ``[]``), and a Predict body that
the fast parse cannot decode is parsed again by the reference parser while the first is held."""
ALLOWANCE = 4 << 20
"""Plus this much, whatever the request."""
MAX_GROWTH_BYTES = 64 << 20
"""The most a request may grow beyond its own bytes (fill, context merge, padding)."""
MAX_ELEMENTS = 2**63 - 1
"""TensorShape's element count is an int64."""


def element_count(dims: Iterable[int]) -> int:
    """The elements of a shape; ``ValueError`` naming the problem for a negative dimension or
    more elements than an int64 counts (TF's ``TensorShape`` refuses both)."""
    dims = list(dims)
    if any(d < 0 for d in dims):
        raise ValueError(f"shape {dims} has a negative dimension")
    count = math.prod(dims)
    if count > MAX_ELEMENTS:
        raise ValueError(f"shape {dims} has more than 2^63 - 1 elements")
    return count


def growth_allowed(received: int) -> int:
    """The most bytes a request of ``received`` bytes may decode to where it legitimately
    grows (see the module's docstring)."""
    return MAX_GROWTH_BYTES + received
