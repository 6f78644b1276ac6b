"""Binding the workload's ephemeral key (and the server nonce) into the evidence's report data.

See docs/architecture.md, "Evidence binding":
- ``/kbs/v1``: REPORTDATA (64 bytes) = SHA-512(nonce bytes || DER SubjectPublicKeyInfo).
- ``/kbs/v0`` (KBS protocol 0.4.0): HASH(JCS(runtime data)) zero-padded to 64 bytes, HASH being
  SHA-384 unless the challenge selected another.
- TPM quotes (``tpm``, ``az-snp-vtpm``, ``az-tdx-vtpm``): a TPM caps ``extraData`` at its largest
  digest (often 32 or 48 bytes), so it carries SHA-256(nonce || SPKI) on ``/kbs/v1`` and the
  runtime-data hash itself, not padded, on ``/kbs/v0``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keybroker.errors import InvalidInput

REPORT_DATA_SIZE = 64
#: Workload key bounds, checked before any evidence is appraised: a key the wrapping cannot use
#: (OpenSSL refuses RSA moduli above 16384 bits, and public exponents above 64 bits for moduli
#: above 3072) must be refused up front, not fail after the policy allowed the release.
MIN_RSA_BITS = 3072
MAX_RSA_BITS = 8192
MAX_RSA_EXPONENT = 2**32 - 1
ALLOWED_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
V0_HASHES = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}

WorkloadKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
_BOUNDS = f"RSA {MIN_RSA_BITS}-{MAX_RSA_BITS} bits or EC {'/'.join(ALLOWED_CURVES.values())}"


def check_workload_key(key: object, field: str) -> WorkloadKey:
    """Accept RSA of 3072 to 8192 bits (odd public exponent 3 to 2^32-1) or EC P-256/P-384/P-521;
    anything else is :class:`InvalidInput` naming ``field`` and the bound."""
    if isinstance(key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise InvalidInput(
                f"{field}: RSA key of {key.key_size} bits; keybroker accepts {MIN_RSA_BITS} to "
                f"{MAX_RSA_BITS} bits",
                field=field,
            )
        e = key.public_numbers().e
        if not (3 <= e <= MAX_RSA_EXPONENT and e % 2 == 1):
            shown = str(e) if e.bit_length() <= 64 else f"of {e.bit_length()} bits"
            raise InvalidInput(
                f"{field}: RSA public exponent {shown} is not accepted; keybroker accepts an odd "
                "exponent from 3 to 2^32-1 (65537 is usual)",
                field=field,
            )
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ALLOWED_CURVES:
            raise InvalidInput(
                f"{field}: EC curve {key.curve.name} not accepted; use {', '.join(ALLOWED_CURVES.values())}",
                field=field,
            )
        return key
    raise InvalidInput(f"{field}: only {_BOUNDS} keys are accepted", field=field)


def load_spki(der: bytes, field: str = "user_data") -> WorkloadKey:
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError):
        raise InvalidInput(f"{field} is not a DER SubjectPublicKeyInfo", field=field) from None
    if key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != der:
        raise InvalidInput(f"{field} is not in canonical DER", field=field)
    return check_workload_key(key, field)


def v1_report_data(nonce: bytes, spki_der: bytes) -> bytes:
    """SHA-512(nonce || SPKI): all 64 bytes of REPORTDATA."""
    return hashlib.sha512(nonce + spki_der).digest()


def v1_tpm_extra_data(nonce: bytes, spki_der: bytes) -> bytes:
    """A TPM quote's extraData on ``/kbs/v1``: SHA-256(nonce || SPKI), 32 bytes (fits every TPM)."""
    return hashlib.sha256(nonce + spki_der).digest()


def v0_runtime_data(nonce: str, tee_pubkey: dict[str, Any], additional_evidence: str) -> dict[str, Any]:
    return {"tee-pubkey": tee_pubkey, "nonce": nonce, "additional-evidence": additional_evidence}


def v0_report_data(
    nonce: str, tee_pubkey: dict[str, Any], additional_evidence: str, hash_alg: str = "sha384"
) -> bytes:
    """HASH(JCS({"tee-pubkey", "nonce", "additional-evidence"})) zero-padded to 64 bytes."""
    return v0_runtime_digest(nonce, tee_pubkey, additional_evidence, hash_alg).ljust(REPORT_DATA_SIZE, b"\0")


def v0_runtime_digest(
    nonce: str, tee_pubkey: dict[str, Any], additional_evidence: str, hash_alg: str = "sha384"
) -> bytes:
    """HASH(JCS({"tee-pubkey", "nonce", "additional-evidence"})), not padded: a TPM quote's extraData."""
    if hash_alg not in V0_HASHES:
        raise InvalidInput(f"hash algorithm {hash_alg!r} is not one of {', '.join(V0_HASHES)}", field="hash")
    return V0_HASHES[hash_alg](
        rfc8785.dumps(v0_runtime_data(nonce, tee_pubkey, additional_evidence))
    ).digest()
