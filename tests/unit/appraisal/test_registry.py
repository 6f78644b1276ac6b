"""The TEE registry: every list of TEEs comes from it, and a new TEE plugs in with its verifier, its
policy section and one registration (``docs/architecture.md``, "Adding a TEE").

The "toy" TEE below is a stand-in for the next real one: its evidence is signed with HMAC-SHA256
under a key its verifier holds (its root of trust), so that its verifier really verifies. It goes
through the same ``Verifier``, binding check, appraisal input and SecL evaluation as SGX and TDX.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import pytest
from pydantic import Field, StrictBool, ValidationError
from tests.helpers.sim_evidence import SimEvidence

from keybroker.api.routers import attestation_v1, transfer_v1
from keybroker.appraisal import secl
from keybroker.appraisal.clauses import Clauses
from keybroker.appraisal.fields import Permission, Sha256Hex, Strict
from keybroker.appraisal.input import appraisal_input
from keybroker.appraisal.policy import TransferPolicyBody, transfer_policy_model
from keybroker.appraisal.registry import REGISTRY, TeeRegistration, TeeRegistry
from keybroker.appraisal.section import PolicySection
from keybroker.appraisal.sections import sgx, tdx
from keybroker.errors import EvidenceParseError, InvalidInput, VerificationError
from keybroker.resources.service import SUPPORTED_TEES
from keybroker.tee.dcap.plugin import DcapVerifier
from keybroker.tee.trust import EvidenceTrust
from keybroker.tee.verifier import NO_REPORT_DATA, Binding, KbsV1Binding, VerifiedEvidence
from keybroker.wire import binding

# --- the toy TEE: its package ------------------------------------------------------------------

_MAGIC: Final = b"TOY1"
_LENGTH: Final = 4 + 1 + 32 + 64 + 32  # magic, flags, measurement, report data, HMAC


@dataclass(frozen=True)
class _ToyReport:
    debug: bool
    measurement: bytes
    report_data: bytes
    signed: bytes
    mac: bytes


@dataclass(frozen=True)
class _ToyResult:
    report_: _ToyReport

    def report(self) -> dict[str, Any]:
        return {"tee": "toy", "measurement": self.report_.measurement.hex()}

    def summary(self) -> list[tuple[str, str]]:
        return [("TEE", "TOY")]

    def ear_claims(self) -> dict[str, Any]:
        return {"attester_type": "TOY", "toy_measurement": self.report_.measurement.hex()}


class ToyVerifier:
    name = "toy"
    checks = ("parse", "signature")

    def __init__(self, key: bytes) -> None:
        self._key = key

    def recognizes(self, evidence: bytes) -> bool:
        return evidence[:4] == _MAGIC

    def parse(self, evidence: bytes) -> _ToyReport:
        if len(evidence) != _LENGTH or evidence[:4] != _MAGIC or evidence[4] not in (0, 1):
            raise EvidenceParseError("not a toy report", field="report", offset=0)
        return _ToyReport(
            debug=evidence[4] == 1,
            measurement=evidence[5:37],
            report_data=evidence[37:101],
            signed=evidence[:101],
            mac=evidence[101:],
        )

    def verify(self, parsed: _ToyReport, *, at: datetime, endorsements: object | None) -> _ToyReport:
        if not hmac.compare_digest(hmac.new(self._key, parsed.signed, hashlib.sha256).digest(), parsed.mac):
            raise VerificationError("the toy report's MAC does not verify", check="signature")
        return parsed

    def claims(self, verified: _ToyReport) -> VerifiedEvidence:
        return VerifiedEvidence(
            tee="toy",
            claims={"tee": "toy", "debug": verified.debug, "measurement": verified.measurement.hex()},
            tcb={"status": "UpToDate", "advisory_ids": []},
            report_data=verified.report_data,
            sim=False,
            evidence_sha256=hashlib.sha256(verified.signed + verified.mac).hexdigest(),
            checks=self.checks,
            detail=_ToyResult(verified),
        )

    def expected_report_data(self, bound: Binding) -> bytes:
        assert isinstance(bound, KbsV1Binding)
        return binding.v1_report_data(bound.nonce, bound.user_data)

    def evidence_sha256(self, evidence: bytes) -> str:
        return hashlib.sha256(evidence).hexdigest()

    def endorsements(self, text: str | bytes) -> object:
        return None

    def kbs_v0_evidence(self, primary: Mapping[str, Any]) -> bytes:
        raise InvalidInput("no /kbs/v0 form", field="tee-evidence")


def toy_report(key: bytes, measurement: bytes, report_data: bytes, *, debug: bool = False) -> bytes:
    signed = _MAGIC + bytes([debug]) + measurement + report_data
    return signed + hmac.new(key, signed, hashlib.sha256).digest()


# --- its policy section --------------------------------------------------------------------------


class ToyAttributes(Strict):
    measurement: list[Sha256Hex] = Field(min_length=1)
    client_permissions: list[Permission] = Field(default_factory=list)
    enforce_tcb_upto_date: StrictBool = False


class ToySection(Strict):
    attributes: ToyAttributes


def _evaluate(c: Clauses, section: ToySection) -> None:
    c.hex_any_of("measurement", "measurement", section.attributes.measurement)


TOY_SECTION = PolicySection(
    tee="toy", model=ToySection, subject="toy", debug_flag="FLAGS.DEBUG", vendor="Toy", evaluate=_evaluate
)

# --- its registration ----------------------------------------------------------------------------

KEY = os.urandom(32)
WITH_TOY = TeeRegistry(*REGISTRY, TeeRegistration("toy", TOY_SECTION, (), lambda trust: ToyVerifier(KEY)))
MEASUREMENT = hashlib.sha256(b"toy workload").digest()


def test_every_list_of_tees_is_the_registry() -> None:
    assert REGISTRY.names == ("sgx", "tdx", "snp", "tpm", "az-snp-vtpm", "az-tdx-vtpm")
    assert REGISTRY.attestation_types == ("SGX", "TDX", "SNP", "TPM", "AZ-SNP-VTPM", "AZ-TDX-VTPM")
    assert REGISTRY.verifier(EvidenceTrust()).tees == REGISTRY.names
    assert SUPPORTED_TEES == REGISTRY.names  # /kbs/v0/auth
    assert transfer_v1.AttestationType.__args__ == (*REGISTRY.attestation_types, "NONE")
    assert attestation_v1.TeeName.__args__ == REGISTRY.names
    assert [m for m in TransferPolicyBody.model_fields if m in (*REGISTRY.names, "toy")] == list(
        REGISTRY.names
    )
    assert REGISTRY.listing() == "SGX, TDX, SNP, TPM, AZ-SNP-VTPM or AZ-TDX-VTPM"


def test_mismatched_registrations_are_refused() -> None:
    with pytest.raises(ValueError, match="registered with the 'sgx' policy section"):
        TeeRegistration("tdx", sgx.SECTION, (), lambda t: DcapVerifier("tdx", t.collateral))
    with pytest.raises(ValueError, match="registered twice"):
        TeeRegistry(*REGISTRY, *REGISTRY)
    wrong = TeeRegistry(TeeRegistration("tdx", tdx.SECTION, (), lambda t: DcapVerifier("sgx", t.collateral)))
    with pytest.raises(ValueError, match="registered with a verifier of 'sgx'"):
        wrong.verifier(EvidenceTrust())


def test_a_new_tee_is_one_registration_away(sim: SimEvidence) -> None:
    """The toy TEE, registered, is verified, bound, detected and appraised like SGX and TDX."""
    assert WITH_TOY.listing() == "SGX, TDX, SNP, TPM, AZ-SNP-VTPM, AZ-TDX-VTPM or TOY"
    verifier = WITH_TOY.verifier(EvidenceTrust(), clock=lambda: datetime.now(UTC))
    assert verifier.tees == (*REGISTRY.names, "toy")
    nonce, spki = os.urandom(32), os.urandom(300)
    evidence = toy_report(KEY, MEASUREMENT, binding.v1_report_data(nonce, spki))

    assert verifier.detect([b"junk", evidence]) == ("toy", evidence)
    assert verifier.detect([sim.quote("tdx")])[0] == "tdx"  # the others still found
    verified = verifier.verify("toy", evidence, KbsV1Binding(nonce, spki))
    assert (
        verified.claims["measurement"] == MEASUREMENT.hex()
        and verified.ear_claims()["attester_type"] == "TOY"
    )

    with pytest.raises(VerificationError) as failed:
        verifier.verify("toy", evidence, KbsV1Binding(os.urandom(32), spki))
    assert failed.value.check == "report_data"
    forged = toy_report(os.urandom(32), MEASUREMENT, verified.report_data)
    with pytest.raises(VerificationError) as failed:
        verifier.verify("toy", forged, NO_REPORT_DATA)
    assert failed.value.check == "signature"
    with pytest.raises(EvidenceParseError):  # a TDX quote sent as toy evidence
        verifier.verify("toy", sim.quote("tdx"), NO_REPORT_DATA)

    doc = appraisal_input(verified, client_permissions=None)
    assert doc == {
        "tee": "toy",
        "claims": {"tee": "toy", "debug": False, "measurement": MEASUREMENT.hex()},
        "tcb": {"status": "UpToDate", "advisory_ids": []},
        "sim": False,
        "client_permissions": None,
    }

    model = transfer_policy_model(WITH_TOY)
    policy = model.model_validate(
        {"attestation_type": ["TOY"], "toy": {"attributes": {"measurement": [MEASUREMENT.hex()]}}}
    )
    decision = secl.evaluate(policy, verified, client_permissions=None, policy_id="toy")
    assert decision.allowed and decision.ear_status == "affirming", decision.reasons

    other = model.model_validate(
        {"attestation_type": ["TOY"], "toy": {"attributes": {"measurement": ["ab" * 32]}}}
    )
    denied = secl.evaluate(other, verified, client_permissions=None, policy_id="toy")
    assert denied.reasons == (
        f"measurement {MEASUREMENT.hex()} is not in the policy's list (1 value: {'ab' * 32})",
    )
    debug = verifier.verify("toy", toy_report(KEY, MEASUREMENT, bytes(64), debug=True), NO_REPORT_DATA)
    assert secl.evaluate(policy, debug, client_permissions=None, policy_id="toy").reasons == (
        "debug toy (FLAGS.DEBUG is set) and the policy does not set allow_debug",
    )
    with pytest.raises(ValidationError, match="attestation_type has TOY but the policy has no toy section"):
        model.model_validate({"attestation_type": ["TOY"]})
    # the broker's own policy model has no toy section: such a policy is refused, not half-read
    with pytest.raises(ValidationError):
        TransferPolicyBody.model_validate(
            {"attestation_type": ["TOY"], "toy": {"attributes": {"measurement": [MEASUREMENT.hex()]}}}
        )
    # and SGX evidence under a toy-only policy is denied by attestation type
    sgx_only = secl.evaluate(policy, sim.verify("sgx"), client_permissions=None, policy_id="toy")
    assert sgx_only.reasons == ("the evidence is SGX but the policy's attestation_type is [TOY]",)
