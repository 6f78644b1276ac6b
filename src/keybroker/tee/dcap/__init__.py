"""Intel SGX and TDX DCAP quotes, verified in pure Python.

``abi`` parses (no trust), ``verify`` checks chains, CRLs, signatures, QE identity and TCB status
against ``collateral`` at an injected time, ``claims`` exposes what was measured. Policy lives in
``keybroker.appraisal``.
"""

from __future__ import annotations

from keybroker.tee.dcap.abi import Quote, parse_quote
from keybroker.tee.dcap.claims import SgxClaims, TdxClaims
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.verify import INTEL_SGX_ROOT_CA, VerifiedQuote, quote_fmspc_and_ca, verify_quote

__all__ = [
    "INTEL_SGX_ROOT_CA",
    "Quote",
    "QuoteCollateral",
    "SgxClaims",
    "TdxClaims",
    "VerifiedQuote",
    "parse_quote",
    "quote_fmspc_and_ca",
    "verify_quote",
]
