from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from keybroker.errors import InvalidInput
from keybroker.keystores import material as km


def test_repr_hides_secret() -> None:
    m = km.generate(km.normalize_spec("AES", 256, None))
    assert m.secret.hex() not in repr(m) and "32 bytes" in repr(m)


def test_generated_rsa_is_pkcs8_of_right_size() -> None:
    m = km.generate(km.normalize_spec("rsa", 2048, None))
    key = serialization.load_der_private_key(m.secret, None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048


def test_ec_alias_and_length_check() -> None:
    assert km.normalize_spec("EC", None, "prime256v1").curve_type == "secp256r1"
    with pytest.raises(InvalidInput, match="does not match curve"):
        km.normalize_spec("EC", 384, "secp256r1")


def test_encrypted_pem_rejected() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    ).decode()
    with pytest.raises(InvalidInput, match="encrypted"):
        km.import_key("EC", None, None, pem)


@settings(max_examples=200, deadline=None)
@given(
    algorithm=st.one_of(st.sampled_from(["AES", "RSA", "EC", "aes", "DES", ""]), st.text(max_size=8)),
    key_length=st.one_of(st.none(), st.integers(-10, 10000)),
    curve=st.one_of(
        st.none(), st.sampled_from(["secp256r1", "prime256v1", "secp384r1", "x25519"]), st.text(max_size=10)
    ),
)
def test_normalize_spec_never_crashes(algorithm: str, key_length: int | None, curve: str | None) -> None:
    try:
        spec = km.normalize_spec(algorithm, key_length, curve)
    except InvalidInput as exc:
        assert exc.field is not None and exc.field.startswith("key_information.")
    else:
        assert spec.algorithm in ("AES", "RSA", "EC")


@settings(max_examples=200, deadline=None)
@given(
    algorithm=st.sampled_from(["AES", "RSA", "EC"]),
    key_string=st.one_of(
        st.text(max_size=200), st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())
    ),
)
def test_import_garbage_is_invalid_input(algorithm: str, key_string: str) -> None:
    try:
        m = km.import_key(algorithm, None, None, key_string)
    except InvalidInput as exc:
        assert exc.field == "key_information.key_string" or (exc.field or "").startswith("key_information.")
    else:
        assert m.spec.algorithm == "AES" and len(m.secret) * 8 in km.AES_LENGTHS
