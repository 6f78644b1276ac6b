"""Real ``VerifiedQuote``s from the TEE simulator, for appraisal and token tests."""

from __future__ import annotations

import datetime as dt
import hashlib
from functools import cache
from pathlib import Path
from typing import Any, Literal

from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.verify import VerifiedQuote, verify_quote
from keybroker.tee.sim import DevPki, sgx_quote, tdx_quote

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

    def quote(self, tee: Literal["sgx", "tdx"], **fields: Any) -> bytes:
        fields.setdefault("report_data", REPORT_DATA)
        return sgx_quote(self.pki, **fields) if tee == "sgx" else tdx_quote(self.pki, **fields)

    def verify(self, tee: Literal["sgx", "tdx"], **fields: Any) -> VerifiedQuote:
        return verify_quote(
            self.quote(tee, **fields), self.collateral(tee), at=AT, dev_roots=[self.pki.root_cert]
        )
