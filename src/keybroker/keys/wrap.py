"""Wrapping a released key so that only the attested workload can open it. Pure.

- ``/kbs/v1`` (Intel SecL / Trust Authority KBS): a fresh AES-256 session key (SWK) wrapped with
  RSA-OAEP (SHA-256, MGF1-SHA-256) to the workload key; the key under the SWK with AES-256-GCM, random
  12-byte IV, no AAD, laid out as ``u32le iv_len | u32le tag_len | u32le len(ciphertext||tag) | iv |
  ciphertext || tag`` (as intel/trustauthority-kbs service/key_transfer.go writes it).
- ``/kbs/v0`` (KBS protocol): a flattened JWE, ``RSA-OAEP-256`` or ``ECDH-ES+A256KW`` with
  ``A256GCM``; the AAD is the ASCII of the protected header's base64url (RFC 7516 5.1 step 14).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding
from joserfc import jwe
from joserfc.jwk import ECKey, RSAKey

from keybroker.errors import InvalidInput
from keybroker.keystores.base import TransferWrap, trim_der_padding

SWK_SIZE = 32
IV_SIZE = 12
TAG_SIZE = 16
_HEADER = struct.Struct("<III")

OAEP_SHA256 = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


@dataclass(frozen=True)
class SeclWrapped:
    wrapped_key: bytes
    wrapped_swk: bytes


def secl_wrap(secret: bytes, workload_key: rsa.RSAPublicKey) -> SeclWrapped:
    swk = os.urandom(SWK_SIZE)
    iv = os.urandom(IV_SIZE)
    sealed = AESGCM(swk).encrypt(iv, secret, None)
    blob = _HEADER.pack(IV_SIZE, TAG_SIZE, len(sealed)) + iv + sealed
    return SeclWrapped(blob, workload_key.encrypt(swk, OAEP_SHA256))


def secl_from_transfer(tw: TransferWrap) -> SeclWrapped:
    """Lay a key store's :class:`TransferWrap` out in the SecL format.

    ``A256GCM`` (every software store) is the SecL layout exactly. ``A256KWP`` (a non-extractable
    key wrapped inside an HSM, RFC 5649) has no SecL form: keybroker marks it with iv_len = tag_len = 0
    followed by the RFC 5649 blob; :func:`secl_unwrap` (and keybroker-client) open both.
    """
    if tw.key_wrap == "A256GCM":
        blob = _HEADER.pack(len(tw.iv), TAG_SIZE, len(tw.wrapped_key)) + tw.iv + tw.wrapped_key
    else:
        blob = _HEADER.pack(0, 0, len(tw.wrapped_key)) + tw.wrapped_key
    return SeclWrapped(blob, tw.wrapped_session_key)


def secl_unwrap(wrapped: SeclWrapped, workload_private: rsa.RSAPrivateKey) -> bytes:
    """The workload side (client and tests)."""
    swk = workload_private.decrypt(wrapped.wrapped_swk, OAEP_SHA256)
    blob = wrapped.wrapped_key
    if len(blob) < _HEADER.size:
        raise InvalidInput("wrapped_key is shorter than its header", field="wrapped_key")
    iv_len, tag_len, ct_len = _HEADER.unpack_from(blob)
    if iv_len == 0 and tag_len == 0 and len(blob) == _HEADER.size + ct_len:
        return trim_der_padding(aes_key_unwrap_with_padding(swk, blob[_HEADER.size :]))
    if (
        iv_len != IV_SIZE
        or tag_len != TAG_SIZE
        or len(blob) != _HEADER.size + iv_len + ct_len
        or ct_len < tag_len
    ):
        raise InvalidInput("wrapped_key lengths do not add up", field="wrapped_key")
    iv = blob[_HEADER.size : _HEADER.size + iv_len]
    return AESGCM(swk).decrypt(iv, blob[_HEADER.size + iv_len :], None)


def jwe_wrap(secret: bytes, tee_pubkey_jwk: dict[str, object]) -> dict[str, str]:
    """Flattened JWE of ``secret`` to the workload's JWK (RSA: RSA-OAEP-256; EC: ECDH-ES+A256KW)."""
    kty = tee_pubkey_jwk.get("kty")
    if kty == "RSA":
        key: RSAKey | ECKey = RSAKey.import_key(tee_pubkey_jwk)  # type: ignore[arg-type]
        alg = "RSA-OAEP-256"
    elif kty == "EC":
        key = ECKey.import_key(tee_pubkey_jwk)  # type: ignore[arg-type]
        alg = "ECDH-ES+A256KW"
    else:
        raise InvalidInput(f"tee-pubkey kty {kty!r} is not RSA or EC", field="runtime-data.tee-pubkey")
    if key.is_private:
        raise InvalidInput(
            "tee-pubkey holds a private key; send the public part only", field="runtime-data.tee-pubkey"
        )
    compact = jwe.encrypt_compact({"alg": alg, "enc": "A256GCM"}, secret, key, algorithms=[alg, "A256GCM"])
    protected, encrypted_key, iv, ciphertext, tag = compact.split(".")
    return {
        "protected": protected,
        "encrypted_key": encrypted_key,
        "iv": iv,
        "ciphertext": ciphertext,
        "tag": tag,
    }


def jwe_unwrap(flattened: dict[str, str], private_jwk: RSAKey | ECKey) -> bytes:
    """The workload side (client and tests)."""
    compact = ".".join(flattened[k] for k in ("protected", "encrypted_key", "iv", "ciphertext", "tag"))
    alg = "RSA-OAEP-256" if isinstance(private_jwk, RSAKey) else "ECDH-ES+A256KW"
    return jwe.decrypt_compact(compact, private_jwk, algorithms=[alg, "A256GCM"]).plaintext or b""


def public_jwk(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> dict[str, object]:
    imported: RSAKey | ECKey = (
        RSAKey.import_key(key) if isinstance(key, rsa.RSAPublicKey) else ECKey.import_key(key)
    )
    return dict(imported.as_dict(private=False))
