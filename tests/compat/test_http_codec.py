"""compat.http_codec: a REST body's Content-Encoding decoded within its bound (gzip as TF
Serving reads it, deflate for the V2 routes)."""

from __future__ import annotations

import gzip
import random
import zlib

import pytest

from compat.http_codec import INFLATE_FLOOR, INFLATE_RATIO, TooLarge, decode, gunzip, inflate

BODY = b'{"instances": [1.0]}'


def test_gzip_bodies_inflate_within_the_limit_only() -> None:
    assert gunzip(gzip.compress(BODY)) == BODY
    assert gunzip(gzip.compress(BODY) + gzip.compress(BODY)) == BODY + BODY  # two members
    assert gunzip(gzip.compress(BODY)[:-4]) == b""  # truncated: empty, as TF Serving reads it
    assert gunzip(b"not gzip") == b""
    bomb = gzip.compress(b"0" * (8 << 20))  # 8 KiB that inflate to 8 MiB
    assert len(bomb) < 16 << 10
    with pytest.raises(TooLarge, match="inflates beyond the limit of 1048576 bytes"):
        gunzip(bomb, 1 << 20)
    assert len(gunzip(bomb, 8 << 20)) == 8 << 20


def test_a_second_gzip_member_counts_against_the_same_limit() -> None:
    half = gzip.compress(b"1" * 600)
    assert len(gunzip(half + half, 1200)) == 1200
    with pytest.raises(TooLarge):
        gunzip(half + half, 1199)


def test_deflate_bodies_inflate_within_the_limit_only() -> None:
    assert inflate(zlib.compress(BODY), 100) == BODY
    assert inflate(b"not deflate", 100) == b""
    with pytest.raises(TooLarge, match="inflates beyond the limit of 10 bytes"):
        inflate(zlib.compress(b"x" * 11), 10)
    assert inflate(zlib.compress(b"x" * 10), 10) == b"x" * 10


def test_the_content_encoding_picks_the_decoder() -> None:
    zipped, deflated = gzip.compress(BODY), zlib.compress(BODY)
    assert decode(zipped, "gzip", 1 << 20) == BODY
    assert decode(zipped, "x-gzip", 1 << 20) == BODY  # TF Serving looks for "gzip" in it
    assert decode(BODY, "", 1 << 20) == BODY
    assert decode(BODY, "identity", 1 << 20) == BODY
    assert decode(deflated, "deflate", 1 << 20) == deflated  # TF Serving's API: no deflate
    assert decode(deflated, "deflate", 1 << 20, deflate=True) == BODY  # the V2 routes


def test_a_body_inflates_to_a_ratio_of_its_size_above_a_floor_below_the_limit() -> None:
    bomb = gzip.compress(b"0" * (INFLATE_FLOOR + 1))
    assert INFLATE_RATIO * len(bomb) < INFLATE_FLOOR  # so the floor is the bound
    with pytest.raises(TooLarge, match=f"the limit of {INFLATE_FLOOR} bytes"):
        decode(bomb, "gzip", 1 << 30)
    assert len(decode(gzip.compress(b"0" * INFLATE_FLOOR), "gzip", 1 << 30)) == INFLATE_FLOOR
    with pytest.raises(TooLarge, match="the limit of 1000 bytes"):  # never beyond the limit
        decode(gzip.compress(b"0" * 1001), "gzip", 1000)
    with pytest.raises(TooLarge, match=f"the limit of {INFLATE_FLOOR} bytes"):
        decode(zlib.compress(b"0" * (INFLATE_FLOOR + 1)), "deflate", 1 << 30, deflate=True)
    # Above the floor the bound is the ratio: incompressible bytes, then a bomb.
    body = gzip.compress(random.Random(0).randbytes(200_000)) + gzip.compress(b"0" * (30 << 20))
    bound = INFLATE_RATIO * len(body)
    assert INFLATE_FLOOR < bound < 30 << 20
    with pytest.raises(TooLarge, match=f"the limit of {bound} bytes"):
        decode(body, "gzip", 1 << 30)
