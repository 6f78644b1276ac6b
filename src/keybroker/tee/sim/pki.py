"""A development PKI with the shape of Intel's SGX/TDX provisioning certification PKI.

NOT FOR PRODUCTION. Everything here exists so that the real DCAP verifier can check
simulated evidence on machines without a TEE; nothing it signs is trusted unless its root
is configured explicitly as a dev root.

Layout of a dev PKI directory (dir 0700, every ``*.key`` 0600)::

    pki.json                   manifest: platforms, PCK serials, revocations, CRL numbers
    root.pem  root.key         "keybroker DEV SGX Root CA - NOT FOR PRODUCTION"
    root-crl.der               root CA CRL (revokes nothing)
    pck-processor-ca.pem/.key  PCK Processor CA (issues the "sgx" platform's PCK certs)
    pck-platform-ca.pem/.key   PCK Platform CA (issues the "tdx" platform's PCK certs)
    pck-processor-crl.der      PCK CRLs; ``revoke_pck`` rewrites them
    pck-platform-crl.der
    tcb-signing.pem/.key       signs TCB Info and QE Identity
    tcbinfo-sgx.json           PCS form: {"tcbInfo": ..., "signature": hex}
    tcbinfo-tdx.json
    qe-identity.json           PCS form: {"enclaveIdentity": ..., "signature": hex}
    td-qe-identity.json
    tcb-signing-chain.pem      TCB signing + root: PCS "TCB-Info-Issuer-Chain" and
                               "SGX-Enclave-Identity-Issuer-Chain" header value
    pck-processor-crl-chain.pem  PCK CA + root: PCS "SGX-PCK-CRL-Issuer-Chain" header value
    pck-platform-crl-chain.pem
    collateral-sgx.json        dcap-qvl QuoteCollateralV3 JSON (the corpus form)
    collateral-tdx.json
    platforms/<name>/ak.key                  the QE attestation key of the simulated platform
    platforms/<name>/pck-<tcb>.pem/.key      one PCK cert per TCB level (CPUSVN/PCESVN differ)

Simulated platforms: "sgx" (Processor CA, SGX type Standard, FMSPC 00DE5C000000) and "tdx"
(Platform CA, SGX type Scalable with PlatformInstanceID/Configuration, FMSPC 00DE7D000000).
The TCB level of a quote (``TcbChoice``) selects the PCK certificate, hence CPUSVN/PCESVN,
and for TDX also TEE_TCB_SVN; see ``SGX_TCB`` and ``TDX_TCB`` for statuses and advisories.

Collateral expires after 30 days like Intel's; ``reissue_collateral`` (``keybroker dev-pki
refresh``) issues it afresh with the same keys, certificates and revocations.

Intel references: "Intel SGX PCK Certificate and Certificate Revocation List Profile
Specification" (cert and CRL profiles, SGX extension OID 1.2.840.113741.1.13.1), PCS API
v4 "TCB Info V3" and "Enclave Identity V2" JSON formats.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from keybroker.tee.sim import _der

__all__ = [
    "DEV_PKI_FORMAT",
    "ROOT_CA_CN",
    "PLATFORM_SGX",
    "PLATFORM_TDX",
    "QE_IDENTITY",
    "SGX_TCB",
    "TCB_CHOICES",
    "TD_QE_IDENTITY",
    "TDX_TCB",
    "DevPki",
    "IssuedCert",
    "SimPlatform",
    "SimQeIdentity",
    "SimTcbLevel",
    "TcbChoice",
    "qe_identity_body",
    "sgx_extension",
    "signature_raw",
    "tcb_info_body",
]

DEV_PKI_FORMAT: Final = "keybroker-dev-pki/1"

#: Which TCB level of the dev TCB Info a simulated platform is at.
TcbChoice = Literal["uptodate", "swhardening", "outofdate", "revoked"]
TCB_CHOICES: Final[tuple[TcbChoice, ...]] = ("uptodate", "swhardening", "outofdate", "revoked")

PLATFORM_SGX: Final = "sgx"
PLATFORM_TDX: Final = "tdx"

_NOT_FOR_PRODUCTION = " - NOT FOR PRODUCTION"
ROOT_CA_CN: Final = "keybroker DEV SGX Root CA" + _NOT_FOR_PRODUCTION
PROCESSOR_CA_CN: Final = "keybroker DEV SGX PCK Processor CA" + _NOT_FOR_PRODUCTION
PLATFORM_CA_CN: Final = "keybroker DEV SGX PCK Platform CA" + _NOT_FOR_PRODUCTION
TCB_SIGNING_CN: Final = "keybroker DEV SGX TCB Signing" + _NOT_FOR_PRODUCTION
PCK_CN: Final = "keybroker DEV SGX PCK Certificate" + _NOT_FOR_PRODUCTION
_ORG = "keybroker development PKI"
# CRL distribution points in the shape of Intel's, on a reserved TLD (RFC 2606) so nothing
# can ever be fetched from them.
_DIST_BASE = "https://keybroker-dev-pki.invalid"

_ROOT_YEARS = 30
_CA_YEARS = 25
_TCB_SIGNING_YEARS = 20
_PCK_YEARS = 10
#: TCB Info, QE Identity and CRLs are valid for this long after issue (Intel: 30 days).
COLLATERAL_VALIDITY: Final = dt.timedelta(days=30)

# SGX extension (PCK Certificate and CRL Profile, section "Intel SGX Extensions").
SGX_EXTENSION_OID: Final = "1.2.840.113741.1.13.1"
_OID_PPID = SGX_EXTENSION_OID + ".1"
_OID_TCB = SGX_EXTENSION_OID + ".2"  # .2.1 .. .2.16 components, .2.17 PCESVN, .2.18 CPUSVN
_OID_PCEID = SGX_EXTENSION_OID + ".3"
_OID_FMSPC = SGX_EXTENSION_OID + ".4"
_OID_SGX_TYPE = SGX_EXTENSION_OID + ".5"  # ENUMERATED: 0 Standard, 1 Scalable, 2 ScalableWithIntegrity
_OID_PLATFORM_INSTANCE_ID = SGX_EXTENSION_OID + ".6"
_OID_CONFIGURATION = SGX_EXTENSION_OID + ".7"  # .7.1 dynamicPlatform .7.2 cachedKeys .7.3 SMTEnabled

_TCB_EVALUATION_DATA_NUMBER = 17
_TCB_INFO_VERSION = 3
_QE_IDENTITY_VERSION = 2
_PCE_ID = bytes.fromhex("0000")


@dataclass(frozen=True)
class SimTcbLevel:
    """One level of the dev TCB Info and the TCB a simulated platform at it reports.

    ``cpusvn`` doubles as the 16 SGX TCB components of the PCK certificate (Intel's PCE
    maps them 1:1 on current parts); ``tdx_components`` is the TDX TCB Info's
    ``tdxtcbcomponents`` and bytes 2..15 of the TD's TEE_TCB_SVN (bytes 0 and 1 are the
    TDX module SEAMSVN, checked against ``tdxModuleIdentities`` instead).
    """

    status: str
    advisory_ids: tuple[str, ...]
    tcb_date: str
    cpusvn: bytes
    pcesvn: int
    tdx_components: bytes | None = None


def _svn16(*head: int) -> bytes:
    return bytes(head) + bytes(16 - len(head))


#: SGX TCB Info levels (FMSPC of platform "sgx"), highest first, one per ``TcbChoice``.
SGX_TCB: Final[Mapping[TcbChoice, SimTcbLevel]] = {
    "uptodate": SimTcbLevel("UpToDate", (), "2025-05-14T00:00:00Z", _svn16(9, 9, 3, 3, 255, 1, 13), 13),
    "swhardening": SimTcbLevel(
        "SWHardeningNeeded", ("DEV-SA-00001",), "2024-11-13T00:00:00Z", _svn16(8, 8, 3, 3, 255, 1, 13), 13
    ),
    "outofdate": SimTcbLevel(
        "OutOfDate",
        ("DEV-SA-00001", "DEV-SA-00002"),
        "2024-03-13T00:00:00Z",
        _svn16(7, 7, 3, 3, 255, 1, 12),
        11,
    ),
    "revoked": SimTcbLevel(
        "Revoked",
        ("DEV-SA-00001", "DEV-SA-00002", "DEV-SA-00003"),
        "2023-02-15T00:00:00Z",
        _svn16(6, 6, 2, 2, 255, 1, 12),
        10,
    ),
}

_TDX_CPUSVN = _svn16(3, 3, 2, 2, 4, 1, 0, 5)
#: TDX TCB Info levels (FMSPC of platform "tdx"). The SGX part is the same for all levels;
#: the level is chosen by TEE_TCB_SVN byte 2 ("TDX Late Microcode Update").
TDX_TCB: Final[Mapping[TcbChoice, SimTcbLevel]] = {
    "uptodate": SimTcbLevel("UpToDate", (), "2025-05-14T00:00:00Z", _TDX_CPUSVN, 13, _svn16(2, 0, 5)),
    "swhardening": SimTcbLevel(
        "SWHardeningNeeded", ("DEV-SA-00101",), "2024-11-13T00:00:00Z", _TDX_CPUSVN, 13, _svn16(2, 0, 4)
    ),
    "outofdate": SimTcbLevel(
        "OutOfDate",
        ("DEV-SA-00101", "DEV-SA-00102"),
        "2024-03-13T00:00:00Z",
        _TDX_CPUSVN,
        13,
        _svn16(2, 0, 3),
    ),
    "revoked": SimTcbLevel(
        "Revoked",
        ("DEV-SA-00101", "DEV-SA-00102", "DEV-SA-00103"),
        "2023-02-15T00:00:00Z",
        _TDX_CPUSVN,
        13,
        _svn16(2, 0, 2),
    ),
}

#: TDX module identity (TCB Info v3 ``tdxModule``/``tdxModuleIdentities``): Intel signs the
#: module, so MRSIGNERSEAM is 48 zero bytes and SEAM attributes are zero. Module major
#: version 1 ("TDX_01") is UpToDate from minor SVN 2 on.
TDX_MODULE_MRSIGNER: Final = bytes(48)
TDX_MODULE_MAJOR: Final = 1
TDX_MODULE_MIN_MINOR_SVN: Final = 2


@dataclass(frozen=True)
class SimQeIdentity:
    """The simulated (TD) quoting enclave: what its reports contain and its signed identity."""

    id: str
    mrenclave: bytes
    mrsigner: bytes
    isvprodid: int
    isvsvn: int


QE_IDENTITY: Final = SimQeIdentity(
    "QE",
    hashlib.sha256(b"keybroker DEV SGX QE").digest(),
    hashlib.sha256(b"keybroker DEV SGX QE signer").digest(),
    1,
    8,
)
TD_QE_IDENTITY: Final = SimQeIdentity(
    "TD_QE",
    hashlib.sha256(b"keybroker DEV TD QE").digest(),
    hashlib.sha256(b"keybroker DEV TD QE signer").digest(),
    2,
    4,
)
# QE report ATTRIBUTES/MISCSELECT as Intel's QE reports them, and the identity masks.
QE_ATTRIBUTES: Final = bytes.fromhex("1500000000000000e700000000000000")
_QE_ATTRIBUTES_EXPECTED = "11000000000000000000000000000000"
_QE_ATTRIBUTES_MASK = "FBFFFFFFFFFFFFFF0000000000000000"


# --- small helpers ------------------------------------------------------------------------


def _instant(now: dt.datetime | None) -> dt.datetime:
    """``now`` (must be timezone-aware) or the current time, in UTC, to the second."""
    if now is None:
        now = dt.datetime.now(dt.UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(dt.UTC).replace(microsecond=0)


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _years(t: dt.datetime, years: int) -> dt.datetime:
    return t + dt.timedelta(days=365 * years + years // 4)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "ZZ"),
        ]
    )


def signature_raw(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256/SHA-256 signature as 64 raw bytes r || s (the DCAP quote and PCS form)."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` via a temporary file created with ``mode`` and a rename, so
    that readers (a server importing collateral while ``revoke_pck`` runs) never see a torn file
    and a private key is never readable by others, not even briefly. A private file (0600) gets
    exactly that mode; a public one ``mode`` less the umask (0600 under ``keybroker serve``)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if mode == 0o600:
            os.chmod(tmp, mode)  # os.open's mode is filtered by the umask
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left over if something failed before the rename


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_atomic(path, data, 0o600)


def _read_private(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"{path} is not a P-256 private key")
    return key


def _write_public(path: Path, data: bytes) -> None:
    _write_atomic(path, data, 0o644)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _mkdir_private(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


@dataclass(frozen=True)
class IssuedCert:
    """A certificate of the dev PKI and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _build_cert(
    *,
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: IssuedCert | None,
    not_before: dt.datetime,
    not_after: dt.datetime,
    ca_path_length: int | None,
    is_ca: bool,
    crl_url: str,
    extra: x509.UnrecognizedExtension | None = None,
) -> x509.Certificate:
    """A certificate with the extensions of Intel's profile (AKI, CRL DP, SKI, KU, BC, [SGX])."""
    public = key.public_key()
    issuer_name = _name(subject) if issuer is None else issuer.cert.subject
    issuer_public = public if issuer is None else issuer.key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public), critical=False)
        .add_extension(
            x509.CRLDistributionPoints(
                [x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        ).add_extension(x509.BasicConstraints(ca=True, path_length=ca_path_length), critical=True)
    else:
        builder = builder.add_extension(
            x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True
        ).add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    if extra is not None:
        builder = builder.add_extension(extra, critical=False)
    signer = key if issuer is None else issuer.key
    return builder.sign(signer, hashes.SHA256())


def sgx_extension(
    *,
    ppid: bytes,
    cpusvn: bytes,
    pcesvn: int,
    pce_id: bytes,
    fmspc: bytes,
    sgx_type: int,
    platform_instance_id: bytes | None = None,
    dynamic_platform: bool = True,
    cached_keys: bool = True,
    smt_enabled: bool = True,
) -> x509.UnrecognizedExtension:
    """The PCK certificate's SGX extension (OID 1.2.840.113741.1.13.1), DER as Intel encodes it.

    TCB components 1..16 are the CPUSVN bytes (INTEGER each), then PCESVN (INTEGER) and
    CPUSVN (OCTET STRING 16). PlatformInstanceID and Configuration are present only for
    certificates issued by the Platform CA (``platform_instance_id`` not None).
    """
    if len(ppid) != 16 or len(cpusvn) != 16 or len(pce_id) != 2 or len(fmspc) != 6:
        raise ValueError("PPID 16, CPUSVN 16, PCE-ID 2 and FMSPC 6 bytes are required")
    tcb = [_der.sequence(_der.oid(f"{_OID_TCB}.{i + 1}"), _der.integer(cpusvn[i])) for i in range(16)]
    tcb.append(_der.sequence(_der.oid(f"{_OID_TCB}.17"), _der.integer(pcesvn)))
    tcb.append(_der.sequence(_der.oid(f"{_OID_TCB}.18"), _der.octet_string(cpusvn)))
    items = [
        _der.sequence(_der.oid(_OID_PPID), _der.octet_string(ppid)),
        _der.sequence(_der.oid(_OID_TCB), _der.sequence(*tcb)),
        _der.sequence(_der.oid(_OID_PCEID), _der.octet_string(pce_id)),
        _der.sequence(_der.oid(_OID_FMSPC), _der.octet_string(fmspc)),
        _der.sequence(_der.oid(_OID_SGX_TYPE), _der.enumerated(sgx_type)),
    ]
    if platform_instance_id is not None:
        if len(platform_instance_id) != 16:
            raise ValueError("PlatformInstanceID must be 16 bytes")
        config = _der.sequence(
            _der.sequence(_der.oid(_OID_CONFIGURATION + ".1"), _der.boolean(dynamic_platform)),
            _der.sequence(_der.oid(_OID_CONFIGURATION + ".2"), _der.boolean(cached_keys)),
            _der.sequence(_der.oid(_OID_CONFIGURATION + ".3"), _der.boolean(smt_enabled)),
        )
        items.append(
            _der.sequence(_der.oid(_OID_PLATFORM_INSTANCE_ID), _der.octet_string(platform_instance_id))
        )
        items.append(_der.sequence(_der.oid(_OID_CONFIGURATION), config))
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXTENSION_OID), _der.sequence(*items))


# --- signed collateral ----------------------------------------------------------------------


def _compact(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _tcb_level_json(level: SimTcbLevel, *, tdx: bool) -> dict[str, Any]:
    tcb: dict[str, Any] = {
        "sgxtcbcomponents": [{"svn": b} for b in level.cpusvn],
        "pcesvn": level.pcesvn,
    }
    if tdx:
        if level.tdx_components is None:
            raise ValueError("TDX TCB level without TDX components")
        tcb["tdxtcbcomponents"] = [{"svn": b} for b in level.tdx_components]
    out: dict[str, Any] = {"tcb": tcb, "tcbDate": level.tcb_date, "tcbStatus": level.status}
    if level.advisory_ids:
        out["advisoryIDs"] = list(level.advisory_ids)
    return out


def tcb_info_body(*, tee: Literal["sgx", "tdx"], fmspc: bytes, issued: dt.datetime) -> str:
    """TCB Info v3 JSON (the exact signed string) for the dev platform with ``fmspc``."""
    tdx = tee == "tdx"
    levels = TDX_TCB if tdx else SGX_TCB
    body: dict[str, Any] = {
        "id": "TDX" if tdx else "SGX",
        "version": _TCB_INFO_VERSION,
        "issueDate": _iso(issued),
        "nextUpdate": _iso(issued + COLLATERAL_VALIDITY),
        "fmspc": fmspc.hex().upper(),
        "pceId": _PCE_ID.hex().upper(),
        "tcbType": 0,
        "tcbEvaluationDataNumber": _TCB_EVALUATION_DATA_NUMBER,
    }
    if tdx:
        mrsigner = TDX_MODULE_MRSIGNER.hex().upper()
        body["tdxModule"] = {
            "mrsigner": mrsigner,
            "attributes": "0000000000000000",
            "attributesMask": "FFFFFFFFFFFFFFFF",
        }
        body["tdxModuleIdentities"] = [
            {
                "id": f"TDX_{TDX_MODULE_MAJOR:02X}",
                "mrsigner": mrsigner,
                "attributes": "0000000000000000",
                "attributesMask": "FFFFFFFFFFFFFFFF",
                "tcbLevels": [
                    {
                        "tcb": {"isvsvn": TDX_MODULE_MIN_MINOR_SVN},
                        "tcbDate": levels["uptodate"].tcb_date,
                        "tcbStatus": "UpToDate",
                    }
                ],
            }
        ]
    body["tcbLevels"] = [_tcb_level_json(levels[c], tdx=tdx) for c in TCB_CHOICES]
    return _compact(body)


def qe_identity_body(qe: SimQeIdentity, *, issued: dt.datetime) -> str:
    """Enclave Identity v2 JSON (the exact signed string) for the dev QE or TD QE."""
    body = {
        "id": qe.id,
        "version": _QE_IDENTITY_VERSION,
        "issueDate": _iso(issued),
        "nextUpdate": _iso(issued + COLLATERAL_VALIDITY),
        "tcbEvaluationDataNumber": _TCB_EVALUATION_DATA_NUMBER,
        "miscselect": "00000000",
        "miscselectMask": "FFFFFFFF",
        "attributes": _QE_ATTRIBUTES_EXPECTED,
        "attributesMask": _QE_ATTRIBUTES_MASK,
        "mrsigner": qe.mrsigner.hex().upper(),
        "isvprodid": qe.isvprodid,
        "tcbLevels": [
            {"tcb": {"isvsvn": qe.isvsvn}, "tcbDate": "2025-05-14T00:00:00Z", "tcbStatus": "UpToDate"},
            {
                "tcb": {"isvsvn": qe.isvsvn - 2},
                "tcbDate": "2024-03-13T00:00:00Z",
                "tcbStatus": "OutOfDate",
                "advisoryIDs": ["DEV-SA-00201"],
            },
        ],
    }
    return _compact(body)


# --- the PKI ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimPlatform:
    """A simulated SGX or TDX machine: identity, its QE attestation key, PCK certs per TCB level."""

    name: str
    tee: Literal["sgx", "tdx"]
    ca: Literal["processor", "platform"]
    fmspc: bytes
    pce_id: bytes
    ppid: bytes
    qe_id: bytes
    platform_instance_id: bytes | None
    attestation_key: ec.EllipticCurvePrivateKey
    pck: Mapping[TcbChoice, IssuedCert]

    def tcb_level(self, tcb: TcbChoice) -> SimTcbLevel:
        return (TDX_TCB if self.tee == "tdx" else SGX_TCB)[tcb]

    @property
    def qe(self) -> SimQeIdentity:
        return TD_QE_IDENTITY if self.tee == "tdx" else QE_IDENTITY


_PLATFORM_SPECS: Final[
    dict[str, tuple[Literal["sgx", "tdx"], Literal["processor", "platform"], bytes, int]]
] = {
    # name: (tee, issuing CA, FMSPC, SGX type). FMSPCs are recognisable dev values ("DE"v).
    PLATFORM_SGX: ("sgx", "processor", bytes.fromhex("00DE5C000000"), 0),
    PLATFORM_TDX: ("tdx", "platform", bytes.fromhex("00DE7D000000"), 1),
}


class DevPki:
    """A loaded dev PKI: certificates, keys and signed collateral in ``directory``."""

    def __init__(
        self,
        *,
        directory: Path,
        root: IssuedCert,
        processor_ca: IssuedCert,
        platform_ca: IssuedCert,
        tcb_signing: IssuedCert,
        platforms: Mapping[str, SimPlatform],
        manifest: dict[str, Any],
    ) -> None:
        self.directory = directory
        self.root = root
        self.processor_ca = processor_ca
        self.platform_ca = platform_ca
        self.tcb_signing = tcb_signing
        self.platforms = dict(platforms)
        self._manifest = manifest

    # -- public views -------------------------------------------------------------------

    @property
    def root_cert(self) -> x509.Certificate:
        return self.root.cert

    @property
    def root_der(self) -> bytes:
        """The dev root in DER: what ``dev_roots`` / dcap-qvl's ``root_ca_der`` take."""
        return self.root.cert.public_bytes(serialization.Encoding.DER)

    @property
    def root_pem_path(self) -> Path:
        return self.directory / "root.pem"

    @property
    def root_fingerprint(self) -> str:
        """SHA-256 of the root certificate's DER, lowercase hex."""
        return hashlib.sha256(self.root_der).hexdigest()

    def platform(self, name: str) -> SimPlatform:
        try:
            return self.platforms[name]
        except KeyError:
            raise KeyError(f"no simulated platform {name!r}; have {sorted(self.platforms)}") from None

    def collateral_path(self, tee: Literal["sgx", "tdx"]) -> Path:
        return self.directory / f"collateral-{tee}.json"

    def collateral_json(self, tee: Literal["sgx", "tdx"]) -> str:
        """The collateral file's text (dcap-qvl ``QuoteCollateralV3`` JSON)."""
        return self.collateral_path(tee).read_text()

    def pck_chain_pem(self, platform: SimPlatform, tcb: TcbChoice) -> bytes:
        """PCK leaf, issuing CA, root: certification data type 5 content."""
        ca = self.processor_ca if platform.ca == "processor" else self.platform_ca
        return "".join(_pem(c) for c in (platform.pck[tcb].cert, ca.cert, self.root.cert)).encode("ascii")

    def revoked_serials(self, ca: Literal["processor", "platform"]) -> list[int]:
        return [int(s, 16) for s in self._manifest["revoked"][ca]]

    # -- creation and loading ----------------------------------------------------------

    @classmethod
    def create(cls, out_dir: Path, *, now: dt.datetime | None = None) -> DevPki:
        """Create a fresh dev PKI in ``out_dir`` (created 0700), overwriting its files.

        Certificates are valid from ``now`` (default: the current time) for years; TCB
        Info, QE Identity and CRLs are issued at ``now`` with nextUpdate ``now`` + 30 days.
        """
        now = _instant(now)
        _mkdir_private(out_dir)
        root_key = _new_key()
        root = IssuedCert(
            _build_cert(
                subject=ROOT_CA_CN,
                key=root_key,
                issuer=None,
                not_before=now,
                not_after=_years(now, _ROOT_YEARS),
                ca_path_length=1,
                is_ca=True,
                crl_url=f"{_DIST_BASE}/DevSGXRootCA.der",
            ),
            root_key,
        )
        cas: dict[str, IssuedCert] = {}
        for kind, cn in (("processor", PROCESSOR_CA_CN), ("platform", PLATFORM_CA_CN)):
            key = _new_key()
            cas[kind] = IssuedCert(
                _build_cert(
                    subject=cn,
                    key=key,
                    issuer=root,
                    not_before=now,
                    not_after=_years(now, _CA_YEARS),
                    ca_path_length=0,
                    is_ca=True,
                    crl_url=f"{_DIST_BASE}/DevSGXRootCA.der",
                ),
                key,
            )
        tcb_key = _new_key()
        tcb_signing = IssuedCert(
            _build_cert(
                subject=TCB_SIGNING_CN,
                key=tcb_key,
                issuer=root,
                not_before=now,
                not_after=_years(now, _TCB_SIGNING_YEARS),
                ca_path_length=None,
                is_ca=False,
                crl_url=f"{_DIST_BASE}/DevSGXRootCA.der",
            ),
            tcb_key,
        )
        platforms: dict[str, SimPlatform] = {}
        manifest_platforms: dict[str, Any] = {}
        for name, (tee, ca_kind, fmspc, sgx_type) in _PLATFORM_SPECS.items():
            platform_instance_id = secrets.token_bytes(16) if ca_kind == "platform" else None
            ppid = secrets.token_bytes(16)
            pcks: dict[TcbChoice, IssuedCert] = {}
            levels = TDX_TCB if tee == "tdx" else SGX_TCB
            for choice in TCB_CHOICES:
                level = levels[choice]
                key = _new_key()
                ext = sgx_extension(
                    ppid=ppid,
                    cpusvn=level.cpusvn,
                    pcesvn=level.pcesvn,
                    pce_id=_PCE_ID,
                    fmspc=fmspc,
                    sgx_type=sgx_type,
                    platform_instance_id=platform_instance_id,
                )
                cert = _build_cert(
                    subject=PCK_CN,
                    key=key,
                    issuer=cas[ca_kind],
                    not_before=now,
                    not_after=_years(now, _PCK_YEARS),
                    ca_path_length=None,
                    is_ca=False,
                    crl_url=f"{_DIST_BASE}/sgx/certification/v4/pckcrl?ca={ca_kind}&encoding=der",
                    extra=ext,
                )
                pcks[choice] = IssuedCert(cert, key)
            platforms[name] = SimPlatform(
                name=name,
                tee=tee,
                ca=ca_kind,
                fmspc=fmspc,
                pce_id=_PCE_ID,
                ppid=ppid,
                qe_id=secrets.token_bytes(16),
                platform_instance_id=platform_instance_id,
                attestation_key=_new_key(),
                pck=pcks,
            )
            manifest_platforms[name] = _platform_manifest(platforms[name], sgx_type)

        manifest: dict[str, Any] = {
            "format": DEV_PKI_FORMAT,
            "warning": "development PKI - NOT FOR PRODUCTION; trust its root only as a dev root",
            "created": _iso(now),
            "root_sha256": hashlib.sha256(root.cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
            "platforms": manifest_platforms,
            "crl_numbers": {"root": 0, "processor": 0, "platform": 0},
            "revoked": {"processor": [], "platform": []},
        }
        pki = cls(
            directory=out_dir,
            root=root,
            processor_ca=cas["processor"],
            platform_ca=cas["platform"],
            tcb_signing=tcb_signing,
            platforms=platforms,
            manifest=manifest,
        )
        pki._write_all(now)
        return pki

    @classmethod
    def load(cls, directory: Path) -> DevPki:
        """Load a dev PKI written by :meth:`create`."""
        manifest = json.loads((directory / "pki.json").read_text())
        if not isinstance(manifest, dict) or manifest.get("format") != DEV_PKI_FORMAT:
            raise ValueError(f"{directory} does not hold a {DEV_PKI_FORMAT} dev PKI")

        def issued(stem: str) -> IssuedCert:
            cert = x509.load_pem_x509_certificate((directory / f"{stem}.pem").read_bytes())
            return IssuedCert(cert, _read_private(directory / f"{stem}.key"))

        platforms: dict[str, SimPlatform] = {}
        for name, entry in cast(dict[str, Any], manifest["platforms"]).items():
            pdir = directory / "platforms" / name
            pcks: dict[TcbChoice, IssuedCert] = {}
            for choice in TCB_CHOICES:
                cert = x509.load_pem_x509_certificate((pdir / f"pck-{choice}.pem").read_bytes())
                pcks[choice] = IssuedCert(cert, _read_private(pdir / f"pck-{choice}.key"))
            piid = entry.get("platform_instance_id")
            platforms[name] = SimPlatform(
                name=name,
                tee=entry["tee"],
                ca=entry["ca"],
                fmspc=bytes.fromhex(entry["fmspc"]),
                pce_id=bytes.fromhex(entry["pce_id"]),
                ppid=bytes.fromhex(entry["ppid"]),
                qe_id=bytes.fromhex(entry["qe_id"]),
                platform_instance_id=None if piid is None else bytes.fromhex(piid),
                attestation_key=_read_private(pdir / "ak.key"),
                pck=pcks,
            )
        return cls(
            directory=directory,
            root=issued("root"),
            processor_ca=issued("pck-processor-ca"),
            platform_ca=issued("pck-platform-ca"),
            tcb_signing=issued("tcb-signing"),
            platforms=platforms,
            manifest=manifest,
        )

    @classmethod
    def load_or_create(cls, directory: Path, *, now: dt.datetime | None = None) -> DevPki:
        """Load the dev PKI in ``directory``, or create one there if it holds none yet."""
        if (directory / "pki.json").exists():
            return cls.load(directory)
        return cls.create(directory, now=now)

    def reissue_collateral(self, *, now: dt.datetime | None = None) -> None:
        """Issue fresh CRLs, TCB Info and QE Identities at ``now`` (valid 30 days).

        The collateral of a dev PKI expires like Intel's; a long-running dev service calls this
        (or ``keybroker dev-pki refresh``) instead of creating a new PKI. Keys, certificates
        and revocations stay as they are.
        """
        self._issue_collateral(_instant(now))
        self._write_manifest()

    # -- revocation --------------------------------------------------------------------

    def revoke_pck(
        self, platform: str, *, tcb: TcbChoice | None = None, now: dt.datetime | None = None
    ) -> list[int]:
        """Revoke the PCK certificates of ``platform`` (all levels, or only ``tcb``).

        Rewrites the issuing CA's CRL (new CRL number, thisUpdate ``now``) and the collateral
        file that carries it. Returns the newly revoked serial numbers.
        """
        now = _instant(now)
        p = self.platform(platform)
        choices = TCB_CHOICES if tcb is None else (tcb,)
        revoked: list[str] = self._manifest["revoked"][p.ca]
        added: list[int] = []
        for choice in choices:
            serial = p.pck[choice].cert.serial_number
            if f"{serial:x}" not in revoked:
                revoked.append(f"{serial:x}")
                added.append(serial)
        self._write_pck_crl(p.ca, now)
        self._write_collateral()
        self._write_manifest()
        return added

    # -- writing -----------------------------------------------------------------------

    def _ca(self, kind: str) -> IssuedCert:
        return self.processor_ca if kind == "processor" else self.platform_ca

    def _write_all(self, now: dt.datetime) -> None:
        d = self.directory
        for stem, item in (
            ("root", self.root),
            ("pck-processor-ca", self.processor_ca),
            ("pck-platform-ca", self.platform_ca),
            ("tcb-signing", self.tcb_signing),
        ):
            _write_public(d / f"{stem}.pem", _pem(item.cert).encode("ascii"))
            _write_private(d / f"{stem}.key", item.key)
        for p in self.platforms.values():
            pdir = d / "platforms" / p.name
            _mkdir_private(d / "platforms")
            _mkdir_private(pdir)
            _write_private(pdir / "ak.key", p.attestation_key)
            for choice, item in p.pck.items():
                _write_public(pdir / f"pck-{choice}.pem", _pem(item.cert).encode("ascii"))
                _write_private(pdir / f"pck-{choice}.key", item.key)
        root_pem = _pem(self.root.cert)
        _write_public(d / "tcb-signing-chain.pem", (_pem(self.tcb_signing.cert) + root_pem).encode("ascii"))
        for kind in ("processor", "platform"):
            chain = _pem(self._ca(kind).cert) + root_pem
            _write_public(d / f"pck-{kind}-crl-chain.pem", chain.encode("ascii"))
        self._issue_collateral(now)

    def _issue_collateral(self, now: dt.datetime) -> None:
        """(Re)issue CRLs, TCB Info and QE Identities at ``now`` and the collateral files."""
        d = self.directory
        self._write_root_crl(now)
        self._write_pck_crl("processor", now)
        self._write_pck_crl("platform", now)
        for tee in ("sgx", "tdx"):
            fmspc = self.platforms[PLATFORM_SGX if tee == "sgx" else PLATFORM_TDX].fmspc
            body = tcb_info_body(tee=tee, fmspc=fmspc, issued=now)
            sig = signature_raw(self.tcb_signing.key, body.encode()).hex()
            _write_public(
                d / f"tcbinfo-{tee}.json", ('{"tcbInfo":' + body + ',"signature":"' + sig + '"}').encode()
            )
        for qe, fname in ((QE_IDENTITY, "qe-identity.json"), (TD_QE_IDENTITY, "td-qe-identity.json")):
            body = qe_identity_body(qe, issued=now)
            sig = signature_raw(self.tcb_signing.key, body.encode()).hex()
            _write_public(d / fname, ('{"enclaveIdentity":' + body + ',"signature":"' + sig + '"}').encode())
        self._write_collateral()
        self._write_manifest()

    def _next_crl_number(self, kind: str) -> int:
        numbers: dict[str, int] = self._manifest["crl_numbers"]
        numbers[kind] = numbers[kind] + 1
        return numbers[kind]

    def _sign_crl(
        self, issuer: IssuedCert, number: int, serials: list[int], now: dt.datetime
    ) -> x509.CertificateRevocationList:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.cert.subject)
            .last_update(now)
            .next_update(now + COLLATERAL_VALIDITY)
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
            )
        )
        for serial in serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
            )
        return builder.sign(issuer.key, hashes.SHA256())

    def _write_root_crl(self, now: dt.datetime) -> None:
        crl = self._sign_crl(self.root, self._next_crl_number("root"), [], now)
        _write_public(self.directory / "root-crl.der", crl.public_bytes(serialization.Encoding.DER))

    def _write_pck_crl(self, kind: Literal["processor", "platform"], now: dt.datetime) -> None:
        crl = self._sign_crl(self._ca(kind), self._next_crl_number(kind), self.revoked_serials(kind), now)
        _write_public(self.directory / f"pck-{kind}-crl.der", crl.public_bytes(serialization.Encoding.DER))

    def _write_collateral(self) -> None:
        d = self.directory
        root_pem = _pem(self.root.cert)
        tcb_chain = _pem(self.tcb_signing.cert) + root_pem
        for tee, platform_name, qe_file in (
            ("sgx", PLATFORM_SGX, "qe-identity.json"),
            ("tdx", PLATFORM_TDX, "td-qe-identity.json"),
        ):
            p = self.platforms[platform_name]
            tcb_info, tcb_sig = _split_signed(d / f"tcbinfo-{tee}.json", "tcbInfo")
            qe_identity, qe_sig = _split_signed(d / qe_file, "enclaveIdentity")
            collateral = {
                "pck_crl_issuer_chain": _pem(self._ca(p.ca).cert) + root_pem,
                "root_ca_crl": (d / "root-crl.der").read_bytes().hex(),
                "pck_crl": (d / f"pck-{p.ca}-crl.der").read_bytes().hex(),
                "tcb_info_issuer_chain": tcb_chain,
                "tcb_info": tcb_info,
                "tcb_info_signature": tcb_sig,
                "qe_identity_issuer_chain": tcb_chain,
                "qe_identity": qe_identity,
                "qe_identity_signature": qe_sig,
            }
            _write_public(d / f"collateral-{tee}.json", (json.dumps(collateral, indent=1) + "\n").encode())

    def _write_manifest(self) -> None:
        _write_public(self.directory / "pki.json", (json.dumps(self._manifest, indent=2) + "\n").encode())


def _platform_manifest(p: SimPlatform, sgx_type: int) -> dict[str, Any]:
    return {
        "tee": p.tee,
        "ca": p.ca,
        "fmspc": p.fmspc.hex().upper(),
        "pce_id": p.pce_id.hex().upper(),
        "ppid": p.ppid.hex(),
        "qe_id": p.qe_id.hex(),
        "sgx_type": sgx_type,
        "platform_instance_id": None if p.platform_instance_id is None else p.platform_instance_id.hex(),
        "pck_serials": {c: f"{p.pck[c].cert.serial_number:x}" for c in TCB_CHOICES},
    }


def _split_signed(path: Path, field: str) -> tuple[str, str]:
    """Return the exact signed body substring and the hex signature of a PCS-form file."""
    text = path.read_text()
    prefix = '{"' + field + '":'
    marker = ',"signature":"'
    if not text.startswith(prefix) or marker not in text:
        raise ValueError(f"{path} is not in the PCS signed form")
    body, _, rest = text[len(prefix) :].rpartition(marker)
    return body, rest.rstrip('"}\n')
