"""Collateral files in, verified items out; and the offline bundle that ``collateral export`` writes.

Three JSON forms are read (detected by their members, never by file name):

* **corpus form**: dcap-qvl's ``QuoteCollateralV3`` (``tcb_info``, ``qe_identity``, CRLs in hex, ...),
  as in ``tests/vectors/attestation/`` and the simulator's ``collateral-{sgx,tdx}.json``;
* **PCS form**: Intel PCS/PCCS v4 responses with their issuer-chain headers, as one object whose
  members are any of ``tcb_info_body`` + ``tcb_info_issuer_chain``, ``qe_identity_body`` +
  ``qe_identity_issuer_chain``, ``qve_identity_body`` + ``qve_identity_issuer_chain``, ``pck_crl``
  + ``pck_crl_issuer_chain``, ``root_ca_crl`` (bodies as the exact response text, chains as PEM or
  URL-encoded PEM, CRLs as hex or PEM): ``QuoteCollateral.to_pcs()`` with the CRLs in hex;
* **bundle form** (:data:`BUNDLE_FORMAT`): ``{"format": "keybroker-collateral-bundle/1",
  "items": [...]}``, each item one PCCS piece with its metadata; written by :func:`write_bundle`.

Everything is verified (``items``) before it is returned; a file that holds anything unverifiable
is refused as a whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from keybroker.collateral.items import (
    Item,
    TrustedRoots,
    dedupe,
    items_from_collateral,
    pck_crl_item,
    root_ca_crl_item,
    signed_item,
)
from keybroker.errors import CollateralError, InvalidInput, UntrustedCollateralRoot
from keybroker.tee.dcap.endorsements import (
    JSON_KEYS,
    OPTIONAL_JSON_KEYS,
    QuoteCollateral,
    crl_from_wire,
    header_chain,
)

__all__ = [
    "BUNDLE_FORMAT",
    "MAX_FILE",
    "bundle_document",
    "crl_from_wire",
    "header_chain",
    "items_from_document",
    "read_file",
    "split_signed_body",
    "write_bundle",
]

BUNDLE_FORMAT: Final = "keybroker-collateral-bundle/1"
MAX_FILE: Final = 64 * 1024 * 1024
_CORPUS_KEYS: Final = frozenset(JSON_KEYS + OPTIONAL_JSON_KEYS)
_PCS_PAIRS: Final = (
    ("tcb_info_body", "tcb_info_issuer_chain"),
    ("qe_identity_body", "qe_identity_issuer_chain"),
    ("qve_identity_body", "qve_identity_issuer_chain"),
    ("pck_crl", "pck_crl_issuer_chain"),
)
_PCS_KEYS: Final = frozenset(k for pair in _PCS_PAIRS for k in pair) | {"root_ca_crl"}
_ITEM_KEYS: Final = frozenset(
    {
        "kind",
        "tee",
        "fmspc",
        "pck_ca",
        "pce_id",
        "body",
        "crl",
        "issuer_chain",
        "digest",
        "issue_date",
        "next_update",
        "tcb_evaluation_data_number",
        "root",
        "root_sha256",
        "source",
        "imported_at",
    }
)
_HEX: Final = re.compile(r"[0-9A-Fa-f]*")


def _bad(detail: str) -> CollateralError:
    return CollateralError(detail)


# --- wire helpers ------------------------------------------------------------------------------


def split_signed_body(body: str, where: str) -> tuple[str, str, bytes]:
    """Split a PCS body ``{"tcbInfo"|"enclaveIdentity": {...}, "signature": "<hex>"}``.

    Returns (member name, the member's exact text as signed, the 64-byte signature). Whitespace
    between members is tolerated; anything else (duplicate or extra members, trailing data) is not.
    """
    decoder = json.JSONDecoder()
    spans: dict[str, tuple[int, int]] = {}
    n = len(body)

    def skip(i: int) -> int:
        while i < n and body[i] in " \t\r\n":
            i += 1
        return i

    i = skip(0)
    if body[i : i + 1] != "{":
        raise _bad(f"{where}: not a JSON object")
    i += 1
    try:
        while True:
            i = skip(i)
            if body[i : i + 1] != '"':
                raise _bad(f"{where}: expected a member name at offset {i}")
            name, i = decoder.raw_decode(body, i)
            i = skip(i)
            if body[i : i + 1] != ":":
                raise _bad(f"{where}: expected ':' at offset {i}")
            start = skip(i + 1)
            _, end = decoder.raw_decode(body, start)
            if name in spans:
                raise _bad(f"{where}: duplicate member {name!r}")
            spans[name] = (start, end)
            i = skip(end)
            if body[i : i + 1] == ",":
                i += 1
                continue
            if body[i : i + 1] == "}" and not body[i + 1 :].strip():
                break
            raise _bad(f"{where}: malformed JSON at offset {i}")
    except (ValueError, RecursionError):
        raise _bad(f"{where}: not valid JSON") from None
    members = set(spans) - {"signature"}
    if "signature" not in spans or len(members) != 1 or not members <= {"tcbInfo", "enclaveIdentity"}:
        raise _bad(f"{where}: expected 'tcbInfo' or 'enclaveIdentity' and 'signature', got {sorted(spans)}")
    member = members.pop()
    sig_text = json.loads(body[slice(*spans["signature"])])
    if not isinstance(sig_text, str) or len(sig_text) != 128 or not _HEX.fullmatch(sig_text):
        raise _bad(f"{where}: signature must be 64 bytes of hex")
    return member, body[slice(*spans[member])], bytes.fromhex(sig_text)


def _str(doc: dict[str, Any], key: str, where: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str):
        raise _bad(f"{where}.{key}: expected a string")
    return value


def body_item(body: str, chain: str, roots: TrustedRoots, where: str) -> Item:
    """A PCS TCB Info or enclave identity body with its issuer chain, verified."""
    member, text, signature = split_signed_body(body, where)
    return signed_item(
        "tcb_info" if member == "tcbInfo" else "identity",
        text,
        signature,
        header_chain(chain, f"{where} issuer chain"),
        roots,
    )


# --- documents ---------------------------------------------------------------------------------


def _pcs_items(doc: dict[str, Any], roots: TrustedRoots) -> list[Item]:
    items: list[Item] = []
    for body_key, chain_key in _PCS_PAIRS:
        if (body_key in doc) != (chain_key in doc):
            raise _bad(f"PCS form: {body_key} and {chain_key} come together")
        if body_key not in doc:
            continue
        chain = header_chain(_str(doc, chain_key, "PCS form"), f"PCS form.{chain_key}")
        if body_key == "pck_crl":
            items.append(
                pck_crl_item(crl_from_wire(_str(doc, body_key, "PCS form"), "pck_crl"), chain, roots)
            )
            continue
        item = body_item(_str(doc, body_key, "PCS form"), chain, roots, f"PCS form.{body_key}")
        expected = {
            "tcb_info_body": "tcb_info",
            "qe_identity_body": "qe_identity",
            "qve_identity_body": "qve_identity",
        }[body_key]
        if item.kind != expected:
            raise _bad(f"PCS form.{body_key} holds a {item.label}")
        items.append(item)
    if "root_ca_crl" in doc:
        items.append(
            root_ca_crl_item(crl_from_wire(_str(doc, "root_ca_crl", "PCS form"), "root_ca_crl"), roots)
        )
    if not items:
        raise _bad("PCS form: no collateral in it")
    return items


def _date(value: object, where: str) -> datetime:
    if not isinstance(value, str):
        raise _bad(f"{where}: expected an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _bad(f"{where}: not ISO 8601: {value!r}") from None
    if parsed.tzinfo is None:
        raise _bad(f"{where}: no timezone: {value!r}")
    return parsed


def _bundle_item(raw: object, roots: TrustedRoots, where: str) -> Item:
    if not isinstance(raw, dict):
        raise _bad(f"{where}: expected an object")
    unknown = set(raw) - _ITEM_KEYS
    if unknown:
        raise _bad(f"{where}: unknown members {sorted(unknown)}")
    kind = _str(raw, "kind", where)
    if kind in ("tcb_info", "qe_identity", "qve_identity"):
        item = body_item(_str(raw, "body", where), _str(raw, "issuer_chain", where), roots, f"{where}.body")
    elif kind == "pck_crl":
        chain = header_chain(_str(raw, "issuer_chain", where), f"{where}.issuer_chain")
        item = pck_crl_item(crl_from_wire(_str(raw, "crl", where), f"{where}.crl"), chain, roots)
    elif kind == "root_ca_crl":
        if raw.get("issuer_chain") is not None:
            raise _bad(f"{where}: a root CA CRL has no issuer chain")
        item = root_ca_crl_item(crl_from_wire(_str(raw, "crl", where), f"{where}.crl"), roots)
    else:
        raise _bad(
            f"{where}.kind: {kind!r} is not tcb_info, qe_identity, qve_identity, pck_crl or root_ca_crl"
        )
    # The declared identity must be the verified one: never two names for one thing.
    declared = {
        "kind": kind,
        "tee": raw.get("tee"),
        "fmspc": raw.get("fmspc"),
        "pck_ca": raw.get("pck_ca"),
        "pce_id": raw.get("pce_id"),
        "tcb_evaluation_data_number": raw.get("tcb_evaluation_data_number"),
        "digest": raw.get("digest"),
        "root": raw.get("root"),
        "root_sha256": raw.get("root_sha256"),
    }
    actual = {
        "kind": item.kind,
        "tee": item.tee,
        "fmspc": item.fmspc,
        "pck_ca": item.pck_ca,
        "pce_id": item.pce_id,
        "tcb_evaluation_data_number": item.tcb_evaluation_data_number,
        "digest": item.digest,
        "root": item.root_kind,
        "root_sha256": item.root_sha256,
    }
    for key, value in declared.items():
        if key in raw and value != actual[key]:
            raise _bad(f"{where}.{key}: says {value!r} but the content is {actual[key]!r}")
    for key, real in (("issue_date", item.issue_date), ("next_update", item.next_update)):
        if key in raw and _date(raw[key], f"{where}.{key}") != real:
            raise _bad(f"{where}.{key}: says {raw[key]!r} but the content says {real.isoformat()}")
    return item


def items_from_document(doc: object, roots: TrustedRoots) -> list[Item]:
    """Verified items from a parsed JSON document in corpus, PCS or bundle form."""
    if not isinstance(doc, dict):
        raise _bad("expected a JSON object (corpus, PCS or keybroker bundle form)")
    if "format" in doc or "items" in doc:
        if doc.get("format") != BUNDLE_FORMAT:
            raise _bad(f"bundle format {doc.get('format')!r} is not {BUNDLE_FORMAT!r}")
        if set(doc) - {"format", "items", "created_at", "note"}:
            raise _bad(
                f"bundle: unknown members {sorted(set(doc) - {'format', 'items', 'created_at', 'note'})}"
            )
        raw_items = doc.get("items")
        if not isinstance(raw_items, list) or not raw_items:
            raise _bad("bundle.items: expected a non-empty list")
        return dedupe([_bundle_item(raw, roots, f"items[{i}]") for i, raw in enumerate(raw_items)])
    keys = set(doc)
    if "tcb_info" in keys and keys <= _CORPUS_KEYS:
        collateral = QuoteCollateral.from_json(json.dumps(doc))
        return items_from_collateral(collateral, roots)
    if keys and keys <= _PCS_KEYS:
        return _pcs_items(doc, roots)
    raise _bad(
        f"members {sorted(keys)[:8]} match no known form (corpus QuoteCollateralV3, PCS form, {BUNDLE_FORMAT})"
    )


def read_file(path: Path, roots: TrustedRoots) -> list[Item]:
    """Read and verify one collateral file; errors name the file.

    ``InvalidInput``: unreadable, not JSON, or no known form. ``CollateralError``: the content
    does not parse or verify.
    """
    try:
        if path.stat().st_size > MAX_FILE:
            raise InvalidInput(f"{path}: larger than {MAX_FILE} bytes", field="file")
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read ({exc.strerror or exc})", field="file") from None
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidInput(f"{path}: not JSON (give corpus, PCS-form or bundle JSON)", field="file") from None
    if not _known_form(doc):
        raise InvalidInput(
            f"{path}: matches no known form (corpus QuoteCollateralV3, PCS form, {BUNDLE_FORMAT})",
            field="file",
        )
    try:
        return items_from_document(doc, roots)
    except UntrustedCollateralRoot as exc:
        raise UntrustedCollateralRoot(
            f"{path}: {exc.detail}", root_sha256=exc.root_sha256, root_name=exc.root_name
        ) from None
    except CollateralError as exc:
        raise _bad(f"{path}: {exc.detail}") from None


def _known_form(doc: object) -> bool:
    if not isinstance(doc, dict) or not doc:
        return False
    keys = set(doc)
    return (
        "format" in keys
        or "items" in keys
        or ("tcb_info" in keys and keys <= _CORPUS_KEYS)
        or keys <= _PCS_KEYS
    )


# --- writing bundles ---------------------------------------------------------------------------


def _item_doc(item: Item, source: str | None, imported_at: datetime | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"kind": item.kind}
    for key, value in (
        ("tee", item.tee),
        ("fmspc", item.fmspc),
        ("pck_ca", item.pck_ca),
        ("pce_id", item.pce_id),
    ):
        if value is not None:
            doc[key] = value
    if item.crl_der is not None:
        doc["crl"] = item.crl_der.hex()
    else:
        doc["body"] = item.pcs_body().decode()
    if item.issuer_chain is not None:
        doc["issuer_chain"] = item.issuer_chain
    doc.update(
        digest=item.digest,
        issue_date=item.issue_date.isoformat(),
        next_update=item.next_update.isoformat(),
        root=item.root_kind,
        root_sha256=item.root_sha256,
    )
    if item.tcb_evaluation_data_number is not None:
        doc["tcb_evaluation_data_number"] = item.tcb_evaluation_data_number
    if source is not None:
        doc["source"] = source
    if imported_at is not None:
        doc["imported_at"] = imported_at.isoformat()
    return doc


def bundle_document(
    items: Sequence[tuple[Item, str | None, datetime | None]],
    *,
    created_at: datetime,
    note: str | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {"format": BUNDLE_FORMAT, "created_at": created_at.isoformat()}
    if note:
        doc["note"] = note
    doc["items"] = [_item_doc(item, source, imported_at) for item, source, imported_at in items]
    return doc


def write_bundle(path: Path, document: dict[str, Any]) -> None:
    """Write atomically: a partial bundle never sits under the final name."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=1) + "\n")
    tmp.replace(path)
