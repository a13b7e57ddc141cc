"""CRC32C: the C implementation or nothing, GCS's base64 form, and combining slice CRCs.

Slices of a large object download in parallel, each through its own running CRC; the whole
object's CRC is then computed from the slice CRCs and lengths alone (no second pass over the
bytes), with the same GF(2) arithmetic zlib uses for crc32_combine, over the Castagnoli
polynomial.
"""

from __future__ import annotations

import base64
import os
import struct

from gcpdl.errors import SyncError

_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected


def require_c_crc32c() -> None:
    """Refuse to run rather than crawl: the pure-Python fallback is ~100x slower."""
    try:
        import google_crc32c
    except ImportError:  # pragma: no cover - a dependency
        raise SyncError("google-crc32c is not installed.", fix="Run: pip install google-crc32c") from None
    if google_crc32c.implementation != "c":
        raise SyncError(
            "google-crc32c has no C extension on this machine, so checksums would be too slow to verify every object.",
            fix="Reinstall it from a wheel: pip install --force-reinstall --only-binary=:all: google-crc32c",
        )


def decode_gcs_crc(b64: str | None) -> int | None:
    """GCS reports crc32c as base64 of the big-endian 32-bit value."""
    if not b64:
        return None
    try:
        raw = base64.b64decode(b64)
    except ValueError:
        return None
    if len(raw) != 4:
        return None
    return struct.unpack(">I", raw)[0]


def encode_gcs_crc(value: int) -> str:
    return base64.b64encode(struct.pack(">I", value)).decode()


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC polynomial (bit-reflected), as in zlib's crc32.c."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if (a & (m - 1)) == 0:
                break
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return p


def _x2n_table() -> list[int]:
    table = [1 << 30]  # x^1
    for _ in range(31):
        table.append(_multmodp(table[-1], table[-1]))
    return table


_X2N = _x2n_table()


def _x2nmodp(n: int, k: int) -> int:
    """x^(n * 2^k) modulo the polynomial."""
    p = 1 << 31  # x^0 == 1
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return p


def crc32c_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC of A+B from crc(A), crc(B) and len(B)."""
    return _multmodp(_x2nmodp(len2, 3), crc1) ^ crc2


def combine_slices(slices: list[tuple[int, int]]) -> int:
    """Whole-object CRC from [(crc, length), ...] in offset order."""
    if not slices:
        return 0
    crc = slices[0][0]
    for c, n in slices[1:]:
        crc = crc32c_combine(crc, c, n)
    return crc


def fd_crc32c(fd: int, chunk: int = 1 << 20) -> int:
    """CRC32C of what is on disk behind ``fd`` (read with pread: the offset is left alone)."""
    import google_crc32c

    crc = 0
    off = 0
    while True:
        data = os.pread(fd, chunk, off)
        if not data:
            return crc
        crc = google_crc32c.extend(crc, data)
        off += len(data)


def fd_md5(fd: int, chunk: int = 1 << 20) -> bytes:
    """MD5 digest of what is on disk behind ``fd`` (only for objects listed without a CRC32C)."""
    import hashlib

    h = hashlib.md5()
    off = 0
    while True:
        data = os.pread(fd, chunk, off)
        if not data:
            return h.digest()
        h.update(data)
        off += len(data)
