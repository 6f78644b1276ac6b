"""AMD SEV-SNP attestation reports, verified in pure Python.

``abi`` parses (no trust), ``certs`` verifies the VCEK/VLEK chain to AMD's pinned ARKs (or an
explicit dev root), ``certtable`` reads the extended report's certificate table, ``verify``
checks a report at an injected time, ``claims`` exposes what was measured. Policy lives in
``keybroker.appraisal``.
"""

from __future__ import annotations

from keybroker.tee.snp.abi import AttestationReport, Product, SigningKey, Tcb, parse_report
from keybroker.tee.snp.certs import ARK_SPKI_SHA256, amd_roots, load_certificate_ders
from keybroker.tee.snp.certtable import CertTable, parse_cert_table
from keybroker.tee.snp.claims import SnpClaims
from keybroker.tee.snp.verify import CHECKS, VerifiedSnpReport, verify_report

__all__ = [
    "ARK_SPKI_SHA256",
    "CHECKS",
    "AttestationReport",
    "CertTable",
    "Product",
    "SigningKey",
    "SnpClaims",
    "Tcb",
    "VerifiedSnpReport",
    "amd_roots",
    "load_certificate_ders",
    "parse_cert_table",
    "parse_report",
    "verify_report",
]
