"""The collateral store: verified PCCS pieces in the database, with history.

* :meth:`CollateralStore.import_items` stores verified items in one transaction; a digest already
  stored is skipped (re-imports and concurrent imports are no-ops).
* :meth:`CollateralStore.collateral_for` assembles a quote's collateral for (TEE, FMSPC, PCK CA):
  the TCB Info of that FMSPC, then the QE identity of that TEE, the PCK CRL of that CA and the
  root CA CRL, all under the TCB Info's root. Each piece is the newest one valid at ``at`` (now by
  default); when none is valid then, the newest issued before it, else the newest: an expired
  piece gives the verifier's precise ``validity_window`` failure instead of a vague 404.
* :meth:`CollateralStore.newest` answers the PCCS endpoints: the newest stored piece, Intel-rooted
  before dev-rooted (a DCAP host must never be handed a simulator's collateral when Intel's is here).
* Every "not found" names what was asked and what is cached (the most common PCCS complaint is an
  unexplained 404).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from threading import Lock
from typing import Any, Final

from sqlalchemy import Connection, DateTime, Select, and_, bindparam, case, func, or_, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from keybroker.collateral.items import (
    Item,
    Kind,
    RootKind,
    collateral_from_items,
    label,
    utc,
)
from keybroker.config import Settings
from keybroker.errors import CollateralError, CollateralNotFound, Conflict, InvalidInput
from keybroker.store.db import Database
from keybroker.store.models import CollateralItem as Row
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.sources import CollateralSource

__all__ = [
    "CollateralStore",
    "DbCollateralSource",
    "ImportResult",
    "StoredItem",
    "lookup_for_cli",
]

_TEES: Final = ("sgx", "tdx")
_CAS: Final = ("processor", "platform")
_ASSEMBLED_MAX: Final = 256
#: Assembled collateral by the digests of its four pieces: content-addressed, so shared by every
#: store object (and database) in the process; parsing a QuoteCollateral costs milliseconds.
_ASSEMBLED: OrderedDict[tuple[str, ...], QuoteCollateral] = OrderedDict()
_ASSEMBLED_LOCK: Final = Lock()
_SUMMARY_MAX: Final = 12
_PLURAL: Final = {
    "tcb_info": "TCB Info",
    "qe_identity": "identities",
    "qve_identity": "identities",
    "pck_crl": "PCK CRLs",
    "root_ca_crl": "root CA CRLs",
}


@dataclass(frozen=True, slots=True)
class StoredItem:
    """A stored piece's metadata (no bodies): what ``collateral list`` shows."""

    id: int
    kind: str
    tee: str | None
    fmspc: str | None
    pck_ca: str | None
    pce_id: str | None
    digest: str
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int | None
    root_kind: str
    root_sha256: str
    source: str
    imported_at: datetime

    @property
    def label(self) -> str:
        return label(self.kind, self.tee, self.fmspc, self.pck_ca)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "tee": self.tee,
            "fmspc": self.fmspc,
            "pck_ca": self.pck_ca,
            "pce_id": self.pce_id,
            "digest": self.digest,
            "issue_date": self.issue_date.isoformat(),
            "next_update": self.next_update.isoformat(),
            "tcb_evaluation_data_number": self.tcb_evaluation_data_number,
            "root": self.root_kind,
            "root_sha256": self.root_sha256,
            "source": self.source,
            "imported_at": self.imported_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class ImportResult:
    added: tuple[Item, ...]
    already_stored: tuple[Item, ...]


def _row(item: Item, source: str, now: datetime) -> Row:
    return Row(
        kind=item.kind,
        tee=item.tee,
        fmspc=item.fmspc,
        pck_ca=item.pck_ca,
        pce_id=item.pce_id,
        digest=item.digest,
        signed_text=item.signed_text,
        signature=item.signature,
        crl_der=item.crl_der,
        issuer_chain=item.issuer_chain,
        issue_date=utc(item.issue_date),
        next_update=utc(item.next_update),
        tcb_evaluation_data_number=item.tcb_evaluation_data_number,
        root_sha256=item.root_sha256,
        root_kind=item.root_kind,
        source=source[:512],
        imported_at=now,
    )


def _item(row: Any) -> Item:
    """Rebuild an item from a row (ORM or Core) that was verified when it was imported."""
    root_kind: RootKind = "intel" if row.root_kind == "intel" else "dev"
    return Item(
        kind=row.kind,
        tee=row.tee,
        fmspc=row.fmspc,
        pck_ca=row.pck_ca,
        pce_id=row.pce_id,
        signed_text=row.signed_text,
        signature=row.signature,
        crl_der=row.crl_der,
        issuer_chain=row.issuer_chain,
        issue_date=utc(row.issue_date),
        next_update=utc(row.next_update),
        tcb_evaluation_data_number=row.tcb_evaluation_data_number,
        root_sha256=row.root_sha256,
        root_kind=root_kind,
        digest=row.digest,
    )


_META = (
    Row.id,
    Row.kind,
    Row.tee,
    Row.fmspc,
    Row.pck_ca,
    Row.pce_id,
    Row.digest,
    Row.issue_date,
    Row.next_update,
    Row.tcb_evaluation_data_number,
    Row.root_kind,
    Row.root_sha256,
    Row.source,
    Row.imported_at,
)


def _stored(values: Sequence[Any]) -> StoredItem:
    (id_, kind, tee, fmspc, ca, pce, digest, issued, nxt, tcbeval, rkind, rsha, source, imported) = values
    return StoredItem(
        id_,
        kind,
        tee,
        fmspc,
        ca,
        pce,
        digest,
        utc(issued),
        utc(nxt),
        tcbeval,
        rkind,
        rsha,
        source,
        utc(imported),
    )


@functools.cache
def _pick_statement(filters: tuple[str, ...], with_at: bool, intel_first: bool) -> Select[int, str, str]:
    """The preferred-piece query for one filter shape, built once (bound parameters; SQLAlchemy then
    reuses the compiled form, which keeps a lookup to a few fast indexed queries)."""
    q = select(Row.id, Row.digest, Row.root_sha256).where(Row.kind == bindparam("kind"))
    for name in filters:
        q = q.where(getattr(Row, name) == bindparam(name))
    order: list[Any] = []
    if intel_first:
        order.append(case((Row.root_kind == "intel", 0), else_=1))
    if with_at:
        at = bindparam("at", type_=DateTime(timezone=True))
        order.append(
            case((and_(Row.issue_date <= at, Row.next_update >= at), 0), (Row.issue_date <= at, 1), else_=2)
        )
    order += [Row.issue_date.desc(), Row.id.desc()]
    return q.order_by(*order).limit(1)


class CollateralStore:
    def __init__(self, db: Database, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.db = db
        self._clock = clock

    # --- writing -------------------------------------------------------------------------------

    def import_items(
        self,
        items: Iterable[Item],
        *,
        source: str,
        then: Callable[[Session, ImportResult], None] | None = None,
    ) -> ImportResult:
        """Store verified items (one transaction); digests already stored are skipped. ``then``
        runs in that transaction with the result (an audit record: stored with it or not at all)."""
        return self.import_sources([(source, list(items))], then=then)

    def import_sources(
        self,
        batches: Sequence[tuple[str, Sequence[Item]]],
        *,
        then: Callable[[Session, ImportResult], None] | None = None,
    ) -> ImportResult:
        """Store several sources' verified items in one transaction: all of them or none."""
        labelled: dict[str, tuple[Item, str]] = {}
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
                    result = ImportResult(
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
                        "collateral import kept colliding with concurrent imports; retry"
                    ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    # --- reading -------------------------------------------------------------------------------

    def list_items(
        self, *, kind: str | None = None, tee: str | None = None, fmspc: str | None = None
    ) -> list[StoredItem]:
        """Every stored piece (history included), newest first within each kind."""
        q = select(*_META)
        if kind is not None:
            q = q.where(Row.kind == kind)
        if tee is not None:
            q = q.where(Row.tee == tee)
        if fmspc is not None:
            q = q.where(Row.fmspc == fmspc.upper())
        q = q.order_by(Row.kind, Row.tee, Row.fmspc, Row.pck_ca, Row.issue_date.desc(), Row.id.desc())
        with self.db.session() as s:
            return [_stored(r) for r in s.execute(q).all()]

    def _pick(
        self,
        s: Connection | Session,
        kind: Kind,
        *,
        tee: str | None = None,
        fmspc: str | None = None,
        pck_ca: str | None = None,
        root: str | None = None,
        at: datetime | None = None,
        intel_first: bool = False,
    ) -> tuple[int, str, str] | None:
        """(id, digest, root_sha256) of the preferred piece, or None."""
        values: dict[str, Any] = {"kind": kind}
        for name, value in (("tee", tee), ("fmspc", fmspc), ("pck_ca", pck_ca), ("root_sha256", root)):
            if value is not None:
                values[name] = value
        if at is not None:
            values["at"] = at
        stmt = _pick_statement(
            tuple(k for k in values if k not in ("kind", "at")), at is not None, intel_first
        )
        found = s.execute(stmt, values).first()
        return None if found is None else (int(found[0]), str(found[1]), str(found[2]))

    def newest(
        self, kind: Kind, *, tee: str | None = None, fmspc: str | None = None, pck_ca: str | None = None
    ) -> Item | None:
        """The newest stored piece (Intel-rooted first): what a PCCS endpoint serves."""
        with self.db.engine.connect() as conn:
            picked = self._pick(
                conn, kind, tee=tee, fmspc=fmspc.upper() if fmspc else None, pck_ca=pck_ca, intel_first=True
            )
            if picked is None:
                return None
            row = conn.execute(select(Row.__table__).where(Row.id == picked[0])).one()
            return _item(row)

    def collateral_for(
        self, *, tee: str, fmspc: str, pck_ca: str, at: datetime | None = None
    ) -> QuoteCollateral:
        """A quote's collateral assembled from stored pieces (see the module docstring)."""
        if tee not in _TEES:
            raise InvalidInput(f"tee {tee!r} is not sgx or tdx", field="tee")
        if pck_ca not in _CAS:
            raise InvalidInput(f"PCK CA {pck_ca!r} is not processor or platform", field="pck_ca")
        fmspc = fmspc.upper()
        when = utc(at) if at is not None else self._clock()
        # Core connection, not an ORM session: four indexed queries, the hot path of every verification.
        with self.db.engine.connect() as s:
            tcb = self._pick(s, "tcb_info", tee=tee, fmspc=fmspc, at=when)
            if tcb is None:
                raise self._not_found(
                    s, "tcb_info", tee=tee, fmspc=fmspc, pck_ca=pck_ca, context=f" (quote's PCK CA: {pck_ca})"
                )
            root = tcb[2]
            qe = self._pick(s, "qe_identity", tee=tee, root=root, at=when)
            crl = self._pick(s, "pck_crl", pck_ca=pck_ca, root=root, at=when)
            root_crl = self._pick(s, "root_ca_crl", root=root, at=when)
            missing = [
                name
                for name, got in (
                    ("TD_QE identity" if tee == "tdx" else "QE identity", qe),
                    (f"PCK CRL of the {pck_ca} CA", crl),
                    ("root CA CRL", root_crl),
                )
                if got is None
            ]
            if missing or qe is None or crl is None or root_crl is None:
                raise CollateralNotFound(
                    f"TCB Info for {tee.upper()} FMSPC {fmspc} is cached, but no {', no '.join(missing)} "
                    f"under the same root (sha256 {root[:16]}…); cached: {self._summary(s)}. "
                    "Add it with 'keybroker collateral import FILE' or 'keybroker collateral fetch'",
                    asked={"tee": tee, "fmspc": fmspc, "pck_ca": pck_ca},
                )
        key = (tcb[1], qe[1], crl[1], root_crl[1])
        with _ASSEMBLED_LOCK:
            cached = _ASSEMBLED.get(key)
            if cached is not None:
                _ASSEMBLED.move_to_end(key)
                return cached
        with self.db.session() as session:
            rows = [session.get(Row, picked[0]) for picked in (tcb, qe, crl, root_crl)]
        assert all(r is not None for r in rows)
        collateral = collateral_from_items(*(_item(r) for r in rows if r is not None))
        with _ASSEMBLED_LOCK:
            _ASSEMBLED[key] = collateral
            while len(_ASSEMBLED) > _ASSEMBLED_MAX:
                _ASSEMBLED.popitem(last=False)
        return collateral

    def export_items(
        self, *, fmspc: str, tee: str | None = None, history: bool = False
    ) -> list[tuple[Item, str, datetime]]:
        """What an air-gapped site needs for ``fmspc``: its TCB Info, the QE (and QVE) identities,
        both PCK CRLs and the root CA CRL under the same roots. Newest of each unless ``history``."""
        fmspc = fmspc.upper()
        with self.db.session() as s:
            q = select(Row).where(Row.kind == "tcb_info", Row.fmspc == fmspc)
            if tee is not None:
                q = q.where(Row.tee == tee)
            tcb_rows = list(s.scalars(q.order_by(Row.issue_date.desc(), Row.id.desc())))
            if not tcb_rows:
                what = f"{tee.upper()} " if tee else ""
                raise CollateralNotFound(
                    f"no {what}TCB Info cached for FMSPC {fmspc}; cached TCB Info: "
                    f"{self._summary(s, ('tcb_info',))}",
                    asked={"tee": tee, "fmspc": fmspc},
                )
            roots = {r.root_sha256 for r in tcb_rows}
            tees = {r.tee for r in tcb_rows}
            kinds = [
                and_(Row.kind == "qe_identity", Row.tee.in_(tees)),
                Row.kind.in_(("pck_crl", "root_ca_crl")),
            ]
            if "sgx" in tees:
                kinds.append(Row.kind == "qve_identity")
            others = s.scalars(
                select(Row)
                .where(Row.root_sha256.in_(roots), or_(*kinds))
                .order_by(Row.kind, Row.issue_date.desc(), Row.id.desc())
            )
            rows = [*tcb_rows, *others]
            if not history:
                newest: dict[tuple[Any, ...], Row] = {}
                for r in rows:
                    newest.setdefault((r.kind, r.tee, r.fmspc, r.pck_ca, r.root_sha256), r)
                rows = list(newest.values())
            return [(_item(r), r.source, utc(r.imported_at)) for r in rows]

    # --- diagnostics ---------------------------------------------------------------------------

    def summary(self, kinds: Sequence[str] | None = None) -> str:
        with self.db.session() as s:
            return self._summary(s, kinds)

    def not_found(
        self, kind: Kind, *, tee: str | None = None, fmspc: str | None = None, pck_ca: str | None = None
    ) -> CollateralNotFound:
        """The 404 for a PCCS endpoint: what was asked, what is cached, and how to get it."""
        with self.db.session() as s:
            return self._not_found(s, kind, tee=tee, fmspc=fmspc, pck_ca=pck_ca)

    def _not_found(
        self,
        s: Connection | Session,
        kind: Kind,
        *,
        tee: str | None = None,
        fmspc: str | None = None,
        pck_ca: str | None = None,
        context: str = "",
    ) -> CollateralNotFound:
        asked = {k: v for k, v in (("tee", tee), ("fmspc", fmspc), ("pck_ca", pck_ca)) if v is not None}
        hint = ""
        if kind == "tcb_info":
            what = f"{str(tee).upper()} TCB Info for FMSPC {fmspc}"
            other = "tdx" if tee == "sgx" else "sgx"
            if self._pick(s, "tcb_info", tee=other, fmspc=fmspc) is not None:
                hint = f" (it is cached as {other.upper()} TCB Info: /{other}/certification/v4/tcb)"
            fetch = f"keybroker collateral fetch --fmspc {fmspc}"
        elif kind == "pck_crl":
            what = f"PCK CRL of the {pck_ca} CA"
            fetch = "keybroker collateral fetch"
        else:
            what = label(kind, tee, None, None)
            fetch = "keybroker collateral fetch"
        kinds = ("qe_identity", "qve_identity") if kind in ("qe_identity", "qve_identity") else (kind,)
        return CollateralNotFound(
            f"no {what} cached{context}{hint}; cached {_PLURAL[kind]}: {self._summary(s, kinds)}. "
            f"Add it with 'keybroker collateral import FILE' or '{fetch}'",
            asked=asked,
        )

    def _summary(self, s: Connection | Session, kinds: Sequence[str] | None = None) -> str:
        """What is cached, compactly: 'TCB Info SGX 00606A000000 until 2025-09-14; ...'."""
        q = select(Row.kind, Row.tee, Row.fmspc, Row.pck_ca, Row.root_kind, func.max(Row.next_update))
        if kinds is not None:
            q = q.where(Row.kind.in_(kinds))
        q = q.group_by(Row.kind, Row.tee, Row.fmspc, Row.pck_ca, Row.root_kind).order_by(
            case((Row.kind == "tcb_info", 0), else_=1), Row.kind, Row.tee, Row.fmspc, Row.pck_ca
        )
        groups = s.execute(q).all()
        if not groups:
            return "none"
        parts = []
        for kind, tee, fmspc, ca, root_kind, next_update in groups[:_SUMMARY_MAX]:
            dev = " (dev root)" if root_kind == "dev" else ""
            name = f"{str(tee).upper()} {fmspc}" if kinds == ("tcb_info",) else label(kind, tee, fmspc, ca)
            parts.append(f"{name}{dev} until {utc(next_update):%Y-%m-%d}")
        more = f", and {len(groups) - _SUMMARY_MAX} more" if len(groups) > _SUMMARY_MAX else ""
        return ", ".join(parts) + more


class DbCollateralSource:
    """``CollateralSource`` over the store: for the verifier (``ChainedCollateral``) and the CLI.

    ``at``: pick the pieces valid at that time (``evidence verify --at``); None: now. A lookup's
    own ``at`` (the verification time the verifier passes) comes first.
    """

    def __init__(self, store: CollateralStore | Database, *, at: datetime | None = None) -> None:
        self.store = store if isinstance(store, CollateralStore) else CollateralStore(store)
        self.at = at

    def collateral_for(
        self, *, tee: str, fmspc: str, pck_ca: str, at: datetime | None = None
    ) -> QuoteCollateral:
        return self.store.collateral_for(tee=tee, fmspc=fmspc, pck_ca=pck_ca, at=at or self.at)


class _CliSource:
    """``lookup_for_cli``'s source: opens the database on first use, says so when there is none."""

    def __init__(self, settings: Settings, at: datetime | None) -> None:
        self._settings = settings
        self._at = at
        self._source: DbCollateralSource | None = None

    def collateral_for(
        self, *, tee: str, fmspc: str, pck_ca: str, at: datetime | None = None
    ) -> QuoteCollateral:
        if self._source is None:
            settings = self._settings
            if settings.database is None and not (settings.data_dir / "keybroker.db").exists():
                raise CollateralNotFound(
                    f"no keybroker database in {settings.data_dir} to look up {tee.upper()} FMSPC "
                    f"{fmspc.upper()}: give --collateral, or --data-dir/--database of a keybroker with "
                    "collateral ('keybroker collateral import/fetch')",
                    asked={"tee": tee, "fmspc": fmspc.upper(), "pck_ca": pck_ca},
                )
            db = Database(settings.database_url)
            try:
                db.migrate()
            except SQLAlchemyError as exc:
                reason = str(getattr(exc, "orig", None) or type(exc).__name__).splitlines()[0]
                raise CollateralError(f"the collateral store is unavailable: {reason}") from None
            self._source = DbCollateralSource(CollateralStore(db), at=self._at)
        try:
            return self._source.collateral_for(tee=tee, fmspc=fmspc, pck_ca=pck_ca, at=at)
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or type(exc).__name__).splitlines()[0]
            raise CollateralError(f"the collateral store is unavailable: {reason}") from None


def lookup_for_cli(settings: Settings, *, at: datetime | None = None) -> CollateralSource:
    """The store behind ``keybroker evidence verify`` when no ``--collateral`` is given.

    Local operator access (data dir / database URL, like ``keybroker audit``). The database is
    opened (and its schema brought up to date) on the first lookup; every failure is a
    ``CollateralError`` (``CollateralNotFound`` naming the FMSPC asked and what is cached).
    ``at``: choose the collateral valid at the verification time (``--at``).
    """
    return _CliSource(settings, at)
