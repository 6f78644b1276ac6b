"""The key-release envelope shared by the broker and the workload client. Pure: cryptography only.

A released key travels as a fresh AES-256 session key, RSA-OAEP-SHA256 (MGF1-SHA256) to the
workload's ephemeral key, and the key wrapped under the session key: AES-256-GCM by the software
key stores, RFC 5649 AES key wrap with padding inside an HSM. On ``/kbs/v1`` the wrapped key is laid
out as Intel SecL does (``u32le iv_len | u32le tag_len | u32le len(ciphertext||tag) | iv |
ciphertext||tag``, intel/trustauthority-kbs service/key_transfer.go); the HSM form, which SecL
lacks, is marked ``iv_len = tag_len = 0`` followed by the RFC 5649 blob.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SWK_SIZE = 32
IV_SIZE = 12
TAG_SIZE = 16
SECL_HEADER = struct.Struct("<III")
OAEP_SHA256 = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


@dataclass(frozen=True)
class TransferWrap:
    """A key wrapped for one recipient (see the module docstring).

    ``key_wrap``: ``A256GCM`` (``iv`` the 96-bit nonce, ``wrapped_key`` ciphertext || 16-byte tag,
    the caller's ``aad`` authenticated) or ``A256KWP`` (RFC 5649 inside the token, ``iv`` empty, no
    AAD). The unwrapped bytes are the raw key (AES) or PKCS#8 DER (RSA, EC); after an ``A256KWP``
    unwrap pass them through :func:`trim_der_padding`.
    """

    wrapped_session_key: bytes
    key_wrap: Literal["A256GCM", "A256KWP"]
    iv: bytes
    wrapped_key: bytes


def software_wrap(secret: bytes, recipient: rsa.RSAPublicKey, aad: bytes) -> TransferWrap:
    """Wrap ``secret`` for ``recipient`` in this process (the software stores' release path)."""
    session_key = AESGCM.generate_key(bit_length=256)
    iv = os.urandom(IV_SIZE)
    return TransferWrap(
        wrapped_session_key=recipient.encrypt(session_key, OAEP_SHA256),
        key_wrap="A256GCM",
        iv=iv,
        wrapped_key=AESGCM(session_key).encrypt(iv, secret, aad),
    )


def secl_wrapped_key(tw: TransferWrap) -> bytes:
    """The SecL ``wrapped_key`` bytes for ``tw`` (the HSM form marked with zero lengths)."""
    if tw.key_wrap == "A256GCM":
        return SECL_HEADER.pack(len(tw.iv), TAG_SIZE, len(tw.wrapped_key)) + tw.iv + tw.wrapped_key
    return SECL_HEADER.pack(0, 0, len(tw.wrapped_key)) + tw.wrapped_key


def trim_der_padding(data: bytes) -> bytes:
    """Drop up to 7 trailing zero bytes after a DER SEQUENCE (PKCS#8) whose length says so.

    SoftHSM 2.6 zero-pads a key to a multiple of 8 bytes *before* RFC 5649 and counts the padding
    in the length. Raw AES keys (16, 24 or 32 bytes) are never padded and come back unchanged.
    """
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
