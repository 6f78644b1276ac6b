"""The ``tdx`` section of a transfer policy (Intel SecL v5 form): the TDX module's identity and
minimum SEAMSVN, MRTD and RTMRs; TDs with reserved TD attribute bits set are denied unless allowed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from pydantic import Field, StrictBool

from keybroker.appraisal.clauses import Clauses
from keybroker.appraisal.decision import Reason
from keybroker.appraisal.fields import U16, Permission, Sha384Hex, Strict, TrustAuthorityPolicyId
from keybroker.appraisal.section import PolicySection

__all__ = ["SECTION", "TdxAttributes", "TdxSection", "reserved_td_attributes"]

#: ``td_attributes.reserved`` of a TD with no reserved TD attribute bit set.
_NO_RESERVED_BITS: Final = "0" * 16


class TdxAttributes(Strict):
    mrsignerseam: list[Sha384Hex] = Field(min_length=1)
    mrseam: list[Sha384Hex] = Field(min_length=1)
    #: Minimum SEAMSVN (>=). None: not checked.
    seamsvn: U16 | None = None
    #: Empty: any TD.
    mrtd: list[Sha384Hex] = Field(default_factory=list)
    rtmr0: Sha384Hex | None = None
    rtmr1: Sha384Hex | None = None
    rtmr2: Sha384Hex | None = None
    rtmr3: Sha384Hex | None = None
    client_permissions: list[Permission] = Field(default_factory=list)
    enforce_tcb_upto_date: StrictBool = False
    #: False (default): a TD with a reserved TD attribute bit set (a feature keybroker does not
    #: know) is denied.
    allow_reserved_td_attributes: StrictBool = False


class TdxSection(Strict):
    attributes: TdxAttributes
    policy_ids: list[TrustAuthorityPolicyId] = Field(default_factory=list, max_length=64)


def reserved_td_attributes(doc: Mapping[str, Any]) -> tuple[str, bool] | None:
    """For a TD whose claims show reserved TD attribute bits set: (the reason to deny, whether the
    claim is present, i.e. a policy may explicitly allow it). None for a TD with none set and for
    other TEEs. A TD whose claim is missing or malformed is reported too (and may not be allowed)."""
    if doc.get("tee") != "tdx":
        return None
    claims = doc.get("claims")
    attributes = claims.get("td_attributes") if isinstance(claims, Mapping) else None
    reserved = attributes.get("reserved") if isinstance(attributes, Mapping) else None
    if reserved == _NO_RESERVED_BITS:
        return None
    if not isinstance(reserved, str) or len(reserved) != 16:
        return "the TD's reserved TD attribute bits (claims.td_attributes.reserved) are missing", False
    value = attributes.get("value") if isinstance(attributes, Mapping) else None
    return f"reserved TD attribute bits {reserved} are set (TD_ATTRIBUTES {value})", True


def _evaluate(c: Clauses, section: TdxSection) -> None:
    a = section.attributes
    reserved = reserved_td_attributes(c.doc)
    if reserved is not None:
        reason, may_allow = reserved
        if may_allow and a.allow_reserved_td_attributes:
            c.notes.append(f"{reason}: allowed (tdx.attributes.allow_reserved_td_attributes is true)")
        else:
            c.reasons.append(
                Reason.plain(
                    f"{reason} and the policy does not set tdx.attributes.allow_reserved_td_attributes",
                    "reserved_td_attributes",
                )
            )
    c.trust_authority_policy_ids("tdx", section.policy_ids)
    c.hex_any_of("mrsignerseam", "mr_signer_seam", a.mrsignerseam)
    c.hex_any_of("mrseam", "mr_seam", a.mrseam)
    c.minimum("seamsvn", "seam_svn", a.seamsvn)
    c.hex_any_of("mrtd", "mr_td", a.mrtd)
    for i, expected in enumerate((a.rtmr0, a.rtmr1, a.rtmr2, a.rtmr3)):
        c.hex_exact(f"rtmr{i}", f"rtmr{i}", expected)


def _default_findings(doc: Mapping[str, Any]) -> list[str]:
    reserved = reserved_td_attributes(doc)
    return [] if reserved is None else [reserved[0]]


SECTION = PolicySection(
    tee="tdx",
    model=TdxSection,
    subject="TD",
    debug_flag="TD_ATTRIBUTES.DEBUG",
    vendor="Intel",
    evaluate=_evaluate,
    default_findings=_default_findings,
)
