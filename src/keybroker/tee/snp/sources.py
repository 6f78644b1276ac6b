"""Where a report's endorsements come from when its evidence does not carry them.

An SEV-SNP report is verified with its VCEK (or VLEK), the ASK (or ASVK) and ARK above it, and
optionally AMD's CRLs. A guest usually sends them along (the extended report's certificate table,
configfs-tsm's ``auxblob``, Trustee's ``cert_chain``); when it does not, the verifier asks an
:data:`SnpEndorsementSource` by what the (unverified) report names: the product, the signing key
kind, the chip and the reported TCB. The KDS cache (AMD's Key Distribution Service: VCEKs by chip
and TCB, chains and CRLs by product) is such a source; whatever a source returns is verified like
anything else, to AMD's pinned ARKs (or a configured dev root), never trusted for being cached.

Revocation is not left to the evidence: an :data:`SnpCrlSource` (the KDS cache, plus the dev PKI's
CRLs in dev mode) is asked for the CRLs of every verified chain's ARK, whatever carried the
certificates, and those it holds are always applied (``SnpVerifier``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from keybroker.tee.snp.abi import Product, SigningKey

__all__ = ["SnpCrlQuery", "SnpCrlSource", "SnpCrls", "SnpEndorsementSource", "SnpEndorsements", "SnpPlatform"]


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


@dataclass(frozen=True, slots=True)
class SnpCrlQuery:
    """The CRLs asked for a verified chain: its ARK (by SubjectPublicKeyInfo SHA-256, so a dev ARK
    named like AMD's never gets AMD's CRLs or the reverse), its product and its side (``vcek``: the
    ARK's CRL of ASKs, ``/vcek/v1/{P}/crl``; ``vlek``: of ASVKs, ``/vlek/v1/{P}/crl``)."""

    product: Product
    signing_key: SigningKey
    ark_spki_sha256: str
    at: datetime


@dataclass(frozen=True, slots=True)
class SnpCrls:
    """What a trusted CRL source holds for a chain (DER; empty when nothing).

    ``side``: the CRLs of the asked side (the ones that can list this chain's intermediate);
    ``other``: the ARK's CRLs of the other side (applied too); ``held``: what the source holds, and
    ``fix``: how an operator adds the missing CRL, both for the message when ``side`` is empty."""

    side: tuple[bytes, ...]
    other: tuple[bytes, ...] = ()
    held: str = ""
    fix: str = ""


#: The trusted CRLs of a verified chain's ARK (a KDS cache); never raises for "none held".
SnpCrlSource = Callable[[SnpCrlQuery], SnpCrls]
