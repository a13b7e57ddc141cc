"""Deterministic object content for the GCS stand-in, shared by the server, the fixtures and the bench.

A generated object is a window onto one pseudo-random pattern per seed, so 200,000 objects (or a
512 MB one) cost no memory and no uploads, and any byte range can be served without building the
object. The pattern length is prime: slices of a large object taken at MiB offsets all differ, so a
client that puts a slice at the wrong offset fails its CRC32C instead of passing by coincidence.
"""

from __future__ import annotations

import base64
import hashlib
import random
import zlib
from functools import lru_cache

import google_crc32c

PATTERN_LEN = 1_048_573  # prime, just under 1 MiB
CHUNK = 1 << 20


@lru_cache(maxsize=8)
def pattern(seed: int) -> bytes:
    # twice the length so any window of up to PATTERN_LEN bytes is one slice, no wraparound copy
    p = random.Random(seed).randbytes(PATTERN_LEN)
    return p + p


def generated_name(prefix: str, index: int, count: int) -> str:
    width = max(6, len(str(max(count - 1, 0))))
    return f"{prefix}{index:0{width}d}"


def offset_for(name: str, seed: int) -> int:
    return zlib.crc32(f"{seed}:{name}".encode()) % PATTERN_LEN


def iter_generated(seed: int, offset: int, start: int, end: int, chunk: int = CHUNK):
    """Yield the bytes [start, end) of a generated object as memoryview chunks."""
    pat = memoryview(pattern(seed))
    pos = start
    while pos < end:
        phase = (offset + pos) % PATTERN_LEN
        n = min(end - pos, chunk, PATTERN_LEN)
        yield pat[phase : phase + n]
        pos += n


def generated_bytes(seed: int, offset: int, size: int, start: int = 0, end: int | None = None) -> bytes:
    end = size if end is None else end
    return b"".join(iter_generated(seed, offset, start, end))


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def crc32c_of_chunks(chunks) -> str:
    """Base64 of the big-endian CRC32C, as GCS reports it."""
    c = google_crc32c.Checksum()
    for ch in chunks:
        c.update(bytes(ch))  # the C extension refuses memoryviews
    return b64(c.digest())


def md5_of_chunks(chunks) -> str:
    h = hashlib.md5()
    for ch in chunks:
        h.update(ch)
    return b64(h.digest())
