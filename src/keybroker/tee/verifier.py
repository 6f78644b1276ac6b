"""One verifier interface for every TEE: evidence plus the expected report data in, verified claims out.

"No report data expected" is the explicit value :data:`NO_REPORT_DATA`, never a forgotten None.
Collateral comes from an injected :class:`CollateralSource`; trusted dev roots are explicit.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Literal, Protocol

from cryptography import x509

from keybroker.errors import CollateralNotFound, InvalidInput, VerificationError
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.verify import VerifiedQuote, quote_fmspc_and_ca, verify_quote

Tee = Literal["sgx", "tdx"]
TEES: tuple[Tee, ...] = ("sgx", "tdx")


class _NoReportData(enum.Enum):
    NO_REPORT_DATA = "no report data expected"


NO_REPORT_DATA = _NoReportData.NO_REPORT_DATA
ExpectedReportData = bytes | _NoReportData


class CollateralSource(Protocol):
    def collateral_for(self, *, tee: str, fmspc: str, pck_ca: str) -> QuoteCollateral:
        """Return collateral for the platform, or raise CollateralNotFound naming what was asked."""
        ...


class StaticCollateral:
    """Collateral held in memory (dev PKI files, tests, ``--collateral`` files)."""

    def __init__(self, items: Iterable[QuoteCollateral] = ()) -> None:
        self._items: list[QuoteCollateral] = list(items)

    def add(self, collateral: QuoteCollateral) -> None:
        self._items.append(collateral)

    def collateral_for(self, *, tee: str, fmspc: str, pck_ca: str) -> QuoteCollateral:
        for c in reversed(self._items):
            if c.tee == tee and c.fmspc == fmspc.upper() and c.pck_ca == pck_ca:
                return c
        have = ", ".join(f"{c.tee}/{c.fmspc}/{c.pck_ca}" for c in self._items) or "nothing"
        raise CollateralNotFound(
            f"no collateral for {tee} FMSPC {fmspc.upper()} ({pck_ca} CA); cached: {have}"
        )


class ChainedCollateral:
    """Ask several sources in order (e.g. the dev PKI's, then the database store)."""

    def __init__(self, *sources: CollateralSource) -> None:
        self._sources = sources

    def collateral_for(self, *, tee: str, fmspc: str, pck_ca: str) -> QuoteCollateral:
        missing: list[str] = []
        for src in self._sources:
            try:
                return src.collateral_for(tee=tee, fmspc=fmspc, pck_ca=pck_ca)
            except CollateralNotFound as exc:
                missing.append(exc.detail)
        raise CollateralNotFound("; ".join(missing) or f"no collateral source for {tee} FMSPC {fmspc}")


class Verifier:
    def __init__(
        self,
        collateral: CollateralSource,
        *,
        dev_roots: Sequence[x509.Certificate] = (),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.collateral = collateral
        self.dev_roots = tuple(dev_roots)
        self._clock = clock

    def verify(
        self,
        tee: str,
        evidence: bytes,
        expected_report_data: ExpectedReportData,
        *,
        at: datetime | None = None,
        collateral: QuoteCollateral | None = None,
    ) -> VerifiedQuote:
        """Verify ``evidence`` of ``tee`` and check its report data.

        Raises EvidenceParseError / VerificationError (check names the failed step) /
        CollateralNotFound.
        """
        if tee not in TEES:
            raise InvalidInput(f"tee {tee!r} is not supported; use one of {', '.join(TEES)}", field="tee")
        if collateral is None:
            fmspc, pck_ca, quote_tee = quote_fmspc_and_ca(evidence)
            if quote_tee != tee:
                raise VerificationError(
                    f"the evidence is a {quote_tee.upper()} quote, not {tee.upper()}", check="tee_type"
                )
            collateral = self.collateral.collateral_for(tee=quote_tee, fmspc=fmspc, pck_ca=pck_ca)
        verified = verify_quote(evidence, collateral, at=at or self._clock(), dev_roots=self.dev_roots)
        if verified.tee != tee:
            raise VerificationError(
                f"the evidence is a {verified.tee.upper()} quote, not {tee.upper()}", check="tee_type"
            )
        if expected_report_data is not NO_REPORT_DATA:
            assert isinstance(expected_report_data, bytes)
            if not hmac.compare_digest(verified.report_data, expected_report_data):
                raise VerificationError(
                    "the quote's report data does not bind this nonce and public key", check="report_data"
                )
        return verified
