"""Claims of a verified TPM quote (and its event log): one normalized, JSON-ready dict.

Claims describe; they do not judge. Secure Boot off, a SHA-1 bank, an AK without a certificate or
a quote without a nonce are valid claims that policy may reject. Every digest is lowercase hex;
``None`` means "not known from this evidence" and a policy must treat it as such.
"""

from __future__ import annotations

from typing import Any

from cryptography.x509.oid import NameOID

from keybroker.tee.tpm.abi import ClockInfo
from keybroker.tee.tpm.eventlog import VerifiedEventLog
from keybroker.tee.tpm.trust import ClockReading
from keybroker.tee.tpm.verify import VerifiedQuote

__all__ = ["clock_history", "tpm_claims"]


def _name(name: Any) -> str:
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else name.rfc4514_string()


def tpm_claims(quote: VerifiedQuote, event_log: VerifiedEventLog | None = None) -> dict[str, Any]:
    """The claims of ``quote`` and, when given, of the event log verified against it."""
    attest = quote.attest
    certificate = None
    if quote.ak_certificate is not None:
        leaf = quote.ak_certificate.leaf
        certificate = {
            "issuer": _name(leaf.issuer),
            "serial": f"{leaf.serial_number:x}",
            "not_after": leaf.not_valid_after_utc.isoformat(),
            "root_sha256": quote.ak_certificate.root_sha256,
        }
    claims: dict[str, Any] = {
        "tee": "tpm",
        "ak": {
            "name": quote.ak_name.hex() if quote.ak_name is not None else None,
            "key_type": quote.ak_key_type,
            "spki_sha256": quote.ak_spki_sha256,
            "attributes": list(quote.ak_attributes) if quote.ak_attributes is not None else None,
            "certificate": certificate,
        },
        "quote": {
            "signature_scheme": quote.signature_scheme,
            "extra_data": attest.extra_data.hex(),
            "nonce_checked": quote.nonce_checked,
            "qualified_signer": attest.qualified_signer.hex(),
            "qualified_signer_checked": "qualified_signer" in quote.checks,
            "clock": attest.clock_info.clock,
            "reset_count": attest.clock_info.reset_count,
            "restart_count": attest.clock_info.restart_count,
            "clock_safe": attest.clock_info.safe,
            "firmware_version": f"{attest.firmware_version:016x}",
        },
        "pcrs": {bank: {str(i): v.hex() for i, v in values} for bank, values in quote.pcrs},
        "evidence_sha256": quote.evidence_sha256,
    }
    if event_log is not None:
        claims["event_log"] = {
            "bank": event_log.bank,
            "verified_pcrs": list(event_log.verified_pcrs),
            "empty_pcrs": list(event_log.empty_pcrs),
            "unquoted_pcrs": list(event_log.unquoted_pcrs),
            **event_log.claims,
        }
    return claims


def clock_history(previous: ClockReading | None, now: ClockInfo, *, known: bool) -> dict[str, Any]:
    """How this quote's clock relates to the latest one recorded for its AK (``trust.AkRegistry``).

    ``known`` false: nothing is recorded here (no registry), so nothing could go back. Otherwise
    each ``*_decreased`` says whether that counter went back: the reset count at all, the restart
    count within one reset, the clock within one boot (reset and restart counts equal). Policies
    deny any of them unless they allow a clock regression."""
    reset = restart = clock = False
    if previous is not None:
        reset = now.reset_count < previous.reset_count
        same_reset = now.reset_count == previous.reset_count
        restart = same_reset and now.restart_count < previous.restart_count
        clock = same_reset and now.restart_count == previous.restart_count and now.clock < previous.clock
    return {
        "known": known,
        "previous": previous.to_dict() if previous is not None else None,
        "reset_count_decreased": reset,
        "restart_count_decreased": restart,
        "clock_decreased": clock,
    }
