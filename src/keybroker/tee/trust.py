"""What the TEE verifiers are built with: the roots trusted besides the vendors' pinned ones, and
the endorsement sources that are not carried in the evidence (Intel's DCAP collateral; AMD's VCEKs,
chains and CRLs for SEV-SNP reports that come without them; the enrolled TPM attestation keys).

Built from the settings in one place for the server and the CLI (``keybroker.collateral.trust``);
each TEE's registration (``keybroker.appraisal.registry``) takes what its verifier needs. Pure data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509

from keybroker.tee.dcap.sources import CollateralSource, StaticCollateral
from keybroker.tee.snp.sources import SnpCrlSource, SnpEndorsementSource
from keybroker.tee.tpm.trust import TpmTrust

__all__ = ["EvidenceTrust"]


@dataclass(frozen=True, slots=True)
class EvidenceTrust:
    """``dev_roots``: explicitly configured roots (the dev simulators'), offered to every TEE's
    verifier, each trusting those of its own kind; ``collateral``: where DCAP quotes' collateral
    comes from (none: every lookup fails with ``CollateralNotFound``); ``tpm``: which TPM
    attestation keys are trusted (AK root stores, the enrolled AKs) and their clock history;
    ``snp_endorsements``: where the VCEK/VLEK, chain and CRLs of an SEV-SNP report that carries none
    come from (a KDS cache: ``tee.snp.sources``; None: such a report fails with
    ``CollateralNotFound`` saying so); ``snp_crls``: the trusted source of AMD's CRLs (the KDS
    cache), asked for every SEV-SNP chain whatever carried it; ``snp_require_crl``: a CRL of the
    chain's ARK for its side must be held there (without a source: among the CRLs given)."""

    dev_roots: tuple[x509.Certificate, ...] = ()
    collateral: CollateralSource = field(default_factory=StaticCollateral)
    tpm: TpmTrust = field(default_factory=TpmTrust)
    snp_endorsements: SnpEndorsementSource | None = None
    snp_crls: SnpCrlSource | None = None
    snp_require_crl: bool = True
