"""AMD SEV-SNP collateral for the KDS cache: verified pieces, KDS paths and parameters, bundle items.

AMD's Key Distribution Service (KDS; "Versioned Chip Endorsement Key (VCEK) Certificate and KDS
Interface Specification" 57230, chapter 4) serves, per product (Milan, Genoa, Turin):

* ``GET /vcek/v1/{P}/{hwid}?blSPL=&teeSPL=&snpSPL=&ucodeSPL=`` (Turin: ``fmcSPL`` too, and an 8-byte
  hwID): the VCEK of one chip at one TCB, DER. SPLs left out are zero.
* ``GET /vcek/v1/{P}/cert_chain``: ASK then ARK, PEM; ``/vlek/v1/{P}/cert_chain``: ASVK then ARK.
* ``GET /vcek/v1/{P}/crl``, ``/vlek/v1/{P}/crl``: the ARK's CRL, DER.

Every piece becomes an :class:`SnpItem` only once it verifies (``tee.snp.certs``, never re-done
here): a chain's intermediates up to a trusted ARK (AMD's pinned keys, or a configured dev root:
the simulator's), a CRL signed by a trusted ARK, a VCEK up to a trusted ARK with its AMD extensions
read (the hwID and SPLs it is stored under come from the certificate, never from the caller).
Validity windows are not checked here: history and air-gapped copies are legitimately old, and the
verifier checks every window at its verification time.

An AMD CRL does not say which of the two KDS URLs it is (both are issued by the ARK); its side
(``vcek`` or ``vlek``) comes from where it was fetched or what the operator says. The lookup hands
the verifier every current CRL of the chain's ARK, so a CRL filed under the other side still applies.

Nothing here touches the network or the database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, cast

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from keybroker.errors import (
    CollateralError,
    EvidenceParseError,
    InvalidInput,
    UntrustedCollateralRoot,
    VerificationError,
)
from keybroker.tee.dcap.pck import X509_DECODE_ERRORS
from keybroker.tee.snp import certs
from keybroker.tee.snp.abi import PRODUCTS, REPORT_SIZE, Product, SigningKey, Tcb, decode_tcb, parse_report

__all__ = [
    "KDS_URL",
    "SIDES",
    "SNP_KINDS",
    "ReportRef",
    "SnpCollateral",
    "SnpItem",
    "SnpKind",
    "bundle_item_doc",
    "chain_items",
    "chain_path",
    "crl_item",
    "crl_path",
    "hex_or_none",
    "items_from_bundle",
    "label",
    "parse_hwid",
    "read_report_bytes",
    "report_ref",
    "snp_dev_roots",
    "snp_file_items",
    "tcb_from_spls",
    "tcb_text",
    "vcek_item",
    "vcek_params",
    "vcek_path",
]

#: AMD's KDS (``[collateral] kds_url`` replaces it).
KDS_URL: Final = "https://kdsintf.amd.com"
SnpKind = Literal["snp_vcek", "snp_cert_chain", "snp_crl"]
SNP_KINDS: Final[tuple[SnpKind, ...]] = ("snp_vcek", "snp_cert_chain", "snp_crl")
SIDES: Final[tuple[SigningKey, ...]] = ("vcek", "vlek")
RootKind = Literal["amd", "dev"]

#: hwID bytes per product (57230 §4.1: the CHIP_ID; Turin uses its first 8 bytes).
HWID_SIZE: Final[dict[Product, int]] = {"Milan": 64, "Genoa": 64, "Turin": 8}
#: The KDS query parameter of each TCB component, in the order AMD's tools send them.
_SPL_PARAMS: Final = (
    ("fmcSPL", "fmc"),
    ("blSPL", "bootloader"),
    ("teeSPL", "tee"),
    ("snpSPL", "snp"),
    ("ucodeSPL", "microcode"),
)
_BUNDLE_KEYS: Final = frozenset(
    {
        "kind",
        "signing_key",
        "product",
        "hwid",
        "tcb",
        "certificate",
        "cert_chain",
        "crl",
        "digest",
        "valid_from",
        "valid_until",
        "root",
        "ark_spki_sha256",
        "source",
        "imported_at",
    }
)
#: The most a report file, a certificate file or a CRL file may hold.
MAX_FILE: Final = 1024 * 1024


def tcb_text(raw: bytes, product: str) -> str:
    """``fmc 1, bl 3, tee 0, snp 8, ucode 115`` for a raw TCB_VERSION (hex when undecodable)."""
    if product not in PRODUCTS:
        return raw.hex()
    try:
        tcb = decode_tcb(raw, product)
    except EvidenceParseError:
        return raw.hex()
    names = {"fmc": "fmc", "bootloader": "bl", "tee": "tee", "snp": "snp", "microcode": "ucode"}
    order = ("fmc", "bootloader", "tee", "snp", "microcode")
    parts = tcb.components()
    return ", ".join(f"{names[k]} {parts[k]}" for k in order if k in parts)


def _side_name(signing_key: str) -> str:
    return "VCEK" if signing_key == "vcek" else "VLEK"


def label(kind: str, signing_key: str, product: str, hwid: bytes | None, tcb: bytes | None) -> str:
    """Short human name: ``VCEK Milan 3ac3fe21…, TCB bl 3, tee 0, snp 8, ucode 115``,
    ``ASK+ARK Milan``, ``ASVK+ARK Genoa``, ``VCEK CRL Milan``, ``VLEK CRL Turin``."""
    if kind == "snp_vcek":
        chip = f" {hwid[:8].hex()}…" if hwid is not None else ""
        return f"VCEK {product}{chip}, TCB {tcb_text(tcb or b'', product)}"
    if kind == "snp_cert_chain":
        return f"{'ASK' if signing_key == 'vcek' else 'ASVK'}+ARK {product}"
    return f"{_side_name(signing_key)} CRL {product}"


def _digest(kind: str, signing_key: str, product: str, content: bytes) -> str:
    """SHA-256 over what identifies a piece: its kind, side, product and content."""
    return hashlib.sha256(f"{kind}\0{signing_key}\0{product}\0".encode() + content).hexdigest()


@dataclass(frozen=True, slots=True)
class SnpItem:
    """One verified piece of SEV-SNP collateral. Build it with :func:`chain_items`, :func:`crl_item`
    or :func:`vcek_item` (they verify); the store rebuilds it from rows it verified on import."""

    kind: SnpKind
    #: "vcek" or "vlek": the side of a chain or CRL; "vcek" for a VCEK.
    signing_key: SigningKey
    product: Product
    #: VCEK: its hwID (64 bytes; 8 on Turin). Else None.
    hwid: bytes | None
    #: VCEK: the TCB_VERSION it was issued for (8 bytes, the product's layout). Else None.
    tcb: bytes | None
    #: VCEK: DER; chain: PEM (intermediate, then the trusted ARK); CRL: DER.
    content: bytes
    valid_from: datetime
    valid_until: datetime
    root_kind: RootKind
    ark_spki_sha256: str
    #: SHA-256 of the ASK/ASVK DER: a VCEK's issuer, a chain's intermediate; None for a CRL.
    intermediate_sha256: str | None
    digest: str

    @property
    def label(self) -> str:
        return label(self.kind, self.signing_key, self.product, self.hwid, self.tcb)

    def chain_ders(self) -> tuple[bytes, ...]:
        """A chain's certificates as DER: the intermediate, then the ARK."""
        if self.kind != "snp_cert_chain":
            raise ValueError(f"{self.label} is not a certificate chain")
        return certs.load_certificate_ders(self.content, field="cert_chain")


@dataclass(frozen=True, slots=True)
class SnpCollateral:
    """What the KDS cache holds to verify one report (``tee.snp.verify.verify_report``):
    ``vcek_or_vlek=vcek`` (or, for a VLEK, the one the evidence carries), ``chain=chain``,
    ``crls=crls``, ``require_crl=True`` when ``crls`` is not empty."""

    product: Product
    signing_key: SigningKey
    #: The VCEK (DER); None when the report is signed by a VLEK (VLEKs come with the evidence:
    #: AMD's KDS does not serve them).
    vcek: bytes | None
    #: The intermediate (ASK, or ASVK for a VLEK) and the ARK, DER.
    chain: tuple[bytes, ...]
    #: The ARK's CRLs (DER): the side's own first, then the other side's when cached. Empty only
    #: when none was cached and the lookup was told not to require one.
    crls: tuple[bytes, ...]
    root_kind: RootKind
    ark_spki_sha256: str
    #: The digests of the pieces used (for logs and the evidence record).
    digests: tuple[str, ...]
    #: The earliest end of the pieces' windows (the verifier checks each one at its time).
    valid_until: datetime


# --- KDS paths and parameters ------------------------------------------------------------------


def vcek_path(product: Product, hwid: bytes) -> str:
    return f"/vcek/v1/{product}/{hwid.hex()}"


def vcek_params(product: Product, tcb: bytes) -> dict[str, str]:
    """The KDS query of a VCEK for a raw TCB_VERSION (``fmcSPL`` on Turin only)."""
    components = decode_tcb(tcb, product).components()
    return {param: str(components[name]) for param, name in _SPL_PARAMS if name in components}


def chain_path(product: Product, side: SigningKey) -> str:
    return f"/{side}/v1/{product}/cert_chain"


def crl_path(product: Product, side: SigningKey) -> str:
    return f"/{side}/v1/{product}/crl"


def parse_hwid(product: Product, text: str) -> bytes:
    """A hwID from a KDS path: hex (either case) of 64 bytes, 8 on Turin."""
    size = HWID_SIZE[product]
    try:
        raw = bytes.fromhex(text) if text.isascii() and text.isalnum() else None
    except ValueError:
        raw = None
    if raw is None:
        raise InvalidInput(f"hwid: expected hex digits, got {text[:32]!r}", field="hwid")
    if len(raw) != size:
        raise InvalidInput(
            f"hwid: a {product} hwID is {size} bytes ({2 * size} hex digits), got {len(raw)}", field="hwid"
        )
    if not any(raw):
        raise InvalidInput("hwid: all zero (a masked CHIP_ID) names no chip", field="hwid")
    return raw


def tcb_from_spls(product: Product, spls: dict[str, int | None]) -> bytes:
    """The raw TCB_VERSION for a KDS query's SPLs (absent ones are zero, as at AMD's KDS).

    ``spls`` maps ``blSPL``, ``teeSPL``, ``snpSPL``, ``ucodeSPL``, ``fmcSPL`` to a value or None.
    ``fmcSPL`` exists on Turin only: given for another product, it is refused rather than dropped.
    """
    values: dict[str, int] = {}
    for param, name in _SPL_PARAMS:
        value = spls.get(param)
        if name == "fmc" and product != "Turin":
            if value is not None:
                raise InvalidInput(f"fmcSPL: a {product} TCB has no FMC SPL (Turin only)", field="fmcSPL")
            continue
        if value is None:
            value = 0
        if not 0 <= value <= 0xFF:
            raise InvalidInput(f"{param}: {value} is not 0-255", field=param)
        values[name] = value
    return Tcb(
        bootloader=values["bootloader"],
        tee=values["tee"],
        snp=values["snp"],
        microcode=values["microcode"],
        fmc=values.get("fmc"),
    ).encode(product)


# --- verified pieces ---------------------------------------------------------------------------


def snp_dev_roots(roots: Iterable[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    """The configured roots that name themselves an ARK (``ARK-Milan``...): the SEV-SNP dev roots.

    ``trust.dev_roots`` holds the simulators' roots of every TEE; ``tee.snp.certs`` checks that
    each one picked here really is a self-signed ARK before it trusts it.
    """
    out: list[x509.Certificate] = []
    for cert in roots:
        cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        if len(cns) == 1 and str(cns[0].value) in {f"ARK-{p}" for p in PRODUCTS}:
            out.append(cert)
    return tuple(out)


def _pem(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)


def _untrusted(
    exc: VerificationError, ders: Sequence[bytes], dev_roots: Sequence[x509.Certificate], where: str
) -> CollateralError:
    """The refusal of a chain: ``UntrustedCollateralRoot`` when it came with an ARK that is not
    trusted (so the CLI can name ``--trust-root``), else a plain ``CollateralError``."""
    trusted = set(certs.ARK_SPKI_SHA256.values()) | {certs.spki_sha256(c) for c in dev_roots}
    for der in ders:
        try:
            cert = x509.load_der_x509_certificate(der)
            cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
            name = str(cn[0].value) if cn else ""
            spki = certs.spki_sha256(cert)
        except X509_DECODE_ERRORS:
            continue
        if name.startswith("ARK-") and spki not in trusted:
            return UntrustedCollateralRoot(
                f"{where}: {exc.detail}; it comes with {name} (sha256 {hashlib.sha256(der).hexdigest()[:16]}…), "
                "which is not AMD's",
                root_sha256=hashlib.sha256(der).hexdigest(),
                root_name=name,
            )
    return CollateralError(f"{where}: {exc.detail}")


def _ders(data: bytes, where: str) -> tuple[bytes, ...]:
    try:
        return certs.load_certificate_ders(data, field=where)
    except EvidenceParseError as exc:
        raise CollateralError(exc.detail) from None


def chain_items(
    data: bytes | Sequence[bytes], *, dev_roots: Sequence[x509.Certificate] = (), where: str = "cert_chain"
) -> list[SnpItem]:
    """Verified chain items from AMD's ``cert_chain`` (PEM, or the DERs): one per intermediate
    (ASK+ARK, ASVK+ARK), each stored with the trusted ARK certificate whatever ARK came along."""
    ders = _ders(data, where) if isinstance(data, bytes | bytearray) else tuple(bytes(d) for d in data)
    try:
        verified = certs.verify_cert_chain(ders, dev_roots=dev_roots)
    except VerificationError as exc:
        raise _untrusted(exc, ders, dev_roots, where) from None
    out = []
    for v in verified:
        content = v.intermediate.public_bytes(Encoding.PEM) + v.ark.public_bytes(Encoding.PEM)
        out.append(
            SnpItem(
                kind="snp_cert_chain",
                signing_key=v.kind,
                product=v.product,
                hwid=None,
                tcb=None,
                content=content,
                valid_from=max(nb for _, nb, _ in v.windows),
                valid_until=min(na for _, _, na in v.windows),
                root_kind=v.root,
                ark_spki_sha256=v.ark_spki_sha256,
                intermediate_sha256=v.intermediate_sha256,
                digest=_digest("snp_cert_chain", v.kind, v.product, content),
            )
        )
    return out


def crl_item(
    der: bytes, *, signing_key: SigningKey, dev_roots: Sequence[x509.Certificate] = (), where: str = "crl"
) -> SnpItem:
    """A verified ARK CRL, filed under ``signing_key``'s side (``/vcek/...`` or ``/vlek/.../crl``)."""
    try:
        v = certs.verify_crl(der, dev_roots=dev_roots)
    except VerificationError as exc:
        if "is not a trusted ARK" in exc.detail:
            try:
                issuer = x509.load_der_x509_crl(der).issuer
                cn = issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
                name = str(cn[0].value) if cn else issuer.rfc4514_string()
            except X509_DECODE_ERRORS:  # pragma: no cover - verify_crl decoded it
                name = "its issuer"
            raise UntrustedCollateralRoot(
                f"{where}: {exc.detail}", root_sha256=None, root_name=name
            ) from None
        raise CollateralError(f"{where}: {exc.detail}") from None
    der = bytes(der)
    return SnpItem(
        kind="snp_crl",
        signing_key=signing_key,
        product=v.product,
        hwid=None,
        tcb=None,
        content=der,
        valid_from=v.this_update,
        valid_until=v.next_update,
        root_kind=v.root,
        ark_spki_sha256=v.ark_spki_sha256,
        intermediate_sha256=None,
        digest=_digest("snp_crl", signing_key, v.product, der),
    )


def vcek_item(
    der: bytes,
    *,
    chains: Sequence[SnpItem] = (),
    dev_roots: Sequence[x509.Certificate] = (),
    where: str = "VCEK",
) -> SnpItem:
    """A verified VCEK: up to a trusted ARK through one of ``chains`` (its product's ASK+ARK) or
    AMD's shipped ASK; its hwID and TCB from its own AMD extensions."""
    der = bytes(der)
    candidates: list[tuple[bytes, ...] | None] = [
        c.chain_ders() for c in chains if c.kind == "snp_cert_chain" and c.signing_key == "vcek"
    ]
    candidates.append(None)  # AMD's shipped ASK (pinned roots only)
    errors: list[VerificationError] = []
    for chain in candidates:
        try:
            v = certs.verify_chain(der, chain, kind="vcek", dev_roots=dev_roots)
        except VerificationError as exc:
            if exc.check != "cert_chain":  # the extensions or product: no other chain changes that
                raise CollateralError(f"{where}: {exc.detail}") from None
            errors.append(exc)
            continue
        hwid = v.ext.hwid
        assert hwid is not None  # parse_amd_extensions, kind "vcek"
        tcb = v.ext.tcb.encode(v.product)
        windows = v.windows
        return SnpItem(
            kind="snp_vcek",
            signing_key="vcek",
            product=v.product,
            hwid=hwid,
            tcb=tcb,
            content=der,
            valid_from=windows[-1][1],
            valid_until=windows[-1][2],
            root_kind=v.root,
            ark_spki_sha256=certs.spki_sha256(v.ark),
            intermediate_sha256=hashlib.sha256(v.intermediate.public_bytes(Encoding.DER)).hexdigest(),
            digest=_digest("snp_vcek", "vcek", v.product, der),
        )
    # The telling failure: of a chain that holds the VCEK's issuer, else the first.
    telling = next((e for e in errors if "names as its issuer among" not in e.detail), errors[0])
    chain_ders = tuple(d for c in candidates if c is not None for d in c)
    raise _untrusted(telling, chain_ders, dev_roots, where)


def _is_vlek(der: bytes) -> bool:
    try:
        cert = x509.load_der_x509_certificate(der)
    except X509_DECODE_ERRORS:
        return False
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return bool(cns) and cns[0].value == "SEV-VLEK"


def _crl_der(data: bytes) -> bytes | None:
    """The DER of a CRL file (DER or PEM), or None when it is not a CRL."""
    if data.lstrip().startswith(b"-----BEGIN X509 CRL-----"):
        try:
            return x509.load_pem_x509_crl(data).public_bytes(Encoding.DER)
        except X509_DECODE_ERRORS:
            raise CollateralError("not a readable PEM CRL") from None
    try:
        x509.load_der_x509_crl(data)
    except X509_DECODE_ERRORS:
        return None
    return bytes(data)


def snp_file_items(
    data: bytes,
    *,
    chains: Sequence[SnpItem] = (),
    dev_roots: Sequence[x509.Certificate] = (),
    crl_for: SigningKey | None = None,
) -> list[SnpItem]:
    """Verified items from one file as AMD's KDS serves it, recognised by content (never by name):
    a ``cert_chain`` (PEM: ASK/ASVK and ARK), a VCEK (DER or PEM; verified through ``chains`` or
    AMD's shipped ASK), or a CRL (DER or PEM; ``crl_for`` says which KDS URL it is from)."""
    crl = _crl_der(data)
    if crl is not None:
        if crl_for is None:
            raise InvalidInput(
                "an AMD CRL does not say whether it is /vcek/v1/{P}/crl or /vlek/v1/{P}/crl: "
                "give --crl-for vcek or --crl-for vlek",
                field="crl_for",
            )
        return [crl_item(crl, signing_key=crl_for, dev_roots=dev_roots)]
    if not data.lstrip().startswith(b"-----BEGIN"):
        try:
            x509.load_der_x509_certificate(data)
        except X509_DECODE_ERRORS:
            raise InvalidInput("neither a DER certificate nor a DER CRL", field="file") from None
    ders = _ders(data, "certificates")
    leaves = [d for d in ders if _looks_like_leaf(d)]
    if not leaves:
        return chain_items(ders, dev_roots=dev_roots)
    if len(ders) != 1:
        raise CollateralError(
            "a file holds either one VCEK or a cert_chain (ASK/ASVK and ARK), not both: "
            f"found {len(ders)} certificates, {len(leaves)} of them VCEK/VLEK"
        )
    if _is_vlek(ders[0]):
        raise CollateralError(
            "a VLEK is not cached: AMD's KDS does not serve VLEKs, the evidence carries its own "
            "(its ASVK+ARK chain and CRL are cached: /vlek/v1/{P}/cert_chain, /vlek/v1/{P}/crl)"
        )
    return [vcek_item(ders[0], chains=chains, dev_roots=dev_roots)]


def _looks_like_leaf(der: bytes) -> bool:
    try:
        cert = x509.load_der_x509_certificate(der)
    except X509_DECODE_ERRORS:
        return False
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return bool(cns) and cns[0].value in ("SEV-VCEK", "SEV-VLEK")


# --- reports ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportRef:
    """What a report says about the collateral it needs. Read from an **unverified** report: it
    only chooses what to ask for; whatever comes back is verified on its own, and again with the
    report when the report is verified."""

    product: Product
    signing_key: SigningKey
    #: VCEK reports: the hwID to ask for (CHIP_ID; Turin: its first 8 bytes). VLEK reports: None.
    hwid: bytes | None
    #: REPORTED_TCB, raw: the TCB the signing key was derived for.
    tcb: bytes

    @property
    def label(self) -> str:
        if self.hwid is None:
            return f"VLEK-signed {self.product} report, TCB {tcb_text(self.tcb, self.product)}"
        return label("snp_vcek", "vcek", self.product, self.hwid, self.tcb)


def read_report_bytes(data: bytes, where: str) -> bytes:
    """An ATTESTATION_REPORT from a file's bytes: the 1184 bytes, or their hex (whitespace allowed)."""
    if len(data) == REPORT_SIZE:
        return bytes(data)
    try:
        raw = bytes.fromhex(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raw = b""
    if len(raw) != REPORT_SIZE:
        raise InvalidInput(
            f"{where}: neither a {REPORT_SIZE}-byte ATTESTATION_REPORT nor its hex ({len(data)} bytes)",
            field="report",
        )
    return raw


def report_ref(raw: bytes, *, product: Product | None, where: str) -> ReportRef:
    """What to fetch for a report: its product (CPUID from version 3 on; ``product`` for version
    2, which names none), signing key, chip and REPORTED_TCB. ``InvalidInput`` when it cannot say."""
    try:
        unverified_report = parse_report(raw)
    except EvidenceParseError as exc:
        raise InvalidInput(f"{where}: {exc.detail}", field="report") from None
    named = unverified_report.cpuid_product
    if unverified_report.cpuid is not None and named is None:
        cpuid = unverified_report.cpuid
        raise InvalidInput(
            f"{where}: CPUID family 0x{cpuid.family:02x} model 0x{cpuid.model:02x} is not Milan, Genoa or Turin",
            field="report",
        )
    if named is not None and product is not None and named != product:
        raise InvalidInput(f"{where}: the report's CPUID says {named}, not {product}", field="product")
    chosen = named or product
    if chosen is None:
        raise InvalidInput(
            f"{where}: a version {unverified_report.version} report does not name its product: "
            "give --product Milan, Genoa or Turin",
            field="product",
        )
    kind = unverified_report.signing_key
    if kind is None or unverified_report.key_info.mask_chip_key:
        raise InvalidInput(f"{where}: the report is not signed (no VCEK or VLEK to fetch)", field="report")
    try:
        decode_tcb(unverified_report.reported_tcb, chosen, field="reported_tcb")
    except EvidenceParseError as exc:
        raise InvalidInput(f"{where}: {exc.detail} (is it a {chosen} report?)", field="report") from None
    hwid: bytes | None = None
    if kind == "vcek":
        chip = unverified_report.chip_id
        if not any(chip):
            raise InvalidInput(
                f"{where}: CHIP_ID is zero (masked by the host), so its VCEK cannot be asked for by chip: "
                "the evidence must carry the VCEK",
                field="report",
            )
        size = HWID_SIZE[chosen]
        if any(chip[size:]):
            raise InvalidInput(
                f"{where}: a {chosen} CHIP_ID uses bytes 0-{size - 1} only, but later bytes are not zero",
                field="report",
            )
        hwid = chip[:size]
    return ReportRef(product=chosen, signing_key=kind, hwid=hwid, tcb=unverified_report.reported_tcb)


# --- offline bundles --------------------------------------------------------------------------


def bundle_item_doc(item: SnpItem, source: str | None, imported_at: datetime | None) -> dict[str, Any]:
    """One bundle entry (``collateral export``): the content, then metadata that import checks."""
    doc: dict[str, Any] = {"kind": item.kind, "signing_key": item.signing_key, "product": item.product}
    if item.kind == "snp_vcek":
        assert item.hwid is not None and item.tcb is not None
        doc.update(hwid=item.hwid.hex(), tcb=item.tcb.hex(), certificate=_pem(item.content).decode())
    elif item.kind == "snp_cert_chain":
        doc["cert_chain"] = item.content.decode()
    else:
        doc["crl"] = item.content.hex()
    doc.update(
        digest=item.digest,
        valid_from=item.valid_from.isoformat(),
        valid_until=item.valid_until.isoformat(),
        root=item.root_kind,
        ark_spki_sha256=item.ark_spki_sha256,
    )
    if source is not None:
        doc["source"] = source
    if imported_at is not None:
        doc["imported_at"] = imported_at.isoformat()
    return doc


def _text(raw: dict[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise CollateralError(f"{where}.{key}: expected a string")
    return value


def _when(value: object, where: str) -> datetime:
    if not isinstance(value, str):
        raise CollateralError(f"{where}: expected an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CollateralError(f"{where}: not ISO 8601: {value!r}") from None
    if parsed.tzinfo is None:
        raise CollateralError(f"{where}: no timezone: {value!r}")
    return parsed


def _bundle_item(
    raw: dict[str, Any], chains: Sequence[SnpItem], dev_roots: Sequence[x509.Certificate], where: str
) -> SnpItem:
    unknown = set(raw) - _BUNDLE_KEYS
    if unknown:
        raise CollateralError(f"{where}: unknown members {sorted(unknown)}")
    kind = raw.get("kind")
    side = raw.get("signing_key")
    if side not in SIDES:
        raise CollateralError(f"{where}.signing_key: expected vcek or vlek, got {side!r}")
    if kind == "snp_cert_chain":
        found = chain_items(
            _text(raw, "cert_chain", where).encode(), dev_roots=dev_roots, where=f"{where}.cert_chain"
        )
        if len(found) != 1:
            raise CollateralError(f"{where}.cert_chain: holds {len(found)} intermediates, a bundle entry one")
        item = found[0]
    elif kind == "snp_crl":
        try:
            der = bytes.fromhex(_text(raw, "crl", where))
        except ValueError:
            raise CollateralError(f"{where}.crl: expected the hex of the DER") from None
        item = crl_item(der, signing_key=cast(SigningKey, side), dev_roots=dev_roots, where=f"{where}.crl")
    elif kind == "snp_vcek":
        ders = _ders(_text(raw, "certificate", where).encode(), f"{where}.certificate")
        if len(ders) != 1:
            raise CollateralError(f"{where}.certificate: expected one certificate, got {len(ders)}")
        item = vcek_item(ders[0], chains=chains, dev_roots=dev_roots, where=f"{where}.certificate")
    else:
        raise CollateralError(f"{where}.kind: {kind!r} is not snp_vcek, snp_cert_chain or snp_crl")
    # The declared identity must be the verified one: never two names for one thing.
    actual: dict[str, Any] = {
        "signing_key": item.signing_key,
        "product": item.product,
        "hwid": item.hwid.hex() if item.hwid is not None else None,
        "tcb": item.tcb.hex() if item.tcb is not None else None,
        "digest": item.digest,
        "root": item.root_kind,
        "ark_spki_sha256": item.ark_spki_sha256,
    }
    for key, value in actual.items():
        if key in raw and raw[key] != value:
            raise CollateralError(f"{where}.{key}: says {raw[key]!r} but the content is {value!r}")
    for key, real in (("valid_from", item.valid_from), ("valid_until", item.valid_until)):
        if key in raw and _when(raw[key], f"{where}.{key}") != real:
            raise CollateralError(f"{where}.{key}: says {raw[key]!r} but the content says {real.isoformat()}")
    return item


def items_from_bundle(
    entries: Sequence[tuple[int, Any]], *, dev_roots: Sequence[x509.Certificate] = ()
) -> list[SnpItem]:
    """Verified items from a bundle's SNP entries (``(index, entry)``; chains before VCEKs, so a
    VCEK of a dev root verifies through its bundled chain)."""

    def rank(entry: tuple[int, Any]) -> int:
        kind = entry[1].get("kind") if isinstance(entry[1], dict) else None
        return 0 if kind == "snp_cert_chain" else 1

    items: list[SnpItem] = []
    for index, raw in sorted(entries, key=rank):
        where = f"items[{index}]"
        if not isinstance(raw, dict):
            raise CollateralError(f"{where}: expected an object")
        chains = [i for i in items if i.kind == "snp_cert_chain"]
        items.append(_bundle_item(raw, chains, dev_roots, where))
    return items


def hex_or_none(value: str | None) -> bytes | None:
    """Hex from a row (None stays None)."""
    if value is None:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:  # pragma: no cover - only the store writes these
        raise CollateralError(f"stored value {value[:16]!r} is not hex") from None
