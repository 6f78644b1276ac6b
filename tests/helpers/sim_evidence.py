"""Real verified evidence from the TEE simulator, for appraisal and token tests: simulator quotes
and SEV-SNP reports through the one verifier (``tee.verifier.Verifier`` with the DCAP and SNP
plugins), as the server verifies."""

from __future__ import annotations

import datetime as dt
import hashlib
from functools import cache, cached_property
from pathlib import Path
from typing import Any, Literal

from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.plugin import dcap_verifiers
from keybroker.tee.dcap.sources import StaticCollateral
from keybroker.tee.dcap.verify import VerifiedQuote
from keybroker.tee.sim import DevPki, sgx_quote, tdx_quote
from keybroker.tee.sim.snp import SnpDevPki, snp_report
from keybroker.tee.snp.abi import Product
from keybroker.tee.snp.plugin import SnpVerifier
from keybroker.tee.verifier import NO_REPORT_DATA, VerifiedEvidence, Verifier

ISSUED = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
#: When tests verify: an hour after the dev PKI was issued.
AT = ISSUED + dt.timedelta(hours=1)
REPORT_DATA = hashlib.sha512(b"keybroker appraisal tests").digest()


class SimEvidence:
    """Make and verify simulator quotes with chosen fields."""

    def __init__(self, directory: Path) -> None:
        self.pki = DevPki.create(directory / "pki", now=ISSUED)

    @cache  # noqa: B019 - one instance per test session
    def collateral(self, tee: Literal["sgx", "tdx"]) -> QuoteCollateral:
        return QuoteCollateral.from_json(self.pki.collateral_json(tee))

    @cached_property
    def verifier(self) -> Verifier:
        source = StaticCollateral([self.collateral("sgx"), self.collateral("tdx")])
        return Verifier(dcap_verifiers(source, [self.pki.root_cert]), clock=lambda: AT)

    def quote(self, tee: Literal["sgx", "tdx"], **fields: Any) -> bytes:
        fields.setdefault("report_data", REPORT_DATA)
        return sgx_quote(self.pki, **fields) if tee == "sgx" else tdx_quote(self.pki, **fields)

    def verify(self, tee: Literal["sgx", "tdx"], **fields: Any) -> VerifiedEvidence:
        return self.verifier.verify(tee, self.quote(tee, **fields), NO_REPORT_DATA)

    def verify_quote(self, tee: Literal["sgx", "tdx"], **fields: Any) -> VerifiedQuote:
        """The DCAP verifier's own result (``VerifiedEvidence.detail``)."""
        detail = self.verify(tee, **fields).detail
        assert isinstance(detail, VerifiedQuote)
        return detail


class SimSnpEvidence:
    """Make and verify simulated SEV-SNP reports (a Genoa dev PKI issued at ``ISSUED``), through
    the one verifier with the SNP plugin trusting the dev ARK, as a ``serve --dev`` server does."""

    def __init__(self, directory: Path, product: Product = "Genoa") -> None:
        self.pki = SnpDevPki.create(directory / "snp", product=product, now=ISSUED)

    @cached_property
    def verifier(self) -> Verifier:
        return Verifier([SnpVerifier([self.pki.root_cert])], clock=lambda: AT)

    def evidence(self, *, with_certs: bool = True, **fields: Any) -> bytes:
        """``report || cert_table`` (what a guest sends), or the report alone."""
        fields.setdefault("report_data", REPORT_DATA)
        made = snp_report(self.pki, now=ISSUED, **fields)
        return made.report + made.cert_table if with_certs else made.report

    def verify(self, **fields: Any) -> VerifiedEvidence:
        return self.verifier.verify("snp", self.evidence(**fields), NO_REPORT_DATA)
