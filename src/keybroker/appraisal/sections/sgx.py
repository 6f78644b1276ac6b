"""The ``sgx`` section of a transfer policy (Intel SecL v5 form): the enclave's signer, product,
measurement and minimum ISVSVN."""

from __future__ import annotations

from pydantic import Field, StrictBool

from keybroker.appraisal.clauses import Clauses
from keybroker.appraisal.fields import U16, Permission, Sha256Hex, Strict, TrustAuthorityPolicyId
from keybroker.appraisal.section import PolicySection

__all__ = ["SECTION", "SgxAttributes", "SgxSection"]


class SgxAttributes(Strict):
    mrsigner: list[Sha256Hex] = Field(min_length=1)
    isvprodid: list[U16] = Field(min_length=1)
    #: Empty: any enclave by the listed signers.
    mrenclave: list[Sha256Hex] = Field(default_factory=list)
    #: Minimum ISVSVN (>=). None: not checked.
    isvsvn: U16 | None = None
    #: Every listed permission must be in the caller's token.
    client_permissions: list[Permission] = Field(default_factory=list)
    enforce_tcb_upto_date: StrictBool = False


class SgxSection(Strict):
    attributes: SgxAttributes
    policy_ids: list[TrustAuthorityPolicyId] = Field(default_factory=list, max_length=64)


def _evaluate(c: Clauses, section: SgxSection) -> None:
    c.trust_authority_policy_ids("sgx", section.policy_ids)
    a = section.attributes
    c.hex_any_of("mrsigner", "mr_signer", a.mrsigner)
    c.int_any_of("isvprodid", "isv_prod_id", a.isvprodid)
    c.hex_any_of("mrenclave", "mr_enclave", a.mrenclave)
    c.minimum("isvsvn", "isv_svn", a.isvsvn)


SECTION = PolicySection(
    tee="sgx",
    model=SgxSection,
    subject="enclave",
    debug_flag="ATTRIBUTES.DEBUG",
    vendor="Intel",
    evaluate=_evaluate,
)
