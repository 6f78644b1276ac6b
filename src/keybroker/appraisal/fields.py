"""Field types shared by the transfer policy and its per-TEE sections (validated; hex normalized to lower case)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt

__all__ = [
    "U8",
    "U16",
    "U32",
    "Hex16Bytes",
    "Permission",
    "Sha256Hex",
    "Sha384Hex",
    "Strict",
    "TrustAuthorityPolicyId",
]

_HEX = re.compile(r"^[0-9a-fA-F]*$")


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
#: 16 bytes in hex (SEV-SNP FAMILY_ID, IMAGE_ID).
Hex16Bytes = Annotated[str, _hex_of(32)]
U8 = Annotated[StrictInt, Field(ge=0, le=0xFF)]
U16 = Annotated[StrictInt, Field(ge=0, le=0xFFFF)]
U32 = Annotated[StrictInt, Field(ge=0, le=0xFFFF_FFFF)]
Permission = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")]
#: A Trust Authority appraisal policy id (a UUID there); keybroker cannot evaluate them, so any denies.
TrustAuthorityPolicyId = Annotated[str, Field(min_length=1, max_length=64)]


class Strict(BaseModel):
    """Unknown members are refused; the model is immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
