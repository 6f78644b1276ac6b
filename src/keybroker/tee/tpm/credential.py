"""TPM2_MakeCredential in software: a secret only the TPM holding both the EK and the AK recovers.

[P1] TCG TPM 2.0 Library Part 1: 24 "Credential Protection", 11.4.9.2 KDFa (SP 800-108 counter
mode with HMAC), 11.4.9.3 KDFe (SP 800-56A concatenation KDF), Annex B.10.3 (RSA-OAEP secret with
label "IDENTITY"), Annex C.6.1 (ECDH one-pass secret); [P3] Part 3 TPM2_MakeCredential and
TPM2_ActivateCredential. Cross-checked against tpm2_activatecredential on swtpm in the tests.

1. A seed of |H| bytes (H = the EK's nameAlg) protected to the EK: RSA-OAEP(H, "IDENTITY\\0") of a
   random seed for an RSA EK; for an ECC EK, an ephemeral ECDH on the EK's curve and
   seed = KDFe(H, Z, "IDENTITY", ephemeral.x, EK.x).
2. symKey = KDFa(H, seed, "STORAGE", Name(AK), "", EK symmetric key bits);
   encIdentity = AES-CFB(symKey, IV = 0, TPM2B(secret)).
3. hmacKey = KDFa(H, seed, "INTEGRITY", "", "", |H| bits); outerHMAC = HMAC_H(hmacKey, encIdentity || Name(AK)).
4. credentialBlob (TPM2B_ID_OBJECT) = TPM2B(TPM2B(outerHMAC) || encIdentity); secret (TPM2B_ENCRYPTED_SECRET).

TPM2_ActivateCredential recomputes the HMAC with the Name of the AK that is *loaded in the same
TPM*, so the secret comes back only if that AK's Name is the one it was made for. Before issuing, the
AK's public area must be checked to be a restricted signing key bound to its TPM
(:func:`make_ak_challenge` does), and the EK must be known to be a real TPM's (:func:`verify_ek_certificate`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Final

from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from keybroker.errors import VerificationError
from keybroker.tee.tpm.abi import (
    ALG_AES,
    ALG_CFB,
    ALG_ECC,
    ALG_RSA,
    ATTR_DECRYPT,
    ATTR_FIXED_PARENT,
    ATTR_FIXED_TPM,
    ATTR_RESTRICTED,
    ATTR_SIGN,
    HASH_ALGS,
    HASH_SIZES,
    TpmPublic,
)
from keybroker.tee.tpm.certs import CertChain, load_certificate, spki_der, verify_certificate_chain
from keybroker.tee.tpm.verify import check_ak

__all__ = [
    "EK_REQUIRED_ATTRIBUTES",
    "kdfa",
    "kdfe",
    "make_ak_challenge",
    "make_credential",
    "verify_ek_certificate",
]

#: A storage key fit to protect a credential: a restricted decryption key that stays in its TPM.
EK_REQUIRED_ATTRIBUTES: Final = ATTR_RESTRICTED | ATTR_DECRYPT | ATTR_FIXED_TPM | ATTR_FIXED_PARENT
_HASHES: Final[dict[int, type[hashes.HashAlgorithm]]] = {
    0x0004: hashes.SHA1,
    0x000B: hashes.SHA256,
    0x000C: hashes.SHA384,
    0x000D: hashes.SHA512,
}
_CURVES: Final[dict[str, int]] = {"secp256r1": 32, "secp384r1": 48, "secp521r1": 66}


def kdfa(hash_alg: int, key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int) -> bytes:
    """[P1] 11.4.9.2 KDFa: HMAC_H(key, [i]32 || label || 0x00 || contextU || contextV || [bits]32), i = 1..;
    the output truncated to ``bits`` (odd bits clear the top bits of the first byte)."""
    name = HASH_ALGS[hash_alg]
    out = b""
    counter = 0
    while len(out) * 8 < bits:
        counter += 1
        block = struct.pack(">I", counter) + label + b"\x00" + context_u + context_v + struct.pack(">I", bits)
        out += hmac.new(key, block, name).digest()
    out = out[: (bits + 7) // 8]
    if bits % 8:
        out = bytes([out[0] & ((1 << (bits % 8)) - 1)]) + out[1:]
    return out


def kdfe(hash_alg: int, z: bytes, label: bytes, party_u: bytes, party_v: bytes, bits: int) -> bytes:
    """[P1] 11.4.9.3 KDFe: H([i]32 || Z || label || 0x00 || partyUInfo || partyVInfo), i = 1..; truncated."""
    name = HASH_ALGS[hash_alg]
    out = b""
    counter = 0
    while len(out) * 8 < bits:
        counter += 1
        out += hashlib.new(
            name, struct.pack(">I", counter) + z + label + b"\x00" + party_u + party_v
        ).digest()
    out = out[: (bits + 7) // 8]
    if bits % 8:
        out = bytes([out[0] & ((1 << (bits % 8)) - 1)]) + out[1:]
    return out


def _tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def _check_ek(ek: TpmPublic) -> None:
    if ek.attributes & EK_REQUIRED_ATTRIBUTES != EK_REQUIRED_ATTRIBUTES or ek.attributes & ATTR_SIGN:
        raise VerificationError(
            f"EK attributes {', '.join(ek.attribute_names)} are not those of a restricted decryption key "
            "bound to its TPM",
            check="ek_public",
        )
    if ek.symmetric.alg != ALG_AES or ek.symmetric.mode != ALG_CFB:
        raise VerificationError("the EK's symmetric algorithm is not AES-CFB", check="ek_public")
    if ek.type == ALG_RSA and ek.key_bits < 2048:
        raise VerificationError(f"the EK is RSA-{ek.key_bits}, below 2048 bits", check="ek_public")


def _seed(ek: TpmPublic, random: Callable[[int], bytes]) -> tuple[bytes, bytes]:
    """(seed, TPM2B_ENCRYPTED_SECRET) for the EK: RSA-OAEP or ECDH + KDFe, label "IDENTITY"."""
    h = ek.name_alg
    size = HASH_SIZES[h]
    if ek.type == ALG_RSA:
        seed = random(size)
        key = ek.public_key()
        assert isinstance(key, rsa.RSAPublicKey)
        algorithm = _HASHES[h]()
        encrypted = key.encrypt(
            seed, padding.OAEP(mgf=padding.MGF1(algorithm), algorithm=algorithm, label=b"IDENTITY\x00")
        )
        return seed, _tpm2b(encrypted)
    assert ek.type == ALG_ECC
    ek_key = ek.public_key()
    assert isinstance(ek_key, ec.EllipticCurvePublicKey)
    coord = _CURVES[ek_key.curve.name]
    ephemeral = ec.generate_private_key(ek_key.curve)
    z = ephemeral.exchange(ec.ECDH(), ek_key)  # the x-coordinate, padded to the field size
    numbers = ephemeral.public_key().public_numbers()
    eph_x, eph_y = numbers.x.to_bytes(coord, "big"), numbers.y.to_bytes(coord, "big")
    ek_x = ek.x.rjust(coord, b"\x00")
    seed = kdfe(h, z, b"IDENTITY", eph_x, ek_x, size * 8)
    return seed, _tpm2b(_tpm2b(eph_x) + _tpm2b(eph_y))


def make_credential(
    ek_public: TpmPublic,
    ak_name: bytes,
    secret: bytes,
    *,
    random: Callable[[int], bytes] = os.urandom,
) -> tuple[bytes, bytes]:
    """TPM2_MakeCredential: (credentialBlob as TPM2B_ID_OBJECT, secret as TPM2B_ENCRYPTED_SECRET).

    ``ak_name`` is the AK's Name (nameAlg || digest); ``secret`` at most |H(EK nameAlg)| bytes, as
    the TPM requires. ``random`` is injectable for tests only. Raises ``VerificationError(check=
    "ek_public")`` for an EK unfit to protect a credential, ``ValueError`` for a malformed name or secret.
    """
    _check_ek(ek_public)
    h = ek_public.name_alg
    size = HASH_SIZES[h]
    if not 1 <= len(secret) <= size:
        raise ValueError(f"the secret must be 1 to {size} bytes for a {HASH_ALGS[h]} EK, got {len(secret)}")
    if len(ak_name) < 2:
        raise ValueError("the AK name is too short")
    name_alg = struct.unpack(">H", ak_name[:2])[0]
    if HASH_SIZES.get(name_alg) != len(ak_name) - 2:
        raise ValueError(f"the AK name is not nameAlg || digest ({len(ak_name)} bytes, alg 0x{name_alg:04x})")
    seed, encrypted_secret = _seed(ek_public, random)
    sym_key = kdfa(h, seed, b"STORAGE", ak_name, b"", ek_public.symmetric.key_bits)
    # AES-CFB is the TPM's choice (cryptography files CFB under "decrepit")
    encryptor = Cipher(algorithms.AES(sym_key), CFB(bytes(16))).encryptor()
    enc_identity = encryptor.update(_tpm2b(secret)) + encryptor.finalize()
    hmac_key = kdfa(h, seed, b"INTEGRITY", b"", b"", size * 8)
    outer_hmac = hmac.new(hmac_key, enc_identity + ak_name, HASH_ALGS[h]).digest()
    return _tpm2b(_tpm2b(outer_hmac) + enc_identity), encrypted_secret


def make_ak_challenge(
    ek_public: TpmPublic,
    ak_public: TpmPublic,
    secret: bytes,
    *,
    random: Callable[[int], bytes] = os.urandom,
) -> tuple[bytes, bytes]:
    """:func:`make_credential` for ``ak_public``'s Name, after checking it is what an AK must be
    (``verify.check_ak``, the rule every quote is held to; else ``VerificationError(check="ak_public")``)."""
    check_ak(ak_public)
    return make_credential(ek_public, ak_public.name, secret, random=random)


def verify_ek_certificate(
    certificate: bytes | x509.Certificate,
    ek_public: TpmPublic,
    *,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    at: datetime,
) -> CertChain:
    """The EK certificate chains to a configured manufacturer root at ``at`` and certifies ``ek_public``'s
    key (``VerificationError(check="ek_certificate")`` otherwise)."""
    leaf = load_certificate(certificate, "EK certificate", "ek_certificate")
    usage = "key_encipherment" if ek_public.type == ALG_RSA else "key_agreement"
    chain = verify_certificate_chain(
        leaf, intermediates, roots, at=at, what="EK", check="ek_certificate", leaf_key_usage=usage
    )
    if spki_der(leaf) != spki_der(ek_public.public_key()):
        raise VerificationError("the EK certificate is for another key than the EK", check="ek_certificate")
    return chain
