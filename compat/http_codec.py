"""A REST body's Content-Encoding, decoded within bounds: gzip (TF Serving reads it,
``EvHTTPRequest::ReadRequestGzipBytes``) and, for the V2 routes, deflate. A body that does not
decompress reads as empty (the JSON parser then says so); one that would inflate beyond its
bound raises ``TooLarge`` (413) before it does."""

from __future__ import annotations

import zlib

INFLATE_RATIO = 100
"""A gzip body may inflate to at most this many times its size (or ``INFLATE_FLOOR``, and
never beyond ``max_request_bytes``): JSON compresses 5-20x, a gzip bomb 1000x."""
INFLATE_FLOOR = 16 << 20
INT32_MAX = 2**31 - 1
"""TF Serving's default ``max_request_bytes``."""


class TooLarge(Exception):
    """A body beyond ``max_request_bytes``: 413, never read or inflated whole."""


def decode(body: bytes, encoding: str, limit: int, deflate: bool = False) -> bytes:
    """``body`` gunzipped (and, with ``deflate``, inflated) as its Content-Encoding says, to at
    most ``INFLATE_RATIO`` times its size and never beyond ``limit`` bytes."""
    bound = min(limit, max(INFLATE_FLOOR, INFLATE_RATIO * len(body)))
    if "gzip" in encoding:
        return gunzip(body, bound)
    if deflate and "deflate" in encoding:
        return inflate(body, bound)
    return body


def _inflated_too_far(limit: int) -> TooLarge:
    return TooLarge(f"Request body inflates beyond the limit of {limit} bytes (max_request_bytes)")


def inflate(body: bytes, limit: int) -> bytes:
    """Content-Encoding: deflate (a zlib stream), bounded as gzip is; one that does not
    decompress reads as empty."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        return b""
    if len(out) > limit:
        raise _inflated_too_far(limit)
    return out


def gunzip(body: bytes, limit: int = INT32_MAX) -> bytes:
    """Content-Encoding: gzip. A body that does not decompress reads as empty, as in TF
    Serving's ``EvHTTPRequest::ReadRequestGzipBytes`` (the JSON parser then says so); one that
    would inflate beyond ``limit`` bytes is refused before it does."""
    out: list[bytes] = []
    size = 0
    rest = body
    try:
        while True:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            chunk = inflater.decompress(rest, limit - size + 1)
            size += len(chunk)
            if size > limit:
                raise _inflated_too_far(limit)
            out.append(chunk)
            if not inflater.eof:
                return b""  # truncated
            rest = inflater.unused_data
            if not rest:
                return b"".join(out)
    except zlib.error:
        return b""
