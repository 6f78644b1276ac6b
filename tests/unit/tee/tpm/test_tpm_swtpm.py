"""Quotes from a real TPM (swtpm): every signing scheme tpm2-tools makes verifies, the AK's
Qualified Name under its EK is the quote's qualifiedSigner, an AK certificate issued for the TPM's
AK is checked, and the claims come out as JSON."""

from __future__ import annotations

import json

import pytest
from tests.helpers import tpm_build as tb
from tests.helpers.swtpm import ENDORSEMENT_QN, Swtpm, SyntheticBoot

from keybroker.errors import VerificationError
from keybroker.tee.tpm.abi import parse_tpm2b_public, qualified_name
from keybroker.tee.tpm.claims import tpm_claims
from keybroker.tee.tpm.eventlog import verify_event_log
from keybroker.tee.tpm.verify import verify_quote


@pytest.mark.parametrize(
    ("alg", "scheme", "hash_alg"),
    [
        ("rsa", "rsassa", "sha256"),
        ("rsa", "rsapss", "sha256"),
        ("rsa", "rsapss", "sha384"),
        ("ecc", "ecdsa", "sha256"),
    ],
)
def test_each_scheme_and_the_qualified_signer(swtpm: Swtpm, alg: str, scheme: str, hash_alg: str) -> None:
    ak = swtpm.create_ak(alg=alg, scheme=scheme, hash_alg=hash_alg)
    nonce = b"fresh-" + scheme.encode()
    q = swtpm.quote(ak, "sha256:0,1,16+sha1:16", nonce, hash_alg=hash_alg)
    public = parse_tpm2b_public(ak.public)
    # tpm2_createak makes the AK a child of the EK: QN(AK) = H(QN(EK) || Name(AK)), QN(EK) = H(QN(E) || Name(EK))
    ek = parse_tpm2b_public(swtpm.ek_public("rsa"))
    parent = qualified_name(ENDORSEMENT_QN, ek)
    verified = verify_quote(
        q.message, q.signature, public, pcrs=q.pcrs, expected_extra_data=nonce, ak_parent=parent
    )
    assert verified.signature_scheme == f"{scheme}-{hash_alg}"
    assert "qualified_signer" in verified.checks
    with pytest.raises(VerificationError) as info:
        verify_quote(
            q.message, q.signature, public, pcrs=q.pcrs, expected_extra_data=nonce, ak_parent=ENDORSEMENT_QN
        )
    assert info.value.check == "qualified_signer"


def test_ak_certificate_for_a_tpm_ak(swtpm: Swtpm) -> None:
    root = tb.make_ca("AK root")
    ak = swtpm.create_ak()
    public = parse_tpm2b_public(ak.public)
    cert = tb.make_leaf(root, public.public_key())
    q = swtpm.quote(ak, "sha256:0", b"n")
    verified = verify_quote(
        q.message,
        q.signature,
        public,
        pcrs=q.pcrs,
        expected_extra_data=b"n",
        ak_certificate=cert,
        ak_roots=[root.cert],
        at=tb.T0.replace(year=2026),
    )
    assert verified.ak_certificate is not None


def test_claims_are_json(swtpm: Swtpm, synthetic_boot: SyntheticBoot) -> None:
    b = synthetic_boot
    verified = verify_quote(
        b.quote.message,
        b.quote.signature,
        parse_tpm2b_public(b.ak.public),
        pcrs=b.quote.pcrs,
        expected_extra_data=b.nonce,
    )
    claims = tpm_claims(verified, verify_event_log(b.log, verified))
    text = json.dumps(claims)
    assert json.loads(text) == claims
    assert claims["tee"] == "tpm"
    assert claims["ak"]["attributes"] == [
        "fixedTPM",
        "fixedParent",
        "sensitiveDataOrigin",
        "userWithAuth",
        "restricted",
        "sign",
    ]
    assert claims["quote"]["extra_data"] == b.nonce.hex() and claims["quote"]["nonce_checked"]
    assert set(claims["pcrs"]) == {"sha1", "sha256"} and set(claims["pcrs"]["sha256"]) == {"7", "8"}
    assert claims["event_log"]["verified_pcrs"] == [7, 8]
    assert claims["event_log"]["secure_boot"]["enabled"] is False
    assert claims["event_log"]["grub_commands"] == ["linux /vmlinuz root=/dev/sda"]
