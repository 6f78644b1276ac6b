"""The KDS cache: verified SEV-SNP collateral (VCEKs, ASK/ASVK chains, ARK CRLs) in the database.

* :meth:`KdsStore.import_items` stores verified items in one transaction; a digest already stored
  is skipped (re-imports and concurrent imports are no-ops).
* :meth:`KdsStore.collateral_for` is what the SEV-SNP verifier asks: for (product, CHIP_ID,
  REPORTED_TCB, signing key) the VCEK of that chip at that TCB, the ASK+ARK that issued it (or,
  for a VLEK, the product's ASVK+ARK) and the ARK's CRLs. Each piece is the newest one valid at
  ``at`` (now by default); when none is valid then, the newest issued before it, else the newest,
  so that an expired cache gives the verifier's precise ``validity_window`` failure instead of a
  vague "not found". Chain and CRLs are those of the VCEK's own ASK and ARK, never another root's.
* :meth:`KdsStore.newest` answers the KDS endpoints: the newest piece, AMD-rooted before
  dev-rooted (a guest must never be handed a simulator's chain while AMD's is here).
* Every "not found" names what was asked and what is cached, and how to add it; a VCEK miss names
  only the TCBs cached for that same chip (the cache never lists the fleet's chip ids).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from threading import Lock
from typing import Any, Final, NamedTuple, cast

from sqlalchemy import Connection, DateTime, Select, and_, bindparam, case, func, inspect, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from keybroker.collateral.kds import (
    SIDES,
    SnpCollateral,
    SnpItem,
    SnpKind,
    hex_or_none,
    label,
    tcb_text,
)
from keybroker.config import Settings
from keybroker.errors import CollateralError, CollateralNotFound, Conflict, InvalidInput
from keybroker.store.db import Database
from keybroker.store.models import SnpCollateralItem as Row
from keybroker.tee.snp import certs
from keybroker.tee.snp.abi import PRODUCTS, Product, SigningKey
from keybroker.tee.snp.sources import (
    SnpCrlQuery,
    SnpCrls,
    SnpCrlSource,
    SnpEndorsements,
    SnpEndorsementSource,
    SnpPlatform,
)

__all__ = [
    "KdsImportResult",
    "KdsStore",
    "StoredSnpItem",
    "crl_source",
    "crl_source_for_cli",
    "endorsement_source",
    "endorsement_source_for_cli",
]

_SUMMARY_MAX: Final = 12
_FETCH: Final = "keybroker collateral fetch --snp"
#: The console's way to the same fetch.
_REFRESH: Final = "the console's Attestation page, Refresh now"


def _utc(value: datetime) -> datetime:
    """Aware UTC (SQLite hands back naive datetimes; every one stored is UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class StoredSnpItem:
    """A stored piece's metadata (no content): what ``collateral list`` shows."""

    id: int
    kind: str
    signing_key: str
    product: str
    hwid: str | None
    tcb: str | None
    digest: str
    valid_from: datetime
    valid_until: datetime
    root_kind: str
    ark_spki_sha256: str
    source: str
    imported_at: datetime

    @property
    def label(self) -> str:
        return label(self.kind, self.signing_key, self.product, hex_or_none(self.hwid), hex_or_none(self.tcb))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "tee": "snp",
            "label": self.label,
            "signing_key": self.signing_key,
            "product": self.product,
            "hwid": self.hwid,
            "tcb": self.tcb,
            "digest": self.digest,
            "valid_from": self.valid_from.isoformat(),
            "valid_until": self.valid_until.isoformat(),
            "root": self.root_kind,
            "ark_spki_sha256": self.ark_spki_sha256,
            "source": self.source,
            "imported_at": self.imported_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class KdsImportResult:
    added: tuple[SnpItem, ...]
    already_stored: tuple[SnpItem, ...]


def _row(item: SnpItem, source: str, now: datetime) -> Row:
    return Row(
        kind=item.kind,
        signing_key=item.signing_key,
        product=item.product,
        hwid=item.hwid.hex() if item.hwid is not None else None,
        tcb=item.tcb.hex() if item.tcb is not None else None,
        content=item.content,
        digest=item.digest,
        valid_from=_utc(item.valid_from),
        valid_until=_utc(item.valid_until),
        ark_spki_sha256=item.ark_spki_sha256,
        root_kind=item.root_kind,
        intermediate_sha256=item.intermediate_sha256,
        source=source[:512],
        imported_at=now,
    )


def _item(row: Row) -> SnpItem:
    """Rebuild an item from a row that was verified when it was imported."""
    return SnpItem(
        kind=cast(SnpKind, row.kind),
        signing_key=cast(SigningKey, row.signing_key),
        product=cast(Product, row.product),
        hwid=hex_or_none(row.hwid),
        tcb=hex_or_none(row.tcb),
        content=bytes(row.content),
        valid_from=_utc(row.valid_from),
        valid_until=_utc(row.valid_until),
        root_kind="amd" if row.root_kind == "amd" else "dev",
        ark_spki_sha256=row.ark_spki_sha256,
        intermediate_sha256=row.intermediate_sha256,
        digest=row.digest,
    )


def _stored(row: Row) -> StoredSnpItem:
    return StoredSnpItem(
        id=row.id,
        kind=row.kind,
        signing_key=row.signing_key,
        product=row.product,
        hwid=row.hwid,
        tcb=row.tcb,
        digest=row.digest,
        valid_from=_utc(row.valid_from),
        valid_until=_utc(row.valid_until),
        root_kind=row.root_kind,
        ark_spki_sha256=row.ark_spki_sha256,
        source=row.source,
        imported_at=_utc(row.imported_at),
    )


def _newest_first(q: Select[Row]) -> Select[Row]:
    """AMD-rooted first, then the newest: what the KDS endpoints serve."""
    return q.order_by(case((Row.root_kind == "amd", 0), else_=1), Row.valid_from.desc(), Row.id.desc()).limit(
        1
    )


class _Meta(NamedTuple):
    """A stored piece without its content: what the lookup decides on."""

    id: int
    product: str
    digest: str
    intermediate_sha256: str | None
    ark_spki_sha256: str
    root_kind: str
    valid_until: datetime


_META_COLUMNS: Final = (
    Row.id,
    Row.product,
    Row.digest,
    Row.intermediate_sha256,
    Row.ark_spki_sha256,
    Row.root_kind,
    Row.valid_until,
)
_ASSEMBLED_MAX: Final = 256
#: Assembled lookups by their pieces' digests: content-addressed, so shared by every store (and
#: database) in the process, and never stale (a new piece has a new digest).
_ASSEMBLED: OrderedDict[tuple[str, ...], SnpCollateral] = OrderedDict()
_ASSEMBLED_LOCK: Final = Lock()
#: CRL contents by digest (content-addressed as ``_ASSEMBLED``): ``crls_for`` runs on every
#: SEV-SNP verification and, once they are here, reads only the pieces' metadata.
_CRL_CONTENT: OrderedDict[str, bytes] = OrderedDict()


@functools.cache
def _pick_statement(
    filters: tuple[str, ...], amd_first: bool
) -> Select[int, str, str, str | None, str, str, datetime]:
    """The preferred-piece query for one filter shape, built once with bound parameters (SQLAlchemy
    then reuses its compiled form: a lookup stays a few fast indexed queries). ``hwids`` is an
    IN list; every other name an equality on that column."""
    q = select(*_META_COLUMNS)
    for name in filters:
        if name == "hwids":
            q = q.where(Row.hwid.in_(bindparam("hwids", expanding=True)))
        else:
            q = q.where(getattr(Row, name) == bindparam(name))
    order: list[Any] = []
    if amd_first:
        order.append(case((Row.root_kind == "amd", 0), else_=1))
    at = bindparam("at", type_=DateTime(timezone=True))
    order.append(
        case((and_(Row.valid_from <= at, Row.valid_until >= at), 0), (Row.valid_from <= at, 1), else_=2)
    )
    return q.order_by(*order, Row.valid_from.desc(), Row.id.desc()).limit(1)


def _pick(s: Connection, when: datetime, *, amd_first: bool = False, **values: Any) -> _Meta | None:
    """The piece to use at ``when`` among those matching ``values``: valid then first (AMD-rooted
    first with ``amd_first``), else issued before it, else the newest."""
    stmt = _pick_statement(tuple(sorted(values)), amd_first)
    found = s.execute(stmt, {**values, "at": when}).first()
    return None if found is None else _Meta(*found)


def _check_product(product: str | None) -> Product | None:
    if product is not None and product not in PRODUCTS:
        raise InvalidInput(f"product {product!r} is not Milan, Genoa or Turin", field="product")
    return product


class KdsStore:
    def __init__(self, db: Database, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.db = db
        self._clock = clock

    def available(self) -> bool:
        """Whether the database has the KDS cache's table (schema revision 0009): the read-only
        commands open a database as found, which may predate it until the server upgrades it."""
        return inspect(self.db.engine).has_table(Row.__tablename__)

    # --- writing -------------------------------------------------------------------------------

    def import_items(
        self,
        items: Iterable[SnpItem],
        *,
        source: str,
        then: Callable[[Session, KdsImportResult], None] | None = None,
    ) -> KdsImportResult:
        """Store verified items (one transaction); digests already stored are skipped. ``then``
        runs in that transaction with the result (an audit record: stored with it or not at all)."""
        return self.import_sources([(source, list(items))], then=then)

    def import_sources(
        self,
        batches: Sequence[tuple[str, Sequence[SnpItem]]],
        *,
        then: Callable[[Session, KdsImportResult], None] | None = None,
    ) -> KdsImportResult:
        """Store several sources' verified items in one transaction: all of them or none."""
        labelled: dict[str, tuple[SnpItem, str]] = {}
        for source, items in batches:
            for item in items:
                labelled.setdefault(item.digest, (item, source))
        for attempt in range(3):
            try:
                with self.db.session() as s:
                    digests = list(labelled)
                    existing: set[str] = set()
                    for i in range(0, len(digests), 500):
                        chunk = digests[i : i + 500]
                        existing.update(s.scalars(select(Row.digest).where(Row.digest.in_(chunk))))
                    now = self._clock()
                    new = [pair for digest, pair in labelled.items() if digest not in existing]
                    s.add_all(_row(item, source, now) for item, source in new)
                    result = KdsImportResult(
                        tuple(item for item, _ in new),
                        tuple(item for digest, (item, _) in labelled.items() if digest in existing),
                    )
                    if then is not None:
                        s.flush()
                        then(s, result)
                return result
            except IntegrityError:  # a concurrent import stored one of them first: look again
                if attempt == 2:
                    raise Conflict(
                        "SNP collateral import kept colliding with concurrent imports; retry"
                    ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    # --- reading -------------------------------------------------------------------------------

    def list_items(self, *, product: str | None = None) -> list[StoredSnpItem]:
        """Every stored piece (history included), newest first within each group."""
        q = select(Row)
        if product is not None:
            q = q.where(Row.product == _check_product(product))
        q = q.order_by(
            Row.product,
            case((Row.kind == "snp_cert_chain", 0), (Row.kind == "snp_crl", 1), else_=2),
            Row.signing_key,
            Row.hwid,
            Row.tcb,
            Row.valid_from.desc(),
            Row.id.desc(),
        )
        with self.db.session() as s:
            return [_stored(r) for r in s.scalars(q)]

    def chains(self, product: str | None = None) -> list[SnpItem]:
        """Every stored chain (to verify a VCEK imported without its chain)."""
        q = select(Row).where(Row.kind == "snp_cert_chain")
        if product is not None:
            q = q.where(Row.product == product)
        with self.db.session() as s:
            return [_item(r) for r in s.scalars(q.order_by(Row.valid_from.desc(), Row.id.desc()))]

    def has_vcek(self, product: Product, hwid: bytes, tcb: bytes) -> bool:
        """Whether a VCEK for this chip and TCB is cached (VCEKs never change: fetch skips them)."""
        q = select(Row.id).where(
            Row.kind == "snp_vcek", Row.product == product, Row.hwid == hwid.hex(), Row.tcb == tcb.hex()
        )
        with self.db.session() as s:
            return s.execute(q.limit(1)).first() is not None

    def newest(
        self,
        kind: SnpKind,
        *,
        product: Product,
        signing_key: SigningKey,
        hwid: bytes | None = None,
        tcb: bytes | None = None,
    ) -> SnpItem | None:
        """The newest stored piece, AMD-rooted first: what a KDS endpoint serves."""
        q = select(Row).where(Row.kind == kind, Row.product == product, Row.signing_key == signing_key)
        if hwid is not None:
            q = q.where(Row.hwid == hwid.hex())
        if tcb is not None:
            q = q.where(Row.tcb == tcb.hex())
        with self.db.session() as s:
            row = s.scalars(_newest_first(q)).first()
            return None if row is None else _item(row)

    def collateral_for(
        self,
        *,
        product: Product | None,
        chip_id: bytes,
        reported_tcb: bytes,
        signing_key: SigningKey,
        at: datetime | None = None,
        require_crl: bool = True,
    ) -> SnpCollateral:
        """What verifies a report from the cache (see the module docstring), or ``CollateralNotFound``.

        ``product``: the report's (CPUID, version 3 on), or None for a version 2 report: its VCEK
        is then found by chip and TCB alone (a VLEK lookup needs the product: the VLEK names it).
        ``chip_id``: CHIP_ID, 64 bytes (Turin: bytes 8-63 zero). ``reported_tcb``: REPORTED_TCB, 8
        bytes. ``require_crl``: a CRL of the chain's ARK for this side must be cached.

        The hot path of every SEV-SNP verification without certificates in the evidence: a few
        indexed queries for the pieces' metadata, and the result assembled once per set of pieces
        (content-addressed by their digests, shared by every store in the process).
        """
        product = _check_product(product)
        if len(chip_id) != 64:
            raise InvalidInput(f"chip_id is {len(chip_id)} bytes, CHIP_ID is 64", field="chip_id")
        if len(reported_tcb) != 8:
            raise InvalidInput(
                f"reported_tcb is {len(reported_tcb)} bytes, a TCB_VERSION is 8", field="reported_tcb"
            )
        if signing_key not in SIDES:
            raise InvalidInput(f"signing key {signing_key!r} is not vcek or vlek", field="signing_key")
        when = _utc(at) if at is not None else self._clock()
        with self.db.engine.connect() as s:
            vcek_meta: _Meta | None = None
            if signing_key == "vcek":
                vcek_meta = self._vcek(s, product, chip_id, reported_tcb, when)
                product = cast(Product, vcek_meta.product)
                chain_meta = _pick(
                    s,
                    when,
                    kind="snp_cert_chain",
                    product=product,
                    signing_key="vcek",
                    intermediate_sha256=vcek_meta.intermediate_sha256,
                    ark_spki_sha256=vcek_meta.ark_spki_sha256,
                )
                if chain_meta is None:
                    raise CollateralNotFound(
                        f"the VCEK for {product} chip {chip_id[:8].hex()}… at TCB "
                        f"{tcb_text(reported_tcb, product)} is cached, but not the ASK+ARK {product} that "
                        f"issued it (ASK sha256 {str(vcek_meta.intermediate_sha256)[:16]}…); cached chains: "
                        f"{self._summary(s, ('snp_cert_chain',))}. Add it with "
                        f"'{_FETCH} --product {product}' or 'keybroker collateral import CERT_CHAIN_FILE'",
                        asked={"product": product, "signing_key": "vcek", "what": "cert_chain"},
                    )
            else:
                if product is None:
                    raise InvalidInput(
                        "a VLEK lookup needs the product (the VLEK's issuer names it)", field="product"
                    )
                chain_meta = _pick(
                    s, when, kind="snp_cert_chain", product=product, signing_key="vlek", amd_first=True
                )
                if chain_meta is None:
                    raise CollateralNotFound(
                        f"no ASVK+ARK {product} cached (the chain of VLEK-signed reports); cached chains: "
                        f"{self._summary(s, ('snp_cert_chain',))}. Add it with '{_FETCH} --product {product}'",
                        asked={"product": product, "signing_key": "vlek", "what": "cert_chain"},
                    )
            crl_metas: list[_Meta] = []
            for side in (signing_key, "vlek" if signing_key == "vcek" else "vcek"):
                crl_meta = _pick(
                    s,
                    when,
                    kind="snp_crl",
                    product=product,
                    signing_key=side,
                    ark_spki_sha256=chain_meta.ark_spki_sha256,
                )
                if crl_meta is not None:
                    crl_metas.append(crl_meta)
                elif side == signing_key and require_crl:
                    raise CollateralNotFound(
                        f"the {label('snp_cert_chain', side, product, None, None)} chain is cached, but no "
                        f"{label('snp_crl', side, product, None, None)} of the same ARK (sha256 "
                        f"{chain_meta.ark_spki_sha256[:16]}…); cached CRLs: {self._summary(s, ('snp_crl',))}. "
                        f"Add it with '{_FETCH} --product {product}'",
                        asked={"product": product, "signing_key": side, "what": "crl"},
                    )
            metas = [m for m in (vcek_meta, chain_meta, *crl_metas) if m is not None]
            key = (signing_key, *(m.digest for m in metas))
            with _ASSEMBLED_LOCK:
                cached = _ASSEMBLED.get(key)
                if cached is not None:
                    _ASSEMBLED.move_to_end(key)
                    return cached
            contents = dict(
                s.execute(select(Row.id, Row.content).where(Row.id.in_([m.id for m in metas]))).tuples().all()
            )
        assembled = SnpCollateral(
            product=product,
            signing_key=signing_key,
            vcek=bytes(contents[vcek_meta.id]) if vcek_meta is not None else None,
            chain=certs.load_certificate_ders(bytes(contents[chain_meta.id]), field="cert_chain"),
            crls=tuple(bytes(contents[m.id]) for m in crl_metas),
            root_kind="amd" if chain_meta.root_kind == "amd" else "dev",
            ark_spki_sha256=chain_meta.ark_spki_sha256,
            digests=tuple(m.digest for m in metas),
            valid_until=min(_utc(m.valid_until) for m in metas),
        )
        with _ASSEMBLED_LOCK:
            _ASSEMBLED[key] = assembled
            while len(_ASSEMBLED) > _ASSEMBLED_MAX:
                _ASSEMBLED.popitem(last=False)
        return assembled

    def crls_for(
        self, *, product: Product, signing_key: SigningKey, ark_spki_sha256: str, at: datetime | None = None
    ) -> SnpCrls:
        """The cached CRLs of one ARK (by its key) for ``product``: the newest valid at ``at`` (else
        the newest issued before it, else the newest: an expired one gives the verifier's precise
        failure) of ``signing_key``'s side, and of the other side. Empty when none is cached."""
        _check_product(product)
        when = _utc(at) if at is not None else self._clock()
        sides = (signing_key, "vlek" if signing_key == "vcek" else "vcek")
        with self.db.engine.connect() as s:
            metas = [
                _pick(
                    s,
                    when,
                    kind="snp_crl",
                    product=product,
                    signing_key=side,
                    ark_spki_sha256=ark_spki_sha256,
                )
                for side in sides
            ]
            found = [m for m in metas if m is not None]
            with _ASSEMBLED_LOCK:
                contents = {m.id: _CRL_CONTENT[m.digest] for m in found if m.digest in _CRL_CONTENT}
            missing = [m.id for m in found if m.id not in contents]
            if missing:
                read = s.execute(select(Row.id, Row.content).where(Row.id.in_(missing))).tuples().all()
                contents.update((i, bytes(c)) for i, c in read)
            held = "" if metas[0] is not None else self._summary(s, ("snp_crl",))
        with _ASSEMBLED_LOCK:
            for m in found:
                _CRL_CONTENT[m.digest] = contents[m.id]
                _CRL_CONTENT.move_to_end(m.digest)
            while len(_CRL_CONTENT) > _ASSEMBLED_MAX:
                _CRL_CONTENT.popitem(last=False)
        own, other = (() if m is None else (contents[m.id],) for m in metas)
        return SnpCrls(
            side=own,
            other=other,
            held=f"cached CRLs: {held}" if held else "",
            fix=f"'{_FETCH} --product {product}' (or {_REFRESH}; air-gapped: 'keybroker collateral import')",
        )

    def _vcek(
        self, s: Connection, product: Product | None, chip_id: bytes, tcb: bytes, when: datetime
    ) -> _Meta:
        if not any(chip_id):
            raise CollateralNotFound(
                "the report's CHIP_ID is zero (masked by the host): its VCEK cannot be looked up by chip; "
                "the evidence must carry it (extended report / auxblob)",
                asked={"product": product, "signing_key": "vcek", "what": "vcek"},
            )
        hwids = [chip_id.hex()]
        if not any(chip_id[8:]) and product in (None, "Turin"):
            hwids.append(chip_id[:8].hex())  # Turin: the hwID is CHIP_ID[0:8]
        values: dict[str, Any] = {"kind": "snp_vcek", "hwids": hwids, "tcb": tcb.hex()}
        if product is not None:
            values["product"] = product
        row = _pick(s, when, amd_first=True, **values)
        if row is not None:
            return row
        where = product or "any product"
        others = s.execute(
            select(Row.product, Row.tcb)
            .where(Row.kind == "snp_vcek", Row.hwid.in_(hwids))
            .group_by(Row.product, Row.tcb)
            .order_by(Row.product, Row.tcb)
        ).all()
        count = s.scalar(select(func.count()).select_from(Row).where(Row.kind == "snp_vcek")) or 0
        same_chip = (
            "cached for this chip: "
            + "; ".join(f"{p} TCB {tcb_text(bytes.fromhex(t or ''), p)}" for p, t in others)
            if others
            else f"nothing cached for this chip ({count} VCEK(s) of other chips)"
        )
        shown = tcb_text(tcb, product) if product is not None else tcb.hex()
        product_flag = "" if product is not None else " --product PRODUCT"
        raise CollateralNotFound(
            f"no VCEK cached for {where} chip {chip_id[:8].hex()}… at TCB {shown}; {same_chip}. Add it with "
            f"'{_FETCH} --report REPORT{product_flag}' or 'keybroker collateral import VCEK_FILE'",
            asked={"product": product, "signing_key": "vcek", "what": "vcek", "tcb": tcb.hex()},
        )

    def export_items(
        self, *, products: Sequence[str] | None = None, history: bool = False
    ) -> list[tuple[SnpItem, str, datetime]]:
        """What an air-gapped site needs: chains, CRLs and VCEKs (of ``products``; all when None).
        The newest of each (chain and CRL per product, side and ARK; VCEK per chip and TCB) unless
        ``history``."""
        q = select(Row)
        if products is not None:
            for p in products:
                _check_product(p)
            q = q.where(Row.product.in_(list(products)))
        q = q.order_by(
            Row.product,
            case((Row.kind == "snp_cert_chain", 0), (Row.kind == "snp_crl", 1), else_=2),
            Row.signing_key,
            Row.hwid,
            Row.tcb,
            Row.valid_from.desc(),
            Row.id.desc(),
        )
        with self.db.session() as s:
            rows = list(s.scalars(q))
            if not rows:
                which = ", ".join(products) if products else "any product"
                raise CollateralNotFound(
                    f"no SEV-SNP collateral cached for {which}; cached: {self._summary(s)}",
                    asked={"products": list(products or [])},
                )
            if not history:
                newest: dict[tuple[Any, ...], Row] = {}
                for r in rows:
                    newest.setdefault((r.kind, r.product, r.signing_key, r.hwid, r.tcb, r.ark_spki_sha256), r)
                rows = list(newest.values())
            return [(_item(r), r.source, _utc(r.imported_at)) for r in rows]

    # --- diagnostics ---------------------------------------------------------------------------

    def not_found(
        self,
        kind: SnpKind,
        *,
        product: Product,
        signing_key: SigningKey,
        hwid: bytes | None = None,
        tcb: bytes | None = None,
    ) -> CollateralNotFound:
        """The 404 of a KDS endpoint: what was asked, what is cached, and how to get it."""
        with self.db.engine.connect() as s:
            if kind == "snp_vcek":
                assert hwid is not None and tcb is not None
                chip = hwid + bytes(64 - len(hwid))
                try:
                    self._vcek(s, product, chip, tcb, self._clock())
                except CollateralNotFound as exc:
                    return exc
                raise AssertionError("not_found called for a cached VCEK")  # pragma: no cover
            what = label(kind, signing_key, product, None, None)
            return CollateralNotFound(
                f"no {what} cached; cached {'chains' if kind == 'snp_cert_chain' else 'CRLs'}: "
                f"{self._summary(s, (kind,))}. Add it with '{_FETCH} --product {product}'",
                asked={"product": product, "signing_key": signing_key, "what": kind.removeprefix("snp_")},
            )

    def summary(self) -> str:
        with self.db.session() as s:
            return self._summary(s)

    def _summary(self, s: Connection | Session, kinds: Sequence[str] | None = None) -> str:
        """What is cached, compactly: 'ASK+ARK Milan until 2045-10-22, VCEK CRL Milan until ...'.
        VCEKs are counted per product, never listed (their hwIDs name the fleet's chips)."""
        q = select(
            Row.kind, Row.signing_key, Row.product, Row.root_kind, func.max(Row.valid_until), func.count()
        )
        if kinds is not None:
            q = q.where(Row.kind.in_(kinds))
        q = q.group_by(Row.kind, Row.signing_key, Row.product, Row.root_kind).order_by(
            Row.product, Row.kind, Row.signing_key, Row.root_kind
        )
        groups = s.execute(q).all()
        if not groups:
            return "none"
        parts = []
        for kind, side, product, root_kind, until, count in groups[:_SUMMARY_MAX]:
            dev = " (dev root)" if root_kind == "dev" else ""
            if kind == "snp_vcek":
                parts.append(f"{count} VCEK(s) of {product}{dev}")
            else:
                parts.append(f"{label(kind, side, product, None, None)}{dev} until {_utc(until):%Y-%m-%d}")
        more = f", and {len(groups) - _SUMMARY_MAX} more" if len(groups) > _SUMMARY_MAX else ""
        return ", ".join(parts) + more


def endorsement_source(store: KdsStore, *, require_crl: bool = True) -> SnpEndorsementSource:
    """The KDS cache as the SEV-SNP verifier's source (``EvidenceTrust.snp_endorsements``) for
    reports that carry no certificates: the cached VCEK (a VLEK must come with the evidence), its
    chain and the ARK's CRLs, verified by the verifier like anything else. ``require_crl``: a report
    is refused when no CRL of its ARK is cached (``keybroker collateral fetch --snp`` stores them)."""

    def lookup(platform: SnpPlatform) -> SnpEndorsements:
        try:
            found = store.collateral_for(
                product=platform.product,
                chip_id=platform.chip_id,
                reported_tcb=platform.reported_tcb,
                signing_key=platform.signing_key,
                at=platform.at,
                require_crl=require_crl,
            )
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or type(exc).__name__).splitlines()[0]
            raise CollateralError(f"the KDS cache is unavailable: {reason}") from None
        certificates = ((found.vcek,) if found.vcek is not None else ()) + found.chain
        return SnpEndorsements(certificates=certificates, crls=found.crls, origin="the KDS cache")

    return lookup


def crl_source(store: KdsStore) -> SnpCrlSource:
    """The KDS cache as the SEV-SNP verifier's trusted CRL source (``EvidenceTrust.snp_crls``):
    asked for every verified chain, whatever carried its certificates."""

    def lookup(query: SnpCrlQuery) -> SnpCrls:
        try:
            return store.crls_for(
                product=query.product,
                signing_key=query.signing_key,
                ark_spki_sha256=query.ark_spki_sha256,
                at=query.at,
            )
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or type(exc).__name__).splitlines()[0]
            raise CollateralError(f"the KDS cache is unavailable: {reason}") from None

    return lookup


def endorsement_source_for_cli(settings: Settings) -> SnpEndorsementSource:
    """The KDS cache of a keybroker's database behind ``keybroker evidence verify --tee snp`` without
    ``--cert``: opened (never created) on the first lookup, and asked as the server asks it (a CRL
    of the report's ARK required)."""
    lookups: list[SnpEndorsementSource] = []

    def lookup(platform: SnpPlatform) -> SnpEndorsements:
        if not lookups:
            if settings.database is None and not (settings.data_dir / "keybroker.db").exists():
                raise CollateralNotFound(
                    f"no keybroker database in {settings.data_dir} to look up the report's VCEK: give "
                    f"--cert, or --data-dir/--database of a keybroker whose KDS cache holds it ({_FETCH})"
                )
            store = KdsStore(Database(settings.database_url))
            if not store.available():
                raise CollateralNotFound(
                    f"the database of {settings.data_dir} has no KDS cache yet: start keybroker serve "
                    f"once to upgrade it, or give --cert"
                )
            lookups.append(endorsement_source(store))
        return lookups[0](platform)

    return lookup


def crl_source_for_cli(settings: Settings) -> SnpCrlSource | None:
    """The KDS cache of a keybroker's database as ``keybroker evidence verify``'s trusted CRL source,
    opened (never created) on the first lookup; None when the settings name no existing database
    (offline: a CRL of the chain's ARK must then be among the CRLs given or carried)."""
    if settings.database is None and not (settings.data_dir / "keybroker.db").exists():
        return None
    lookups: list[SnpCrlSource] = []

    def lookup(query: SnpCrlQuery) -> SnpCrls:
        if not lookups:
            store = KdsStore(Database(settings.database_url))
            if not store.available():
                return SnpCrls(
                    side=(),
                    held=f"the database of {settings.data_dir} has no KDS cache yet (start keybroker serve once)",
                    fix=f"'{_FETCH} --product {query.product}'",
                )
            lookups.append(crl_source(store))
        return lookups[0](query)

    return lookup
