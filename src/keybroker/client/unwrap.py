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

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding
from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from keybroker.errors import KeybrokerError
from keybroker.wire.envelope import IV_SIZE, OAEP_SHA256, SECL_HEADER, SWK_SIZE, TAG_SIZE, trim_der_padding

__all__ = ["OAEP_SHA256", "UnwrapError", "jwe_unwrap", "secl_unwrap", "trim_der_padding"]

_HEADER = SECL_HEADER
JWE_FIELDS = ("protected", "encrypted_key", "iv", "ciphertext", "tag")


class UnwrapError(KeybrokerError):
    """The wrapped key does not open with this workload's key."""

    title = "Cannot open the wrapped key"
    status = 500


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
