"""TPM 2.0 quotes behind the verifier interface (``keybroker.tee.verifier.TeeVerifier``).

The evidence is keybroker's TPM evidence document (``keybroker.wire.tpm``; ``evidence``): a quote,
its signature, the AK, the quoted PCR values and optionally the AK's certificates and the event log.
``verify`` runs, in order (each failure a ``VerificationError`` naming the check):

1. ``ak_public``: the AK comes as its TPM2B_PUBLIC (a restricted signing key bound to its TPM,
   ``verify``), unless the operator gave it out of band (``TpmTrust.ak_given``).
2. ``ak_certificate``: certificates sent must chain to a configured AK root store (the first
   vendor's store that verifies them names the vendor), and certify the AK.
3. ``ak_trust``: the AK is trusted by that certificate, or enrolled through its EK and approved
   (``trust.AkRegistry``), or given. A revoked AK is refused whatever its certificate says; a
   pending one, an unknown one, or one enrolled through a dev EK root on a server not in dev mode
   is refused with a reason naming what is missing.
4. ``signature``, ``qualified_signer`` or ``qualified_signer_alg``, ``pcr_selection``,
   ``pcr_digest``: ``verify.verify_quote``. For an AK trusted as enrolled, qualifiedSigner must be
   its Qualified Name as a child of the EK it was enrolled through (a primary key of the endorsement
   hierarchy), as ``tpm2_createak -C <EK>`` (``keybroker-client tpm enrol``, Keylime's agent) makes
   it: the registry holds that EK, so the whole name is recomputed (``qualified_signer``). An AK
   made under another parent (an SRK, another EK) is refused, though ActivateCredential proved it is
   in the same TPM: its hierarchy, and so what a ``TPM2_Clear`` or a change of the owner's seeds does
   to it, is not the one enrolled. For an AK trusted by its certificate (or given) the parent is
   unknown (GCE's AK is a primary key, others are children of an SRK or the EK): only the nameAlg
   and size are checked (``qualified_signer_alg``).
5. ``event_log_*``, ``event_data``: the event log (when sent) replays to the quoted PCRs
   (``eventlog.verify_event_log``); its claims come only from PCRs it matched.

Then the AK's clock is recorded (``AkRegistry.observe``) and compared with the latest one seen: a
reset or restart count or clock that went back is a claim (``clock_history``) that policy denies
by default. ``extraData`` is the report data: the ``Verifier`` compares it with the protocol's
binding (SHA-256(nonce || SPKI) on ``/kbs/v1``, the runtime-data hash on ``/kbs/v0``).

No vendor publishes a TCB status for TPMs: ``tcb.status`` is ``NoVendorStatus`` (as SEV-SNP's; the
firmware version is a claim), so ``enforce_tcb_upto_date`` cannot be met and the EAR's hardware
claim is a warning.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from cryptography import x509

from keybroker.errors import CollateralError, EvidenceParseError, InvalidInput, VerificationError
from keybroker.tee.tpm.abi import (
    HIERARCHY_ENDORSEMENT,
    hierarchy_qualified_name,
    parse_tpmt_public,
    qualified_name,
)
from keybroker.tee.tpm.certs import load_certificate, verify_certificate_chain
from keybroker.tee.tpm.claims import clock_history, tpm_claims
from keybroker.tee.tpm.eventlog import VerifiedEventLog, verify_event_log
from keybroker.tee.tpm.evidence import TpmEvidence, looks_like_tpm_evidence, parse_tpm_evidence
from keybroker.tee.tpm.trust import ClockReading, EnrolledAk, TpmTrust
from keybroker.tee.tpm.verify import NO_NONCE, AkKey, VerifiedQuote, verify_quote
from keybroker.tee.verifier import NO_VENDOR_STATUS, Binding, KbsV1Binding, VerifiedEvidence
from keybroker.wire import binding

__all__ = [
    "CHECKS",
    "AkTrust",
    "TpmVerifier",
    "VerifiedTpm",
    "expected_extra_data",
    "observe_clock",
]

CHECKS: Final = (
    "parse",
    "ak_public",
    "ak_certificate",
    "ak_trust",
    "signature",
    "qualified_signer",
    "qualified_signer_alg",
    "pcr_selection",
    "pcr_digest",
    "event_log_parse",
    "event_log_bank",
    "event_log_replay",
    "event_data",
)
TrustMode = Literal["certificate", "enrolled", "given"]


@dataclass(frozen=True, slots=True)
class AkTrust:
    """Why the AK is trusted: ``mode``, the certificate's ``vendor`` store, the enrolment."""

    mode: TrustMode
    vendor: str | None = None
    enrolled: EnrolledAk | None = None

    @property
    def sim(self) -> bool:
        """Enrolled through a dev EK root (swtpm's local CA): simulated, not a real TPM."""
        return self.enrolled is not None and self.enrolled.ek_root == "dev"

    def to_dict(self) -> dict[str, Any]:
        e = self.enrolled
        return {
            "mode": self.mode,
            "vendor": self.vendor,
            "enrolment": None
            if e is None
            else {
                "status": e.status,
                "label": e.label,
                "ek_root": e.ek_root,
                "ek_issuer": e.ek_issuer,
                "ek_root_sha256": e.ek_root_sha256,
                "enrolled_by": e.enrolled_by,
                "enrolled_at": e.enrolled_at.isoformat(),
                "approved_by": e.approved_by,
            },
        }


def expected_extra_data(bound: Binding) -> bytes:
    """A TPM quote's extraData for a protocol binding: SHA-256(nonce || SPKI) on ``/kbs/v1``, the
    runtime-data hash (not padded) on ``/kbs/v0``."""
    if isinstance(bound, KbsV1Binding):
        return binding.v1_tpm_extra_data(bound.nonce, bound.user_data)
    return binding.v0_runtime_digest(
        bound.nonce, dict(bound.tee_pubkey), bound.additional_evidence, bound.hash_alg
    )


def ek_qualified_name(ek_public: bytes) -> bytes:
    """The Qualified Name of an EK (TPMT_PUBLIC): a primary key of the endorsement hierarchy."""
    return qualified_name(hierarchy_qualified_name(HIERARCHY_ENDORSEMENT), parse_tpmt_public(ek_public))


def observe_clock(trust: TpmTrust, quote: VerifiedQuote) -> dict[str, Any]:
    """Record the quote's clock for its AK and say how it relates to the latest one seen."""
    now = quote.clock_info
    if trust.registry is None:
        return clock_history(None, now, known=False)
    reading = ClockReading(now.clock, now.reset_count, now.restart_count)
    return clock_history(trust.registry.observe(quote.ak_spki_sha256, reading), now, known=True)


@dataclass(frozen=True, slots=True)
class VerifiedTpm:
    """A verified TPM quote (and event log), how its AK is trusted, its clock history."""

    quote: VerifiedQuote
    event_log: VerifiedEventLog | None
    trust: AkTrust
    clock: dict[str, Any]
    checks: tuple[str, ...]

    def claims_dict(self) -> dict[str, Any]:
        claims = tpm_claims(self.quote, self.event_log)
        claims["debug"] = False  # a TPM has no debug mode that opens a workload's memory
        claims["ak"]["trust"] = self.trust.to_dict()
        claims["clock_history"] = self.clock
        return claims

    def report(self) -> dict[str, Any]:
        return {
            "tee": "tpm",
            "status": NO_VENDOR_STATUS,
            "advisory_ids": [],
            "checks": list(self.checks),
            "sim": self.trust.sim,
            "report_data": self.quote.extra_data.hex(),
            "evidence_sha256": self.quote.evidence_sha256,
            "claims": self.claims_dict(),
        }

    def summary(self) -> list[tuple[str, str]]:
        q = self.quote
        name = q.ak_name.hex() if q.ak_name is not None else f"(a bare key, SPKI SHA-256 {q.ak_spki_sha256})"
        how = self.trust.mode + (f" ({self.trust.vendor})" if self.trust.vendor else "")
        return [
            ("TEE", "TPM 2.0 quote"),
            ("AK", f"{q.ak_key_type} {name}"),
            ("AK trusted by", how),
            ("signature", q.signature_scheme),
            ("PCR banks", ", ".join(f"{bank} {[i for i, _ in values]}" for bank, values in q.pcrs)),
            ("extraData", q.extra_data.hex() or "(empty)"),
            ("event log", "replayed" if self.event_log is not None else "none"),
            ("checks", ", ".join(self.checks)),
        ]

    def ear_claims(self) -> dict[str, Any]:
        q = self.quote
        return {
            "attester_type": "TPM",
            "tpm_ak_name": q.ak_name.hex() if q.ak_name is not None else None,
            "tpm_ak_trust": self.trust.mode,
            "tpm_pcrs": {bank: {str(i): v.hex() for i, v in values} for bank, values in q.pcrs},
        }


def _split_store(certs: Sequence[x509.Certificate]) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """(anchors, intermediates) of a root store: self-signed certificates are anchors."""
    anchors = [c for c in certs if c.issuer == c.subject]
    return anchors, [c for c in certs if c.issuer != c.subject]


class TpmVerifier:
    """Verifies keybroker's TPM evidence documents with the AKs ``trust`` vouches for."""

    def __init__(self, trust: TpmTrust) -> None:
        self.trust = trust

    @property
    def name(self) -> str:
        return "tpm"

    @property
    def checks(self) -> tuple[str, ...]:
        return CHECKS

    def recognizes(self, evidence: bytes) -> bool:
        return looks_like_tpm_evidence(evidence)

    def parse(self, evidence: bytes) -> TpmEvidence:
        return parse_tpm_evidence(evidence)

    def _certificate_vendor(
        self, evidence: TpmEvidence, at: datetime
    ) -> tuple[str, x509.Certificate, list[x509.Certificate], list[x509.Certificate]] | None:
        """The vendor whose AK root store the sent AK certificate chains to (None: none sent)."""
        if not evidence.ak_certificates:
            return None
        leaf = load_certificate(evidence.ak_certificates[0], "AK certificate", "ak_certificate")
        sent = [
            load_certificate(c, "AK intermediate", "ak_certificate") for c in evidence.ak_certificates[1:]
        ]
        if not self.trust.ak_roots:
            raise VerificationError(
                "the evidence carries an AK certificate, but no AK root store is configured (tpm.ak_roots)",
                check="ak_certificate",
            )
        failures: list[str] = []
        for vendor, store in self.trust.ak_roots.items():
            anchors, intermediates = _split_store(store)
            try:
                verify_certificate_chain(
                    leaf,
                    [*intermediates, *sent],
                    anchors,
                    at=at,
                    what="AK",
                    check="ak_certificate",
                    leaf_key_usage="digital_signature",
                )
            except VerificationError as exc:
                failures.append(f"{vendor}: {exc.detail}")
                continue
            return vendor, leaf, [*intermediates, *sent], anchors
        raise VerificationError(
            "the AK certificate chains to no configured AK root store (" + "; ".join(failures) + ")",
            check="ak_certificate",
        )

    def _decide_trust(
        self, evidence: TpmEvidence, vendor: str | None, enrolled: EnrolledAk | None
    ) -> AkTrust:
        name = evidence.ak_public.name.hex() if evidence.ak_public is not None else None
        if enrolled is not None and enrolled.status == "revoked":
            raise VerificationError(
                f"the AK {name} was revoked by {enrolled.revoked_by}: it is not trusted whatever else "
                "vouches for it",
                check="ak_trust",
            )
        if vendor is not None:
            return AkTrust("certificate", vendor=vendor, enrolled=enrolled)
        if enrolled is not None and enrolled.status == "approved":
            if enrolled.ek_root == "dev" and not self.trust.dev:
                raise VerificationError(
                    f"the AK {name} was enrolled through a dev EK root (its EK certificate is from "
                    f"{enrolled.ek_issuer}), which this server trusts only in dev mode",
                    check="ak_trust",
                )
            return AkTrust("enrolled", enrolled=enrolled)
        if enrolled is not None:  # pending
            raise VerificationError(
                f"the AK {name} was enrolled by {enrolled.enrolled_by} but is not approved yet: an "
                f"administrator approves it (keybroker tpm ak approve {name})",
                check="ak_trust",
            )
        if self.trust.ak_given:
            return AkTrust("given")
        where = (
            "it is not enrolled"
            if self.trust.registry is not None
            else "this verifier has no AK registry to look it up in"
        )
        raise VerificationError(
            f"the AK {name} is not trusted: {where}, and the evidence carries no AK certificate. Enrol "
            "it through its EK (keybroker-client tpm enrol), or send an AK certificate that chains to a "
            "configured AK root store (tpm.ak_roots)",
            check="ak_trust",
        )

    def verify(self, parsed: TpmEvidence, *, at: datetime, endorsements: object | None) -> VerifiedTpm:
        if endorsements is not None:
            raise TypeError("TPM evidence takes no endorsements")
        checks = ["parse"]
        ak: AkKey
        if parsed.ak_public is None:
            if not self.trust.ak_given:
                raise VerificationError(
                    "the evidence carries the AK as a bare public key: send its TPM2B_PUBLIC (ak_public), "
                    "whose attributes show a restricted signing key that never leaves its TPM",
                    check="ak_public",
                )
            ak = parsed.ak_key
        else:
            ak = parsed.ak_public
        found = self._certificate_vendor(parsed, at)
        enrolled = None
        if self.trust.registry is not None and parsed.ak_public is not None:
            enrolled = self.trust.registry.enrolled(parsed.ak_public.name)
            if enrolled is not None and enrolled.public != parsed.ak_public.raw:
                raise VerificationError(
                    "the AK's public area differs from the enrolled one of the same Name", check="ak_trust"
                )
        trust = self._decide_trust(parsed, found[0] if found else None, enrolled)
        cert_kwargs: dict[str, Any] = {}
        if found is not None:
            _, leaf, intermediates, anchors = found
            cert_kwargs = {"ak_certificate": leaf, "ak_intermediates": intermediates, "ak_roots": anchors}
        parent: dict[str, Any] = {}
        if trust.mode == "enrolled" and trust.enrolled is not None:
            parent = {
                "ak_parent": ek_qualified_name(trust.enrolled.ek_public),
                "ak_parent_what": "the EK it was enrolled through (an enrolled AK is made under that EK, "
                "e.g. by tpm2_createak -C <EK>)",
            }
        quote = verify_quote(
            parsed.attest.raw,
            parsed.signature,
            ak,
            pcrs=parsed.pcrs,
            expected_extra_data=NO_NONCE,
            at=at,
            **cert_kwargs,
            **parent,
        )
        if self.trust.registry is not None:
            revoked = self.trust.registry.revoked(quote.ak_spki_sha256)
            if revoked is not None:
                raise VerificationError(
                    f"the AK's key was revoked (as the AK {revoked.name.hex()}, by {revoked.revoked_by}): "
                    "it is not trusted under any Name, whatever else vouches for it",
                    check="ak_trust",
                )
        checks += [c for c in quote.checks if c != "parse"]
        checks.insert(checks.index("signature"), "ak_trust")
        event_log = None
        if parsed.event_log is not None:
            event_log = verify_event_log(parsed.event_log, quote)
            checks += event_log.checks
        clock = observe_clock(self.trust, quote)
        return VerifiedTpm(quote, event_log, trust, clock, tuple(checks))

    def claims(self, verified: VerifiedTpm) -> VerifiedEvidence:
        return VerifiedEvidence(
            tee="tpm",
            claims=verified.claims_dict(),
            tcb={"status": NO_VENDOR_STATUS, "advisory_ids": []},
            report_data=verified.quote.extra_data,
            sim=verified.trust.sim,
            evidence_sha256=verified.quote.evidence_sha256,
            checks=verified.checks,
            detail=verified,
        )

    def expected_report_data(self, bound: Binding) -> bytes:
        return expected_extra_data(bound)

    def evidence_sha256(self, evidence: bytes) -> str:
        """SHA-256 of the TPMS_ATTEST (one quote, one digest); of the bytes if they do not parse."""
        try:
            return parse_tpm_evidence(evidence).evidence_sha256
        except EvidenceParseError:
            return hashlib.sha256(evidence).hexdigest()

    def endorsements(self, text: str | bytes) -> object:
        raise CollateralError("TPM evidence takes no collateral: the AK's trust is configured or enrolled")

    def kbs_v0_evidence(self, primary: Mapping[str, Any]) -> bytes:
        """``primary_evidence`` is the TPM evidence document itself (``keybroker.wire.tpm``)."""
        if "quote" not in primary:
            raise InvalidInput(
                "primary_evidence must be keybroker's TPM evidence document (quote, signature, ak_public, "
                "pcrs, ...)",
                field="tee-evidence.primary_evidence.quote",
            )
        return json.dumps(dict(primary), sort_keys=True, separators=(",", ":")).encode()
