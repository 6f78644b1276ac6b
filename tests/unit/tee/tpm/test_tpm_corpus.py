"""Every ``tpm2-quote`` case of the shared corpus: the verdict and, for a reject, the failing check."""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.tee.tpm.corpus import CASES, tpm_case

from keybroker.errors import VerificationError
from keybroker.tee.tpm.abi import (
    HIERARCHY_ENDORSEMENT,
    TpmPublic,
    hierarchy_qualified_name,
    parse_tpmt_public,
)
from keybroker.tee.tpm.verify import CHECKS, verify_quote

pytestmark = pytest.mark.filterwarnings("ignore:Attribute.s length:UserWarning")  # GCE CNs exceed 64

#: The check each reject case must fail (cases.json gives only a reason text).
REJECT_CHECK = {
    "tpm-keylime-wrong-nonce": "extra_data",
    "tpm-keylime-tampered": "signature",  # a flipped clockInfo byte
    "tpm-gce-wrong-nonce": "extra_data",
    "tpm-gce-ak-mismatch": "signature",  # keylime's AK for a GCE quote
}


def test_every_reject_case_has_an_expected_check() -> None:
    assert {c["id"] for c in CASES if c["expect"]["verdict"] == "reject"} == set(REJECT_CHECK)
    assert len(CASES) == 11


@pytest.mark.parametrize("c", CASES, ids=[c["id"] for c in CASES])
def test_corpus_case(c: dict[str, Any]) -> None:
    t = tpm_case(c)
    kwargs: dict[str, Any] = dict(t.cert_kwargs)
    if isinstance(t.ak, TpmPublic) and t.id.startswith("tpm-gce"):
        # GCE's AK is a primary key in the endorsement hierarchy: its parent's QN is the handle
        kwargs["ak_parent"] = hierarchy_qualified_name(HIERARCHY_ENDORSEMENT)

    def run() -> Any:
        return verify_quote(t.message, t.signature, t.ak, pcrs=t.pcrs, expected_extra_data=t.nonce, **kwargs)

    if t.verdict == "reject":
        with pytest.raises(VerificationError) as info:
            run()
        assert info.value.check == REJECT_CHECK[t.id], str(info.value)
        return
    verified = run()
    assert verified.extra_data == t.nonce
    assert verified.nonce_checked
    assert verified.signature_scheme == "rsassa-sha256"
    want = [ch for ch in CHECKS if ch != "clock"]
    if "ak_certificate" not in kwargs:
        want.remove("ak_certificate")
    if "ak_parent" in kwargs:
        want.remove("qualified_signer_alg")
    elif isinstance(t.ak, TpmPublic):
        want.remove("qualified_signer")  # the parent unknown: qualifiedSigner's nameAlg and size only
    else:
        want = [ch for ch in want if not ch.startswith("qualified_signer")]  # a bare key: no nameAlg
    assert list(verified.checks) == want
    assert verified.pcr_values() == t.pcrs
    if t.id.startswith("tpm-gce"):
        assert verified.ak_certificate is not None
        assert verified.ak_attributes == (
            "fixedTPM", "fixedParent", "sensitiveDataOrigin", "userWithAuth", "restricted", "sign",
        )  # fmt: skip


def test_gce_sha1_bank_quote_hashes_with_the_signature_hash() -> None:
    """The SHA-1-bank GCE quote's pcrDigest is SHA-256 (the signing scheme's hash), not SHA-1."""
    t = tpm_case(next(c for c in CASES if c["id"] == "tpm-gce-gce-cos-85-nonce9009-sha1"))
    verified = verify_quote(t.message, t.signature, t.ak, pcrs=t.pcrs, expected_extra_data=t.nonce)
    assert [b for b, _ in verified.pcrs] == ["sha1"]
    assert len(verified.attest.pcr_digest) == 32


def test_keylime_quote_selects_pcrs_15_16_22() -> None:
    t = tpm_case(next(c for c in CASES if c["id"] == "tpm-keylime-emulator"))
    verified = verify_quote(t.message, t.signature, t.ak, pcrs=t.pcrs, expected_extra_data=t.nonce)
    assert verified.pcr_values()["sha256"].keys() == {15, 16, 22}
    assert verified.ak_name is None and verified.ak_attributes is None  # a bare PEM key: no public area
    assert verified.ak_key_type == "rsa-2048"


def test_a_gce_ak_sent_under_another_name_alg_is_refused_by_the_qualified_signer() -> None:
    """The same GCE AK key in a public area with another nameAlg (another Name, so another AK to the
    registry; the certificate certifies only the key): the real quote's signature verifies, and
    qualifiedSigner, which the vTPM made with the AK's real nameAlg, refuses it."""
    t = tpm_case(next(c for c in CASES if c["id"] == "tpm-gce-gce-cos-85-nonce9009-sha256"))
    assert isinstance(t.ak, TpmPublic) and t.ak.name_alg == 0x000B and not t.ak.auth_policy
    other = parse_tpmt_public(t.ak.raw[:2] + (0x000C).to_bytes(2, "big") + t.ak.raw[4:])  # SHA-384
    assert other.public_key() == t.ak.public_key() and other.name != t.ak.name

    def run(ak: TpmPublic) -> Any:
        return verify_quote(
            t.message, t.signature, ak, pcrs=t.pcrs, expected_extra_data=t.nonce, **t.cert_kwargs
        )

    assert "qualified_signer_alg" in run(t.ak).checks
    with pytest.raises(VerificationError) as info:
        run(other)
    assert info.value.check == "qualified_signer_alg"
    assert str(info.value.detail) == (
        "qualifiedSigner (34 bytes, nameAlg sha256) is not a Qualified Name with the AK's nameAlg sha384 "
        "(50 bytes): the TPM signed for its key under another public area than the one sent"
    )
