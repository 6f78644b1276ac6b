"""Fetch collateral from a PCS/PCCS or a KDS, verify it and store it: ``keybroker collateral fetch``
and the console's *Refresh now* run these same two functions.

Nothing fetched is stored before all of it verified (:func:`keybroker.collateral.fetch.fetch_collateral`,
:func:`keybroker.collateral.kds_fetch.fetch_snp_collateral`); then it is stored in one transaction,
with whatever ``then`` adds to it (the console's audit record). A source that cannot be reached
raises ``httpx.TransportError`` (the CLI maps it to its exit codes); :func:`unreachable` words it
for a page.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import httpx
from cryptography import x509

from keybroker.collateral.fetch import PcsClient, Tee, fetch_collateral
from keybroker.collateral.items import TrustedRoots
from keybroker.collateral.kds_fetch import KdsClient, SnpFetchPlan, fetch_snp_collateral
from keybroker.errors import BackendUnavailable

if TYPE_CHECKING:  # the database layer loads on use (`keybroker --help` stays quick)
    from sqlalchemy.orm import Session

    from keybroker.collateral.kds_store import KdsImportResult, KdsStore
    from keybroker.collateral.store import CollateralStore, ImportResult

__all__ = ["Refreshed", "SourceUnreachable", "refresh_fmspc", "refresh_snp", "unreachable"]

R = TypeVar("R")


@dataclass(frozen=True)
class Refreshed(Generic[R]):
    """What a fetch stored (``result``), what it noted (pieces skipped, 404s that are not fatal)
    and where it asked (``source``, as the stored items name it: ``fetch:<url>``)."""

    result: R
    notes: list[str]
    source: str


def refresh_fmspc(
    client: PcsClient,
    open_store: Callable[[], CollateralStore],
    *,
    fmspc: str,
    tees: Sequence[Tee],
    roots: TrustedRoots,
    step: Callable[[str], None] = lambda _: None,
    then: Callable[[Session, ImportResult], None] | None = None,
) -> Refreshed[ImportResult]:
    """An FMSPC's DCAP collateral for ``tees``: fetched, verified to ``roots``, then stored (the
    store opened only then, so that a failed fetch creates no database)."""
    items, notes = fetch_collateral(client, fmspc=fmspc, tees=tees, roots=roots, step=step)
    source = f"fetch:{client.base_url}"
    return Refreshed(open_store().import_items(items, source=source, then=then), notes, source)


def refresh_snp(
    client: KdsClient,
    open_store: Callable[[], KdsStore],
    plan: SnpFetchPlan,
    *,
    dev_roots: Sequence[x509.Certificate],
    cached: KdsStore | None,
    step: Callable[[str], None] = lambda _: None,
    then: Callable[[Session, KdsImportResult], None] | None = None,
) -> Refreshed[KdsImportResult]:
    """SEV-SNP chains and CRLs (and the plan's VCEKs) from a KDS: fetched, verified to AMD's ARKs or
    ``dev_roots``, then stored. ``cached``: the store as it is (VCEKs it holds are not fetched
    again; its chains verify VCEKs), None when there is no database yet."""
    items, notes = fetch_snp_collateral(
        client,
        plan,
        dev_roots=dev_roots,
        have_vcek=cached.has_vcek if cached is not None else lambda *_: False,
        known_chains=cached.chains() if cached is not None else (),
        step=step,
    )
    source = f"fetch:{client.base_url}"
    return Refreshed(open_store().import_items(items, source=source, then=then), notes, source)


class SourceUnreachable(BackendUnavailable):
    """The configured collateral source did not answer (connection refused, timeout, TLS)."""

    title = "Collateral source unreachable"


def unreachable(exc: httpx.TransportError, source: str) -> SourceUnreachable:
    """``exc`` as a clear refusal naming ``source`` (a TLS verification failure says which setting
    holds the CA)."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        return SourceUnreachable(
            f"the collateral source {source} presented a TLS certificate that does not verify "
            "(set [collateral] ca_file to its CA)"
        )
    why = str(exc) or type(exc).__name__
    return SourceUnreachable(f"the collateral source {source} cannot be reached: {why[:200]}")
