"""Where a report's endorsements come from when its evidence does not carry them.

An SEV-SNP report is verified with its VCEK (or VLEK), the ASK (or ASVK) and ARK above it, and
optionally AMD's CRLs. A guest usually sends them along (the extended report's certificate table,
configfs-tsm's ``auxblob``, Trustee's ``cert_chain``); when it does not, the verifier asks an
:data:`SnpEndorsementSource` by what the (unverified) report names: the product, the signing key
kind, the chip and the reported TCB. The KDS cache (AMD's Key Distribution Service: VCEKs by chip
and TCB, chains and CRLs by product) is such a source; whatever a source returns is verified like
anything else, to AMD's pinned ARKs (or a configured dev root), never trusted for being cached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from keybroker.tee.snp.abi import Product, SigningKey

__all__ = ["SnpEndorsementSource", "SnpEndorsements", "SnpPlatform"]


@dataclass(frozen=True, slots=True)
class SnpEndorsements:
    """Certificates (DER, in any order: the VCEK or VLEK and, optionally, its ASK/ASVK and ARK)
    and AMD CRLs (DER) for one report. With no intermediate, AMD's shipped ASK/ASVK is used."""

    certificates: tuple[bytes, ...]
    crls: tuple[bytes, ...] = ()
    #: Where they came from, for messages: "the caller", "the evidence", "the KDS cache".
    origin: str = "the caller"


@dataclass(frozen=True, slots=True)
class SnpPlatform:
    """What an unverified report says about the key that signed it: the lookup key of a KDS cache.

    ``product`` is None for a version 2 report (no CPUID; a cache may know the chip);
    ``reported_tcb`` is the raw 8-byte REPORTED_TCB (its layout depends on the product);
    ``chip_id`` the 64-byte CHIP_ID (zero when masked; Turin uses bytes 0-7)."""

    product: Product | None
    signing_key: SigningKey
    chip_id: bytes
    reported_tcb: bytes
    at: datetime


#: Endorsements for a platform, or ``CollateralNotFound`` naming what was asked.
SnpEndorsementSource = Callable[[SnpPlatform], SnpEndorsements]
