"""Shamir secret sharing over GF(2^8), byte-wise, as Vault and OpenBao do it.

No PyPI package among our dependencies offers this for secrets of arbitrary length, and the
algorithm is small. A share is ``y_1 .. y_n || x`` (the x coordinate last, Vault's layout),
so a share is one byte longer than the secret. x is never 0 (that point is the secret).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from keybroker.errors import InvalidInput

# Log/antilog tables for GF(2^8) with the AES polynomial x^8 + x^4 + x^3 + x + 1 (0x11B), generator 3.
_EXP = [0] * 510
_LOG = [0] * 256
_x = 1
for _i in range(255):
    _EXP[_i] = _x
    _LOG[_x] = _i
    _x ^= (_x << 1) ^ (0x11B if _x & 0x80 else 0)
    _x &= 0xFF
for _i in range(255, 510):
    _EXP[_i] = _EXP[_i - 255]


def _mul(a: int, b: int) -> int:
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def _div(a: int, b: int) -> int:
    if b == 0:
        raise ZeroDivisionError("division by zero in GF(256)")
    if a == 0:
        return 0
    return _EXP[(_LOG[a] - _LOG[b]) % 255]


def _eval(coeffs: Sequence[int], x: int) -> int:
    """Horner evaluation; coeffs[0] is the constant term."""
    acc = 0
    for c in reversed(coeffs):
        acc = _mul(acc, x) ^ c
    return acc


def split(secret: bytes, shares: int, threshold: int) -> list[bytes]:
    """Split ``secret`` into ``shares`` parts, any ``threshold`` of which recover it."""
    if not secret:
        raise InvalidInput("cannot split an empty secret", field="secret")
    if not 1 <= threshold <= shares <= 255:
        raise InvalidInput(
            f"need 1 <= threshold ({threshold}) <= shares ({shares}) <= 255", field="threshold"
        )
    if threshold == 1 and shares > 1:
        raise InvalidInput(
            "threshold 1 with several shares would hand out copies of the key", field="threshold"
        )
    xs = secrets.SystemRandom().sample(range(1, 256), shares)
    out = [bytearray() for _ in range(shares)]
    for byte in secret:
        coeffs = [byte] + [secrets.randbelow(256) for _ in range(threshold - 1)]
        for idx, x in enumerate(xs):
            out[idx].append(_eval(coeffs, x))
    for idx, x in enumerate(xs):
        out[idx].append(x)
    return [bytes(s) for s in out]


def combine(parts: Sequence[bytes]) -> bytes:
    """Recover the secret from ``threshold`` or more shares (Lagrange interpolation at x = 0)."""
    if len(parts) < 1:
        raise InvalidInput("no shares given", field="shares")
    length = len(parts[0])
    if length < 2 or any(len(p) != length for p in parts):
        raise InvalidInput("shares differ in length or are too short", field="shares")
    xs = [p[-1] for p in parts]
    if 0 in xs or len(set(xs)) != len(xs):
        raise InvalidInput("shares repeat or carry an invalid index", field="shares")
    secret = bytearray()
    for pos in range(length - 1):
        acc = 0
        for i, xi in enumerate(xs):
            num, den = 1, 1
            for j, xj in enumerate(xs):
                if i != j:
                    num = _mul(num, xj)
                    den = _mul(den, xi ^ xj)
            acc ^= _mul(parts[i][pos], _div(num, den))
        secret.append(acc)
    return bytes(secret)
