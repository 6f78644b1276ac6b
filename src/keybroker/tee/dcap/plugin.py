"""Intel SGX and TDX behind the verifier interface (``keybroker.tee.verifier.TeeVerifier``).

One :class:`DcapVerifier` per TEE (``sgx``, ``tdx``), each holding its trust: the pinned Intel SGX
Root CA plus the configured dev roots (built once, :class:`~keybroker.tee.dcap.chain.TrustedRoots`)
and a collateral source. ``parse`` is ``abi.parse_quote`` and the TEE type check; ``verify`` picks
the collateral by the quote's (unverified) FMSPC and PCK CA unless the caller gave some, and runs
``verify.verify_parsed_quote``; ``claims`` is the common :class:`VerifiedEvidence`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final, Literal

from cryptography import x509

from keybroker.errors import EvidenceParseError, InvalidInput, VerificationError
from keybroker.tee.dcap.abi import Quote, parse_quote
from keybroker.tee.dcap.chain import TrustedRoots
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.sources import CollateralSource
from keybroker.tee.dcap.verify import CHECKS, VerifiedQuote, platform_of, verify_parsed_quote
from keybroker.tee.verifier import Binding, VerifiedEvidence, report_data_64

__all__ = ["DCAP_TCB_MEMBERS", "DCAP_TEES", "DcapVerifier", "dcap_verifiers", "verified_evidence"]

DcapTee = Literal["sgx", "tdx"]
DCAP_TEES: Final[tuple[DcapTee, ...]] = ("sgx", "tdx")
#: The appraisal input's ``tcb`` members besides ``status`` and ``advisory_ids`` (RFC 3339 times).
DCAP_TCB_MEMBERS: Final = ("collateral_expiry", "tcb_date")
#: Quote header: version (3: SGX; 4, 5: SGX or TDX), attestation key type 2 (ECDSA-256-with-P-256).
_VERSIONS: Final = (3, 4, 5)
_ECDSA_P256_KEY: Final = b"\x02\x00"
_TDX_TEE_TYPE: Final = b"\x81\x00\x00\x00"


class DcapVerifier:
    """Verifies Intel DCAP quotes of one TEE (``sgx`` or ``tdx``)."""

    def __init__(
        self, tee: DcapTee, collateral: CollateralSource, dev_roots: Iterable[x509.Certificate] = ()
    ) -> None:
        if tee not in DCAP_TEES:
            raise ValueError(f"DCAP verifies sgx and tdx quotes, not {tee!r}")
        self._tee: DcapTee = tee
        self.collateral = collateral
        self.roots = TrustedRoots(dev_roots)
        #: The last quote parsed, with its bytes: a release names the evidence by its digest
        #: (``evidence_sha256``) and then verifies it, and both start from the parse.
        self._last: tuple[bytes, Quote] | None = None

    def _parse_quote(self, evidence: bytes) -> Quote:
        """``parse_quote``, the last result reused for the same bytes (a parse is pure and its
        result frozen; the bytes are compared in full)."""
        last = self._last
        if last is not None and last[0] == evidence:
            return last[1]
        quote = parse_quote(evidence)
        self._last = (bytes(evidence), quote)
        return quote

    @property
    def name(self) -> str:
        return self._tee

    @property
    def checks(self) -> tuple[str, ...]:
        return tuple(c for c in CHECKS if c != "tdx_module" or self._tee == "tdx")

    def recognizes(self, evidence: bytes) -> bool:
        """A DCAP quote header (version 3-5, ECDSA-256-with-P-256 attestation key); TDX's claims
        those with TDX's TEE type, SGX's every other (an unknown TEE type then fails ``parse``,
        naming the field, rather than going unrecognized)."""
        if not (
            len(evidence) >= 8
            and evidence[0] in _VERSIONS
            and evidence[1] == 0
            and evidence[2:4] == _ECDSA_P256_KEY
        ):
            return False
        return (evidence[4:8] == _TDX_TEE_TYPE) == (self._tee == "tdx")

    def parse(self, evidence: bytes) -> Quote:
        unverified_quote = self._parse_quote(evidence)
        if unverified_quote.tee != self._tee:
            raise VerificationError(
                f"the evidence is a {unverified_quote.tee.upper()} quote, not {self._tee.upper()}",
                check="tee_type",
            )
        return unverified_quote

    def verify(self, parsed: Quote, *, at: datetime, endorsements: object | None) -> VerifiedQuote:
        if endorsements is None:
            fmspc, pck_ca = platform_of(parsed)
            collateral = self.collateral.collateral_for(tee=self._tee, fmspc=fmspc, pck_ca=pck_ca, at=at)
        elif isinstance(endorsements, QuoteCollateral):
            collateral = endorsements
        else:
            raise TypeError(f"DCAP endorsements are QuoteCollateral, not {type(endorsements).__name__}")
        return verify_parsed_quote(parsed, collateral, at=at, roots=self.roots)

    def claims(self, verified: VerifiedQuote) -> VerifiedEvidence:
        return verified_evidence(verified)

    def expected_report_data(self, bound: Binding) -> bytes:
        """REPORTDATA, 64 bytes: SHA-512(nonce || SPKI) (``/kbs/v1``), or the ``/kbs/v0`` hash zero-padded."""
        return report_data_64(bound)

    def evidence_sha256(self, evidence: bytes) -> str:
        """SHA-256 of the quote without its zero padding (``abi.canonical_quote``): one quote, one
        digest."""
        try:
            canonical = self._parse_quote(evidence).canonical
        except EvidenceParseError:
            canonical = bytes(evidence)
        return hashlib.sha256(canonical).hexdigest()

    def endorsements(self, text: str | bytes) -> QuoteCollateral:
        """dcap-qvl's ``QuoteCollateralV3`` JSON; ``CollateralError`` naming what is wrong."""
        return QuoteCollateral.from_json(text)

    def kbs_v0_evidence(self, primary: Mapping[str, Any]) -> bytes:
        """Trustee's ``{"quote": base64}`` (TDX adds ``cc_eventlog``, not used here)."""
        field = "tee-evidence.primary_evidence.quote"
        quote = primary.get("quote")
        if not isinstance(quote, str):
            raise InvalidInput("primary_evidence must carry the quote (base64)", field=field)
        try:
            return base64.b64decode(quote, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("the quote is not valid base64", field=field) from None


def verified_evidence(verified: VerifiedQuote) -> VerifiedEvidence:
    """The common result of a verified quote: claims as JSON, ``tcb`` with the collateral's expiry
    and TCB date (RFC 3339), the quote itself as ``detail``."""
    return VerifiedEvidence(
        tee=verified.tee,
        claims=verified.claims.to_dict(),
        tcb={
            "status": verified.status,
            "advisory_ids": list(verified.advisory_ids),
            "collateral_expiry": verified.collateral_expiry.isoformat(),
            "tcb_date": verified.tcb_date.isoformat(),
        },
        report_data=verified.report_data,
        sim=verified.sim,
        evidence_sha256=verified.evidence_sha256,
        checks=verified.checks,
        detail=verified,
    )


def dcap_verifiers(
    collateral: CollateralSource, dev_roots: Iterable[x509.Certificate] = ()
) -> list[DcapVerifier]:
    """Both DCAP verifiers, sharing one collateral source and one set of roots."""
    roots = tuple(dev_roots)
    return [DcapVerifier(tee, collateral, roots) for tee in DCAP_TEES]
