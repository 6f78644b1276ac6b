"""Collateral items: the pieces PCCS serves one by one, each verified to chain to a trusted root.

Intel's caching service hands out TCB Info per (TEE, FMSPC), QE/QVE identities per TEE, PCK CRLs
per CA and one root CA CRL; a quote's collateral (``QuoteCollateral``) is assembled from one of
each. keybroker stores the same pieces so that a new QE identity or CRL serves every FMSPC, and
so that ``/sgx/certification/v4/...`` can answer each endpoint from the newest stored piece.

Nothing is made an :class:`Item` without checks: the JSON or CRL parses, the issuer chain ends at
the pinned Intel SGX Root CA or an explicitly configured dev root and passes the quote verifier's
own chain check (``tee.dcap.chain``: one trust decision for both), the signer is the kind of
certificate that may sign this piece (TCB Signing for TCB Info and identities, a PCK CA for its
CRL, the root for the root CA CRL), and the signature verifies.
Validity windows are *not* checked here (history and air-gapped imports are legitimately old);
``tee.dcap.verify`` checks them at verification time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from keybroker.errors import CollateralError, EvidenceParseError, UntrustedCollateralRoot, VerificationError
from keybroker.tee.dcap.chain import RootKind, TrustedRoots, check_signer, cn, load_certificate, verify_chain
from keybroker.tee.dcap.endorsements import QuoteCollateral, parse_enclave_identity, parse_tcb_info
from keybroker.tee.dcap.pck import (
    X509_DECODE_ERRORS,
    PckCa,
    ca_type_from_name,
    crl_signed_by,
    decode_crl,
    split_pem_chain,
)

__all__ = [
    "KINDS",
    "Item",
    "Kind",
    "RootKind",
    "TrustedRoots",
    "collateral_from_items",
    "dedupe",
    "items_from_collateral",
    "label",
    "pck_crl_item",
    "root_ca_crl_item",
    "signed_item",
    "utc",
]

Kind = Literal["tcb_info", "qe_identity", "qve_identity", "pck_crl", "root_ca_crl"]
KINDS: Final[tuple[Kind, ...]] = ("tcb_info", "qe_identity", "qve_identity", "pck_crl", "root_ca_crl")
Tee = Literal["sgx", "tdx"]

_ECDSA_SHA256: Final = ec.ECDSA(hashes.SHA256())
#: Enclave identity ``id`` -> (kind, TEE).
_IDENTITY_IDS: Final[dict[str, tuple[Kind, Tee]]] = {
    "QE": ("qe_identity", "sgx"),
    "TD_QE": ("qe_identity", "tdx"),
    "QVE": ("qve_identity", "sgx"),
}


def _bad(detail: str) -> CollateralError:
    return CollateralError(detail)


def _utc(t: datetime) -> datetime:
    return t.astimezone(UTC) if t.tzinfo is not None else t.replace(tzinfo=UTC)


def label(kind: str, tee: str | None, fmspc: str | None, pck_ca: str | None) -> str:
    """Short human name: ``TCB Info TDX 00806F050000``, ``PCK CRL platform``, ``TD_QE identity``."""
    if kind == "tcb_info":
        return f"TCB Info {str(tee).upper()} {fmspc}"
    if kind == "qe_identity":
        return "TD_QE identity" if tee == "tdx" else "QE identity"
    if kind == "qve_identity":
        return "QVE identity"
    if kind == "pck_crl":
        return f"PCK CRL {pck_ca}"
    return "root CA CRL"


@dataclass(frozen=True, slots=True)
class Item:
    """One verified piece of collateral. Build it with :func:`signed_item`, :func:`pck_crl_item` or
    :func:`root_ca_crl_item` (they verify); the store rebuilds it from rows it verified on import."""

    kind: Kind
    tee: Tee | None
    fmspc: str | None
    pck_ca: PckCa | None
    pce_id: str | None
    signed_text: str | None
    signature: bytes | None
    crl_der: bytes | None
    issuer_chain: str | None
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int | None
    root_sha256: str
    root_kind: RootKind
    digest: str

    @property
    def label(self) -> str:
        return label(self.kind, self.tee, self.fmspc, self.pck_ca)

    def pcs_body(self) -> bytes:
        """The body PCS returns: ``{"tcbInfo":...,"signature":"..."}``, ``{"enclaveIdentity":...}``
        (signed bytes untouched), or the CRL's DER."""
        if self.crl_der is not None:
            return self.crl_der
        assert self.signed_text is not None and self.signature is not None
        member = "tcbInfo" if self.kind == "tcb_info" else "enclaveIdentity"
        return f'{{"{member}":{self.signed_text},"signature":"{self.signature.hex()}"}}'.encode()


# --- verification ------------------------------------------------------------------------------


def _verify_chain(
    pem: str, roots: TrustedRoots, what: str, *, tcb_signing: bool
) -> tuple[tuple[bytes, ...], x509.Certificate, str, RootKind]:
    """Signer -> root, verified by ``tee.dcap.chain`` (the quote verifier's own chain check): the
    root trusted, the signer in its role (TCB Signing, or a PCK CA that may sign CRLs) and issued by
    the root directly."""
    try:
        ders = split_pem_chain(pem.encode("ascii"), field=what)
    except (EvidenceParseError, UnicodeEncodeError) as exc:
        raise _bad(f"{what}: not a PEM certificate chain ({exc})") from None
    if len(ders) != 2:  # Intel's collateral signers are issued by the root
        raise _bad(f"{what}: {len(ders)} certificates; expected the signer and the root")
    try:
        certs = tuple(
            load_certificate(der, f"{what}[{i}]", "collateral_chains") for i, der in enumerate(ders)
        )
        root_kind = roots.kind(ders[-1])
        if root_kind is None:
            root_sha = hashlib.sha256(ders[-1]).hexdigest()
            name = cn(certs[-1].subject)
            raise UntrustedCollateralRoot(
                f"{what}: ends at {name!r} (sha256 {root_sha}), not {roots.describe()}",
                root_sha256=root_sha,
                root_name=name,
            )
        check_signer(certs, what, tcb_signing=tcb_signing, check="collateral_chains")
        chain = verify_chain(ders, roots, what, "collateral_chains", not tcb_signing)
    except VerificationError as exc:
        raise _bad(exc.detail) from None
    return ders, chain.certs[0], hashlib.sha256(ders[-1]).hexdigest(), root_kind


def _ec_key(cert: x509.Certificate, what: str) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise _bad(f"{what}: {cn(cert.subject)!r} has no ECDSA P-256 key")
    return key


def _digest(kind: str, content: bytes, *parts: bytes) -> str:
    """SHA-256 over the kind, the signed content and the chain's DER, length-prefixed (format-neutral)."""
    h = hashlib.sha256()
    for part in (kind.encode(), content, *parts):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.hexdigest()


def signed_item(
    kind: Literal["tcb_info", "identity"],
    signed_text: str,
    signature: bytes,
    issuer_chain: str,
    roots: TrustedRoots,
) -> Item:
    """TCB Info (``kind="tcb_info"``) or an enclave identity (QE, TD_QE, QVE), verified."""
    what = "TCB Info" if kind == "tcb_info" else "enclave identity"
    if len(signature) != 64:
        raise _bad(f"{what} signature: expected 64 bytes (r || s), got {len(signature)}")
    ders, signer, root_sha, root_kind = _verify_chain(
        issuer_chain, roots, f"{what} issuer chain", tcb_signing=True
    )
    signer_cn = cn(signer.subject)
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    try:
        _ec_key(signer, what).verify(encode_dss_signature(r, s), signed_text.encode("utf-8"), _ECDSA_SHA256)
    except InvalidSignature:
        raise _bad(f"{what} signature does not verify under {signer_cn!r}") from None
    digest = _digest(kind, signed_text.encode("utf-8"), signature, *ders)
    if kind == "tcb_info":
        tcb = parse_tcb_info(signed_text)
        return Item(
            kind="tcb_info",
            tee="tdx" if tcb.id == "TDX" else "sgx",
            fmspc=tcb.fmspc.hex().upper(),
            pck_ca=None,
            pce_id=tcb.pce_id.hex().upper(),
            signed_text=signed_text,
            signature=signature,
            crl_der=None,
            issuer_chain=issuer_chain,
            issue_date=tcb.issue_date,
            next_update=tcb.next_update,
            tcb_evaluation_data_number=tcb.tcb_evaluation_data_number,
            root_sha256=root_sha,
            root_kind=root_kind,
            digest=digest,
        )
    ident = parse_enclave_identity(signed_text)
    item_kind, tee = _IDENTITY_IDS[ident.id]
    return Item(
        kind=item_kind,
        tee=tee,
        fmspc=None,
        pck_ca=None,
        pce_id=None,
        signed_text=signed_text,
        signature=signature,
        crl_der=None,
        issuer_chain=issuer_chain,
        issue_date=ident.issue_date,
        next_update=ident.next_update,
        tcb_evaluation_data_number=ident.tcb_evaluation_data_number,
        root_sha256=root_sha,
        root_kind=root_kind,
        digest=digest,
    )


def _load_crl(der: bytes, what: str) -> x509.CertificateRevocationList:
    try:
        crl = decode_crl(der)
    except X509_DECODE_ERRORS as exc:
        raise _bad(f"{what}: not a DER CRL ({exc})") from None
    if crl.next_update_utc is None:
        raise _bad(f"{what}: has no nextUpdate")
    return crl


def pck_crl_item(der: bytes, issuer_chain: str, roots: TrustedRoots) -> Item:
    """A PCK Processor/Platform CA CRL, verified against its issuer chain."""
    crl = _load_crl(der, "PCK CRL")
    ders, signer, root_sha, root_kind = _verify_chain(
        issuer_chain, roots, "PCK CRL issuer chain", tcb_signing=False
    )
    ca = ca_type_from_name(signer.subject)
    assert ca is not None  # check_signer
    if crl.issuer != signer.subject or not crl_signed_by(crl, _ec_key(signer, "PCK CRL")):
        raise _bad(f"PCK CRL (issuer {cn(crl.issuer)!r}) is not signed by {cn(signer.subject)!r}")
    assert crl.next_update_utc is not None
    return Item(
        kind="pck_crl",
        tee=None,
        fmspc=None,
        pck_ca=ca,
        pce_id=None,
        signed_text=None,
        signature=None,
        crl_der=der,
        issuer_chain=issuer_chain,
        issue_date=crl.last_update_utc,
        next_update=crl.next_update_utc,
        tcb_evaluation_data_number=None,
        root_sha256=root_sha,
        root_kind=root_kind,
        digest=_digest("pck_crl", der, *ders),
    )


def root_ca_crl_item(der: bytes, roots: TrustedRoots) -> Item:
    """The root CA CRL, signed by a trusted root itself."""
    crl = _load_crl(der, "root CA CRL")
    for root in roots.certificates():
        if crl.issuer == root.subject and crl_signed_by(crl, _ec_key(root, "root CA CRL")):
            root_der = root.public_bytes(Encoding.DER)
            kind = roots.kind(root_der)
            assert kind is not None and crl.next_update_utc is not None
            return Item(
                kind="root_ca_crl",
                tee=None,
                fmspc=None,
                pck_ca=None,
                pce_id=None,
                signed_text=None,
                signature=None,
                crl_der=der,
                issuer_chain=None,
                issue_date=crl.last_update_utc,
                next_update=crl.next_update_utc,
                tcb_evaluation_data_number=None,
                root_sha256=hashlib.sha256(root_der).hexdigest(),
                root_kind=kind,
                digest=_digest("root_ca_crl", der),
            )
    raise UntrustedCollateralRoot(
        f"root CA CRL (issuer {cn(crl.issuer)!r}) is not signed by {roots.describe()}",
        root_sha256=None,
        root_name=cn(crl.issuer),
    )


# --- whole collateral <-> items ----------------------------------------------------------------


def items_from_collateral(collateral: QuoteCollateral, roots: TrustedRoots) -> list[Item]:
    """Split and verify: TCB Info, QE identity, PCK CRL, root CA CRL (all ending at one root).

    A ``pck_certificate_chain`` is not kept: it belongs to one platform, and a lookup by FMSPC
    only serves quotes that carry their own PCK chain.
    """
    items = [
        signed_item(
            "tcb_info",
            collateral.tcb_info,
            collateral.tcb_info_signature,
            collateral.tcb_info_issuer_chain,
            roots,
        ),
        signed_item(
            "identity",
            collateral.qe_identity,
            collateral.qe_identity_signature,
            collateral.qe_identity_issuer_chain,
            roots,
        ),
        pck_crl_item(collateral.pck_crl, collateral.pck_crl_issuer_chain, roots),
        root_ca_crl_item(collateral.root_ca_crl, roots),
    ]
    if items[1].kind != "qe_identity" or items[1].tee != items[0].tee:
        raise _bad(f"collateral pairs {items[0].label} with a {items[1].label}")
    if len({i.root_sha256 for i in items}) != 1:
        raise _bad("collateral pieces chain to different roots")
    return items


def collateral_from_items(
    tcb_info: Item, qe_identity: Item, pck_crl: Item, root_ca_crl: Item
) -> QuoteCollateral:
    """Assemble a quote's collateral from stored pieces (parsed again by ``QuoteCollateral``).

    All four must chain to the same root: the verifier checks the root CA CRL of the root the
    collateral chains to, so pieces of two roots would leave one root's CRL unread.
    """
    roots = {i.root_sha256 for i in (tcb_info, qe_identity, pck_crl, root_ca_crl)}
    if len(roots) != 1:
        raise _bad(f"collateral pieces chain to {len(roots)} different roots; they must share one")
    assert tcb_info.signed_text is not None and tcb_info.signature is not None
    assert tcb_info.issuer_chain is not None
    assert qe_identity.signed_text is not None and qe_identity.signature is not None
    assert qe_identity.issuer_chain is not None
    assert pck_crl.crl_der is not None and pck_crl.issuer_chain is not None
    assert root_ca_crl.crl_der is not None
    return QuoteCollateral(
        pck_crl_issuer_chain=pck_crl.issuer_chain,
        root_ca_crl=root_ca_crl.crl_der,
        pck_crl=pck_crl.crl_der,
        tcb_info_issuer_chain=tcb_info.issuer_chain,
        tcb_info=tcb_info.signed_text,
        tcb_info_signature=tcb_info.signature,
        qe_identity_issuer_chain=qe_identity.issuer_chain,
        qe_identity=qe_identity.signed_text,
        qe_identity_signature=qe_identity.signature,
    )


def dedupe(items: Sequence[Item]) -> list[Item]:
    """Items in order, each digest once."""
    seen: set[str] = set()
    out = []
    for item in items:
        if item.digest not in seen:
            seen.add(item.digest)
            out.append(item)
    return out


def utc(t: datetime) -> datetime:
    """Aware UTC (SQLite returns naive datetimes for ``DateTime(timezone=True)`` columns)."""
    return _utc(t)
