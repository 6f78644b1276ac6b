"""``keybroker collateral``: import, list, export and fetch Intel DCAP collateral (local operator access).

Like ``keybroker audit``, these commands open the database directly (``--data-dir`` / ``--database``
/ ``--config``), so they work on an air-gapped host with the service stopped or running.

Exit codes: 0 done; 1 failed (collateral did not verify, nothing found, server answered 4xx);
2 usage (bad option, unreadable or unrecognised file); 3 the collateral source is unreachable
(network errors or 5xx through every retry); 4 its TLS certificate did not verify (``--ca-file``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, ParamSpec, TypeVar

import typer
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from keybroker.cli.common import (
    ConfigOpt,
    DatabaseOpt,
    DataDirOpt,
    console,
    err_console,
    handle_errors,
    open_existing_database,
)
from keybroker.collateral.fetch import FetchPlan, PcsClient, fetch_collateral
from keybroker.collateral.importers import bundle_document, read_file, write_bundle
from keybroker.collateral.items import Item, TrustedRoots
from keybroker.collateral.trust import DEV_PKI_DIR, collateral_roots, dev_root_path
from keybroker.config import Settings, load_settings
from keybroker.errors import InvalidInput, UntrustedCollateralRoot

if TYPE_CHECKING:  # the database layer loads on use: `keybroker --help` stays quick
    from keybroker.collateral.store import CollateralStore, ImportResult

app = typer.Typer(
    help="Intel DCAP collateral: import files, list, export offline bundles, fetch from a PCS/PCCS.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

P = ParamSpec("P")
R = TypeVar("R")
_FMSPC = re.compile(r"[0-9A-Fa-f]{12}")

TrustRootOpt = Annotated[
    Optional[list[Path]],  # noqa: UP045
    typer.Option(
        "--trust-root",
        help="Extra trusted root (PEM) besides Intel's and trust.dev_roots, e.g. <data-dir>/dev-pki/root.pem. Repeatable.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _settings(config: Path | None, data_dir: Path | None, database: str | None) -> Settings:
    return load_settings(config, None, data_dir=data_dir, database=database)


def _store(settings: Settings, *, create: bool = False, read_only: bool = False) -> CollateralStore:
    """Open (and migrate) the database; ``create``: make the data dir for a new SQLite database;
    ``read_only`` (list, export): only a database keybroker has run on, never created or migrated."""
    from keybroker.collateral.store import CollateralStore
    from keybroker.store.db import Database

    if read_only:
        return CollateralStore(open_existing_database(settings))
    if settings.database is None:
        if create:
            settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        elif not (settings.data_dir / "keybroker.db").exists():
            raise InvalidInput(
                f"no keybroker database in {settings.data_dir} (give --data-dir, --database or --config)",
                field="data_dir",
            )
    db = Database(settings.database_url)
    db.migrate()
    return CollateralStore(db)


def _roots(settings: Settings, paths: Sequence[Path] | None) -> TrustedRoots:
    """Intel's root, the server's (``collateral.trust``: trust.dev_roots, the dev PKI's in dev
    mode) and ``--trust-root``."""
    extra: list[x509.Certificate] = []
    for path in paths or ():
        try:
            extra.extend(x509.load_pem_x509_certificates(path.read_bytes()))
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"--trust-root {path}: not a readable PEM certificate ({exc})") from None
    return collateral_roots(settings, extra)


def _is_root(path: Path, exc: UntrustedCollateralRoot) -> bool:
    """Whether ``path`` holds the root that ``exc`` names (by its SHA-256; a CRL's by its name)."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    if exc.root_sha256 is not None:
        return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest() == exc.root_sha256
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return bool(names) and names[0].value == exc.root_name


def _suggest_trust_root(
    exc: UntrustedCollateralRoot, settings: Settings, near: Sequence[Path] = ()
) -> UntrustedCollateralRoot:
    """The same refusal, saying how to trust that root if it is meant to be: ``--trust-root`` with
    the file that holds it when one is at hand (a dev PKI's ``root.pem`` beside the imported file,
    or the data dir's dev PKI), else where a keybroker keeps its dev root."""
    for candidate in (*near, dev_root_path(settings)):
        if _is_root(candidate, exc):
            hint = f"it is the root in {candidate}: if you trust it, add --trust-root {candidate}"
            break
    else:
        hint = (
            f"if you trust {exc.root_name!r}, add --trust-root with its PEM file (a keybroker's dev "
            f"simulator root is <data-dir>/{DEV_PKI_DIR}/root.pem, e.g. data/{DEV_PKI_DIR}/root.pem)"
        )
    return UntrustedCollateralRoot(
        f"{exc.detail}; {hint}", root_sha256=exc.root_sha256, root_name=exc.root_name
    )


def _fmspc(value: str) -> str:
    if not _FMSPC.fullmatch(value):
        raise InvalidInput(f"--fmspc {value!r}: expected 12 hex digits, e.g. 00906ED50000", field="fmspc")
    return value.upper()


def _tees(value: str | None) -> tuple[Any, ...]:
    if value is None:
        return ("sgx", "tdx")
    if value not in ("sgx", "tdx"):
        raise InvalidInput(f"--tee {value!r}: expected sgx or tdx", field="tee")
    return (value,)


def _d(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M")


def _report(result: ImportResult, as_json: bool, notes: Sequence[str] = ()) -> None:
    if as_json:
        doc = {
            "added": [_brief(i) for i in result.added],
            "already_stored": [_brief(i) for i in result.already_stored],
            "notes": list(notes),
        }
        typer.echo(json.dumps(doc, indent=2))
        return
    table = Table("", "item", "issued", "next update", "root", "digest")
    for mark, items in (("+", result.added), ("=", result.already_stored)):
        for i in items:
            table.add_row(mark, i.label, _d(i.issue_date), _d(i.next_update), i.root_kind, i.digest[:12])
    console.print(table)
    for note in notes:
        console.print(f"note: {note}", highlight=False)
    console.print(f"{len(result.added)} added, {len(result.already_stored)} already stored")


def _brief(i: Item) -> dict[str, Any]:
    return {
        "kind": i.kind,
        "label": i.label,
        "tee": i.tee,
        "fmspc": i.fmspc,
        "pck_ca": i.pck_ca,
        "issue_date": i.issue_date.isoformat(),
        "next_update": i.next_update.isoformat(),
        "root": i.root_kind,
        "digest": i.digest,
    }


@app.command("import")
@handle_errors
def import_(
    files: Annotated[
        list[Path], typer.Argument(help="Corpus (QuoteCollateralV3), PCS-form or bundle JSON files.")
    ],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
    trust_root: TrustRootOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify collateral files and store them (all files in one transaction: all or nothing)."""
    settings = _settings(config, data_dir, database)
    roots = _roots(settings, trust_root)
    batches = []
    for path in files:
        try:
            batches.append((f"file:{path.name}", read_file(path, roots)))
        except UntrustedCollateralRoot as exc:
            raise _suggest_trust_root(exc, settings, near=[path.parent / "root.pem"]) from None
    _report(_store(settings, create=True).import_sources(batches), as_json)


@app.command("list")
@handle_errors
def list_(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
    fmspc: Annotated[Optional[str], typer.Option("--fmspc", help="Only this FMSPC's TCB Info.")] = None,  # noqa: UP045
    as_json: JsonOpt = False,
) -> None:
    """List stored collateral, history included (newest first; '*' marks what PCCS endpoints serve)."""
    store = _store(_settings(config, data_dir, database), read_only=True)
    rows = store.list_items(fmspc=_fmspc(fmspc) if fmspc else None)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    now = datetime.now(UTC)
    table = Table("", "id", "item", "issued", "next update", "state", "root", "source", "digest")
    served: dict[tuple[Any, ...], int] = {}
    for r in rows:  # newest first per group; Intel-rooted before dev-rooted, as the PCCS endpoints choose
        group = (r.kind, r.tee, r.fmspc, r.pck_ca)
        if group not in served or (r.root_kind == "intel" and served[group] < 0):
            served[group] = r.id if r.root_kind == "intel" else -r.id
    served_ids = {abs(v) for v in served.values()}
    for r in rows:
        state = "expired" if r.next_update < now else ("not yet valid" if r.issue_date > now else "valid")
        table.add_row(
            "*" if r.id in served_ids else "",
            str(r.id),
            r.label,
            _d(r.issue_date),
            _d(r.next_update),
            state,
            r.root_kind,
            r.source,
            r.digest[:12],
        )
    console.print(table)
    console.print(f"{len(rows)} items")


@app.command("export")
@handle_errors
def export(
    fmspc: Annotated[str, typer.Option("--fmspc", help="FMSPC (12 hex digits).")],
    out: Annotated[Path, typer.Option("--out", help="Bundle file to write.")],
    tee: Annotated[Optional[str], typer.Option("--tee", help="sgx or tdx (default: both).")] = None,  # noqa: UP045
    history: Annotated[bool, typer.Option("--history", help="Include every stored version.")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Write an offline bundle for an air-gapped site: TCB Info, QE/QVE identities, PCK CRLs, root CA CRL."""
    fmspc = _fmspc(fmspc)
    tees = _tees(tee)
    store = _store(_settings(config, data_dir, database), read_only=True)
    entries = store.export_items(fmspc=fmspc, tee=tees[0] if len(tees) == 1 else None, history=history)
    doc = bundle_document(
        entries, created_at=datetime.now(UTC), note=f"FMSPC {fmspc}, exported by keybroker collateral export"
    )
    try:
        write_bundle(out, doc)
    except OSError as exc:
        raise InvalidInput(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    console.print(f"wrote {len(entries)} items to {out}: " + ", ".join(sorted({e[0].label for e in entries})))


@app.command("fetch")
@handle_errors
def fetch(
    source: Annotated[
        str, typer.Option("--from", help="PCS/PCCS URL, e.g. https://api.trustedservices.intel.com")
    ],
    fmspc: Annotated[str, typer.Option("--fmspc", help="FMSPC (12 hex digits).")],
    tee: Annotated[Optional[str], typer.Option("--tee", help="sgx or tdx (default: both).")] = None,  # noqa: UP045
    ca_file: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--ca-file", help="CA bundle to trust for the source's TLS certificate (default: system)."
        ),
    ] = None,
    retries: Annotated[
        int, typer.Option("--retries", min=0, max=10, help="Retries on network errors and 5xx.")
    ] = 3,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
    trust_root: TrustRootOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fetch an FMSPC's collateral from Intel PCS or any PCCS (another keybroker too), verify it, store
    it: all of one root (the TCB Info's); a piece of another root is skipped with a note."""
    fmspc = _fmspc(fmspc)
    tees = _tees(tee)
    settings = _settings(config, data_dir, database)
    roots = _roots(settings, trust_root)
    plan = FetchPlan(fmspc, tees)
    with (
        PcsClient(source, ca_file=ca_file, retries=retries) as client,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
            disable=as_json,
        ) as progress,
    ):
        task = progress.add_task("fetching", total=len(plan.steps))
        started = False

        def step(description: str) -> None:
            nonlocal started
            if started:
                progress.advance(task)
            started = True
            progress.update(task, description=f"{client.base_url}: {description}")

        try:
            items, notes = fetch_collateral(client, fmspc=fmspc, tees=tees, roots=roots, step=step)
        except UntrustedCollateralRoot as exc:
            raise _suggest_trust_root(exc, settings) from None
        progress.update(task, completed=len(plan.steps))
    result = _store(settings, create=True).import_items(items, source=f"fetch:{client.base_url}")
    _report(result, as_json, notes)
