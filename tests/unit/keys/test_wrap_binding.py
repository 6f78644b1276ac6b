from __future__ import annotations

import hashlib
import os

import pytest
import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc.jwk import RSAKey

from keybroker.client.unwrap import UnwrapError, jwe_unwrap, secl_unwrap
from keybroker.errors import InvalidInput
from keybroker.keys import wrap
from keybroker.wire import binding
from keybroker.wire.envelope import OAEP_SHA256


@pytest.fixture(scope="module")
def rsa3072() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


def test_secl_layout(rsa3072: rsa.RSAPrivateKey) -> None:
    secret = os.urandom(48)
    w = wrap.secl_wrap(secret, rsa3072.public_key())
    iv_len, tag_len, ct_len = (int.from_bytes(w.wrapped_key[i : i + 4], "little") for i in (0, 4, 8))
    assert (iv_len, tag_len, ct_len) == (12, 16, 48 + 16)
    assert len(w.wrapped_key) == 12 + 12 + 64
    assert len(w.wrapped_swk) == 384
    assert secl_unwrap(w.wrapped_key, w.wrapped_swk, rsa3072) == secret
    # independent unwrap with the primitives, as a SecL client would
    swk = rsa3072.decrypt(w.wrapped_swk, OAEP_SHA256)
    assert AESGCM(swk).decrypt(w.wrapped_key[12:24], w.wrapped_key[24:], None) == secret


def test_secl_tamper_fails(rsa3072: rsa.RSAPrivateKey) -> None:
    w = wrap.secl_wrap(b"k" * 32, rsa3072.public_key())
    bad = wrap.SeclWrapped(w.wrapped_key[:-1] + bytes([w.wrapped_key[-1] ^ 1]), w.wrapped_swk)
    with pytest.raises(UnwrapError):
        secl_unwrap(bad.wrapped_key, bad.wrapped_swk, rsa3072)


def test_jwe_rsa_and_ec(rsa3072: rsa.RSAPrivateKey) -> None:
    jwe = wrap.jwe_wrap(b"resource", wrap.public_jwk(rsa3072.public_key()))
    assert set(jwe) == {"protected", "encrypted_key", "iv", "ciphertext", "tag"}
    assert jwe_unwrap(jwe, rsa3072) == b"resource"
    eck = ec.generate_private_key(ec.SECP384R1())
    jwe = wrap.jwe_wrap(b"resource", wrap.public_jwk(eck.public_key()))
    assert jwe_unwrap(jwe, eck) == b"resource"


def test_jwe_refuses_private_and_unknown_keys(rsa3072: rsa.RSAPrivateKey) -> None:
    with pytest.raises(InvalidInput, match="private"):
        wrap.jwe_wrap(b"x", dict(RSAKey.import_key(rsa3072).as_dict(private=True)))
    with pytest.raises(InvalidInput, match="kty"):
        wrap.jwe_wrap(b"x", {"kty": "oct", "k": "AAAA"})


def test_v1_report_data() -> None:
    nonce, spki = os.urandom(32), b"spki"
    assert binding.v1_report_data(nonce, spki) == hashlib.sha512(nonce + spki).digest()


def test_v0_report_data_is_jcs_hash_padded() -> None:
    jwk = {"kty": "EC", "crv": "P-256", "x": "x", "y": "y"}
    rd = binding.v0_report_data("n0nce", jwk, "", "sha384")
    expected = hashlib.sha384(
        rfc8785.dumps({"tee-pubkey": jwk, "nonce": "n0nce", "additional-evidence": ""})
    ).digest()
    assert rd == expected + b"\0" * 16
    assert binding.v0_report_data("n0nce", jwk, "", "sha512") != rd
    with pytest.raises(InvalidInput):
        binding.v0_report_data("n", jwk, "", "md5")


def test_workload_key_rules() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    der = small.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(InvalidInput, match="3072"):
        binding.load_spki(der)
    k256 = ec.generate_private_key(ec.SECP256K1()).public_key()
    with pytest.raises(InvalidInput, match="secp256k1 not accepted; use P-256, P-384, P-521"):
        binding.check_workload_key(k256, "k")
    p521 = ec.generate_private_key(ec.SECP521R1()).public_key()
    assert binding.check_workload_key(p521, "k") is p521
    with pytest.raises(InvalidInput, match="DER"):
        binding.load_spki(b"\x30\x03garbage")
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = p256.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert isinstance(binding.load_spki(der), ec.EllipticCurvePublicKey)


def _rsa_public(bits: int, e: int = 65537) -> rsa.RSAPublicKey:
    """An RSA public key of exactly ``bits`` bits (a random odd modulus: only its size matters here)."""
    n = int.from_bytes(os.urandom(bits // 8 + 1), "big") % (1 << bits) | (1 << (bits - 1)) | 1
    return rsa.RSAPublicNumbers(e, n).public_key()


@pytest.mark.parametrize(
    ("bits", "e", "message"),
    [
        (8200, 65537, "k: RSA key of 8200 bits; keybroker accepts 3072 to 8192 bits"),
        (16392, 65537, "k: RSA key of 16392 bits; keybroker accepts 3072 to 8192 bits"),
        (4096, 2**64 + 1, "k: RSA public exponent of 65 bits is not accepted"),
        (4096, 2**32 + 1, "k: RSA public exponent 4294967297 is not accepted"),
    ],
)
def test_workload_key_upper_bounds(bits: int, e: int, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        binding.check_workload_key(_rsa_public(bits, e), "k")
    assert str(info.value).startswith(message) and info.value.field == "k"


@pytest.mark.parametrize(("bits", "e"), [(3072, 3), (8192, 65537), (4096, 2**32 - 1)])
def test_every_accepted_rsa_key_wraps(bits: int, e: int) -> None:
    """The bounds are what the wrapping can use: an accepted key never fails there."""
    key = binding.check_workload_key(_rsa_public(bits, e), "k")
    assert isinstance(key, rsa.RSAPublicKey)
    assert len(wrap.secl_wrap(b"k" * 32, key).wrapped_swk) == bits // 8
    assert wrap.jwe_wrap(b"k", wrap.public_jwk(key))["ciphertext"]
