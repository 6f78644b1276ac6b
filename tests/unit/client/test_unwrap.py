"""The client's unwrap against the server's wrap (keybroker.keys.wrap): both SecL layouts and both JWE
algorithms, and tampering."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from keybroker.client.material import classify
from keybroker.client.unwrap import OAEP_SHA256, UnwrapError, jwe_unwrap, secl_unwrap, trim_der_padding
from keybroker.keys import wrap
from keybroker.keystores.base import TransferWrap

WORKLOAD = rsa.generate_private_key(public_exponent=65537, key_size=3072)


def test_secl_gcm_round_trip_and_tampering() -> None:
    secret = os.urandom(32)
    w = wrap.secl_wrap(secret, WORKLOAD.public_key())
    assert secl_unwrap(w.wrapped_key, w.wrapped_swk, WORKLOAD) == secret
    flipped = bytearray(w.wrapped_key)
    flipped[-1] ^= 1
    with pytest.raises(UnwrapError, match="does not open"):
        secl_unwrap(bytes(flipped), w.wrapped_swk, WORKLOAD)
    with pytest.raises(UnwrapError, match="lengths do not add up"):
        secl_unwrap(w.wrapped_key[:-1], w.wrapped_swk, WORKLOAD)
    with pytest.raises(UnwrapError, match="shorter than its header"):
        secl_unwrap(b"\x0c", w.wrapped_swk, WORKLOAD)
    other = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    with pytest.raises(UnwrapError, match="session key"):
        secl_unwrap(w.wrapped_key, w.wrapped_swk, other)


def test_secl_hsm_rfc5649_variant_with_softhsm_padding() -> None:
    """keybroker's iv_len = 0 mark: the key wrapped inside an HSM with RFC 5649, PKCS#8 zero-padded to
    a multiple of 8 by SoftHSM."""
    key = ec.generate_private_key(ec.SECP256R1())
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    padded = pkcs8 + bytes(-len(pkcs8) % 8)
    swk = os.urandom(32)
    tw = TransferWrap(
        wrapped_session_key=WORKLOAD.public_key().encrypt(swk, OAEP_SHA256),
        key_wrap="A256KWP",
        iv=b"",
        wrapped_key=aes_key_wrap_with_padding(swk, padded),
    )
    w = wrap.secl_from_transfer(tw)
    opened = secl_unwrap(w.wrapped_key, w.wrapped_swk, WORKLOAD)
    assert opened == pkcs8
    assert classify("k", opened).kind == "ec"
    assert trim_der_padding(b"\x00" * 16) == b"\x00" * 16


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_jwe_round_trip(kind: str) -> None:
    priv: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
        WORKLOAD if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
    )
    secret = os.urandom(40)
    jwe = wrap.jwe_wrap(secret, wrap.public_jwk(priv.public_key()))
    assert jwe_unwrap(dict(jwe), priv) == secret
    tampered = dict(jwe) | {"tag": jwe["iv"]}
    with pytest.raises(UnwrapError, match="does not open"):
        jwe_unwrap(tampered, priv)
    with pytest.raises(UnwrapError, match="flattened JWE"):
        jwe_unwrap({"protected": "x"}, priv)


def test_released_key_hides_its_bytes() -> None:
    pkcs8 = WORKLOAD.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    released = classify("k1", pkcs8)
    assert (released.kind, released.bits, released.describe()) == ("rsa", 3072, "RSA-3072 private key")
    assert pkcs8.hex()[:40] not in repr(released) and "material" not in repr(released)
    assert released.file_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    secret = classify("k2", os.urandom(32))
    assert secret.kind == "secret" and secret.describe() == "256-bit secret"
