"""Key types, generation and import. Pure: no HTTP, no database.

Supported (Intel SecL KBS / Trust Authority KBS): AES 128/192/256; RSA 2048/3072/4096;
EC secp256r1 (alias prime256v1), secp384r1, secp521r1. Private material is held as raw
bytes (AES) or PKCS#8 DER (RSA/EC).
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from keybroker.errors import InvalidInput

Algorithm = Literal["AES", "RSA", "EC"]

AES_LENGTHS = (128, 192, 256)
RSA_LENGTHS = (2048, 3072, 4096)
CURVES: dict[str, type[ec.EllipticCurve]] = {
    "secp256r1": ec.SECP256R1,
    "secp384r1": ec.SECP384R1,
    "secp521r1": ec.SECP521R1,
}
CURVE_ALIASES = {"prime256v1": "secp256r1", "p-256": "secp256r1", "p-384": "secp384r1", "p-521": "secp521r1"}
_CURVE_BITS = {"secp256r1": 256, "secp384r1": 384, "secp521r1": 521}


@dataclass(frozen=True)
class KeySpec:
    algorithm: Algorithm
    key_length: int | None
    curve_type: str | None


@dataclass(frozen=True)
class KeyMaterial:
    spec: KeySpec
    #: AES: the raw key; RSA/EC: PKCS#8 DER. Never logged, never returned to an admin.
    secret: bytes
    public_key_pem: str | None

    def __repr__(self) -> str:  # keep key bytes out of tracebacks and logs
        return f"KeyMaterial(spec={self.spec!r}, secret=<{len(self.secret)} bytes>)"


def normalize_spec(algorithm: str, key_length: int | None, curve_type: str | None) -> KeySpec:
    """Validate an (algorithm, length, curve) triple; raise InvalidInput naming the field."""
    alg = algorithm.upper()
    if alg == "AES":
        if curve_type is not None:
            raise InvalidInput("curve_type applies only to EC keys", field="key_information.curve_type")
        if key_length not in AES_LENGTHS:
            raise InvalidInput(
                f"AES key_length must be one of {', '.join(map(str, AES_LENGTHS))}, not {key_length}",
                field="key_information.key_length",
            )
        return KeySpec("AES", key_length, None)
    if alg == "RSA":
        if curve_type is not None:
            raise InvalidInput("curve_type applies only to EC keys", field="key_information.curve_type")
        if key_length not in RSA_LENGTHS:
            raise InvalidInput(
                f"RSA key_length must be one of {', '.join(map(str, RSA_LENGTHS))}, not {key_length}",
                field="key_information.key_length",
            )
        return KeySpec("RSA", key_length, None)
    if alg == "EC":
        if curve_type is None:
            raise InvalidInput(
                f"EC keys need curve_type, one of {', '.join(CURVES)}", field="key_information.curve_type"
            )
        curve = CURVE_ALIASES.get(curve_type.lower(), curve_type.lower())
        if curve not in CURVES:
            raise InvalidInput(
                f"unknown curve_type {curve_type!r}; use one of {', '.join(CURVES)} (or prime256v1)",
                field="key_information.curve_type",
            )
        bits = _CURVE_BITS[curve]
        if key_length is not None and key_length != bits:
            raise InvalidInput(
                f"key_length {key_length} does not match curve {curve} ({bits} bits)",
                field="key_information.key_length",
            )
        return KeySpec("EC", bits, curve)
    raise InvalidInput(
        f"unknown algorithm {algorithm!r}; use AES, RSA or EC", field="key_information.algorithm"
    )


def _public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _pkcs8(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def generate(spec: KeySpec) -> KeyMaterial:
    if spec.algorithm == "AES":
        assert spec.key_length is not None
        return KeyMaterial(spec, os.urandom(spec.key_length // 8), None)
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if spec.algorithm == "RSA":
        assert spec.key_length is not None
        key = rsa.generate_private_key(public_exponent=65537, key_size=spec.key_length)
    else:
        assert spec.curve_type is not None
        key = ec.generate_private_key(CURVES[spec.curve_type]())
    return KeyMaterial(spec, _pkcs8(key), _public_pem(key))


def import_key(
    algorithm: str, key_length: int | None, curve_type: str | None, key_string: str
) -> KeyMaterial:
    """Import ``key_string``: base64 for AES, PEM (PKCS#1, SEC1 or PKCS#8, unencrypted) for RSA/EC.

    The key's real size is read from the material; a stated length or curve must agree.
    """
    alg = algorithm.upper()
    field = "key_information.key_string"
    if alg == "AES":
        try:
            raw = base64.b64decode(key_string.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(
                "key_string is not valid base64 (AES keys are imported as base64)", field=field
            ) from None
        bits = len(raw) * 8
        if key_length is not None and key_length != bits:
            raise InvalidInput(
                f"key_string holds a {bits}-bit key but key_length says {key_length}", field=field
            )
        spec = normalize_spec("AES", bits, curve_type)
        return KeyMaterial(spec, raw, None)
    if alg not in ("RSA", "EC"):
        normalize_spec(algorithm, key_length, curve_type)  # raises the unknown-algorithm error
    try:
        loaded: PrivateKeyTypes = serialization.load_pem_private_key(key_string.encode(), password=None)
    except TypeError:
        raise InvalidInput(
            "key_string is an encrypted PEM; import an unencrypted private key", field=field
        ) from None
    except (ValueError, UnicodeEncodeError):
        raise InvalidInput("key_string is not a PEM private key", field=field) from None
    if alg == "RSA":
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise InvalidInput("key_string is not an RSA private key", field=field)
        if key_length is not None and key_length != loaded.key_size:
            raise InvalidInput(
                f"key_string holds a {loaded.key_size}-bit RSA key but key_length says {key_length}",
                field=field,
            )
        spec = normalize_spec("RSA", loaded.key_size, curve_type)
        return KeyMaterial(spec, _pkcs8(loaded), _public_pem(loaded))
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise InvalidInput("key_string is not an EC private key", field=field)
    curve_name = loaded.curve.name
    if curve_name not in CURVES:
        raise InvalidInput(
            f"EC curve {curve_name} is not supported; use one of {', '.join(CURVES)}", field=field
        )
    if curve_type is not None and CURVE_ALIASES.get(curve_type.lower(), curve_type.lower()) != curve_name:
        raise InvalidInput(
            f"key_string is on curve {curve_name} but curve_type says {curve_type}", field=field
        )
    spec = normalize_spec("EC", key_length, curve_name)
    return KeyMaterial(spec, _pkcs8(loaded), _public_pem(loaded))


def load_private_key(material: KeyMaterial) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    key = serialization.load_der_private_key(material.secret, password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise InvalidInput("the key is not an RSA or EC key")
    return key
