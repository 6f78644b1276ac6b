"""The console's Attestation page: recent attempts by TEE and outcome, and the collateral cache per
FMSPC (Intel DCAP) and per product (AMD SEV-SNP, the KDS cache), what is cached and when it
expires, with *Refresh now*.

*Refresh now* fetches from the configured source (``[collateral] pcs_url``, ``kds_url``, with
``ca_file``) through the code of ``keybroker collateral fetch`` (:mod:`keybroker.collateral.refresh`):
everything verified before anything is stored, and the store and its audit record
(``collateral.refresh``) in one transaction. It needs ``collateral:update``, refreshes only what
is cached already (an FMSPC, a product), and says so plainly when the source cannot be reached.
The countdowns are ``static/console.js``; without JavaScript each expiry reads as a date and a
"in 3d 4h" written by the server.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from keybroker.api.services import Services
from keybroker.appraisal.registry import REGISTRY
from keybroker.audit import log as audit
from keybroker.audit.inputs import AppraisalInputs
from keybroker.auth.caller import Caller
from keybroker.collateral.fetch import PcsClient, Tee
from keybroker.collateral.kds import snp_dev_roots
from keybroker.collateral.kds_fetch import KdsClient, SnpFetchPlan
from keybroker.collateral.kds_store import KdsStore, StoredSnpItem
from keybroker.collateral.refresh import Refreshed, refresh_fmspc, refresh_snp, unreachable
from keybroker.collateral.store import CollateralStore, StoredItem
from keybroker.collateral.trust import collateral_roots, configured_roots
from keybroker.errors import Forbidden, InvalidInput, KeybrokerError, NotFound, Sealed
from keybroker.store.models import AuditRecord
from keybroker.tee.snp.abi import PRODUCTS, Product
from keybroker.ui.forms import StrictFormRoute, form_of
from keybroker.ui.pages import PAGE_SIZE, Viewer, act, page, viewer

router = APIRouter(prefix="/ui", route_class=StrictFormRoute, include_in_schema=False)

PERMISSION = "collateral:update"
_ATTEMPTS = ("attestation.attest", "key.transfer", "resource.release")
_OUTCOMES = ("success", "denied", "failed")
_FMSPC = re.compile(r"^[0-9A-Fa-f]{12}$")
_DCAP_TEES: tuple[Tee, ...] = ("sgx", "tdx")
#: A refresh from the page: a short wait and one retry (the CLI retries longer).
_RETRIES = 1
_TIMEOUT = 20.0


def _svc(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


#: The attempts' protocols, shown for an attempt whose record names no TEE (one refused before its
#: evidence was looked at, a key released without attestation, a record from before the TEE was
#: written into every transfer's).
_PROTOCOLS = ("kbs/v1", "kbs/v0")


def tee_of(r: AuditRecord) -> str:
    """The TEE an attempt was for (a registered name: ``snp``, ``az-snp-vtpm``), or its protocol
    when the record does not say."""
    d = r.details or {}
    return str(d.get("tee") or d.get("protocol") or "")


def tee_label(name: str) -> str:
    """A TEE as the console shows it: its attestation type (``AZ-SNP-VTPM``); a protocol as it is."""
    registered = REGISTRY.get(name)
    return registered.attestation_type if registered is not None else name


def _tee_filter(value: str | None) -> str | None:
    if not value:
        return None
    wanted = value.strip().lower()
    if wanted not in (*REGISTRY.names, *_PROTOCOLS):
        choices = ", ".join((*REGISTRY.attestation_types, *_PROTOCOLS))
        raise InvalidInput(f"tee: one of {choices}", field="tee")
    return wanted


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Piece:
    """One cached piece as the page shows it."""

    label: str
    issued: datetime
    expires: datetime
    root: str
    source: str


@dataclass
class CacheGroup:
    """What a quote of one FMSPC, or a report of one SEV-SNP product, is verified with."""

    kind: str  # "fmspc" or "product"
    name: str
    tees: list[str]
    pieces: list[Piece] = field(default_factory=list)

    @property
    def expires(self) -> datetime | None:
        """When the first piece it needs expires (its collateral is as fresh as the stalest piece)."""
        return min((p.expires for p in self.pieces), default=None)


def _dcap_piece(i: StoredItem) -> Piece:
    return Piece(i.label, _utc(i.issue_date), _utc(i.next_update), i.root_kind, i.source)


def _current(items: Sequence[StoredItem]) -> dict[tuple[Any, ...], list[StoredItem]]:
    """Per kind/TEE/FMSPC/CA, the newest piece of each root (newest first, as ``list_items`` gives)."""
    out: dict[tuple[Any, ...], list[StoredItem]] = {}
    for i in items:
        group = out.setdefault((i.kind, i.tee, i.fmspc, i.pck_ca), [])
        if all(g.root_kind != i.root_kind for g in group):
            group.append(i)
    return out


def dcap_groups(items: Sequence[StoredItem]) -> list[CacheGroup]:
    """Per FMSPC: its TCB Info per TEE and what those quotes need besides (QE/QVE identity, PCK CRLs,
    root CA CRL), each the newest of the TCB Info's root (collateral of two roots is never mixed)."""
    current = _current(items)
    groups: list[CacheGroup] = []
    fmspcs = sorted({i.fmspc for i in items if i.kind == "tcb_info" and i.fmspc})
    for fmspc in fmspcs:
        infos = [g[0] for (kind, _, f, _), g in current.items() if kind == "tcb_info" and f == fmspc]
        infos.sort(key=lambda i: i.tee or "")
        root = "intel" if any(i.root_kind == "intel" for i in infos) else infos[0].root_kind
        infos = [i for i in infos if i.root_kind == root] or infos
        tees = [i.tee for i in infos if i.tee]
        group = CacheGroup("fmspc", fmspc, tees, [_dcap_piece(i) for i in infos])
        for (kind, tee, f, _), pieces in sorted(current.items(), key=lambda kv: str(kv[0])):
            if kind == "tcb_info" or f is not None:
                continue
            if kind == "qe_identity" and tee not in tees:
                continue
            if kind == "qve_identity" and "sgx" not in tees:
                continue
            same_root = [p for p in pieces if p.root_kind == root]
            if same_root:
                group.pieces.append(_dcap_piece(same_root[0]))
        groups.append(group)
    return groups


def snp_groups(items: Sequence[StoredSnpItem]) -> list[CacheGroup]:
    """Per product: the newest ASK/ASVK chain and ARK CRL of each side and root, and the VCEKs held."""
    groups: dict[str, CacheGroup] = {}
    seen: set[tuple[Any, ...]] = set()
    for i in items:  # newest first within each group
        key = (i.product, i.kind, i.signing_key, i.hwid, i.tcb, i.root_kind)
        if key in seen:
            continue
        seen.add(key)
        group = groups.setdefault(i.product, CacheGroup("product", i.product, ["snp"]))
        group.pieces.append(Piece(i.label, _utc(i.valid_from), _utc(i.valid_until), i.root_kind, i.source))
    return [groups[p] for p in PRODUCTS if p in groups]


def _attestation_page(
    request: Request,
    v: Viewer,
    *,
    tee: str | None = None,
    outcome: str | None = None,
    status: int = 200,
    notice: str | None = None,
    notes: Sequence[str] = (),
    error: str | None = None,
) -> HTMLResponse:
    svc = _svc(request)
    if not v.can("audit:read"):
        raise Forbidden("you lack the permission audit:read", permission="audit:read")
    if outcome and outcome not in _OUTCOMES:
        raise InvalidInput("outcome: success, denied or failed", field="outcome")
    tee = _tee_filter(tee)
    with svc.db.session() as s:
        q = select(AuditRecord).where(AuditRecord.action.in_(_ATTEMPTS))
        if outcome:
            q = q.where(AuditRecord.outcome == outcome)
        attempts = list(s.scalars(q.order_by(AuditRecord.seq.desc()).limit(200)))
        kept = AppraisalInputs.kept(s, [r.seq for r in attempts[:PAGE_SIZE]])
    if tee:
        attempts = [r for r in attempts if tee_of(r).lower() == tee]
    counts: dict[tuple[str, str], int] = {}
    for r in attempts:
        key = (tee_of(r) or "?", r.outcome)
        counts[key] = counts.get(key, 0) + 1
    kds = KdsStore(svc.db)
    conf = svc.settings.collateral
    return page(
        request,
        "attestation.html",
        v,
        status=status,
        attempts=attempts[:PAGE_SIZE],
        counts=sorted(counts.items()),
        dcap=dcap_groups(CollateralStore(svc.db).list_items()),
        snp=snp_groups(kds.list_items()) if kds.available() else [],
        now=datetime.now(UTC),
        tee=tee or "",
        tees=[(name, tee_label(name)) for name in (*REGISTRY.names, *_PROTOCOLS)],
        outcome=outcome or "",
        tee_of=tee_of,
        tee_label=tee_label,
        kept=kept,
        may_refresh=v.can(PERMISSION),
        pcs_url=conf.pcs_url,
        kds_url=conf.kds_url,
        notice=notice,
        notes=list(notes),
        error=error,
    )


@router.get("/attestation")
def attestation_page(request: Request, tee: str | None = None, outcome: str | None = None) -> Response:
    return _attestation_page(request, viewer(request), tee=tee, outcome=outcome)


_Client = TypeVar("_Client", PcsClient, KdsClient)


def _audited(c: Caller, object_id: str, details: dict[str, Any]) -> Callable[[Any, Any], None]:
    """A refresh's ``then``: its ``collateral.refresh`` record, in the transaction that stores what it
    fetched, with ``details`` and what was added and already stored."""

    def record(s: Any, result: Any) -> None:
        audit.append(
            s,
            actor=c.actor,
            action="collateral.refresh",
            object_id=object_id,
            outcome="success",
            details={
                **details,
                "added": [i.label for i in result.added],
                "already_stored": len(result.already_stored),
            },
        )

    return record


def _refresh_from(
    make: type[_Client], source: str, ca_file: Path | None, run: Callable[[_Client], Refreshed[Any]]
) -> Refreshed[Any]:
    """``run`` with a client of ``source`` (the console's short retries and timeout); an unreachable
    source is a clear refusal naming it."""
    try:
        with make(source, ca_file=ca_file, retries=_RETRIES, timeout=_TIMEOUT) as client:
            return run(client)
    except httpx.TransportError as exc:
        raise unreachable(exc, source) from None


def _refresh_fmspc(request: Request, fmspc: str, c: Caller) -> Refreshed[Any]:
    svc = _svc(request)
    settings = svc.settings
    store = CollateralStore(svc.db)
    cached = {i.tee for i in store.list_items(kind="tcb_info", fmspc=fmspc)}
    tees: list[Tee] = [t for t in _DCAP_TEES if t in cached]
    if not tees:
        raise NotFound(f"no TCB Info is cached for FMSPC {fmspc}: nothing to refresh")
    source = settings.collateral.pcs_url
    if source is None:
        raise InvalidInput(
            "no PCS or PCCS is configured: set [collateral] pcs_url (e.g. https://api.trustedservices.intel.com)",
            field="pcs_url",
        )
    record = _audited(c, f"fmspc:{fmspc}", {"source": source, "fmspc": fmspc, "tees": tees})
    return _refresh_from(
        PcsClient,
        source,
        settings.collateral.ca_file,
        lambda client: refresh_fmspc(
            client,
            lambda: store,
            fmspc=fmspc,
            tees=tees,
            roots=collateral_roots(settings),
            then=record,
        ),
    )


def _refresh_product(request: Request, product: Product, c: Caller) -> Refreshed[Any]:
    svc = _svc(request)
    settings = svc.settings
    kds = KdsStore(svc.db)
    if not kds.available() or not kds.list_items(product=product):
        raise NotFound(f"nothing is cached for SEV-SNP {product}: nothing to refresh")
    source = settings.collateral.kds_url
    record = _audited(c, f"snp:{product}", {"source": source, "product": product})
    return _refresh_from(
        KdsClient,
        source,
        settings.collateral.ca_file,
        lambda client: refresh_snp(
            client,
            lambda: kds,
            SnpFetchPlan(products=(product,), reports=()),
            dev_roots=snp_dev_roots(configured_roots(settings)),
            cached=kds,
            then=record,
        ),
    )


@router.post("/collateral/refresh")
def collateral_refresh(request: Request) -> Response:
    """*Refresh now* for one FMSPC (``fmspc``) or one SEV-SNP product (``product``)."""
    v = viewer(request)
    svc = _svc(request)
    form = form_of(request).only({"fmspc", "product"})
    fmspc, product = form.get("fmspc"), form.get("product")

    def run(c: Caller) -> tuple[str, Refreshed[Any]]:
        if (fmspc is None) == (product is None):
            raise InvalidInput("give one FMSPC or one SEV-SNP product to refresh", field="fmspc")
        if svc.barrier.sealed:  # its audit record could not be written: refuse before fetching
            raise Sealed("the key store is sealed: unseal it to refresh the collateral cache")
        if fmspc is not None:
            if not _FMSPC.match(fmspc):
                raise InvalidInput("fmspc: 12 hex digits, e.g. 00806F050000", field="fmspc")
            return f"FMSPC {fmspc.upper()}", _refresh_fmspc(request, fmspc.upper(), c)
        chosen = next((p for p in PRODUCTS if p == product), None)
        if chosen is None:
            raise InvalidInput(f"product: one of {', '.join(PRODUCTS)}", field="product")
        return f"SEV-SNP {chosen}", _refresh_product(request, chosen, c)

    what = f"fmspc:{fmspc}" if fmspc else f"snp:{product}"
    try:
        name, done = act(request, v, "collateral.refresh", PERMISSION, run, object_id=what[:64])
    except Forbidden:
        raise
    except KeybrokerError as exc:  # audited; shown on the page it was asked from
        return _attestation_page(request, v, status=exc.status, error=f"{exc.title}: {exc.detail}")
    added, stored = len(done.result.added), len(done.result.already_stored)
    return _attestation_page(
        request,
        v,
        notice=f"{name} refreshed from {done.source.removeprefix('fetch:')}: {added} new, {stored} already cached",
        notes=done.notes,
    )
