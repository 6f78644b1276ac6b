"""MakeCredential in software, checked by a real TPM: swtpm's tpm2_activatecredential returns the
secret for the AK it was made for, and refuses anything else. EK certificates chain to swtpm's
local CA (the "manufacturer" root here)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.helpers import tpm_build as tb
from tests.helpers.swtpm import Swtpm
from tests.vectors.corpus import read_bytes

from keybroker.errors import VerificationError
from keybroker.tee.tpm.abi import parse_tpm2b_public
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


#: Known answers from google/go-tpm tpm2/test/testvectors/kdfa.json (commit d88acdb2) and kdfe.json
#: (commit 388df4f1): (hash alg, key or Z, label, contextU, contextV, bits, result), odd bit counts included.
KDFA_VECTORS = [
    (
        0x0004,
        "ff",
        "CFB",
        "86ed23c15d086e70a8eae700680e75d20cff",
        "51122c5879b277ff",
        140,
        "0d0be71c885d10eb61f2219000885c2d7658",
    ),
    (
        0x0004,
        "",
        "IDENTITY",
        "4e462df0430f697bdb85c61a4ec7628943",
        "ff80c59598996ff148c6574472ece01c608a02",
        283,
        "04512482418b546925489d197cadb96768cfe9744a9142f1360de6021a94bc8dda277697",
    ),
    (
        0x000B,
        "ff5625623188b99180b53e96108e3e01d19c18db598631d56c",
        "STORAGE",
        "ef12916d91f3ed8355f100ef7d3553ff69eb63edd59a0048eeda77",
        "800bce408c34f800",
        17,
        "0051bb",
    ),
    (
        0x000B,
        "e38573d849a5cfc9973f58b4535e42b7c08ef28b1b3e775375b5c66b9644be",
        "STORAGE",
        "00586dccbebc998087e4",
        "",
        552,
        "968f349b066ed26be3bd4e78333eb5c5b51c26ea376efe5dfaf061a2cf7f5eb82e4fcc2a30736e30f12b48ab17efd105"
        "76a4cf33450324b3f20011628df7a07c411f8c0f6c",
    ),
]
KDFE_VECTORS = [
    (
        0x0004,
        "4f60ef1e20d3a266e4ed45ff",
        "STORAGE",
        "d309dcef2fb76c",
        "81e625e75002c0596146a68669443ecbf699ff",
        103,
        "78e19b34a31ad8723f5eb1ea1a",
    ),
    (
        0x000B,
        "abfeed98891b58d2f881537fba2c215653f8b91b8a131b61f0b72de7ccd07a",
        "IDENTITY",
        "71a10284e793bd38f61e6aef1cbfa131c3ad546e72421fe4a3ff",
        "64cc0fac59f45b9b2ace75856f409ac830ccc64f2fff",
        241,
        "00f17279fc5b8f842d30fbe5a7afc109468671e6da33fec996d6a7c170e37f",
    ),
    (
        0x000B,
        "ace0b616d2536451ca1fe0d9744107b88e5500",
        "IDENTITY",
        "e5aeb5370365c400",
        "2e3345f6e9cca8341eb82e4098fe",
        3,
        "07",
    ),
]


@pytest.mark.parametrize("v", KDFA_VECTORS)
def test_kdfa_known_answers(v: tuple[int, str, str, str, str, int, str]) -> None:
    alg, key, label, u, w, bits, result = v
    assert (
        kdfa(alg, bytes.fromhex(key), label.encode(), bytes.fromhex(u), bytes.fromhex(w), bits).hex()
        == result
    )


@pytest.mark.parametrize("v", KDFE_VECTORS)
def test_kdfe_known_answers(v: tuple[int, str, str, str, str, int, str]) -> None:
    alg, z, label, u, w, bits, result = v
    assert (
        kdfe(alg, bytes.fromhex(z), label.encode(), bytes.fromhex(u), bytes.fromhex(w), bits).hex() == result
    )
