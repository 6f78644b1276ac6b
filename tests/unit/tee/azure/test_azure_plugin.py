"""Azure vTPM evidence through the ``az-snp-vtpm`` / ``az-tdx-vtpm`` plugins and the one ``Verifier``,
the hardware verified for real (the SEV-SNP report in the HCL slot with its VCEK to AMD's pinned ARK;
the TD quote with Intel's collateral): the corpus verifies and binds the nonce; every byte of an SNP
HCL report changed is refused, as are the quote and PCRs changed; the v2 user-data binding; the
protocol bindings (SHA-256(nonce || SPKI), the /kbs/v0 runtime-data hash); the policy sections."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
from tests.vectors.corpus import case, load_cases, read_bytes, read_text, verify_at

from keybroker.appraisal import secl
from keybroker.appraisal.defaults import default_attestation_policy
from keybroker.appraisal.input import appraisal_input
from keybroker.appraisal.policy import TransferPolicyBody
from keybroker.appraisal.registry import REGISTRY
from keybroker.errors import EvidenceError, VerificationError
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.sources import StaticCollateral
from keybroker.tee.trust import EvidenceTrust
from keybroker.tee.verifier import NO_REPORT_DATA, KbsV0Binding, KbsV1Binding, VerifiedEvidence
from keybroker.wire import binding

pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")

TD_CASE = case("dcap-tdx-azure-td")
AT: datetime = verify_at(TD_CASE)
_TRUST = EvidenceTrust(
    collateral=StaticCollateral([QuoteCollateral.from_json(read_text(TD_CASE["collateral"]))])
)
#: The corpus vendors no AMD CRL current at its time: the SEV-SNP CRL requirement is waived here,
#: explicitly (``test_by_default_the_snp_chain_needs_a_crl`` shows the default).
VERIFIER = REGISTRY.verifier(replace(_TRUST, snp_require_crl=False))
NONCES = {
    "evidence-v2.json": bytes.fromhex(
        "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef"
    ),
    "evidence-genoa.json": bytes.fromhex(
        "0218488bae25d2509232bf676f1a66a30d7372add909109b36016ef136f2938ca05475f8b46094de6b64270ea35d950f"
    ),
}


def _load(c: dict[str, Any]) -> tuple[str, bytes, bytes]:
    tee = "az-snp-vtpm" if c["hw"].startswith("snp") else "az-tdx-vtpm"
    return tee, read_bytes(c["evidence"]), NONCES.get(c["evidence"].rsplit("/", 1)[1], b"challenge")


def _verify(tee: str, raw: bytes, expected: Any = NO_REPORT_DATA) -> VerifiedEvidence:
    return VERIFIER.verify(tee, raw, expected, at=AT)


@pytest.mark.parametrize("c", load_cases("az-vtpm"), ids=lambda c: c["id"])
def test_corpus_through_the_verifier(c: dict[str, Any]) -> None:
    tee, raw, nonce = _load(c)
    assert VERIFIER.detect([raw]) == (tee, raw)
    v = _verify(tee, raw, nonce)
    assert v.tee == tee and v.report_data == nonce and v.sim is False
    hw = "snp" if tee == "az-snp-vtpm" else "tdx"
    assert v.claims[hw]["debug"] is False and v.claims["tpm"]["ak"]["trust"]["mode"] == "hardware"
    assert ("vmpl" in v.checks) == (hw == "snp") and ("td_report" in v.checks) == (hw == "tdx")
    with pytest.raises(VerificationError) as info:
        _verify(tee, raw, nonce + b"!")
    assert info.value.check == "report_data"
    doc = appraisal_input(v, client_permissions=None)
    decision = default_attestation_policy(doc)
    assert decision.allowed and decision.ear_status == "warning"  # SNP: no TCB status; TDX: OutOfDate


def test_by_default_the_snp_chain_needs_a_crl() -> None:
    """Whatever chain the VCEK is verified with (here AMD's shipped ASK), a CRL of its ARK is
    required by default: none held -> refused at ``crl``, naming it."""
    c = next(c for c in load_cases("az-vtpm") if c["hw"].startswith("snp"))
    tee, raw, nonce = _load(c)
    with pytest.raises(VerificationError) as info:
        REGISTRY.verifier(_TRUST).verify(tee, raw, nonce, at=AT)
    assert info.value.check == "crl" and "no CRL issued by ARK-" in info.value.detail


def _snp_v1() -> tuple[dict[str, Any], bytes]:
    doc = json.loads(read_bytes("azure-vtpm/coco-trustee/az-snp-vtpm/evidence-v1.json"))
    hcl = base64.urlsafe_b64decode(doc["hcl_report"])
    return doc, hcl


def _with(doc: dict[str, Any], **changes: Any) -> bytes:
    return json.dumps({**doc, **changes}).encode()


def test_every_byte_of_an_snp_hcl_report_is_bound() -> None:
    """The HCL report's header, the signed SNP report and its signature, the IGVM header, the runtime
    data and the zero tail: any one bit changed and the evidence is refused."""
    doc, hcl = _snp_v1()
    accepted = []
    for at in range(len(hcl)):
        changed = hcl[:at] + bytes([hcl[at] ^ 0x01]) + hcl[at + 1 :]
        raw = _with(doc, hcl_report=base64.urlsafe_b64encode(changed).decode())
        try:
            _verify("az-snp-vtpm", raw)
        except EvidenceError:
            continue
        accepted.append(at)
    assert accepted == []


def test_the_quote_and_the_pcrs_are_bound() -> None:
    doc, _ = _snp_v1()
    quote = doc["tpm_quote"]
    message = bytes.fromhex(quote["message"])
    for at in range(len(message)):
        changed = message[:at] + bytes([message[at] ^ 0x80]) + message[at + 1 :]
        with pytest.raises(EvidenceError):
            _verify("az-snp-vtpm", _with(doc, tpm_quote={**quote, "message": changed.hex()}))
    for i in range(24):
        pcrs = list(quote["pcrs"])
        pcrs[i] = ("ff" + pcrs[i][2:]) if not pcrs[i].startswith("ff") else ("00" + pcrs[i][2:])
        with pytest.raises(VerificationError) as info:
            _verify("az-snp-vtpm", _with(doc, tpm_quote={**quote, "pcrs": pcrs}))
        assert info.value.check == "pcr_digest"


def test_v2_user_data_is_checked_and_measured() -> None:
    raw = read_bytes("azure-vtpm/coco-trustee/az-snp-vtpm/evidence-v2.json")
    assert "user_data" in _verify("az-snp-vtpm", raw).checks
    doc = json.loads(raw)
    hcl = bytearray(base64.urlsafe_b64decode(doc["hcl_report"]))
    start = hcl.find(b'"user-data":"') + len(b'"user-data":"')
    hcl[start] = ord("0") if hcl[start] != ord("0") else ord("1")
    with pytest.raises(EvidenceError):  # the runtime data is hashed into the signed report
        _verify("az-snp-vtpm", _with(doc, hcl_report=base64.urlsafe_b64encode(bytes(hcl)).decode()))


def test_protocol_bindings_are_the_tpm_ones() -> None:
    nonce, spki = os.urandom(32), os.urandom(400)
    plugin = VERIFIER.plugin("az-snp-vtpm")
    assert plugin.expected_report_data(KbsV1Binding(nonce, spki)) == binding.v1_tpm_extra_data(nonce, spki)
    v0 = KbsV0Binding("n0nce", {"kty": "EC"}, "", "sha384")
    assert plugin.expected_report_data(v0) == binding.v0_runtime_digest("n0nce", {"kty": "EC"}, "", "sha384")
    assert len(plugin.expected_report_data(v0)) == 48  # not padded: it is the quote's extraData


def test_policies_combine_the_hardware_and_the_tpm_sections() -> None:
    snp = _verify("az-snp-vtpm", read_bytes("azure-vtpm/coco-trustee/az-snp-vtpm/evidence-v1.json"))
    tdx = _verify("az-tdx-vtpm", read_bytes("azure-vtpm/coco-trustee/az-tdx-vtpm/evidence-v1.json"))
    pcr7 = snp.claims["tpm"]["pcrs"]["sha256"]["7"]
    snp_policy = TransferPolicyBody.model_validate(
        {
            "attestation_type": ["AZ-SNP-VTPM"],
            "az-snp-vtpm": {
                "snp": {
                    "attributes": {
                        "measurement": [snp.claims["snp"]["measurement"]],
                        "minimum_tcb": {"snp": 1},
                    }
                },
                "tpm": {"pcrs": {"sha256": {"7": [pcr7]}}},
            },
        }
    )
    allowed = secl.evaluate(snp_policy, snp, client_permissions=None, policy_id="p")
    assert allowed.allowed, allowed.reasons
    other = TransferPolicyBody.model_validate(
        {
            "attestation_type": ["AZ-SNP-VTPM"],
            "az-snp-vtpm": {
                "snp": {"attributes": {"measurement": ["ab" * 48]}},
                "tpm": {"pcrs": {"sha256": {"7": ["cd" * 32]}}, "event_log": {"secure_boot": True}},
            },
        }
    )
    denied = secl.evaluate(other, snp, client_permissions=None, policy_id="p")
    assert not denied.allowed
    assert [r.check for r in denied.findings] == ["measurement", "tpm.pcrs.sha256.7", "tpm.event_log"]
    td = tdx.claims["tdx"]
    tdx_policy = TransferPolicyBody.model_validate(
        {
            "attestation_type": ["AZ-TDX-VTPM"],
            "az-tdx-vtpm": {
                "tdx": {
                    "attributes": {
                        "mrsignerseam": [td["mr_signer_seam"]],
                        "mrseam": [td["mr_seam"]],
                        "mrtd": ["00" * 48],
                    }
                },
                "tpm": {"pcrs": {"sha256": {"0": [tdx.claims["tpm"]["pcrs"]["sha256"]["0"]]}}},
            },
        }
    )
    decision = secl.evaluate(tdx_policy, tdx, client_permissions=None, policy_id="p")
    assert [r.check for r in decision.findings] == ["mrtd"], decision.reasons
    # the snp part is the SEV-SNP section, its defaults included: a migration agent is forbidden
    doc = appraisal_input(snp, client_permissions=None)
    doc["claims"]["snp"]["policy"]["migrate_ma"] = True
    decision = secl.evaluate_input(snp_policy, doc, policy_id="p")
    assert [r.check for r in decision.findings] == ["guest_policy.migrate_ma"], decision.reasons
    assert decision.notes[-1].startswith("TCB status NoVendorStatus: AMD publishes no TCB status")
    with pytest.raises(ValueError, match="must name the guest"):
        TransferPolicyBody.model_validate(
            {"attestation_type": ["AZ-SNP-VTPM"], "az-snp-vtpm": {"snp": {"attributes": {}}}}
        )
    with pytest.raises(ValueError, match="az-snp-vtpm section"):
        TransferPolicyBody.model_validate({"attestation_type": ["AZ-SNP-VTPM"]})
