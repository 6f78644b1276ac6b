"""Key-transfer policies in the Intel SecL KBS v5 form (validated; evaluation is in ``appraisal``).

Differences from SecL, on purpose: ``isvsvn``/``seamsvn`` are minimums (SecL's docs say so, its
code checked equality); hex values are normalized to lower case; ``allow_debug`` and
``allow_simulated`` default to false so that debug TEEs and simulator evidence are denied unless a
policy says otherwise; ``client_permissions`` may also be given for TDX.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

_HEX = re.compile(r"^[0-9a-fA-F]*$")

DEFAULT_POLICY_NAME = "urn:intel:trustedcomputing:key-transfer-policy:require-trust-or-authorization"


def _hex_of(length: int) -> AfterValidator:
    def check(value: str) -> str:
        if len(value) != length or not _HEX.match(value):
            raise ValueError(
                f"must be {length} hex characters ({length // 2} bytes), got {len(value)} characters"
            )
        return value.lower()

    return AfterValidator(check)


Sha256Hex = Annotated[str, _hex_of(64)]
Sha384Hex = Annotated[str, _hex_of(96)]
U16 = Annotated[StrictInt, Field(ge=0, le=0xFFFF)]
Permission = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")]
#: A Trust Authority appraisal policy id (a UUID there); keybroker cannot evaluate them, so any denies.
TrustAuthorityPolicyId = Annotated[str, Field(min_length=1, max_length=64)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SgxAttributes(_Strict):
    mrsigner: list[Sha256Hex] = Field(min_length=1)
    isvprodid: list[U16] = Field(min_length=1)
    #: Empty: any enclave by the listed signers.
    mrenclave: list[Sha256Hex] = Field(default_factory=list)
    #: Minimum ISVSVN (>=). None: not checked.
    isvsvn: U16 | None = None
    #: Every listed permission must be in the caller's token.
    client_permissions: list[Permission] = Field(default_factory=list)
    enforce_tcb_upto_date: StrictBool = False


class TdxAttributes(_Strict):
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


class NoneAttributes(_Strict):
    #: Required and non-empty: without attestation, the caller's token is the only credential.
    client_permissions: list[Permission] = Field(min_length=1)


class NoneSection(_Strict):
    attributes: NoneAttributes


class SgxSection(_Strict):
    attributes: SgxAttributes
    policy_ids: list[TrustAuthorityPolicyId] = Field(default_factory=list, max_length=64)


class TdxSection(_Strict):
    attributes: TdxAttributes
    policy_ids: list[TrustAuthorityPolicyId] = Field(default_factory=list, max_length=64)


class TransferPolicyBody(_Strict):
    """What an admin sends to ``POST /kbs/v1/key-transfer-policies``."""

    attestation_type: list[Literal["SGX", "TDX", "SNP", "TPM", "NONE"]] = Field(min_length=1)
    sgx: SgxSection | None = None
    tdx: TdxSection | None = None
    #: The seed's "good" tier: release to an authenticated client *without attestation*.
    #: Explicit and warned; never the default ("best": attestation required).
    none: NoneSection | None = None
    allow_debug: StrictBool = False
    allow_simulated: StrictBool = False

    @model_validator(mode="after")
    def _sections_match_types(self) -> TransferPolicyBody:
        types = set(self.attestation_type)
        if len(types) != len(self.attestation_type):
            raise ValueError("attestation_type lists a type twice")
        for reserved in ("SNP", "TPM"):
            if reserved in types:
                raise ValueError(f"attestation_type {reserved} is reserved and not supported yet")
        if "SGX" in types and self.sgx is None:
            raise ValueError("attestation_type has SGX but the policy has no sgx section")
        if "TDX" in types and self.tdx is None:
            raise ValueError("attestation_type has TDX but the policy has no tdx section")
        if self.sgx is not None and "SGX" not in types:
            raise ValueError("the policy has an sgx section but attestation_type lacks SGX")
        if self.tdx is not None and "TDX" not in types:
            raise ValueError("the policy has a tdx section but attestation_type lacks TDX")
        if "NONE" in types:
            if len(types) != 1:
                raise ValueError("attestation_type NONE (no attestation) cannot be combined with TEE types")
            if self.none is None:
                raise ValueError("attestation_type NONE needs a none section with client_permissions")
        elif self.none is not None:
            raise ValueError("the policy has a none section but attestation_type lacks NONE")
        return self

    @property
    def without_attestation(self) -> bool:
        return self.attestation_type == ["NONE"]
