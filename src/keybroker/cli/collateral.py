"""``keybroker collateral``: import, list, export and fetch Intel DCAP collateral and AMD SEV-SNP
collateral (the KDS cache: ``--snp``; the SNP half is in ``cli.collateral_snp``), local operator access.

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
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, ParamSpec, TypeVar

import typer
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from keybroker.cli import collateral_snp as snp
from keybroker.cli.common import (
    ConfigOpt,
    DatabaseOpt,
    DataDirOpt,
    console,
    err_console,
    handle_errors,
    open_existing_database,
)
from keybroker.collateral.fetch import FetchPlan, PcsClient
from keybroker.collateral.importers import bundle_document, items_from_document, read_file, write_bundle
from keybroker.collateral.items import Item, TrustedRoots
from keybroker.collateral.kds_fetch import KdsClient, SnpFetchPlan
from keybroker.collateral.refresh import refresh_fmspc, refresh_snp
from keybroker.collateral.trust import DEV_PKI_DIR, collateral_roots, dev_root_path
from keybroker.config import Settings, load_settings
from keybroker.errors import CollateralError, InvalidInput, UntrustedCollateralRoot

if TYPE_CHECKING:  # the database layer loads on use: `keybroker --help` stays quick
    from keybroker.collateral.kds_store import KdsImportResult, KdsStore
    from keybroker.collateral.store import CollateralStore, ImportResult

app = typer.Typer(
    help="Intel DCAP and AMD SEV-SNP collateral: import files, list, export offline bundles, fetch from a "
    "PCS/PCCS or a KDS (--snp).",
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
SnpOpt = Annotated[bool, typer.Option("--snp", help="AMD SEV-SNP collateral (the KDS cache).")]
ProductOpt = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option("--product", help="SEV-SNP product: Milan, Genoa or Turin. Repeatable."),
]


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


def _kds_store(store: CollateralStore) -> KdsStore:
    from keybroker.collateral.kds_store import KdsStore

    return KdsStore(store.db)


def _kds_available(kds: KdsStore, *, asked: bool) -> bool:
    """Whether the database has the KDS cache; a database that predates it (the server not yet
    restarted on this version) lists its Intel collateral, and says so when SEV-SNP's is asked for."""
    if kds.available():
        return True
    if asked:
        raise InvalidInput(
            "this database predates the SEV-SNP KDS cache (schema revision 0009): start keybroker serve "
            "on it once, or run 'keybroker collateral import' or 'fetch', to upgrade it",
            field="database",
        )
    return False


def _extra_roots(paths: Sequence[Path] | None) -> list[x509.Certificate]:
    extra: list[x509.Certificate] = []
    for path in paths or ():
        try:
            extra.extend(x509.load_pem_x509_certificates(path.read_bytes()))
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"--trust-root {path}: not a readable PEM certificate ({exc})") from None
    return extra


def _roots(settings: Settings, paths: Sequence[Path] | None) -> TrustedRoots:
    """Intel's root, the server's (``collateral.trust``: trust.dev_roots, the dev PKI's in dev
    mode) and ``--trust-root``."""
    return collateral_roots(settings, _extra_roots(paths))


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


def _report(
    result: ImportResult | None,
    as_json: bool,
    notes: Sequence[str] = (),
    snp_result: KdsImportResult | None = None,
) -> None:
    added: list[dict[str, Any]] = [_brief(i) for i in result.added] if result else []
    stored: list[dict[str, Any]] = [_brief(i) for i in result.already_stored] if result else []
    if snp_result is not None:
        added += [snp.snp_brief(i) for i in snp_result.added]
        stored += [snp.snp_brief(i) for i in snp_result.already_stored]
    if as_json:
        doc = {"added": added, "already_stored": stored, "notes": list(notes)}
        typer.echo(json.dumps(doc, indent=2))
        return
    table = Table("", "item", "issued", "next update", "root", "digest")
    if result is not None:
        for mark, items in (("+", result.added), ("=", result.already_stored)):
            for i in items:
                table.add_row(mark, i.label, _d(i.issue_date), _d(i.next_update), i.root_kind, i.digest[:12])
    if snp_result is not None:
        snp.print_snp_import(snp_result, table)
    console.print(table)
    for note in notes:
        console.print(f"note: {note}", highlight=False, markup=False)  # a server's words, not markup
    console.print(f"{len(added)} added, {len(stored)} already stored")


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
        list[Path],
        typer.Argument(
            help="Corpus (QuoteCollateralV3), PCS-form or bundle JSON files; AMD KDS files (a cert_chain, "
            "a VCEK, a CRL with --crl-for)."
        ),
    ],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
    trust_root: TrustRootOpt = None,
    crl_for: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--crl-for",
            help="vcek or vlek: which KDS CRL (/vcek/v1/{P}/crl or /vlek/v1/{P}/crl) an AMD CRL file is.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify collateral files and store them (every file verified before anything is stored)."""
    settings = _settings(config, data_dir, database)
    extra = _extra_roots(trust_root)
    roots = collateral_roots(settings, extra)
    side = snp.parse_crl_for(crl_for)
    opened: list[CollateralStore] = []

    def store() -> CollateralStore:
        if not opened:
            opened.append(_store(settings, create=True))
        return opened[0]

    def read_intel(path: Path) -> list[Item]:
        try:
            return read_file(path, roots)
        except UntrustedCollateralRoot as exc:
            raise _suggest_trust_root(exc, settings, near=[path.parent / "root.pem"]) from None

    def read_intel_document(doc: dict[str, Any], path: Path) -> list[Item]:
        try:
            return items_from_document(doc, roots)
        except UntrustedCollateralRoot as exc:
            raise _suggest_trust_root(
                UntrustedCollateralRoot(
                    f"{path}: {exc.detail}", root_sha256=exc.root_sha256, root_name=exc.root_name
                ),
                settings,
                near=[path.parent / "root.pem"],
            ) from None
        except CollateralError as exc:
            raise CollateralError(f"{path}: {exc.detail}") from None

    plan = snp.plan_import(
        files,
        read_intel=read_intel,
        read_intel_document=read_intel_document,
        snp_dev=snp.snp_roots(settings, extra),
        stored_chains=lambda: _kds_store(store()).chains(),
        crl_for=side,
    )
    # Everything verified: now stored, Intel's pieces in one transaction and SEV-SNP's in one.
    result = store().import_sources(plan.intel) if plan.intel else None
    snp_result = _kds_store(store()).import_sources(plan.snp) if plan.snp else None
    _report(result, as_json, snp_result=snp_result)


@app.command("list")
@handle_errors
def list_(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
    fmspc: Annotated[Optional[str], typer.Option("--fmspc", help="Only this FMSPC's TCB Info.")] = None,  # noqa: UP045
    snp_only: SnpOpt = False,
    product: ProductOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List stored collateral, history included (newest first; '*' marks what the PCCS and KDS
    endpoints serve). Intel's and SEV-SNP's; --fmspc: Intel's only, --snp or --product: SEV-SNP's only."""
    products = snp.parse_products(product)
    if fmspc and (snp_only or products):
        raise InvalidInput(
            "--fmspc lists Intel collateral, --snp and --product SEV-SNP's: give one", field="fmspc"
        )
    store = _store(_settings(config, data_dir, database), read_only=True)
    want_intel = not (snp_only or products)
    want_snp = not fmspc
    rows = store.list_items(fmspc=_fmspc(fmspc) if fmspc else None) if want_intel else []
    snp_rows = []
    kds = _kds_store(store)
    if want_snp and _kds_available(kds, asked=snp_only or bool(products)):
        for p in products or (None,):
            snp_rows += kds.list_items(product=p)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in rows] + [r.to_dict() for r in snp_rows], indent=2))
        return
    if want_intel and (rows or not snp_rows):
        _print_intel_list(rows)
    if snp_rows or not want_intel:
        snp.print_snp_list(snp_rows)


def _print_intel_list(rows: Sequence[Any]) -> None:
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
    out: Annotated[Path, typer.Option("--out", help="Bundle file to write.")],
    fmspc: Annotated[Optional[str], typer.Option("--fmspc", help="FMSPC (12 hex digits).")] = None,  # noqa: UP045
    tee: Annotated[Optional[str], typer.Option("--tee", help="sgx or tdx (default: both).")] = None,  # noqa: UP045
    snp_too: SnpOpt = False,
    product: ProductOpt = None,
    history: Annotated[bool, typer.Option("--history", help="Include every stored version.")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Write an offline bundle for an air-gapped site: an FMSPC's TCB Info, QE/QVE identities, PCK CRLs
    and root CA CRL (--fmspc); SEV-SNP chains, CRLs and VCEKs (--snp, all products unless --product).
    Both in one bundle when both are given."""
    products = snp.parse_products(product)
    want_snp = snp_too or bool(products)
    if fmspc is None and not want_snp:
        raise InvalidInput(
            "give --fmspc (Intel collateral) or --snp (SEV-SNP collateral), or both", field="fmspc"
        )
    if fmspc is None and tee is not None:
        raise InvalidInput("--tee goes with --fmspc", field="tee")
    tees = _tees(tee)
    fmspc = _fmspc(fmspc) if fmspc is not None else None
    store = _store(_settings(config, data_dir, database), read_only=True)
    entries: list[tuple[Item, str, datetime]] = []
    notes = []
    if fmspc is not None:
        entries = store.export_items(fmspc=fmspc, tee=tees[0] if len(tees) == 1 else None, history=history)
        notes.append(f"FMSPC {fmspc}")
    doc = bundle_document(entries, created_at=datetime.now(UTC))
    labels = [e[0].label for e in entries]
    if want_snp:
        kds = _kds_store(store)
        _kds_available(kds, asked=True)
        labels += snp.add_snp_bundle_items(doc, kds, products=products, history=history)
        notes.append(f"SEV-SNP {', '.join(products) if products else 'all products'}")
    doc["note"] = f"{'; '.join(notes)}, exported by keybroker collateral export"
    doc["items"] = doc.pop("items")  # after the note, as bundle_document writes it
    try:
        write_bundle(out, doc)
    except OSError as exc:
        raise InvalidInput(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    console.print(f"wrote {len(labels)} items to {out}: " + ", ".join(sorted(set(labels))))


@app.command("fetch")
@handle_errors
def fetch(
    source: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--from",
            help="PCS/PCCS URL, e.g. https://api.trustedservices.intel.com; with --snp a KDS URL "
            "(default: collateral.kds_url, AMD's https://kdsintf.amd.com).",
        ),
    ] = None,
    fmspc: Annotated[Optional[str], typer.Option("--fmspc", help="FMSPC (12 hex digits).")] = None,  # noqa: UP045
    tee: Annotated[Optional[str], typer.Option("--tee", help="sgx or tdx (default: both).")] = None,  # noqa: UP045
    snp_kds: SnpOpt = False,
    product: ProductOpt = None,
    report: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Option(
            "--report",
            help="With --snp: an SEV-SNP report (binary or hex) whose VCEK (by CHIP_ID and REPORTED_TCB), "
            "chain and CRL to fetch. Repeatable.",
        ),
    ] = None,
    ca_file: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--ca-file", help="CA bundle to trust for the source's TLS certificate (default: system)."
        ),
    ] = None,
    retries: Annotated[
        int, typer.Option("--retries", min=0, max=10, help="Retries on network errors, 5xx and 429.")
    ] = 3,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
    trust_root: TrustRootOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fetch an FMSPC's collateral from Intel PCS or any PCCS (another keybroker too), verify it, store
    it: all of one root (the TCB Info's); a piece of another root is skipped with a note. With --snp:
    SEV-SNP chains and CRLs (of --product, of the reports' products, else of every product) and the
    VCEKs of --report from AMD's KDS or any KDS-compatible service, verified, stored."""
    settings = _settings(config, data_dir, database)
    if snp_kds or product or report:
        if fmspc is not None or tee is not None:
            raise InvalidInput(
                "--fmspc and --tee are for Intel collateral; --snp fetches SEV-SNP's", field="fmspc"
            )
        if not snp_kds:
            raise InvalidInput("--product and --report go with --snp", field="snp")
        _fetch_snp(
            settings,
            source or settings.collateral.kds_url,
            products=snp.parse_products(product),
            reports=report or [],
            ca_file=ca_file or (settings.collateral.ca_file if source is None else None),
            retries=retries,
            trust_root=trust_root,
            as_json=as_json,
        )
        return
    if source is None and settings.collateral.pcs_url is None:
        raise InvalidInput(
            "--from is required: a PCS/PCCS URL (or collateral.pcs_url; --snp for AMD's KDS)", field="from"
        )
    if fmspc is None:
        raise InvalidInput("--fmspc is required (or --snp for SEV-SNP collateral)", field="fmspc")
    fmspc = _fmspc(fmspc)
    tees = _tees(tee)
    roots = _roots(settings, trust_root)
    plan = FetchPlan(fmspc, tees)
    if source is None:  # the configured source, with its configured CA
        source, ca_file = settings.collateral.pcs_url, ca_file or settings.collateral.ca_file
    assert source is not None
    with (
        PcsClient(source, ca_file=ca_file, retries=retries) as client,
        _progress(as_json) as progress,
    ):
        task = progress.add_task("fetching", total=len(plan.steps))
        step = _stepper(progress, task, client.base_url)
        try:
            done = refresh_fmspc(
                client,
                lambda: _store(settings, create=True),
                fmspc=fmspc,
                tees=tees,
                roots=roots,
                step=step,
            )
        except UntrustedCollateralRoot as exc:
            raise _suggest_trust_root(exc, settings) from None
        progress.update(task, completed=len(plan.steps))
    _report(done.result, as_json, done.notes)


def _progress(as_json: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=as_json,
    )


def _stepper(progress: Progress, task: Any, base_url: str) -> Callable[[str], None]:
    started = False

    def step(description: str) -> None:
        nonlocal started
        if started:
            progress.advance(task)
        started = True
        progress.update(task, description=f"{base_url}: {description}")

    return step


def _fetch_snp(
    settings: Settings,
    source: str,
    *,
    products: Sequence[Any],
    reports: Sequence[Path],
    ca_file: Path | None,
    retries: int,
    trust_root: Sequence[Path] | None,
    as_json: bool,
) -> None:
    """``collateral fetch --snp``: verify everything fetched, then store it in one transaction."""
    dev_roots = snp.snp_roots(settings, _extra_roots(trust_root))
    one_product = products[0] if len(products) == 1 else None
    refs = snp.read_reports(reports, one_product)
    plan = SnpFetchPlan(
        products=tuple(products) if products or refs else ("Milan", "Genoa", "Turin"), reports=refs
    )
    # What is cached already (VCEKs are not asked for again; stored chains verify VCEKs): only from a
    # database that exists, so a fetch that fails leaves no new one behind.
    existing = settings.database is not None or (settings.data_dir / "keybroker.db").exists()
    kds = _kds_store(_store(settings)) if existing else None
    with KdsClient(source, ca_file=ca_file, retries=retries) as client, _progress(as_json) as progress:
        task = progress.add_task("fetching", total=len(plan.steps))
        try:
            done = refresh_snp(
                client,
                lambda: kds or _kds_store(_store(settings, create=True)),
                plan,
                dev_roots=dev_roots,
                cached=kds,
                step=_stepper(progress, task, client.base_url),
            )
        except UntrustedCollateralRoot as exc:
            raise snp.suggest_snp_trust_root(exc) from None
        progress.update(task, completed=len(plan.steps))
    _report(None, as_json, done.notes, snp_result=done.result)
