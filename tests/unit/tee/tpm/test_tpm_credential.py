"""MakeCredential in software, checked by a real TPM: swtpm's tpm2_activatecredential returns the
secret for the AK it was made for, and refuses anything else. EK certificates chain to swtpm's
local CA (the "manufacturer" root here)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.helpers import tpm_build as tb
from tests.helpers.swtpm import Swtpm
from tests.vectors.corpus import read_bytes

from keybroker.errors import VerificationError
from keybroker.tee.tpm.abi import ALG_SHA256, parse_tpm2b_public
from keybroker.tee.tpm.credential import kdfa, kdfe, make_ak_challenge, make_credential, verify_ek_certificate

SECRET = bytes(range(32))


@pytest.fixture(scope="module")
def aks(swtpm: Swtpm) -> dict[str, object]:
    return {"rsa": swtpm.create_ak(), "ecc": swtpm.create_ak(alg="ecc", scheme="ecdsa")}


@pytest.mark.parametrize("ek_kind", ["rsa", "ecc"])
@pytest.mark.parametrize("ak_kind", ["rsa", "ecc"])
def test_activatecredential_recovers_the_secret(
    swtpm: Swtpm, aks: dict[str, object], ek_kind: str, ak_kind: str
) -> None:
    ak = aks[ak_kind]
    ek = parse_tpm2b_public(swtpm.ek_public(ek_kind))
    blob, encrypted = make_ak_challenge(ek, parse_tpm2b_public(ak.public), SECRET)  # type: ignore[attr-defined]
    assert swtpm.activate_credential(ak, blob, encrypted, ek=ek_kind) == SECRET  # type: ignore[arg-type]


@pytest.mark.parametrize("ek_kind", ["rsa", "ecc"])
def test_a_credential_for_another_ak_is_refused_by_the_tpm(
    swtpm: Swtpm, aks: dict[str, object], ek_kind: str
) -> None:
    ek = parse_tpm2b_public(swtpm.ek_public(ek_kind))
    blob, encrypted = make_credential(ek, aks["ecc"].name, SECRET)  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="tpm2_activatecredential"):
        swtpm.activate_credential(aks["rsa"], blob, encrypted, ek=ek_kind)  # type: ignore[arg-type]


@pytest.mark.parametrize("part", ["blob", "secret"])
def test_a_changed_byte_is_refused_by_the_tpm(swtpm: Swtpm, aks: dict[str, object], part: str) -> None:
    ak = aks["rsa"]
    ek = parse_tpm2b_public(swtpm.ek_public("rsa"))
    blob, encrypted = make_credential(ek, ak.name, SECRET)  # type: ignore[attr-defined]
    if part == "blob":
        blob = blob[:10] + bytes([blob[10] ^ 1]) + blob[11:]  # inside the outer HMAC
    else:
        encrypted = encrypted[:-1] + bytes([encrypted[-1] ^ 1])
    with pytest.raises(RuntimeError, match="tpm2_activatecredential"):
        swtpm.activate_credential(ak, blob, encrypted, ek="rsa")  # type: ignore[arg-type]


def test_refusals_before_issuing(swtpm: Swtpm, aks: dict[str, object]) -> None:
    ek = parse_tpm2b_public(swtpm.ek_public("rsa"))
    ak = parse_tpm2b_public(aks["rsa"].public)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="1 to 32 bytes"):
        make_credential(ek, ak.name, bytes(33))
    with pytest.raises(ValueError, match="1 to 32 bytes"):
        make_credential(ek, ak.name, b"")
    with pytest.raises(ValueError, match="nameAlg"):
        make_credential(ek, ak.name[:-1], SECRET)
    with pytest.raises(VerificationError) as info:
        make_credential(ak, ak.name, SECRET)  # an AK is no storage key
    assert info.value.check == "ek_public"
    with pytest.raises(VerificationError) as info:
        make_ak_challenge(ek, ek, SECRET)  # an EK is no attestation key
    assert info.value.check == "ak_public"
    gce_ak = parse_tpm2b_public(
        read_bytes("tpm2-gce/go-tpm-tools/extracted/gce-cos-85-nonce9009/ak.tpm2b_public")
    )
    assert make_ak_challenge(ek, gce_ak, SECRET)[0][:2] == (2 + 32 + 2 + 32).to_bytes(2, "big")


def _ca(swtpm: Swtpm) -> tuple[x509.Certificate, x509.Certificate]:
    intermediate, root = swtpm.ca_certificates()
    return x509.load_pem_x509_certificate(intermediate), x509.load_pem_x509_certificate(root)


@pytest.mark.parametrize("kind", ["rsa", "ecc"])
def test_ek_certificate_chains_to_the_local_ca(swtpm: Swtpm, kind: str) -> None:
    intermediate, root = _ca(swtpm)
    ek = parse_tpm2b_public(swtpm.ek_public(kind))
    at = intermediate.not_valid_before_utc + timedelta(days=1)
    chain = verify_ek_certificate(
        swtpm.ek_certificate(kind), ek, intermediates=[intermediate], roots=[root], at=at
    )
    assert chain.certs[-1] == root and len(chain.certs) == 3


def test_ek_certificate_refusals(swtpm: Swtpm) -> None:
    intermediate, root = _ca(swtpm)
    rsa_ek = parse_tpm2b_public(swtpm.ek_public("rsa"))
    at = intermediate.not_valid_before_utc + timedelta(days=1)
    gce_root = x509.load_der_x509_certificate(read_bytes("tpm2-gce/go-tpm-tools/ca/tpm_ek_root_1.cer"))
    cases = [
        (
            {"intermediates": [intermediate], "roots": [gce_root], "at": at},
            swtpm.ek_certificate("rsa"),
            "not issued by",
        ),
        ({"intermediates": [], "roots": [root], "at": at}, swtpm.ek_certificate("rsa"), "not issued by"),
        (
            {"intermediates": [intermediate], "roots": [root], "at": at},
            swtpm.ek_certificate("ecc"),
            "lacks key usage key_encipherment",
        ),
        (
            {
                "intermediates": [intermediate],
                "roots": [root],
                "at": intermediate.not_valid_before_utc - timedelta(days=1),
            },
            swtpm.ek_certificate("rsa"),
            "not valid before",
        ),
    ]
    other = parse_tpm2b_public(tb.rsa_public_area(rsa.generate_private_key(65537, 2048).public_key()))
    with pytest.raises(VerificationError, match="for another key than the EK"):
        verify_ek_certificate(
            swtpm.ek_certificate("rsa"), other, intermediates=[intermediate], roots=[root], at=at
        )
    for kwargs, cert, needle in cases:
        with pytest.raises(VerificationError, match=needle) as info:
            verify_ek_certificate(cert, rsa_ek, **kwargs)  # type: ignore[arg-type]
        assert info.value.check == "ek_certificate"


def test_kdf_output_lengths_and_odd_bits() -> None:
    out = kdfa(ALG_SHA256, b"k", b"STORAGE", b"u", b"v", 300)
    assert len(out) == 38 and out[0] < 16  # 300 bits: the top 4 bits of the first byte are clear
    assert kdfa(ALG_SHA256, b"k", b"STORAGE", b"u", b"v", 256) != kdfa(
        ALG_SHA256, b"k", b"INTEGRITY", b"u", b"v", 256
    )
    assert len(kdfe(ALG_SHA256, b"z", b"IDENTITY", b"u", b"v", 512)) == 64
    _ = datetime.now(UTC)
