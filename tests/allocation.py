"""What a call allocates, for the invariant every decoder keeps (``compat.limits``): no more than
``FACTOR`` times the bytes it was given plus ``ALLOWANCE``, plus what it legitimately grew to
(a fill, a context merge, padding), itself capped by ``MAX_GROWTH_BYTES``; JSON has
``JSON_FACTOR``.

tracemalloc sees every allocation of Python objects and numpy arrays; TensorFlow's own are not
called by the decoders measured here.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

from compat.limits import ALLOWANCE, FACTOR, JSON_FACTOR


def traced(call: Callable[[], Any]) -> tuple[Any, BaseException | None, int]:
    """(result or None, the exception raised or None, tracemalloc's peak in bytes)."""
    result, error = None, None
    tracemalloc.start()
    try:
        result = call()
    except Exception as e:  # what it raised is the caller's to judge
        error = e.with_traceback(None)  # no frame (and what it holds) outlives the call
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, error, peak


def bound(received: int, grown: int = 0, factor: int = FACTOR) -> int:
    """The most a decoder given ``received`` bytes may allocate, having grown ``grown`` bytes."""
    return factor * received + ALLOWANCE + grown


def json_bound(received: int, grown: int = 0) -> int:
    """:func:`bound` for a JSON body (``JSON_FACTOR``)."""
    return bound(received, grown, JSON_FACTOR)
