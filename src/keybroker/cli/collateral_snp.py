"""The SEV-SNP half of ``keybroker collateral`` (the KDS cache): reading files, listing, exporting
and fetching. ``cli.collateral`` registers the options and calls these; the work is in
``collateral.kds`` (verification), ``collateral.kds_store`` and ``collateral.kds_fetch``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from rich.table import Table

from keybroker.cli.common import console
from keybroker.collateral.importers import BUNDLE_FORMAT, MAX_FILE
from keybroker.collateral.kds import (
    SNP_KINDS,
    ReportRef,
    SnpItem,
    bundle_item_doc,
    items_from_bundle,
    read_report_bytes,
    report_ref,
    snp_dev_roots,
    snp_file_items,
)
from keybroker.collateral.trust import configured_roots
from keybroker.config import Settings
from keybroker.errors import CollateralError, InvalidInput, UntrustedCollateralRoot
from keybroker.tee.snp.abi import PRODUCTS, Product, SigningKey

if TYPE_CHECKING:
    from keybroker.collateral.kds_store import KdsImportResult, KdsStore, StoredSnpItem

__all__ = [
    "ImportPlan",
    "add_snp_bundle_items",
    "parse_crl_for",
    "parse_products",
    "plan_import",
    "print_snp_import",
    "print_snp_list",
    "read_reports",
    "snp_brief",
    "snp_roots",
    "suggest_snp_trust_root",
]


def snp_roots(settings: Settings, extra: Sequence[x509.Certificate] = ()) -> tuple[x509.Certificate, ...]:
    """The SEV-SNP dev roots trusted besides AMD's pinned ARKs: the ARKs among the server's
    configured roots (``trust.dev_roots``) and ``--trust-root``."""
    return snp_dev_roots([*configured_roots(settings), *extra])


def parse_products(values: Sequence[str] | None) -> tuple[Product, ...]:
    out: list[Product] = []
    for value in values or ():
        if value not in PRODUCTS:
            raise InvalidInput(f"--product {value!r}: expected Milan, Genoa or Turin", field="product")
        if value not in out:
            out.append(value)
    return tuple(out)


def parse_crl_for(value: str | None) -> SigningKey | None:
    if value is None:
        return None
    if value not in ("vcek", "vlek"):
        raise InvalidInput(f"--crl-for {value!r}: expected vcek or vlek", field="crl_for")
    return cast(SigningKey, value)


def suggest_snp_trust_root(
    exc: UntrustedCollateralRoot, near: Sequence[Path] = ()
) -> UntrustedCollateralRoot:
    """The refusal, saying how to trust that ARK if it is meant to be (a simulator's ``ark.pem``)."""
    for candidate in near:
        try:
            cert = x509.load_pem_x509_certificate(candidate.read_bytes())
        except (OSError, ValueError):
            continue
        if (
            exc.root_sha256 is not None
            and hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest() == exc.root_sha256
        ):
            hint = f"it is the ARK in {candidate}: if you trust it, add --trust-root {candidate}"
            break
    else:
        hint = (
            f"if you trust {exc.root_name!r} (a SEV-SNP simulator's dev ARK), add --trust-root with its PEM "
            "file (its dev PKI's ark.pem)"
        )
    return UntrustedCollateralRoot(
        f"{exc.detail}; {hint}", root_sha256=exc.root_sha256, root_name=exc.root_name
    )


# --- import ------------------------------------------------------------------------------------


@dataclass
class ImportPlan:
    """What ``collateral import`` verified: Intel batches (for ``CollateralStore``) and SNP ones."""

    intel: list[tuple[str, list[Any]]] = field(default_factory=list)
    snp: list[tuple[str, list[SnpItem]]] = field(default_factory=list)


def _read(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_FILE:
            raise InvalidInput(f"{path}: larger than {MAX_FILE} bytes", field="file")
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read ({exc.strerror or exc})", field="file") from None


def _is_kds_file(data: bytes) -> bool:
    """PEM (certificates or a CRL) or DER (starts with a SEQUENCE): a file as AMD's KDS serves it."""
    return data.lstrip().startswith(b"-----BEGIN") or data.startswith(b"\x30")


def _holds_leaf(data: bytes) -> bool:
    """Whether a raw file holds a VCEK/VLEK (imported after the chains given with it)."""
    try:
        certs = x509.load_pem_x509_certificates(data) if data.lstrip().startswith(b"-----") else None
    except ValueError:
        return False
    if certs is None:
        try:
            certs = [x509.load_der_x509_certificate(data)]
        except ValueError:
            return False
    return any(
        str(a.value) in ("SEV-VCEK", "SEV-VLEK")
        for c in certs
        for a in c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    )


def plan_import(
    files: Sequence[Path],
    *,
    read_intel: Callable[[Path], list[Any]],
    read_intel_document: Callable[[dict[str, Any], Path], list[Any]],
    snp_dev: Sequence[x509.Certificate],
    stored_chains: Callable[[], list[SnpItem]],
    crl_for: SigningKey | None,
) -> ImportPlan:
    """Verify every file: Intel JSON through ``read_intel``; a bundle's SNP entries here and its
    Intel ones through ``read_intel_document``; anything not JSON as AMD's KDS serves it (a
    ``cert_chain``, a VCEK, a CRL). Chains come before the VCEKs they issue, whatever the order of
    the files; a VCEK may also verify through a chain already stored."""
    plan = ImportPlan()
    raw: list[tuple[Path, bytes]] = []
    for path in files:
        data = _read(path)
        if _is_kds_file(data):
            raw.append((path, data))
            continue
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):
            raise InvalidInput(
                f"{path}: not JSON (give corpus, PCS-form or bundle JSON), nor an AMD KDS file (a PEM "
                "cert_chain, a VCEK or a CRL, PEM or DER)",
                field="file",
            ) from None
        entries = doc.get("items") if isinstance(doc, dict) and doc.get("format") == BUNDLE_FORMAT else None
        snp_entries = (
            [(i, e) for i, e in enumerate(entries) if isinstance(e, dict) and e.get("kind") in SNP_KINDS]
            if isinstance(entries, list)
            else []
        )
        if not snp_entries:
            plan.intel.append((f"file:{path.name}", read_intel(path)))
            continue
        assert isinstance(entries, list)
        try:
            plan.snp.append((f"file:{path.name}", items_from_bundle(snp_entries, dev_roots=snp_dev)))
        except UntrustedCollateralRoot as exc:
            raise suggest_snp_trust_root(
                UntrustedCollateralRoot(
                    f"{path}: {exc.detail}", root_sha256=exc.root_sha256, root_name=exc.root_name
                )
            ) from None
        except CollateralError as exc:
            raise CollateralError(f"{path}: {exc.detail}") from None
        rest = [e for e in entries if not (isinstance(e, dict) and e.get("kind") in SNP_KINDS)]
        if rest:
            plan.intel.append((f"file:{path.name}", read_intel_document({**doc, "items": rest}, path)))
    stored: list[SnpItem] | None = None
    for path, data in sorted(raw, key=lambda pair: _holds_leaf(pair[1])):
        chains = [i for _, items in plan.snp for i in items if i.kind == "snp_cert_chain"]
        if _holds_leaf(data):
            if stored is None:
                stored = stored_chains()
            chains += stored
        try:
            items = snp_file_items(data, chains=chains, dev_roots=snp_dev, crl_for=crl_for)
        except UntrustedCollateralRoot as exc:
            raise suggest_snp_trust_root(
                UntrustedCollateralRoot(
                    f"{path}: {exc.detail}", root_sha256=exc.root_sha256, root_name=exc.root_name
                ),
                near=[path.parent / "ark.pem"],
            ) from None
        except CollateralError as exc:
            raise CollateralError(f"{path}: {exc.detail}") from None
        except InvalidInput as exc:
            raise InvalidInput(f"{path}: {exc.detail}", field=exc.field) from None
        plan.snp.append((f"file:{path.name}", items))
    return plan


def _d(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M")


def snp_brief(i: SnpItem) -> dict[str, Any]:
    return {
        "kind": i.kind,
        "label": i.label,
        "tee": "snp",
        "signing_key": i.signing_key,
        "product": i.product,
        "hwid": i.hwid.hex() if i.hwid is not None else None,
        "tcb": i.tcb.hex() if i.tcb is not None else None,
        "valid_from": i.valid_from.isoformat(),
        "valid_until": i.valid_until.isoformat(),
        "root": i.root_kind,
        "digest": i.digest,
    }


def print_snp_import(result: KdsImportResult, table: Table) -> None:
    """Add the SNP rows to ``collateral import/fetch``'s table."""
    for mark, items in (("+", result.added), ("=", result.already_stored)):
        for i in items:
            table.add_row(mark, i.label, _d(i.valid_from), _d(i.valid_until), i.root_kind, i.digest[:12])


def print_snp_list(rows: Sequence[StoredSnpItem]) -> None:
    """The SNP table of ``collateral list``: '*' marks what the KDS endpoints serve."""
    now = datetime.now(UTC)
    best: dict[tuple[Any, ...], StoredSnpItem] = {}
    for r in rows:  # AMD-rooted before dev-rooted, then the newest: as the KDS endpoints choose
        group = (r.kind, r.product, r.signing_key, r.hwid, r.tcb)
        have = best.get(group)
        if have is None or (r.root_kind != "amd", -r.valid_from.timestamp(), -r.id) < (
            have.root_kind != "amd",
            -have.valid_from.timestamp(),
            -have.id,
        ):
            best[group] = r
    served_ids = {r.id for r in best.values()}
    table = Table("", "id", "SEV-SNP item", "valid from", "valid until", "state", "root", "source", "digest")
    for r in rows:
        state = "expired" if r.valid_until < now else ("not yet valid" if r.valid_from > now else "valid")
        table.add_row(
            "*" if r.id in served_ids else "",
            str(r.id),
            r.label,
            _d(r.valid_from),
            _d(r.valid_until),
            state,
            r.root_kind,
            r.source,
            r.digest[:12],
        )
    console.print(table)
    console.print(f"{len(rows)} SEV-SNP items")


def add_snp_bundle_items(
    doc: dict[str, Any], store: KdsStore, *, products: Sequence[Product], history: bool
) -> list[str]:
    """Append the SNP items to an export bundle; returns their labels."""
    entries = store.export_items(products=list(products) or None, history=history)
    doc.setdefault("items", []).extend(bundle_item_doc(item, source, at) for item, source, at in entries)
    return [item.label for item, _, _ in entries]


# --- fetch -------------------------------------------------------------------------------------


def read_reports(paths: Sequence[Path], product: Product | None) -> tuple[ReportRef, ...]:
    """What each ``--report`` needs (read from the unverified report: it only picks what to ask for)."""
    refs: list[ReportRef] = []
    for path in paths:
        data = _read(path)
        refs.append(report_ref(read_report_bytes(data, str(path)), product=product, where=str(path)))
    return tuple(refs)
