"""Opening what the broker wrapped to the workload's ephemeral key. Pure.

The workload-side mirror of :mod:`keybroker.keys.wrap` (which is server code and pulls in the key
stores); ``tests/unit/client/test_unwrap.py`` checks the two against each other.

- ``/kbs/v1``: ``wrapped_swk`` is RSA-OAEP (SHA-256, MGF1-SHA-256) of a 32-byte session key;
  ``wrapped_key`` is ``u32le iv_len | u32le tag_len | u32le ct_len | iv | ciphertext || tag``
  (AES-256-GCM, no AAD), or keybroker's mark for a key wrapped inside an HSM, ``iv_len = tag_len = 0``
  followed by an RFC 5649 (AES key wrap with padding) blob.
- ``/kbs/v0``: a flattened JWE, ``RSA-OAEP-256`` or ``ECDH-ES+A256KW`` with ``A256GCM``.

Every failure is an :class:`UnwrapError`; no plaintext is returned unless it authenticated.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding
from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from keybroker.errors import KeybrokerError

_HEADER = struct.Struct("<III")
SWK_SIZE = 32
IV_SIZE = 12
TAG_SIZE = 16
OAEP_SHA256 = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
JWE_FIELDS = ("protected", "encrypted_key", "iv", "ciphertext", "tag")


class UnwrapError(KeybrokerError):
    """The wrapped key does not open with this workload's key."""

    title = "Cannot open the wrapped key"
    status = 500


def trim_der_padding(data: bytes) -> bytes:
    """Drop up to 7 trailing zero bytes after a DER SEQUENCE whose length says so (SoftHSM 2.6 pads a
    PKCS#8 key to a multiple of 8 bytes before RFC 5649 and counts the padding in the length)."""
    if len(data) < 2 or data[0] != 0x30:
        return data
    first = data[1]
    if first < 0x80:
        end = 2 + first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or len(data) < 2 + n:
            return data
        end = 2 + n + int.from_bytes(data[2 : 2 + n], "big")
    tail = data[end:]
    if 0 < len(tail) < 8 and not any(tail):
        return data[:end]
    return data


def secl_unwrap(wrapped_key: bytes, wrapped_swk: bytes, workload_private: rsa.RSAPrivateKey) -> bytes:
    try:
        swk = workload_private.decrypt(wrapped_swk, OAEP_SHA256)
    except ValueError:
        raise UnwrapError("the session key does not decrypt with the workload key") from None
    if len(swk) != SWK_SIZE:
        raise UnwrapError("the session key does not decrypt with the workload key")
    if len(wrapped_key) < _HEADER.size:
        raise UnwrapError("wrapped_key is shorter than its header")
    iv_len, tag_len, ct_len = _HEADER.unpack_from(wrapped_key)
    body = wrapped_key[_HEADER.size :]
    if iv_len == 0 and tag_len == 0 and len(body) == ct_len:
        try:
            return trim_der_padding(aes_key_unwrap_with_padding(swk, body))
        except InvalidUnwrap:
            raise UnwrapError("the wrapped key does not open with the session key") from None
    if iv_len != IV_SIZE or tag_len != TAG_SIZE or len(body) != iv_len + ct_len or ct_len < tag_len:
        raise UnwrapError("wrapped_key lengths do not add up")
    try:
        return AESGCM(swk).decrypt(body[:iv_len], body[iv_len:], None)
    except InvalidTag:
        raise UnwrapError("the wrapped key does not open with the session key") from None


def jwe_unwrap(
    flattened: dict[str, object], workload_private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
) -> bytes:
    if not all(isinstance(flattened.get(k), str) for k in JWE_FIELDS):
        raise UnwrapError(f"the resource is not a flattened JWE with {', '.join(JWE_FIELDS)}")
    compact = ".".join(str(flattened[k]) for k in JWE_FIELDS)
    key: RSAKey | ECKey
    if isinstance(workload_private, rsa.RSAPrivateKey):
        key, alg = RSAKey.import_key(workload_private), "RSA-OAEP-256"
    else:
        key, alg = ECKey.import_key(workload_private), "ECDH-ES+A256KW"
    try:
        return jwe.decrypt_compact(compact, key, algorithms=[alg, "A256GCM"]).plaintext or b""
    except (JoseError, ValueError):
        raise UnwrapError(f"the JWE does not open with the workload key ({alg}, A256GCM)") from None
