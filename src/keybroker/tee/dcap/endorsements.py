"""Quote verification collateral: loaders, typed TCB Info / QE Identity, and serialisation.

Two wire forms are accepted and tied to one canonical in-memory form:

* the JSON form of dcap-qvl's ``QuoteCollateralV3`` (the corpus form): CRLs and signatures hex,
  chains PEM, ``tcb_info`` and ``qe_identity`` as the exact signed JSON text;
* Intel PCS/PCCS API v4 responses: ``{"tcbInfo": {...}, "signature": "<hex>"}`` and
  ``{"enclaveIdentity": {...}, "signature": "<hex>"}`` bodies, the ``TCB-Info-Issuer-Chain`` /
  ``SGX-Enclave-Identity-Issuer-Chain`` / ``SGX-PCK-CRL-Issuer-Chain`` headers (URL-encoded PEM),
  and the CRLs (DER, PEM or hex).

The signed JSON is kept byte-exact (signatures cover those bytes); the typed views follow Intel's
PCS API v4 "TCB Info V2/V3" and "Enclave Identity V2" data models. Nothing here checks a
signature or a date: that is ``verify``'s job.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final, Literal, TypedDict, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from keybroker.errors import CollateralError, EvidenceParseError
from keybroker.tee.dcap.pck import (
    X509_DECODE_ERRORS,
    PckCa,
    ca_type_from_name,
    decode_certificate,
    decode_crl,
    split_pem_chain,
)

__all__ = [
    "TCB_STATUSES",
    "EnclaveIdentity",
    "EnclaveTcbLevel",
    "PcsCollateral",
    "QuoteCollateral",
    "TcbInfo",
    "TcbLevel",
    "TdxModule",
    "TdxModuleIdentity",
]

#: Intel's TCB level status names (PCS API v4, TCB Info "tcbStatus").
TCB_STATUSES: Final = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "Revoked",
    }
)
_QE_STATUSES: Final = frozenset(
    {"UpToDate", "OutOfDate", "Revoked", "ConfigurationNeeded", "OutOfDateConfigurationNeeded"}
)
_MODULE_STATUSES: Final = frozenset({"UpToDate", "OutOfDate", "Revoked"})

#: The keys of the corpus / dcap-qvl ``QuoteCollateralV3`` JSON form (required, then optional).
JSON_KEYS: Final = (
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
)
OPTIONAL_JSON_KEYS: Final = ("pck_certificate_chain",)
_MAX_COLLATERAL: Final = 4 * 1024 * 1024
_DER: Final = Encoding.DER


def _bad(detail: str) -> CollateralError:
    return CollateralError(detail)


# --- typed JSON helpers ------------------------------------------------------------------------


def _obj(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(f"{where}: expected an object")
    return value


def _str(d: dict[str, Any], key: str, where: str) -> str:
    value = d.get(key)
    if not isinstance(value, str):
        raise _bad(f"{where}.{key}: expected a string")
    return value


def _int(d: dict[str, Any], key: str, where: str, maximum: int = 0xFFFF) -> int:
    value = d.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise _bad(f"{where}.{key}: expected an integer 0..{maximum}")
    return value


def _hex(d: dict[str, Any], key: str, where: str, size: int) -> bytes:
    text = _str(d, key, where)
    if len(text) != 2 * size or not re.fullmatch(r"[0-9A-Fa-f]*", text):
        raise _bad(f"{where}.{key}: expected {size} bytes of hex")
    return bytes.fromhex(text)


def _date(d: dict[str, Any], key: str, where: str) -> datetime:
    text = _str(d, key, where)
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", text):
        raise _bad(f"{where}.{key}: expected an ISO 8601 UTC time (…Z), got {text!r}")
    try:
        return datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)
    except ValueError:
        raise _bad(f"{where}.{key}: invalid date {text!r}") from None


def _status(d: dict[str, Any], key: str, where: str, allowed: frozenset[str]) -> str:
    value = _str(d, key, where)
    if value not in allowed:
        raise _bad(f"{where}.{key}: unknown status {value!r}")
    return value


def _advisories(d: dict[str, Any], where: str) -> tuple[str, ...]:
    value = d.get("advisoryIDs", [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(f"{where}.advisoryIDs: expected a list of strings")
    return tuple(value)


def _list(d: dict[str, Any], key: str, where: str) -> list[Any]:
    value = d.get(key)
    if not isinstance(value, list):
        raise _bad(f"{where}.{key}: expected a list")
    return value


def _json_object(text: str, where: str) -> dict[str, Any]:
    """The signed JSON text ``where`` (``tcbInfo``, ``enclaveIdentity``) as an object."""
    try:
        return _obj(json.loads(text), where)
    except (ValueError, RecursionError):
        raise _bad(f"{where}: not valid JSON") from None


# --- TCB Info ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TcbLevel:
    """One platform TCB level. ``tdx_components`` is ``None`` for SGX TCB Info."""

    sgx_components: tuple[int, ...]
    pcesvn: int
    tdx_components: tuple[int, ...] | None
    tcb_date: datetime
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _IsvsvnTcbLevel:
    """A TCB level judged by one ISVSVN (a TDX module's or a QE's)."""

    isvsvn: int
    tcb_date: datetime
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ModuleTcbLevel(_IsvsvnTcbLevel):
    """TCB Info v3 ``tdxModuleIdentities[].tcbLevels[]`` entry."""


@dataclass(frozen=True, slots=True)
class TdxModule:
    """TCB Info v3 ``tdxModule``: the identity of TDX module 1.0 (TEE_TCB_SVN[1] == 0)."""

    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes


@dataclass(frozen=True, slots=True)
class TdxModuleIdentity:
    """TCB Info v3 ``tdxModuleIdentities[]`` entry, e.g. ``TDX_01`` for module major version 1."""

    id: str
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes
    tcb_levels: tuple[ModuleTcbLevel, ...]


def _level_order(level: TcbLevel) -> tuple[tuple[int, ...], int, tuple[int, ...]]:
    """Intel QVL's TCB level order (``TcbLevel::operator>`` in QVL's AttestationParsers
    ``Json/TcbLevel.cpp``, intel/SGXDataCenterAttestationPrimitives): the 16 SGX component SVNs
    compared lexicographically, then PCESVN, then (TDX) the 16 TDX component SVNs."""
    return (level.sgx_components, level.pcesvn, level.tdx_components or ())


def _sorted_levels(levels: tuple[TcbLevel, ...]) -> tuple[TcbLevel, ...]:
    """TCB levels in the order Intel's QVL matches them, whatever their order in the JSON.

    QVL keeps them in a ``std::set<TcbLevel, std::greater<TcbLevel>>`` (``Json/TcbInfo.cpp``):
    highest first by :func:`_level_order`, and a second level equal in that order is rejected
    ("Detected duplicated TCB levels"). dcap-qvl 0.7 walks them in JSON order instead; Intel
    publishes them sorted, so the two agree on Intel's collateral, and here the order never
    depends on how the JSON was written.
    """
    if not levels:
        raise _bad("tcbInfo.tcbLevels is empty")
    ordered = sorted(levels, key=_level_order, reverse=True)
    for higher, lower in zip(ordered, ordered[1:], strict=False):
        if _level_order(higher) == _level_order(lower):
            raise _bad(
                f"tcbInfo.tcbLevels: two levels have the same TCB (SGX {list(higher.sgx_components)}, "
                f"PCESVN {higher.pcesvn}); Intel's QVL rejects duplicated TCB levels"
            )
    return tuple(ordered)


@dataclass(frozen=True, slots=True)
class TcbInfo:
    """TCB Info v2 (SGX) or v3 (SGX/TDX), PCS API v4."""

    id: Literal["SGX", "TDX"]
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_type: int
    tcb_evaluation_data_number: int
    tdx_module: TdxModule | None
    tdx_module_identities: tuple[TdxModuleIdentity, ...]
    #: Always in Intel QVL's order (see :func:`_sorted_levels`), however they were given.
    tcb_levels: tuple[TcbLevel, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "tcb_levels", _sorted_levels(tuple(self.tcb_levels)))


def _components(value: object, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) != 16:
        raise _bad(f"{where}: expected 16 components")
    return tuple(_int(_obj(c, where), "svn", where, 255) for c in value)


_Level = TypeVar("_Level", bound=_IsvsvnTcbLevel)


def _isvsvn_levels(
    make: type[_Level], d: dict[str, Any], where: str, statuses: frozenset[str], maximum: int
) -> list[_Level]:
    """``d.tcbLevels``, in the JSON's order: each an ISVSVN 0..``maximum`` (in ``tcb``), a date, one of
    ``statuses`` and its advisories."""
    levels = []
    for i, raw_level in enumerate(_list(d, "tcbLevels", where)):
        lw = f"{where}.tcbLevels[{i}]"
        level = _obj(raw_level, lw)
        levels.append(
            make(
                isvsvn=_int(_obj(level.get("tcb"), f"{lw}.tcb"), "isvsvn", f"{lw}.tcb", maximum),
                tcb_date=_date(level, "tcbDate", lw),
                status=_status(level, "tcbStatus", lw, statuses),
                advisory_ids=_advisories(level, lw),
            )
        )
    return levels


def _parse_tcb_level(value: object, version: int, tdx: bool, where: str) -> TcbLevel:
    level = _obj(value, where)
    tcb = _obj(level.get("tcb"), f"{where}.tcb")
    tdx_components: tuple[int, ...] | None = None
    if version == 2:
        sgx = tuple(_int(tcb, f"sgxtcbcomp{i:02d}svn", f"{where}.tcb", 255) for i in range(1, 17))
    else:
        sgx = _components(tcb.get("sgxtcbcomponents"), f"{where}.tcb.sgxtcbcomponents")
        if tdx:
            tdx_components = _components(tcb.get("tdxtcbcomponents"), f"{where}.tcb.tdxtcbcomponents")
    return TcbLevel(
        sgx_components=sgx,
        pcesvn=_int(tcb, "pcesvn", f"{where}.tcb"),
        tdx_components=tdx_components,
        tcb_date=_date(level, "tcbDate", where),
        status=_status(level, "tcbStatus", where, TCB_STATUSES),
        advisory_ids=_advisories(level, where),
    )


def _parse_module_identity(value: object, where: str) -> TdxModuleIdentity:
    ident = _obj(value, where)
    levels = _isvsvn_levels(ModuleTcbLevel, ident, where, _MODULE_STATUSES, 255)
    return TdxModuleIdentity(
        id=_str(ident, "id", where),
        mrsigner=_hex(ident, "mrsigner", where, 48),
        attributes=_hex(ident, "attributes", where, 8),
        attributes_mask=_hex(ident, "attributesMask", where, 8),
        # highest ISVSVN first (stable), so that the first level at or below the module's SVN is the
        # highest one, as with the platform's levels
        tcb_levels=tuple(sorted(levels, key=lambda lv: lv.isvsvn, reverse=True)),
    )


def parse_tcb_info(text: str) -> TcbInfo:
    """Typed view of the signed TCB Info JSON (v2 or v3)."""
    where = "tcbInfo"
    doc = _json_object(text, where)
    version = _int(doc, "version", where)
    if version not in (2, 3):
        raise _bad(f"tcbInfo.version {version} is not supported (2, 3)")
    tee_id = "SGX" if version == 2 else _str(doc, "id", where)
    if tee_id not in ("SGX", "TDX"):
        raise _bad(f"tcbInfo.id {tee_id!r} is neither SGX nor TDX")
    tdx = tee_id == "TDX"
    tdx_module: TdxModule | None = None
    identities: tuple[TdxModuleIdentity, ...] = ()
    if tdx:
        mod = _obj(doc.get("tdxModule"), "tcbInfo.tdxModule")
        tdx_module = TdxModule(
            mrsigner=_hex(mod, "mrsigner", "tcbInfo.tdxModule", 48),
            attributes=_hex(mod, "attributes", "tcbInfo.tdxModule", 8),
            attributes_mask=_hex(mod, "attributesMask", "tcbInfo.tdxModule", 8),
        )
        if "tdxModuleIdentities" in doc:
            identities = tuple(
                _parse_module_identity(v, f"tcbInfo.tdxModuleIdentities[{i}]")
                for i, v in enumerate(_list(doc, "tdxModuleIdentities", where))
            )
    tcb_type = _int(doc, "tcbType", where)
    if tcb_type != 0:
        raise _bad(f"tcbInfo.tcbType {tcb_type} is not supported (0)")
    levels = tuple(
        _parse_tcb_level(v, version, tdx, f"tcbInfo.tcbLevels[{i}]")
        for i, v in enumerate(_list(doc, "tcbLevels", where))
    )
    return TcbInfo(
        id="TDX" if tdx else "SGX",
        version=version,
        issue_date=_date(doc, "issueDate", where),
        next_update=_date(doc, "nextUpdate", where),
        fmspc=_hex(doc, "fmspc", where, 6),
        pce_id=_hex(doc, "pceId", where, 2),
        tcb_type=tcb_type,
        tcb_evaluation_data_number=_int(doc, "tcbEvaluationDataNumber", where, 0xFFFFFFFF),
        tdx_module=tdx_module,
        tdx_module_identities=identities,
        tcb_levels=levels,
    )


# --- Enclave (QE) Identity ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnclaveTcbLevel(_IsvsvnTcbLevel):
    """Enclave Identity v2 ``tcbLevels[]`` entry."""


@dataclass(frozen=True, slots=True)
class EnclaveIdentity:
    """Enclave Identity v2 (``QE``, ``TD_QE`` or ``QVE``). ``miscselect`` is read as a big-endian hex u32."""

    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int
    miscselect: int
    miscselect_mask: int
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isvprodid: int
    tcb_levels: tuple[EnclaveTcbLevel, ...]


def parse_enclave_identity(text: str) -> EnclaveIdentity:
    """Typed view of the signed Enclave Identity JSON (v2)."""
    where = "enclaveIdentity"
    doc = _json_object(text, where)
    version = _int(doc, "version", where)
    if version != 2:
        raise _bad(f"enclaveIdentity.version {version} is not supported (2)")
    ident = _str(doc, "id", where)
    if ident not in ("QE", "TD_QE", "QVE"):
        raise _bad(f"enclaveIdentity.id {ident!r} is not QE, TD_QE or QVE")
    levels = _isvsvn_levels(EnclaveTcbLevel, doc, where, _QE_STATUSES, 0xFFFF)
    if not levels:
        raise _bad("enclaveIdentity.tcbLevels is empty")
    # Highest ISVSVN first (stable): the first level at or below the QE's ISVSVN is then the highest
    # such level whatever the JSON order (Intel publishes them sorted; QVL walks them as given).
    levels.sort(key=lambda lv: lv.isvsvn, reverse=True)
    return EnclaveIdentity(
        id=ident,
        version=version,
        issue_date=_date(doc, "issueDate", where),
        next_update=_date(doc, "nextUpdate", where),
        tcb_evaluation_data_number=_int(doc, "tcbEvaluationDataNumber", where, 0xFFFFFFFF),
        miscselect=int.from_bytes(_hex(doc, "miscselect", where, 4), "big"),
        miscselect_mask=int.from_bytes(_hex(doc, "miscselectMask", where, 4), "big"),
        attributes=_hex(doc, "attributes", where, 16),
        attributes_mask=_hex(doc, "attributesMask", where, 16),
        mrsigner=_hex(doc, "mrsigner", where, 32),
        isvprodid=_int(doc, "isvprodid", where),
        tcb_levels=tuple(levels),
    )


# --- certificates and CRLs --------------------------------------------------------------------


def _load_chain(pem: str, name: str) -> tuple[x509.Certificate, ...]:
    try:
        ders = split_pem_chain(pem.encode("ascii"), field=name)
    except (EvidenceParseError, UnicodeEncodeError) as exc:
        raise _bad(f"{name}: not a PEM certificate chain ({exc})") from None
    certs = []
    for i, der in enumerate(ders):
        try:
            cert = decode_certificate(der)
        except X509_DECODE_ERRORS as exc:
            raise _bad(f"{name}[{i}]: undecodable certificate ({exc})") from None
        certs.append(cert)
    return tuple(certs)


def _load_crl(der: bytes, name: str) -> x509.CertificateRevocationList:
    try:
        crl = decode_crl(der)
    except X509_DECODE_ERRORS as exc:
        raise _bad(f"{name}: not a DER CRL ({exc})") from None
    return crl


def crl_from_wire(data: bytes | str, name: str) -> bytes:
    """A CRL from a PCS/PCCS response: DER, PEM or hex text."""
    raw = data.encode("ascii", "replace") if isinstance(data, str) else bytes(data)
    if raw[:1] == b"\x30":
        return raw
    stripped = raw.strip()
    if stripped.startswith(b"-----BEGIN X509 CRL-----"):
        try:
            return x509.load_pem_x509_crl(stripped).public_bytes(_DER)
        except ValueError as exc:
            raise _bad(f"{name}: bad PEM CRL ({exc})") from None
    try:
        return bytes.fromhex(stripped.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise _bad(f"{name}: neither DER, PEM nor hex") from None


def _unhex(value: object, name: str, size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise _bad(f"{name}: expected a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise _bad(f"{name}: not hex") from None
    if size is not None and len(raw) != size:
        raise _bad(f"{name}: expected {size} bytes, got {len(raw)}")
    return raw


def _signed_member(body: str, key: str) -> tuple[str, bytes]:
    """Split a PCS body ``{"<key>": {...}, "signature": "<hex>"}`` into the exact signed text and signature."""
    decoder = json.JSONDecoder()
    spans: dict[str, tuple[int, int]] = {}
    i = len(body) - len(body.lstrip())
    if body[i : i + 1] != "{":
        raise _bad(f"PCS {key} body: not a JSON object")
    i += 1
    try:
        while True:
            while body[i : i + 1].isspace():
                i += 1
            if body[i : i + 1] != '"':
                raise _bad(f"PCS {key} body: expected a member name at {i}")
            name, i = decoder.raw_decode(body, i)
            while body[i : i + 1].isspace():
                i += 1
            if body[i : i + 1] != ":":
                raise _bad(f"PCS {key} body: expected ':' at {i}")
            i += 1
            while body[i : i + 1].isspace():
                i += 1
            _, end = decoder.raw_decode(body, i)
            if name in spans:
                raise _bad(f"PCS {key} body: duplicate member {name!r}")
            spans[name] = (i, end)
            i = end
            while body[i : i + 1].isspace():
                i += 1
            if body[i : i + 1] == ",":
                i += 1
                continue
            if body[i : i + 1] == "}" and not body[i + 1 :].strip():
                break
            raise _bad(f"PCS {key} body: malformed at {i}")
    except (ValueError, RecursionError):
        raise _bad(f"PCS {key} body: not valid JSON") from None
    if set(spans) != {key, "signature"}:
        raise _bad(f"PCS {key} body: expected members {key!r} and 'signature', got {sorted(spans)}")
    start, end = spans[key]
    sig_start, sig_end = spans["signature"]
    signature = json.loads(body[sig_start:sig_end])
    return body[start:end], _unhex(signature, f"{key}.signature", 64)


def header_chain(value: str | bytes, name: str) -> str:
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    if "%" in text:  # URL-encoded (PEM itself never contains '%'); '+' stays '+', as in base64
        text = urllib.parse.unquote(text)
    _load_chain(text, name)
    return text


def _as_text(value: str | bytes, name: str) -> str:
    if isinstance(value, str):
        return value
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(f"{name}: not UTF-8") from None


class PcsCollateral(TypedDict):
    """The collateral as a PCCS v4 server returns it (bodies plus issuer-chain header values)."""

    tcb_info_body: str
    tcb_info_issuer_chain: str
    qe_identity_body: str
    qe_identity_issuer_chain: str
    pck_crl: bytes
    pck_crl_issuer_chain: str
    root_ca_crl: bytes


@dataclass(frozen=True, eq=False)
class QuoteCollateral:
    """The collateral for verifying quotes of one FMSPC / PCK CA / TEE type.

    The constructor parses everything (raising ``CollateralError``) but verifies nothing.
    Equality and ``digest`` are over the canonical content.
    """

    pck_crl_issuer_chain: str
    root_ca_crl: bytes
    pck_crl: bytes
    tcb_info_issuer_chain: str
    tcb_info: str
    tcb_info_signature: bytes
    qe_identity_issuer_chain: str
    qe_identity: str
    qe_identity_signature: bytes
    #: A PCK chain for a quote whose certification data carries none (cert data types 1-4).
    pck_certificate_chain: str | None = None

    parsed_tcb_info: TcbInfo = field(init=False, repr=False)
    parsed_qe_identity: EnclaveIdentity = field(init=False, repr=False)
    tcb_info_chain: tuple[x509.Certificate, ...] = field(init=False, repr=False)
    qe_identity_chain: tuple[x509.Certificate, ...] = field(init=False, repr=False)
    pck_crl_chain: tuple[x509.Certificate, ...] = field(init=False, repr=False)
    root_crl: x509.CertificateRevocationList = field(init=False, repr=False)
    pck_crl_parsed: x509.CertificateRevocationList = field(init=False, repr=False)
    digest: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("tcb_info_signature", "qe_identity_signature"):
            if len(getattr(self, name)) != 64:
                raise _bad(f"{name}: expected 64 bytes (r || s), got {len(getattr(self, name))}")
        setattr_ = object.__setattr__
        setattr_(self, "parsed_tcb_info", parse_tcb_info(self.tcb_info))
        setattr_(self, "parsed_qe_identity", parse_enclave_identity(self.qe_identity))
        setattr_(self, "tcb_info_chain", _load_chain(self.tcb_info_issuer_chain, "tcb_info_issuer_chain"))
        setattr_(
            self, "qe_identity_chain", _load_chain(self.qe_identity_issuer_chain, "qe_identity_issuer_chain")
        )
        setattr_(self, "pck_crl_chain", _load_chain(self.pck_crl_issuer_chain, "pck_crl_issuer_chain"))
        setattr_(self, "root_crl", _load_crl(self.root_ca_crl, "root_ca_crl"))
        setattr_(self, "pck_crl_parsed", _load_crl(self.pck_crl, "pck_crl"))
        if self.pck_certificate_chain is not None:
            _load_chain(self.pck_certificate_chain, "pck_certificate_chain")
        setattr_(self, "digest", hashlib.sha256(self.to_json().encode()).digest())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QuoteCollateral) and self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    # --- loaders -------------------------------------------------------------------------------

    @classmethod
    def from_json(cls, data: str | bytes) -> QuoteCollateral:
        """Load dcap-qvl's ``QuoteCollateralV3`` JSON (the corpus form). Cached by content."""
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        return _from_json_cached(raw)

    @classmethod
    def _from_json_uncached(cls, raw: bytes) -> QuoteCollateral:
        if len(raw) > _MAX_COLLATERAL:
            raise _bad(f"collateral JSON is {len(raw)} bytes, limit {_MAX_COLLATERAL}")
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            raise _bad("collateral: not valid JSON") from None
        if not isinstance(doc, dict):
            raise _bad("collateral: expected a JSON object")
        unknown = set(doc) - set(JSON_KEYS) - set(OPTIONAL_JSON_KEYS)
        missing = set(JSON_KEYS) - set(doc)
        if unknown or missing:
            raise _bad(f"collateral: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}")
        texts = {}
        for key in (
            "pck_crl_issuer_chain",
            "tcb_info_issuer_chain",
            "tcb_info",
            "qe_identity_issuer_chain",
            "qe_identity",
        ):
            if not isinstance(doc[key], str):
                raise _bad(f"collateral.{key}: expected a string")
            texts[key] = doc[key]
        pck_chain = doc.get("pck_certificate_chain")
        if pck_chain is not None and not isinstance(pck_chain, str):
            raise _bad("collateral.pck_certificate_chain: expected a string or null")
        return cls(
            pck_crl_issuer_chain=texts["pck_crl_issuer_chain"],
            root_ca_crl=_unhex(doc["root_ca_crl"], "root_ca_crl"),
            pck_crl=_unhex(doc["pck_crl"], "pck_crl"),
            tcb_info_issuer_chain=texts["tcb_info_issuer_chain"],
            tcb_info=texts["tcb_info"],
            tcb_info_signature=_unhex(doc["tcb_info_signature"], "tcb_info_signature", 64),
            qe_identity_issuer_chain=texts["qe_identity_issuer_chain"],
            qe_identity=texts["qe_identity"],
            qe_identity_signature=_unhex(doc["qe_identity_signature"], "qe_identity_signature", 64),
            pck_certificate_chain=pck_chain,
        )

    @classmethod
    def from_pcs(
        cls,
        *,
        tcb_info_body: str | bytes,
        tcb_info_issuer_chain: str | bytes,
        qe_identity_body: str | bytes,
        qe_identity_issuer_chain: str | bytes,
        pck_crl: bytes | str,
        pck_crl_issuer_chain: str | bytes,
        root_ca_crl: bytes | str,
        pck_certificate_chain: str | None = None,
    ) -> QuoteCollateral:
        """Assemble from Intel PCS/PCCS v4 responses.

        ``tcb_info_body``: ``GET /{sgx,tdx}/certification/v4/tcb`` body; ``tcb_info_issuer_chain``:
        its ``TCB-Info-Issuer-Chain`` header. ``qe_identity_body``: ``.../qe/identity`` body with its
        ``SGX-Enclave-Identity-Issuer-Chain``. ``pck_crl``: ``/sgx/certification/v4/pckcrl`` body
        (DER, PEM or hex) with ``SGX-PCK-CRL-Issuer-Chain``. ``root_ca_crl``: the Intel SGX Root CA
        CRL (``/rootcacrl`` or ``IntelSGXRootCA.der``). Header values may be URL-encoded.
        """
        tcb_text, tcb_sig = _signed_member(_as_text(tcb_info_body, "tcb_info_body"), "tcbInfo")
        qe_text, qe_sig = _signed_member(_as_text(qe_identity_body, "qe_identity_body"), "enclaveIdentity")
        return cls(
            pck_crl_issuer_chain=header_chain(pck_crl_issuer_chain, "SGX-PCK-CRL-Issuer-Chain"),
            root_ca_crl=crl_from_wire(root_ca_crl, "root_ca_crl"),
            pck_crl=crl_from_wire(pck_crl, "pck_crl"),
            tcb_info_issuer_chain=header_chain(tcb_info_issuer_chain, "TCB-Info-Issuer-Chain"),
            tcb_info=tcb_text,
            tcb_info_signature=tcb_sig,
            qe_identity_issuer_chain=header_chain(
                qe_identity_issuer_chain, "SGX-Enclave-Identity-Issuer-Chain"
            ),
            qe_identity=qe_text,
            qe_identity_signature=qe_sig,
            pck_certificate_chain=pck_certificate_chain,
        )

    # --- serialisation -------------------------------------------------------------------------

    def to_json(self) -> str:
        """dcap-qvl ``QuoteCollateralV3`` JSON (loadable by ``from_json`` and by dcap-qvl)."""
        doc: dict[str, str] = {
            "pck_crl_issuer_chain": self.pck_crl_issuer_chain,
            "root_ca_crl": self.root_ca_crl.hex(),
            "pck_crl": self.pck_crl.hex(),
            "tcb_info_issuer_chain": self.tcb_info_issuer_chain,
            "tcb_info": self.tcb_info,
            "tcb_info_signature": self.tcb_info_signature.hex(),
            "qe_identity_issuer_chain": self.qe_identity_issuer_chain,
            "qe_identity": self.qe_identity,
            "qe_identity_signature": self.qe_identity_signature.hex(),
        }
        if self.pck_certificate_chain is not None:
            doc["pck_certificate_chain"] = self.pck_certificate_chain
        return json.dumps(doc)

    def to_pcs(self) -> PcsCollateral:
        """PCCS v4 response bodies and header values (URL-encoded PEM), signatures intact."""
        quote = urllib.parse.quote
        return PcsCollateral(
            tcb_info_body=f'{{"tcbInfo":{self.tcb_info},"signature":"{self.tcb_info_signature.hex()}"}}',
            tcb_info_issuer_chain=quote(self.tcb_info_issuer_chain, safe=""),
            qe_identity_body=(
                f'{{"enclaveIdentity":{self.qe_identity},"signature":"{self.qe_identity_signature.hex()}"}}'
            ),
            qe_identity_issuer_chain=quote(self.qe_identity_issuer_chain, safe=""),
            pck_crl=self.pck_crl,
            pck_crl_issuer_chain=quote(self.pck_crl_issuer_chain, safe=""),
            root_ca_crl=self.root_ca_crl,
        )

    # --- accessors -----------------------------------------------------------------------------

    @property
    def tee(self) -> Literal["sgx", "tdx"]:
        return "tdx" if self.parsed_tcb_info.id == "TDX" else "sgx"

    @property
    def fmspc(self) -> str:
        return self.parsed_tcb_info.fmspc.hex().upper()

    @property
    def pce_id(self) -> str:
        return self.parsed_tcb_info.pce_id.hex().upper()

    @property
    def pck_ca(self) -> PckCa:
        """``processor`` or ``platform``, from the PCK CRL issuer's common name."""
        ca = ca_type_from_name(self.pck_crl_parsed.issuer)
        if ca is None:
            raise _bad(f"pck_crl issuer {self.pck_crl_parsed.issuer.rfc4514_string()!r} is not a PCK CA")
        return ca

    @property
    def tcb_info_issue_date(self) -> datetime:
        return self.parsed_tcb_info.issue_date

    @property
    def tcb_info_next_update(self) -> datetime:
        return self.parsed_tcb_info.next_update

    @property
    def qe_identity_issue_date(self) -> datetime:
        return self.parsed_qe_identity.issue_date

    @property
    def qe_identity_next_update(self) -> datetime:
        return self.parsed_qe_identity.next_update

    @property
    def tcb_evaluation_data_number(self) -> int:
        return self.parsed_tcb_info.tcb_evaluation_data_number

    @property
    def next_update(self) -> datetime:
        """The earliest nextUpdate of TCB Info, QE Identity and both CRLs (CRLs without one count as now-expired)."""
        dates = [self.tcb_info_next_update, self.qe_identity_next_update]
        for crl in (self.root_crl, self.pck_crl_parsed):
            nu = crl.next_update_utc
            dates.append(nu if nu is not None else datetime.min.replace(tzinfo=UTC))
        return min(dates)

    @property
    def issue_date(self) -> datetime:
        """The latest issue date (TCB Info, QE Identity, CRL thisUpdate): the collateral is valid from here."""
        return max(
            self.tcb_info_issue_date,
            self.qe_identity_issue_date,
            self.root_crl.last_update_utc,
            self.pck_crl_parsed.last_update_utc,
        )


@lru_cache(maxsize=64)
def _from_json_cached(raw: bytes) -> QuoteCollateral:
    return QuoteCollateral._from_json_uncached(raw)
