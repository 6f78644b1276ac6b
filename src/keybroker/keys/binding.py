"""Binding the workload's ephemeral key (and the server nonce) into the evidence's report data.

See docs/architecture.md, "Evidence binding":
- ``/kbs/v1``: REPORTDATA (64 bytes) = SHA-512(nonce bytes || DER SubjectPublicKeyInfo).
- ``/kbs/v0`` (KBS protocol 0.4.0): HASH(JCS(runtime data)) zero-padded to 64 bytes, HASH being
  SHA-384 unless the challenge selected another.
"""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keybroker.errors import InvalidInput

REPORT_DATA_SIZE = 64
MIN_RSA_BITS = 3072
ALLOWED_CURVES = ("secp256r1", "secp384r1")
V0_HASHES = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}

WorkloadKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def check_workload_key(key: object, field: str) -> WorkloadKey:
    """Accept RSA >= 3072 bits or EC P-256/P-384; anything else is InvalidInput."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise InvalidInput(
                f"{field}: RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} needed", field=field
            )
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ALLOWED_CURVES:
            raise InvalidInput(
                f"{field}: EC curve {key.curve.name} not accepted; use P-256 or P-384", field=field
            )
        return key
    raise InvalidInput(
        f"{field}: only RSA (>= {MIN_RSA_BITS} bits) and EC P-256/P-384 keys are accepted", field=field
    )


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


def v0_runtime_data(nonce: str, tee_pubkey: dict[str, Any], additional_evidence: str) -> dict[str, Any]:
    return {"tee-pubkey": tee_pubkey, "nonce": nonce, "additional-evidence": additional_evidence}


def v0_report_data(
    nonce: str, tee_pubkey: dict[str, Any], additional_evidence: str, hash_alg: str = "sha384"
) -> bytes:
    """HASH(JCS({"tee-pubkey", "nonce", "additional-evidence"})) zero-padded to 64 bytes."""
    if hash_alg not in V0_HASHES:
        raise InvalidInput(f"hash algorithm {hash_alg!r} is not one of {', '.join(V0_HASHES)}", field="hash")
    digest = V0_HASHES[hash_alg](
        rfc8785.dumps(v0_runtime_data(nonce, tee_pubkey, additional_evidence))
    ).digest()
    return digest.ljust(REPORT_DATA_SIZE, b"\0")
