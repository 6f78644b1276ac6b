"""Where a quote's collateral comes from: the sources the DCAP verifier asks by (TEE, FMSPC, PCK CA).

The collateral cache (``keybroker.collateral.store.DbCollateralSource``) is one; the dev PKI's
files, ``--collateral`` and tests hold collateral in memory (:class:`StaticCollateral`);
:class:`ChainedCollateral` asks several in order.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Protocol

from keybroker.errors import CollateralNotFound
from keybroker.tee.dcap.endorsements import QuoteCollateral

__all__ = ["ChainedCollateral", "CollateralSource", "StaticCollateral"]


class CollateralSource(Protocol):
    def collateral_for(
        self, *, tee: str, fmspc: str, pck_ca: str, at: datetime | None = None
    ) -> QuoteCollateral:
        """Collateral for the platform (valid at ``at`` where the source keeps history; None: now),
        or raise CollateralNotFound naming what was asked."""
        ...


class StaticCollateral:
    """Collateral held in memory (dev PKI files, tests, ``--collateral`` files)."""

    def __init__(self, items: Iterable[QuoteCollateral] = ()) -> None:
        self._items: list[QuoteCollateral] = list(items)

    def add(self, collateral: QuoteCollateral) -> None:
        self._items.append(collateral)

    def collateral_for(
        self, *, tee: str, fmspc: str, pck_ca: str, at: datetime | None = None
    ) -> QuoteCollateral:
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

    def collateral_for(
        self, *, tee: str, fmspc: str, pck_ca: str, at: datetime | None = None
    ) -> QuoteCollateral:
        missing: list[str] = []
        for src in self._sources:
            try:
                return src.collateral_for(tee=tee, fmspc=fmspc, pck_ca=pck_ca, at=at)
            except CollateralNotFound as exc:
                missing.append(exc.detail)
        raise CollateralNotFound("; ".join(missing) or f"no collateral source for {tee} FMSPC {fmspc}")
