"""verify_quote, one check at a time, with quotes signed by software AKs built independently
(``tests/helpers/tpm_build.py``) and AK certificates from throwaway CAs."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tests.helpers import tpm_build as tb

from keybroker.errors import EvidenceParseError, VerificationError
from keybroker.tee.tpm.abi import ClockInfo, parse_tpm2b_public
from keybroker.tee.tpm.verify import NO_NONCE, VerifiedQuote, verify_quote

RSA = rsa.generate_private_key(65537, 2048)
P256 = ec.generate_private_key(ec.SECP256R1())
P384 = ec.generate_private_key(ec.SECP384R1())
PCRS = {"sha256": {0: b"\x11" * 32, 7: b"\x77" * 32}, "sha1": {0: b"\x01" * 20}}
AT = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def quote(
    key: Any = RSA, scheme: str = "rsassa", hash_name: str = "sha256", **fields: Any
) -> tuple[bytes, bytes]:
    f = tb.AttestFields(pcrs=fields.pop("pcrs", PCRS), digest_hash=hash_name, **fields)
    message = tb.attest(f)
    return message, tb.sign(key, message, scheme, hash_name)


def ak_public(key: Any = RSA, **kw: Any) -> Any:
    if isinstance(key, rsa.RSAPrivateKey):
        return parse_tpm2b_public(tb.rsa_public_area(key.public_key(), **kw))
    return parse_tpm2b_public(tb.ecc_public_area(key.public_key(), **kw))


def run(message: bytes, signature: bytes, ak: Any = None, **kw: Any) -> VerifiedQuote:
    kw.setdefault("pcrs", PCRS)
    kw.setdefault("expected_extra_data", b"nonce")
    return verify_quote(message, signature, ak if ak is not None else ak_public(), **kw)


def fails(check: str, message: bytes, signature: bytes, ak: Any = None, **kw: Any) -> str:
    with pytest.raises(VerificationError) as info:
        run(message, signature, ak, **kw)
    assert info.value.check == check, str(info.value)
    return str(info.value)


@pytest.mark.parametrize(
    ("key", "scheme", "hash_name"),
    [
        (RSA, "rsassa", "sha256"),
        (RSA, "rsassa", "sha384"),
        (RSA, "rsapss", "sha256"),
        (RSA, "rsapss", "sha512"),
        (P256, "ecdsa", "sha256"),
        (P384, "ecdsa", "sha384"),
    ],
)
def test_accepts_each_scheme(key: Any, scheme: str, hash_name: str) -> None:
    message, signature = quote(key, scheme, hash_name)
    kw = (
        {"scheme": scheme, "hash_name": hash_name}
        if isinstance(key, rsa.RSAPrivateKey)
        else {"hash_name": hash_name}
    )
    verified = run(message, signature, ak_public(key, **kw))
    assert verified.signature_scheme == f"{scheme}-{hash_name}"
    assert verified.checks == (
        "parse", "ak_public", "signature", "qualified_signer_alg", "extra_data", "pcr_selection", "pcr_digest",
    )  # fmt: skip
    assert verified.pcr_values() == PCRS
    # a bare public key is accepted too (the caller vouches for its TPM binding)
    assert run(message, signature, key.public_key()).ak_name is None


def test_pss_with_maximum_salt_is_accepted() -> None:
    from cryptography.hazmat.primitives.asymmetric import padding

    message = tb.attest(tb.AttestFields(pcrs=PCRS))
    sig = RSA.sign(
        message,
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH),
        hashes.SHA256(),
    )
    tpmt = bytes.fromhex("0016000b") + tb.b2(sig)
    assert run(message, tpmt, ak_public(scheme="rsapss")).signature_scheme == "rsapss-sha256"


def test_sha1_signatures_are_refused() -> None:
    message, signature = quote(hash_name="sha1")
    assert "SHA-1" in fails("signature", message, signature, RSA.public_key())


def test_signature_scheme_must_be_the_aks() -> None:
    message, signature = quote(scheme="rsapss")
    assert "not the AK's scheme" in fails("signature", message, signature, ak_public(scheme="rsassa"))
    message, signature = quote(hash_name="sha384")
    fails("signature", message, signature, ak_public(hash_name="sha256"))


def test_wrong_key_and_wrong_key_type() -> None:
    message, signature = quote()
    fails("signature", message, signature, rsa.generate_private_key(65537, 2048).public_key())
    assert "needs an EC AK" in fails("signature", *quote(P256, "ecdsa"), RSA.public_key())
    assert "needs an RSA AK" in fails("signature", message, signature, P256.public_key())
    small = rsa.generate_private_key(65537, 1024)
    assert "below 2048" in fails("ak_public", *quote(small), small.public_key())
    p521 = ec.generate_private_key(ec.SECP521R1())
    assert "not P-256 or P-384" in fails("ak_public", *quote(p521, "ecdsa"), p521.public_key())


@pytest.mark.parametrize(
    ("clear", "name"),
    [
        (1 << 16, "restricted"),
        (1 << 18, "sign"),
        (1 << 1, "fixedTPM"),
        (1 << 4, "fixedParent"),
        (1 << 5, "sensitiveDataOrigin"),
    ],
)
def test_ak_restrictions(clear: int, name: str) -> None:
    message, signature = quote()
    detail = fails("ak_public", message, signature, ak_public(attributes=tb.AK_ATTRIBUTES & ~clear))
    assert f"lacks {name}" in detail


def test_ak_with_decrypt_is_refused() -> None:
    message, signature = quote()
    assert "decrypt" in fails(
        "ak_public", message, signature, ak_public(attributes=tb.AK_ATTRIBUTES | 1 << 17)
    )


def test_nonce() -> None:
    message, signature = quote(extra_data=b"abc")
    fails("extra_data", message, signature, expected_extra_data=b"abd")
    fails("extra_data", message, signature, expected_extra_data=b"ab")
    fails("extra_data", message, signature, expected_extra_data=b"")
    assert run(message, signature, expected_extra_data=b"abc").nonce_checked
    skipped = run(message, signature, expected_extra_data=NO_NONCE)
    assert not skipped.nonce_checked and "extra_data" not in skipped.checks and skipped.extra_data == b"abc"


def test_pcr_values_must_be_exactly_the_selection() -> None:
    message, signature = quote()
    assert "[7] whose values were not reported" in fails(
        "pcr_selection", message, signature, pcrs={"sha256": {0: PCRS["sha256"][0]}, "sha1": PCRS["sha1"]}
    )
    extra = {"sha256": {**PCRS["sha256"], 8: bytes(32)}, "sha1": PCRS["sha1"]}
    assert "[8] were reported but the quote does not select them" in fails(
        "pcr_selection", message, signature, pcrs=extra
    )
    other_bank = {**PCRS, "sha384": {0: bytes(48)}}
    assert "sha384 bank, which the quote does not select" in fails(
        "pcr_selection", message, signature, pcrs=other_bank
    )
    fails("pcr_selection", message, signature, pcrs={"sha256": PCRS["sha256"]})


def test_pcr_digest_over_reported_values() -> None:
    message, signature = quote()
    changed = {"sha256": {0: b"\x12" * 32, 7: PCRS["sha256"][7]}, "sha1": PCRS["sha1"]}
    fails("pcr_digest", message, signature, pcrs=changed)
    # the digest is the signature hash's even for a SHA-1 bank; a SHA-1 digest of the same values is refused
    m1, s1 = quote(
        pcr_digest=__import__("hashlib")
        .sha1(b"".join([PCRS["sha256"][0], PCRS["sha256"][7], PCRS["sha1"][0]]))
        .digest()
    )
    fails("pcr_digest", m1, s1)


def test_malformed_pcr_values_are_parse_errors() -> None:
    message, signature = quote()
    for pcrs, field in (
        ({"md5": {0: bytes(16)}}, "pcrs"),
        ({"sha256": {0: bytes(31), 7: bytes(32)}, "sha1": PCRS["sha1"]}, "pcrs.sha256.0"),
        ({"sha256": {32: bytes(32)}}, "pcrs.sha256.32"),
        ({"sha256": {"0": bytes(32)}}, "pcrs.sha256.0"),
    ):
        with pytest.raises(EvidenceParseError) as info:
            run(message, signature, pcrs=pcrs)
        assert info.value.field == field


def test_clock_must_not_go_back_within_a_boot() -> None:
    message, signature = quote(clock=5000, reset_count=3, restart_count=1)
    assert run(message, signature, previous_clock=ClockInfo(4000, 3, 1, True)).checks[-1] == "clock"
    fails("clock", message, signature, previous_clock=ClockInfo(5001, 3, 1, True))
    # after a reset the clock restarts: not compared
    assert "clock" in run(message, signature, previous_clock=ClockInfo(9000, 2, 0, True)).checks


def test_qualified_signer() -> None:
    from keybroker.tee.tpm.abi import HIERARCHY_OWNER, hierarchy_qualified_name, qualified_name

    ak = ak_public()
    parent = hierarchy_qualified_name(HIERARCHY_OWNER)
    message, signature = quote(qualified_signer=qualified_name(parent, ak))
    assert "qualified_signer" in run(message, signature, ak, ak_parent=parent).checks
    fails("qualified_signer", message, signature, ak, ak_parent=hierarchy_qualified_name(0x4000000B))


@pytest.mark.parametrize(
    ("signer", "detail"),
    [
        (b"\x00\x0c" + bytes(48), "(50 bytes, nameAlg sha384)"),  # another nameAlg
        (b"\x00\x0b" + bytes(31), "(33 bytes, nameAlg sha256)"),  # short digest
        (b"\x00\x0b" + bytes(33), "(35 bytes, nameAlg sha256)"),
        (b"\x40\x00\x00\x07", "(4 bytes, nameAlg 0x4000)"),  # a handle, as for TPM_RH_NULL
        (b"", "(0 bytes, nameAlg none)"),
    ],
)
def test_qualified_signer_without_the_parent_must_have_the_aks_name_alg(signer: bytes, detail: str) -> None:
    """The parent unknown, qualifiedSigner must still be nameAlg || a digest of the AK's nameAlg
    (SHA-256 here): signed by the AK, so only the check's refusal can tell."""
    message, signature = quote(qualified_signer=signer)
    text = fails("qualified_signer_alg", message, signature)
    assert f"qualifiedSigner {detail} is not a Qualified Name with the AK's nameAlg sha256 (34 bytes)" in text
    # a bare key has no nameAlg: nothing to compare
    assert not {"qualified_signer", "qualified_signer_alg"} & set(
        run(message, signature, RSA.public_key()).checks
    )


# --- AK certificates -------------------------------------------------------------------------------

ROOT = tb.make_ca("AK root")
INTERMEDIATE = tb.make_ca("AK intermediate", ROOT, path_length=0)


def cert_kw(
    cert: Any, *, intermediates: Any = (INTERMEDIATE.cert,), roots: Any = (ROOT.cert,), at: Any = AT
) -> dict[str, Any]:
    return {
        "ak_certificate": cert,
        "ak_intermediates": list(intermediates),
        "ak_roots": list(roots),
        "at": at,
    }


def test_ak_certificate_chain() -> None:
    message, signature = quote()
    leaf = tb.make_leaf(INTERMEDIATE, RSA.public_key())
    verified = run(message, signature, **cert_kw(leaf))
    assert verified.ak_certificate is not None and len(verified.ak_certificate.certs) == 3
    assert "ak_certificate" in verified.checks
    from cryptography.hazmat.primitives.serialization import Encoding

    assert run(message, signature, **cert_kw(leaf.public_bytes(Encoding.PEM))).ak_certificate is not None


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("other_key", "for another key"),
        ("untrusted_root", "not issued by a configured root"),
        ("no_intermediate", "not issued by a configured root"),
        ("expired", "expired at 2035-01-01"),
        ("not_yet", "not valid before"),
        ("ca_leaf", "is a CA certificate"),
        ("no_digital_signature", "lacks key usage digital_signature"),
        ("unknown_critical", "unknown critical extension 1.2.3.4"),
        ("path_length", "path length 1 exceeds"),
        ("issuer_not_ca", "not issued by a configured root"),
        ("cannot_sign_certs", "may not sign certificates"),
        ("intermediate_expired", "expired at 2025-06-01"),
        ("sha224", "signature hash sha224"),
        ("garbage", "undecodable certificate"),
        ("no_roots", "no trusted root is configured"),
    ],
)
def test_ak_certificate_refusals(case: str, needle: str) -> None:
    message, signature = quote()
    leaf = tb.make_leaf(INTERMEDIATE, RSA.public_key())
    kw = cert_kw(leaf)
    if case == "other_key":
        kw = cert_kw(tb.make_leaf(INTERMEDIATE, P256.public_key()))
    elif case == "untrusted_root":
        kw = cert_kw(leaf, roots=[tb.make_ca("other root").cert])
    elif case == "no_intermediate":
        kw = cert_kw(leaf, intermediates=[])
    elif case == "expired":
        kw = cert_kw(leaf, at=dt.datetime(2036, 1, 1, tzinfo=dt.UTC))
    elif case == "not_yet":
        kw = cert_kw(leaf, at=dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    elif case == "ca_leaf":
        kw = cert_kw(tb.make_leaf(INTERMEDIATE, RSA.public_key(), ca=True))
    elif case == "no_digital_signature":
        kw = cert_kw(
            tb.make_leaf(INTERMEDIATE, RSA.public_key(), digital_signature=False, key_encipherment=True)
        )
    elif case == "unknown_critical":
        kw = cert_kw(tb.make_leaf(INTERMEDIATE, RSA.public_key(), extra_critical=True))
    elif case == "path_length":
        sub = tb.make_ca("sub", INTERMEDIATE)
        kw = cert_kw(tb.make_leaf(sub, RSA.public_key()), intermediates=[INTERMEDIATE.cert, sub.cert])
    elif case == "issuer_not_ca":
        # a leaf "issued" by another leaf's key: the chain builder finds no CA for it
        other = rsa.generate_private_key(65537, 2048)
        fake = tb.Issuer(tb.make_leaf(INTERMEDIATE, other.public_key()), other)  # type: ignore[arg-type]
        kw = cert_kw(leaf, intermediates=[fake.cert])
    elif case == "cannot_sign_certs":
        weak = tb.make_ca("weak", ROOT, key_cert_sign=False)
        kw = cert_kw(tb.make_leaf(weak, RSA.public_key()), intermediates=[weak.cert])
    elif case == "intermediate_expired":
        old = tb.make_ca("old", ROOT, not_after=dt.datetime(2025, 6, 1, tzinfo=dt.UTC))
        kw = cert_kw(tb.make_leaf(old, RSA.public_key()), intermediates=[old.cert])
    elif case == "sha224":
        kw = cert_kw(tb.make_leaf(INTERMEDIATE, RSA.public_key(), hash_alg=hashes.SHA224()))
    elif case == "garbage":
        kw = cert_kw(b"\x30\x03\x02\x01\x00")
    elif case == "no_roots":
        kw = cert_kw(leaf, roots=[])
    assert needle in fails("ak_certificate", message, signature, **kw)
