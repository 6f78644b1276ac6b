"""AMD's SEV-SNP key certificates: ARK -> ASK -> VCEK and ARK -> ASVK -> VLEK, to a pinned root.

Sources: AMD "Versioned Chip Endorsement Key (VCEK) Certificate and KDS Interface Specification"
(57230) for the certificate profile, names and the extensions under 1.3.6.1.4.1.3704.1; AMD's VLEK
certificate definition for the ASVK/VLEK variant (``cspID``); ``/work/shared/docs/tee-facts.md``
§2 and §7 (every fact there checked against the corpus), cross-checked with google/go-sev-guest
``verify/verify.go`` / ``kds/kds.go`` and confidential-containers/trustee ``deps/verifier/src/snp``.

Facts the code relies on:

* ARK (self-signed), ASK/ASVK: RSA-4096; VCEK/VLEK: ECDSA P-384. Every certificate is signed with
  RSASSA-PSS, SHA-384, MGF1-SHA-384, salt length 48 (other salt lengths do not verify).
* Names: ARK ``CN=ARK-{P}``, ASK ``CN=SEV-{P}``, ASVK ``CN=SEV-VLEK-{P}``, VCEK ``CN=SEV-VCEK``,
  VLEK ``CN=SEV-VLEK``, each with ``OU=Engineering, O=Advanced Micro Devices, L=Santa Clara,
  ST=CA, C=US``; P is Milan, Genoa or Turin.
* VCEKs have serial 0 and neither AKI nor SKI, so the chain is checked hop by hop (issuer name and
  signature), never by an RFC 5280 path builder.
* VCEK/VLEK extensions: ``.1`` structVersion (0 Milan/Genoa, 1 Turin), ``.2`` productName
  (IA5String, "Milan-B0", "Genoa", "Turin"; a VLEK says "Milan"), ``.3.1``-``.3.9`` SPLs as DER
  INTEGERs (blSPL, teeSPL, snpSPL, spl_4..7, ucodeSPL, fmcSPL on Turin), ``.4`` hwID (VCEK only:
  64 raw bytes, or a DER OCTET STRING of them; 8 raw bytes on Turin), ``.5`` cspID (VLEK only).

Trust: the ARK is trusted when its public key is one of the three pinned ones (:data:`ARK_SPKI_SHA256`)
or the key of an explicitly configured dev root (the simulator's; never trusted by default). The
certificates are decoded completely up front (``cryptography`` decodes lazily); one that does not
decode is a ``VerificationError`` of the check that reads it, never a bare ``ValueError``.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache, lru_cache
from importlib import resources
from typing import Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtensionOID, NameOID, SignatureAlgorithmOID

from keybroker.errors import EvidenceParseError, VerificationError
from keybroker.tee.snp.abi import PRODUCTS, Product, SigningKey, Tcb
from keybroker.tee.x509 import (
    X509_DECODE_ERRORS,
    Window,
    check_validity,
    decode_certificate,
    decode_crl,
    format_time,
    split_pem_chain,
)

__all__ = [
    "AMD_LOCATION",
    "ARK_SPKI_SHA256",
    "RSA_PSS_SHA384",
    "AmdExtensions",
    "PinnedProduct",
    "RootKind",
    "VerifiedChain",
    "VerifiedCrl",
    "VerifiedIntermediate",
    "amd_roots",
    "check_crls",
    "check_validity",
    "load_certificate_ders",
    "parse_amd_extensions",
    "spki_sha256",
    "verify_cert_chain",
    "verify_chain",
    "verify_crl",
]

RootKind = Literal["amd", "dev"]

#: SHA-256 of the SubjectPublicKeyInfo DER of AMD's root keys (tee-facts.md §2, checked on the corpus).
ARK_SPKI_SHA256: Final[Mapping[Product, str]] = {
    "Milan": "9f056bee44377e29308cb5ffa895bdfb62d18881fa6bed8d6f075b0204089cb9",
    "Genoa": "429a69c9422aa258ee4d8db5fcda9c6470ef15f8cd5a9cebd6cbc7d90b863831",
    "Turin": "4f125410563a2ab9a50356f9243f6fe0b6f73de98603f53f90339c70e9d7ad08",
}

#: The name attributes, other than CN, of every certificate in AMD's chains.
AMD_LOCATION: Final = (
    ("C", "US"),
    ("L", "Santa Clara"),
    ("O", "Advanced Micro Devices"),
    ("OU", "Engineering"),
    ("ST", "CA"),
)

#: AMD's one signature scheme for ARK, ASK, ASVK, VCEK, VLEK and the CRLs.
RSA_PSS_SHA384: Final = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_RSA_BITS: Final = 4096

_AMD: Final = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION: Final = _AMD + ".1"
OID_PRODUCT_NAME: Final = _AMD + ".2"
OID_BL_SPL: Final = _AMD + ".3.1"
OID_TEE_SPL: Final = _AMD + ".3.2"
OID_SNP_SPL: Final = _AMD + ".3.3"
OID_SPL_4: Final = _AMD + ".3.4"
OID_SPL_5: Final = _AMD + ".3.5"
OID_SPL_6: Final = _AMD + ".3.6"
OID_SPL_7: Final = _AMD + ".3.7"
OID_UCODE_SPL: Final = _AMD + ".3.8"
OID_FMC_SPL: Final = _AMD + ".3.9"
OID_HWID: Final = _AMD + ".4"
OID_CSP_ID: Final = _AMD + ".5"
_RESERVED_SPLS: Final = (OID_SPL_4, OID_SPL_5, OID_SPL_6, OID_SPL_7)
_KNOWN_AMD_OIDS: Final = frozenset(
    {
        OID_STRUCT_VERSION,
        OID_PRODUCT_NAME,
        OID_BL_SPL,
        OID_TEE_SPL,
        OID_SNP_SPL,
        *_RESERVED_SPLS,
        OID_UCODE_SPL,
        OID_FMC_SPL,
        OID_HWID,
        OID_CSP_ID,
    }
)
#: structVersion of the extension layout per product (Turin added fmcSPL and the 8-byte hwID).
_STRUCT_VERSION: Final[Mapping[Product, int]] = {"Milan": 0, "Genoa": 0, "Turin": 1}
_KNOWN_CRITICAL: Final = frozenset({ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE})
_ATTR_NAMES: Final = {
    NameOID.COMMON_NAME: "CN",
    NameOID.COUNTRY_NAME: "C",
    NameOID.LOCALITY_NAME: "L",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
}

_Window = Window

# Every VCEK and VLEK has serial number 0, which cryptography 50 parses with a deprecation warning
# (and says a future release will refuse: mind the pin in pyproject.toml). Silenced here for the
# one decoder these certificates go through (``tee.x509.decode_certificate``), by a filter set once:
# ``warnings.catch_warnings`` around each call would not be thread-safe.
warnings.filterwarnings(
    "ignore",
    message="Parsed a serial number which wasn't positive",
    category=CryptographyDeprecationWarning,
    module=r"keybroker\.tee\.x509",
)


# --- decoding ----------------------------------------------------------------------------------


def _decode(der: bytes, what: str, check: str) -> x509.Certificate:
    """Decode every field of a DER certificate now, or raise ``VerificationError(check)``."""
    try:
        cert = decode_certificate(der)
        _ = (cert.signature_hash_algorithm, cert.signature_algorithm_parameters)
        return cert
    except X509_DECODE_ERRORS as exc:
        raise VerificationError(f"{what}: undecodable certificate ({exc})", check=check) from None


def _der_of(cert: bytes | x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER) if isinstance(cert, x509.Certificate) else bytes(cert)


def spki_sha256(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's SubjectPublicKeyInfo DER, lowercase hex."""
    return hashlib.sha256(
        cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    ).hexdigest()


def load_certificate_ders(data: bytes, *, field: str = "certificates") -> tuple[bytes, ...]:
    """Certificates from a file's bytes: one DER certificate, or PEM blocks (AMD's ``cert_chain``)."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return split_pem_chain(data, field=field)
    if not data.startswith(b"\x30"):
        raise EvidenceParseError(f"{field}: neither PEM nor a DER certificate", field=field)
    return (bytes(data),)


def _cn(name: x509.Name) -> str:
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if len(cns) == 1 else name.rfc4514_string()


def _name_parts(name: x509.Name, what: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """(CN, the other attributes sorted): every RDN single-valued, each attribute once, known types."""
    seen: dict[str, str] = {}
    for rdn in name.rdns:
        attrs = list(rdn)
        if len(attrs) != 1:
            raise VerificationError(
                f"{what}: multi-valued RDN in {name.rfc4514_string()!r}", check="cert_chain"
            )
        attr = attrs[0]
        short = _ATTR_NAMES.get(attr.oid)
        if short is None or short in seen:
            raise VerificationError(
                f"{what}: unexpected or repeated name attribute {attr.oid.dotted_string} in "
                f"{name.rfc4514_string()!r}",
                check="cert_chain",
            )
        seen[short] = str(attr.value)
    if "CN" not in seen:
        raise VerificationError(f"{what}: no CN in {name.rfc4514_string()!r}", check="cert_chain")
    cn = seen.pop("CN")
    return cn, tuple(sorted(seen.items()))


# --- the pinned roots --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PinnedProduct:
    """AMD's certificates for one product, shipped in ``roots/`` and checked on first use."""

    product: Product
    ark: x509.Certificate
    ask: x509.Certificate
    asvk: x509.Certificate


def _pss_verify(issuer: x509.Certificate, signature: bytes, data: bytes) -> bool:
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        return False
    try:
        key.verify(signature, data, RSA_PSS_SHA384, hashes.SHA384())
    except InvalidSignature:
        return False
    return True


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, end) of the DER element at ``pos`` (short or long definite length)."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    first = data[pos + 1]
    start = pos + 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if not 1 <= n <= 3 or start + n > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[start : start + n], "big")
        start += n
    if start + length > len(data):
        raise ValueError("DER element runs past the end")
    return data[pos], start, start + length


def _same_algorithm(signed: bytes, tbs: bytes, *, first_optional: int) -> bool:
    """The outer signatureAlgorithm equals the one inside the signed part, byte for byte (RFC 5280
    4.1.1.2 / 5.1.1.2). ``signed`` is a certificate or CRL; ``first_optional`` the tag of the optional
    field before the inner AlgorithmIdentifier (certificate: [0] version; CRL: INTEGER version).

    The signature is checked with AMD's fixed PSS parameters, so the outer copy is otherwise
    never read: without this, it could be edited and the certificate would still verify.
    """
    try:
        _, body, _ = _tlv(signed, 0)
        if signed[body : body + len(tbs)] != tbs:
            return False
        _, _, alg_end = _tlv(signed, body + len(tbs))
        outer = signed[body + len(tbs) : alg_end]
        _, pos, _ = _tlv(tbs, 0)
        tag, _, end = _tlv(tbs, pos)
        if tag == first_optional:
            pos = end
            tag, _, end = _tlv(tbs, pos)
        if first_optional == 0xA0:  # certificate: the serial number comes before the algorithm
            pos = end
        _, _, end = _tlv(tbs, pos)
        return tbs[pos:end] == outer
    except ValueError:
        return False


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """``cert`` names ``issuer`` as its issuer, both copies of its signature algorithm agree, and its
    signature verifies with AMD's PSS parameters."""
    return (
        cert.issuer == issuer.subject
        and _same_algorithm(cert.public_bytes(Encoding.DER), cert.tbs_certificate_bytes, first_optional=0xA0)
        and _pss_verify(issuer, cert.signature, cert.tbs_certificate_bytes)
    )


def _read_root(name: str) -> x509.Certificate:
    pem = resources.files("keybroker.tee.snp").joinpath(f"roots/{name}.pem").read_bytes()
    (der,) = split_pem_chain(pem, field=name)
    return _decode(der, name, "cert_chain")


@cache
def amd_roots() -> Mapping[Product, PinnedProduct]:
    """The shipped AMD certificates per product, each ARK checked against its pinned key."""
    out: dict[Product, PinnedProduct] = {}
    for product in PRODUCTS:
        low = product.lower()
        ark, ask, asvk = (_read_root(f"{role}-{low}") for role in ("ark", "ask", "asvk"))
        if spki_sha256(ark) != ARK_SPKI_SHA256[product]:  # pragma: no cover - packaging error
            raise RuntimeError(f"shipped ARK-{product} does not have the pinned public key")
        for cert in (ark, ask, asvk):
            if not _signed_by(cert, ark) or _name_parts(cert.subject, product)[1] != AMD_LOCATION:
                raise RuntimeError(f"shipped {_cn(cert.subject)} is not AMD's")  # pragma: no cover
        out[product] = PinnedProduct(product, ark, ask, asvk)
    return out


@cache
def _pinned_spkis() -> Mapping[str, Product]:
    return {digest: product for product, digest in ARK_SPKI_SHA256.items()}


# --- the VCEK/VLEK extensions ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AmdExtensions:
    """The AMD extensions of a VCEK or VLEK. ``tcb`` is the TCB the key was derived for."""

    struct_version: int
    product_name: str
    product: Product
    tcb: Tcb
    #: VCEK: the chip's hwID (64 bytes; 8 on Turin). VLEK: None.
    hwid: bytes | None
    #: VLEK: the cloud provider the key was issued to. VCEK: None.
    csp_id: str | None


def _ext_fail(detail: str) -> VerificationError:
    return VerificationError(f"VCEK/VLEK extension: {detail}", check="vcek_extensions")


def _der_single(value: bytes, tag: int, what: str) -> bytes:
    """The content of ``value``, which must be exactly one DER TLV with ``tag`` (minimal length)."""
    if len(value) < 2 or value[0] != tag:
        raise _ext_fail(f"{what}: expected DER tag 0x{tag:02x}, found {value[:2].hex() or 'nothing'}")
    first = value[1]
    pos = 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 2 or len(value) < 2 + n:
            raise _ext_fail(f"{what}: bad DER length")
        length = int.from_bytes(value[2 : 2 + n], "big")
        if length < 0x80 or value[2] == 0:
            raise _ext_fail(f"{what}: non-minimal DER length")
        pos = 2 + n
    if pos + length != len(value):
        raise _ext_fail(f"{what}: DER length {length} does not cover the value ({len(value) - pos} bytes)")
    return value[pos:]


def _der_uint8(value: bytes, what: str) -> int:
    content = _der_single(value, 0x02, what)
    if not content or content[0] & 0x80:
        raise _ext_fail(f"{what}: not a non-negative INTEGER")
    if len(content) > 1 and content[0] == 0 and not content[1] & 0x80:
        raise _ext_fail(f"{what}: non-minimal INTEGER")
    number = int.from_bytes(content, "big")
    if number > 0xFF:
        raise _ext_fail(f"{what}: {number} does not fit a TCB_VERSION byte")
    return number


def _der_ia5(value: bytes, what: str) -> str:
    content = _der_single(value, 0x16, what)
    if not content or any(b < 0x20 or b > 0x7E for b in content):
        raise _ext_fail(f"{what}: not a printable IA5String")
    return content.decode("ascii")


def _hwid(value: bytes, product: Product) -> bytes:
    """hwID: raw bytes (AMD's VCEKs) or a DER OCTET STRING of them; 64 bytes, 8 on Turin."""
    size = 8 if product == "Turin" else 64
    if len(value) == size:
        return value
    if len(value) == size + 2 and value[0] == 0x04 and value[1] == size:
        return value[2:]
    raise _ext_fail(
        f"hwID is {len(value)} bytes; a {product} VCEK's is {size} (raw or as a DER OCTET STRING)"
    )


def parse_amd_extensions(cert: x509.Certificate, kind: SigningKey, product: Product) -> AmdExtensions:
    """Read and check the AMD extensions of a VCEK (``kind`` "vcek") or VLEK ("vlek") of ``product``.

    Every AMD OID present must be one this code knows; SPLs are DER INTEGERs of one byte; the
    reserved SPLs (spl_4..7) must be zero when present (their TCB_VERSION bytes are reserved),
    Turin has no spl_4; hwID only on a VCEK, cspID only on a VLEK. ``VerificationError(check=
    "vcek_extensions")`` on any deviation, ``check="product"`` if productName names another product.
    """
    amd: dict[str, bytes] = {}
    for ext in cert.extensions:
        oid = ext.oid.dotted_string
        if oid == _AMD or oid.startswith(_AMD + "."):
            if oid not in _KNOWN_AMD_OIDS:
                raise _ext_fail(f"unknown AMD extension {oid}")
            value = ext.value
            if not isinstance(value, x509.UnrecognizedExtension):  # pragma: no cover - defensive
                raise _ext_fail(f"{oid} is not an opaque extension")
            amd[oid] = value.value

    def need(oid: str, what: str) -> bytes:
        if oid not in amd:
            raise _ext_fail(f"{what} ({oid}) is missing")
        return amd[oid]

    struct_version = _der_uint8(need(OID_STRUCT_VERSION, "structVersion"), "structVersion")
    product_name = _der_ia5(need(OID_PRODUCT_NAME, "productName"), "productName")
    named = product_name.split("-", 1)[0]
    if named != product:
        raise VerificationError(
            f"the {kind.upper()}'s productName {product_name!r} is not {product}, the product of its chain",
            check="product",
        )
    if struct_version != _STRUCT_VERSION[product]:
        raise _ext_fail(
            f"structVersion {struct_version} is not {_STRUCT_VERSION[product]}, the extension layout of {product}"
        )
    turin = product == "Turin"
    if turin and OID_SPL_4 in amd:
        raise _ext_fail(f"a Turin certificate has no spl_4 ({OID_SPL_4})")
    if not turin and OID_FMC_SPL in amd:
        raise _ext_fail(f"a {product} certificate has no fmcSPL ({OID_FMC_SPL})")
    for oid in _RESERVED_SPLS:
        if oid in amd and _der_uint8(amd[oid], f"spl_{oid[-1]}") != 0:
            raise _ext_fail(f"spl_{oid[-1]} is not zero, but its TCB_VERSION byte is reserved")
    tcb = Tcb(
        bootloader=_der_uint8(need(OID_BL_SPL, "blSPL"), "blSPL"),
        tee=_der_uint8(need(OID_TEE_SPL, "teeSPL"), "teeSPL"),
        snp=_der_uint8(need(OID_SNP_SPL, "snpSPL"), "snpSPL"),
        microcode=_der_uint8(need(OID_UCODE_SPL, "ucodeSPL"), "ucodeSPL"),
        fmc=_der_uint8(need(OID_FMC_SPL, "fmcSPL"), "fmcSPL") if turin else None,
    )
    hwid: bytes | None = None
    csp_id: str | None = None
    if kind == "vcek":
        if OID_CSP_ID in amd:
            raise _ext_fail("a VCEK has no cspID (this is a VLEK)")
        hwid = _hwid(need(OID_HWID, "hwID"), product)
    else:
        if OID_HWID in amd:
            raise _ext_fail("a VLEK has no hwID")
        csp_id = _der_ia5(need(OID_CSP_ID, "cspID"), "cspID")
    return AmdExtensions(
        struct_version=struct_version,
        product_name=product_name,
        product=product,
        tcb=tcb,
        hwid=hwid,
        csp_id=csp_id,
    )


# --- the chain ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedChain:
    """A VCEK/VLEK whose chain verified to a trusted ARK (time not yet checked: see ``windows``)."""

    product: Product
    kind: SigningKey
    root: RootKind
    ark: x509.Certificate
    intermediate: x509.Certificate
    leaf: x509.Certificate
    leaf_key: ec.EllipticCurvePublicKey
    ext: AmdExtensions
    windows: tuple[_Window, ...]
    #: SHA-256 of the leaf certificate's DER.
    leaf_sha256: str


def _fail(detail: str) -> VerificationError:
    return VerificationError(detail, check="cert_chain")


def _profile(cert: x509.Certificate, what: str, *, ca: bool) -> None:
    """Version, signature scheme, key type and size, basic constraints, critical extensions."""
    if cert.version != x509.Version.v3:
        raise _fail(f"{what} is not an X.509 v3 certificate")
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS or not isinstance(
        cert.signature_hash_algorithm, hashes.SHA384
    ):
        raise _fail(f"{what} is not signed with RSASSA-PSS SHA-384")
    key = cert.public_key()
    for ext in cert.extensions:
        if ext.critical and ext.oid not in _KNOWN_CRITICAL:
            raise _fail(f"{what} has an unknown critical extension {ext.oid.dotted_string}")
    try:
        bc: x509.BasicConstraints | None = cert.extensions.get_extension_for_class(
            x509.BasicConstraints
        ).value
    except x509.ExtensionNotFound:
        bc = None
    if ca:
        if not isinstance(key, rsa.RSAPublicKey) or key.key_size != _RSA_BITS:
            raise _fail(f"{what} does not have an RSA-{_RSA_BITS} key")
        if bc is None or not bc.ca:
            raise _fail(f"{what} is not a CA certificate")
        try:
            ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            ku = None
        if ku is None or not ku.key_cert_sign:
            raise _fail(f"{what} may not sign certificates (keyUsage)")
    else:
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
            raise _fail(f"{what} does not have an ECDSA P-384 key")
        if bc is not None and bc.ca:
            raise _fail(f"{what} is a CA certificate")


def _product_of(cn: str, prefix: str, what: str) -> Product:
    if cn.startswith(prefix):
        name = cn[len(prefix) :]
        for product in PRODUCTS:
            if name == product:
                return product
    raise _fail(f"{what} CN {cn!r} is not {prefix}{{Milan,Genoa,Turin}}")


@dataclass(frozen=True, slots=True)
class _Root:
    cert: x509.Certificate
    kind: RootKind
    product: Product
    spki: str


@lru_cache(maxsize=16)
def _dev_roots(ders: tuple[bytes, ...]) -> tuple[_Root, ...]:
    """Check each configured dev root: a self-signed ARK-{P} with AMD's profile (but its own names)."""
    out: list[_Root] = []
    for i, der in enumerate(ders):
        cert = _decode(der, f"dev root [{i}]", "cert_chain")
        cn, _ = _name_parts(cert.subject, f"dev root [{i}]")
        product = _product_of(cn, "ARK-", f"dev root [{i}]")
        _profile(cert, f"dev root {cn!r}", ca=True)
        if not _signed_by(cert, cert):
            raise _fail(f"dev root {cn!r} is not self-signed with RSASSA-PSS SHA-384 salt 48")
        spki = spki_sha256(cert)
        kind: RootKind = "amd" if spki in _pinned_spkis() else "dev"
        out.append(_Root(cert, kind, product, spki))
    return tuple(out)


def _trusted_roots(dev_root_ders: tuple[bytes, ...]) -> tuple[_Root, ...]:
    pinned = tuple(
        _Root(p.ark, "amd", product, ARK_SPKI_SHA256[product]) for product, p in amd_roots().items()
    )
    return pinned + _dev_roots(dev_root_ders)


def _root_of(
    intermediate: x509.Certificate, product: Product, dev_root_ders: tuple[bytes, ...]
) -> _Root | None:
    """The trusted ARK of ``product`` (pinned, or a configured dev root) that signed ``intermediate``."""
    return next(
        (
            r
            for r in _trusted_roots(dev_root_ders)
            if r.cert.subject == intermediate.issuer
            and r.product == product
            and _signed_by(intermediate, r.cert)
        ),
        None,
    )


def _window(cert: x509.Certificate, what: str) -> _Window:
    return (what, cert.not_valid_before_utc, cert.not_valid_after_utc)


def _verify_chain_uncached(
    leaf_der: bytes, chain_ders: tuple[bytes, ...] | None, kind: SigningKey, dev_root_ders: tuple[bytes, ...]
) -> VerifiedChain:
    leaf_cn = "SEV-VCEK" if kind == "vcek" else "SEV-VLEK"
    mid_prefix = "SEV-" if kind == "vcek" else "SEV-VLEK-"
    mid_role = "ASK" if kind == "vcek" else "ASVK"

    # (a) The leaf: AMD's profile and name, and the product its issuer names.
    leaf = _decode(leaf_der, kind.upper(), "cert_chain")
    cn, leaf_location = _name_parts(leaf.subject, kind.upper())
    if cn != leaf_cn:
        raise _fail(
            f"the report is signed by a {kind.upper()} but the certificate's CN is {cn!r}, not {leaf_cn!r}"
        )
    _profile(leaf, leaf_cn, ca=False)
    issuer_cn, issuer_location = _name_parts(leaf.issuer, f"{leaf_cn} issuer")
    product = _product_of(issuer_cn, mid_prefix, f"{leaf_cn}'s issuer")

    # (b) The intermediate: the one given (or shipped) certificate named as the leaf's issuer.
    candidates: tuple[x509.Certificate, ...]
    if chain_ders is None:
        pinned = amd_roots()[product]
        candidates = (pinned.ask if kind == "vcek" else pinned.asvk,)
    else:
        candidates = tuple(_decode(d, f"chain[{i}]", "cert_chain") for i, d in enumerate(chain_ders))
    matches = {c.public_bytes(Encoding.DER): c for c in candidates if c.subject == leaf.issuer}
    if not matches:
        among = (
            "AMD's shipped certificates"
            if chain_ders is None
            else f"the {len(candidates)} chain certificate(s)"
        )
        raise _fail(
            f"no {mid_role} {issuer_cn!r} with the name the {leaf_cn} names as its issuer among {among}"
        )
    if len(matches) > 1:
        raise _fail(f"{len(matches)} different certificates named {issuer_cn!r} in the chain")
    (intermediate,) = matches.values()
    _profile(intermediate, f"{mid_role} {issuer_cn!r}", ca=True)
    if not _signed_by(leaf, intermediate):
        raise _fail(f"{leaf_cn} is not signed by {issuer_cn!r} (RSASSA-PSS SHA-384 salt 48)")

    # (c) The root: a pinned AMD ARK or a configured dev root whose key signed the intermediate.
    ark_cn, ark_location = _name_parts(intermediate.issuer, f"{issuer_cn} issuer")
    if ark_cn != f"ARK-{product}":
        raise _fail(f"{issuer_cn!r} is issued by {ark_cn!r}, not ARK-{product}")
    root = _root_of(intermediate, product, dev_root_ders)
    if root is None:
        raise _fail(
            f"{issuer_cn!r} is not signed by a trusted ARK-{product} (AMD's pinned key or a configured dev root)"
        )
    # Every other certificate given must be this ARK or the other intermediate under it (AMD's
    # combined files hold ASK, ARK and ASVK): nothing is passed over unchecked.
    if chain_ders is not None:
        other_cn = f"SEV-VLEK-{product}" if kind == "vcek" else f"SEV-{product}"
        for i, c in enumerate(candidates):
            if c == intermediate or c == leaf:
                continue
            if c.subject == intermediate.issuer:
                if spki_sha256(c) != root.spki:
                    raise _fail(
                        f"the chain's ARK-{product} has key sha256 {spki_sha256(c)[:16]}…, not the trusted "
                        f"{root.kind} ARK-{product} ({root.spki[:16]}…)"
                    )
                if not _signed_by(c, c):
                    raise _fail(f"the chain's ARK-{product} is not validly self-signed")
            elif _cn(c.subject) == other_cn and _signed_by(c, root.cert):
                _profile(c, other_cn, ca=True)
            else:
                raise _fail(
                    f"chain[{i}] {_cn(c.subject)!r} is neither ARK-{product} nor an intermediate it signed"
                )

    # (d) Names: every name has the root's attributes besides CN (for AMD's ARKs: AMD's location).
    _, root_location = _name_parts(root.cert.subject, f"ARK-{product}")
    if root.kind == "amd" and root_location != AMD_LOCATION:  # pragma: no cover - pinned certificates
        raise _fail(f"ARK-{product} does not carry AMD's name")
    _, mid_location = _name_parts(intermediate.subject, issuer_cn)
    for what, location in (
        (f"{leaf_cn} subject", leaf_location),
        (f"{leaf_cn} issuer", issuer_location),
        (f"{issuer_cn} subject", mid_location),
        (f"{issuer_cn} issuer", ark_location),
    ):
        if location != root_location:
            raise _fail(
                f"{what} has name attributes {dict(location)}, not those of ARK-{product} {dict(root_location)}"
            )

    # (e) The AMD extensions, read for the chain's product.
    ext = parse_amd_extensions(leaf, kind, product)
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)  # _profile
    return VerifiedChain(
        product=product,
        kind=kind,
        root=root.kind,
        ark=root.cert,
        intermediate=intermediate,
        leaf=leaf,
        leaf_key=key,
        ext=ext,
        windows=(
            _window(root.cert, f"ARK-{product}"),
            _window(intermediate, f"{mid_role} {issuer_cn!r}"),
            _window(leaf, leaf_cn),
        ),
        leaf_sha256=hashlib.sha256(leaf_der).hexdigest(),
    )


@lru_cache(maxsize=1024)
def _verify_chain(
    leaf_der: bytes, chain_ders: tuple[bytes, ...] | None, kind: SigningKey, dev_root_ders: tuple[bytes, ...]
) -> VerifiedChain:
    return _verify_chain_uncached(leaf_der, chain_ders, kind, dev_root_ders)


def verify_chain(
    leaf: bytes | x509.Certificate,
    chain: Sequence[bytes | x509.Certificate] | None,
    *,
    kind: SigningKey,
    dev_roots: Sequence[x509.Certificate] = (),
) -> VerifiedChain:
    """Verify a VCEK (``kind`` "vcek") or VLEK ("vlek") up to a trusted ARK; time is not checked.

    ``chain`` holds AMD's ``cert_chain`` (ASK or ASVK, and optionally the ARK, in any order; the
    leaf itself and the other intermediate may be there too: each is checked), or None to use the
    shipped ASK/ASVK. An
    ARK in ``chain`` must have the trusted key; the trusted ARK is always the pinned (or dev root)
    certificate. Time-independent: cached by the certificates' bytes. Raises ``VerificationError``
    with ``check`` "cert_chain", "vcek_extensions" or "product".
    """
    chain_ders = None if chain is None else tuple(_der_of(c) for c in chain)
    dev = tuple(_der_of(c) for c in dev_roots)
    return _verify_chain(_der_of(leaf), chain_ders, kind, dev)


@dataclass(frozen=True, slots=True)
class VerifiedIntermediate:
    """An ASK (it issues VCEKs) or an ASVK (VLEKs) verified to a trusted ARK; time not checked."""

    product: Product
    #: The leaves it issues: "vcek" for an ASK, "vlek" for an ASVK.
    kind: SigningKey
    root: RootKind
    #: The trusted ARK certificate (the pinned one, or the configured dev root), whatever was given.
    ark: x509.Certificate
    intermediate: x509.Certificate
    windows: tuple[_Window, ...]
    #: SHA-256 of the ARK's SubjectPublicKeyInfo DER (:data:`ARK_SPKI_SHA256` for AMD's).
    ark_spki_sha256: str
    #: SHA-256 of the intermediate certificate's DER.
    intermediate_sha256: str


def _intermediate_kind(cn: str, what: str) -> tuple[SigningKey, Product]:
    if cn.startswith("SEV-VLEK-"):
        return "vlek", _product_of(cn, "SEV-VLEK-", what)
    return "vcek", _product_of(cn, "SEV-", what)


def _verify_cert_chain_uncached(
    ders: tuple[bytes, ...], dev_root_ders: tuple[bytes, ...]
) -> tuple[VerifiedIntermediate, ...]:
    if not ders:
        raise _fail("the cert_chain holds no certificate")
    unique: dict[bytes, int] = {}
    for i, der in enumerate(ders):
        unique.setdefault(der, i)
    arks: list[tuple[int, Product, x509.Certificate]] = []
    mids: list[tuple[int, SigningKey, Product, x509.Certificate]] = []
    for der, i in unique.items():
        what = f"cert_chain[{i}]"
        cert = _decode(der, what, "cert_chain")
        cn, _ = _name_parts(cert.subject, what)
        if cn.startswith("ARK-"):
            arks.append((i, _product_of(cn, "ARK-", what), cert))
        elif cn.startswith("SEV-"):
            kind, product = _intermediate_kind(cn, what)
            mids.append((i, kind, product, cert))
        else:
            raise _fail(f"{what} {cn!r} is neither an ARK, an ASK nor an ASVK")
    products = sorted({p for _, p, _ in arks} | {p for _, _, p, _ in mids})
    if len(products) != 1:
        raise _fail(f"the cert_chain mixes products: {', '.join(products)}")
    if not mids:
        raise _fail("the cert_chain holds no ASK or ASVK")
    out: list[VerifiedIntermediate] = []
    for i, kind, product, mid in mids:
        role = "ASK" if kind == "vcek" else "ASVK"
        cn = _cn(mid.subject)
        if any(v.kind == kind for v in out):
            raise _fail(f"the cert_chain holds two different {role}s (cert_chain[{i}] {cn!r} is the second)")
        _profile(mid, f"{role} {cn!r}", ca=True)
        ark_cn, ark_location = _name_parts(mid.issuer, f"{cn} issuer")
        if ark_cn != f"ARK-{product}":
            raise _fail(f"{cn!r} is issued by {ark_cn!r}, not ARK-{product}")
        root = _root_of(mid, product, dev_root_ders)
        if root is None:
            raise _fail(
                f"{cn!r} is not signed by a trusted ARK-{product} (AMD's pinned key or a configured dev root)"
            )
        _, root_location = _name_parts(root.cert.subject, f"ARK-{product}")
        _, mid_location = _name_parts(mid.subject, cn)
        for where, location in ((f"{cn} subject", mid_location), (f"{cn} issuer", ark_location)):
            if location != root_location:
                raise _fail(
                    f"{where} has name attributes {dict(location)}, not those of ARK-{product} {dict(root_location)}"
                )
        mid_der = mid.public_bytes(Encoding.DER)
        out.append(
            VerifiedIntermediate(
                product=product,
                kind=kind,
                root=root.kind,
                ark=root.cert,
                intermediate=mid,
                windows=(_window(root.cert, f"ARK-{product}"), _window(mid, f"{role} {cn!r}")),
                ark_spki_sha256=root.spki,
                intermediate_sha256=hashlib.sha256(mid_der).hexdigest(),
            )
        )
    # An ARK that came along must be the trusted ARK of what it came with, validly self-signed.
    for i, product, ark in arks:
        spki = spki_sha256(ark)
        if not any(v.ark_spki_sha256 == spki for v in out):
            raise _fail(
                f"cert_chain[{i}] ARK-{product} has key sha256 {spki[:16]}…, not that of the trusted "
                f"ARK-{product} that signed the cert_chain's {'/'.join(sorted({_cn(v.intermediate.subject) for v in out}))}"
            )
        if not _signed_by(ark, ark):
            raise _fail(f"cert_chain[{i}] ARK-{product} is not validly self-signed")
    return tuple(out)


@lru_cache(maxsize=64)
def _verify_cert_chain(
    ders: tuple[bytes, ...], dev_root_ders: tuple[bytes, ...]
) -> tuple[VerifiedIntermediate, ...]:
    return _verify_cert_chain_uncached(ders, dev_root_ders)


def verify_cert_chain(
    chain: Sequence[bytes | x509.Certificate], *, dev_roots: Sequence[x509.Certificate] = ()
) -> tuple[VerifiedIntermediate, ...]:
    """Verify AMD's ``cert_chain`` on its own, before a leaf is in hand (the KDS cache stores it).

    ``chain``: ASK and/or ASVK, optionally the ARK, in any order, of one product (``/vcek/v1/{P}/
    cert_chain`` is ASK, ARK; ``/vlek/v1/{P}/cert_chain`` ASVK, ARK; AMD's combined files hold all
    three). Each intermediate gets the checks :func:`verify_chain` gives it: AMD's names and profile,
    issued and signed (RSASSA-PSS SHA-384 salt 48) by a trusted ARK of its product, the ARK's name
    attributes; an ARK given must have that trusted ARK's key and be validly self-signed; anything
    else is refused, as are two different intermediates of one kind. Time is not checked (see
    ``windows``). Cached by the certificates' bytes. Raises ``VerificationError(check="cert_chain")``.
    """
    ders = tuple(_der_of(c) for c in chain)
    return _verify_cert_chain(ders, tuple(_der_of(c) for c in dev_roots))


# --- revocation and time -----------------------------------------------------------------------


@lru_cache(maxsize=64)
def _crl(der: bytes, index: int) -> x509.CertificateRevocationList:
    try:
        return decode_crl(der)
    except X509_DECODE_ERRORS as exc:
        raise VerificationError(f"crls[{index}]: undecodable CRL ({exc})", check="crl") from None


@lru_cache(maxsize=64)
def _crl_signed_by(crl_der: bytes, ark_der: bytes) -> bool:
    crl = x509.load_der_x509_crl(crl_der)
    ark = x509.load_der_x509_certificate(ark_der)
    return (
        crl.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS
        and _same_algorithm(crl_der, crl.tbs_certlist_bytes, first_optional=0x02)
        and _pss_verify(ark, crl.signature, crl.tbs_certlist_bytes)
    )


def check_crls(
    chain: VerifiedChain,
    crls: Sequence[bytes | x509.CertificateRevocationList],
    *,
    at: datetime,
    require: bool = False,
) -> tuple[_Window, ...]:
    """Apply the CRLs that the chain's ARK issued (AMD's ``/vcek/v1/{P}/crl`` and ``/vlek/v1/{P}/crl``).

    A CRL whose issuer name is the ARK's must be signed by the ARK (RSASSA-PSS SHA-384 salt 48) and
    current at ``at`` (thisUpdate <= at <= nextUpdate); the intermediate (ASK or ASVK) must not be
    on it. AMD's ARK CRLs list intermediates only (AMD does not revoke VCEKs). CRLs of other issuers
    are ignored; with ``require`` at least one must apply. Returns their validity windows.
    """
    if not crls:
        if require:
            raise _no_crl(chain)
        return ()
    ark_der = chain.ark.public_bytes(Encoding.DER)
    ark_cn = _cn(chain.ark.subject)
    applied: list[_Window] = []
    for i, item in enumerate(crls):
        der = (
            item.public_bytes(Encoding.DER)
            if isinstance(item, x509.CertificateRevocationList)
            else bytes(item)
        )
        crl = _crl(der, i)
        if crl.issuer != chain.ark.subject:
            continue
        if not _crl_signed_by(der, ark_der):
            raise VerificationError(
                f"crls[{i}] names {ark_cn} as its issuer but is not signed by its key (RSASSA-PSS SHA-384 salt 48)",
                check="crl",
            )
        next_update = crl.next_update_utc
        if next_update is None:
            raise VerificationError(f"crls[{i}] ({ark_cn}) has no nextUpdate", check="crl")
        if not crl.last_update_utc <= at <= next_update:
            raise VerificationError(
                f"crls[{i}] ({ark_cn}) is valid {format_time(crl.last_update_utc)}..{format_time(next_update)}, "
                f"not at {format_time(at)}",
                check="crl",
            )
        revoked = crl.get_revoked_certificate_by_serial_number(chain.intermediate.serial_number)
        if revoked is not None:
            raise VerificationError(
                f"{_cn(chain.intermediate.subject)} (serial 0x{chain.intermediate.serial_number:x}) is revoked "
                f"by {ark_cn}'s CRL since {format_time(revoked.revocation_date_utc)}",
                check="crl",
            )
        applied.append((f"{ark_cn} CRL", crl.last_update_utc, next_update))
    if require and not applied:
        raise _no_crl(chain)
    return tuple(applied)


def _no_crl(chain: VerifiedChain) -> VerificationError:
    """No CRL of the chain's ARK among those given, and one is required."""
    ark_cn = _cn(chain.ark.subject)
    which = "ASKs" if chain.kind == "vcek" else "ASVKs"
    return VerificationError(
        f"no CRL issued by {ark_cn} was given, and the ARK's current CRL of {which} (KDS "
        f"/{chain.kind}/v1/{chain.product}/crl) is required to check that the chain is not revoked: "
        f"give it, or verify with the KDS cache that holds it ('keybroker collateral fetch --snp "
        f"--product {chain.product}')",
        check="crl",
    )


@dataclass(frozen=True, slots=True)
class VerifiedCrl:
    """An AMD CRL signed by a trusted ARK (time not checked: ``this_update``..``next_update``)."""

    product: Product
    root: RootKind
    ark: x509.Certificate
    #: SHA-256 of the ARK's SubjectPublicKeyInfo DER.
    ark_spki_sha256: str
    this_update: datetime
    next_update: datetime
    revoked_serials: frozenset[int]


def verify_crl(
    crl: bytes | x509.CertificateRevocationList, *, dev_roots: Sequence[x509.Certificate] = ()
) -> VerifiedCrl:
    """Verify an AMD CRL on its own (``/vcek/v1/{P}/crl``, ``/vlek/v1/{P}/crl``; the KDS cache).

    Its issuer must be the name of a trusted ARK (AMD's pinned ones, or a configured dev root), its
    signature that ARK's (RSASSA-PSS SHA-384 salt 48, both copies of the algorithm equal), and it
    must have a nextUpdate. Time is not checked. Raises ``VerificationError(check="crl")``.
    """
    der = crl.public_bytes(Encoding.DER) if isinstance(crl, x509.CertificateRevocationList) else bytes(crl)
    try:
        parsed = decode_crl(der)
    except X509_DECODE_ERRORS as exc:
        raise VerificationError(f"CRL: undecodable ({exc})", check="crl") from None
    candidates = [
        r for r in _trusted_roots(tuple(_der_of(c) for c in dev_roots)) if r.cert.subject == parsed.issuer
    ]
    if not candidates:
        raise VerificationError(
            f"the CRL's issuer {parsed.issuer.rfc4514_string()!r} is not a trusted ARK (AMD's pinned keys "
            "or a configured dev root)",
            check="crl",
        )
    root = next(
        (r for r in candidates if _crl_signed_by(der, r.cert.public_bytes(Encoding.DER))),
        None,
    )
    issuer_cn = _cn(parsed.issuer)
    if root is None:
        raise VerificationError(
            f"the CRL names {issuer_cn} as its issuer but is not signed by its key (RSASSA-PSS SHA-384 salt 48)",
            check="crl",
        )
    next_update = parsed.next_update_utc
    if next_update is None:
        raise VerificationError(f"the CRL of {issuer_cn} has no nextUpdate", check="crl")
    return VerifiedCrl(
        product=root.product,
        root=root.kind,
        ark=root.cert,
        ark_spki_sha256=root.spki,
        this_update=parsed.last_update_utc,
        next_update=next_update,
        revoked_serials=frozenset(r.serial_number for r in parsed),
    )
