"""SEV-SNP simulator: a dev PKI shaped like AMD's and real-format reports it signs. NOT FOR PRODUCTION.

The dev PKI (:class:`SnpDevPki`) has AMD's shape for one product: an ARK (self-signed), an ASK
and an ASVK, all RSA-4096 signed with RSASSA-PSS SHA-384 salt 48, ARK-signed CRLs, and VCEKs /
VLEKs (P-384) with AMD's extensions (SPLs, hwID, productName, cspID). As on AMD's KDS, a VCEK's
key is derived from the chip and the TCB (here: from a dev secret with HKDF), so one chip has one
VCEK per TCB. :func:`snp_report` builds ATTESTATION_REPORTs (version 3 or 5; 2 on request) with
the chosen measurement, policy, TCB, chip id and report data, signed by that VCEK (or the VLEK).

``keybroker.tee.snp.verify.verify_report`` accepts them only with the dev ARK among its
``dev_roots``, and marks the result ``sim``. Names carry AMD's CNs (``ARK-Genoa``...) with the
dev PKI's own organisation, so no certificate here can pass for AMD's.

Layout of a dev PKI directory (dir 0700, ``*.key`` 0600)::

    snp-pki.json             manifest: product, chip id, CSP id, root fingerprint, CRL state
    .crl.lock                held while the CRLs or the revocations change (several processes)
    ark.pem ark.key          "ARK-{P}"
    ask.pem ask.key          "SEV-{P}"  (issues VCEKs)
    asvk.pem asvk.key        "SEV-VLEK-{P}"  (issues VLEKs)
    cert_chain.pem           ASK, ARK: KDS /vcek/v1/{P}/cert_chain
    vlek_cert_chain.pem      ASVK, ARK: KDS /vlek/v1/{P}/cert_chain
    vcek-crl.der vlek-crl.der  the ARK's CRLs (KDS /vcek/v1/{P}/crl, /vlek/v1/{P}/crl)
    chip.key                 the dev secret VCEK and VLEK keys derive from
    vcek/<tcb>.der vlek/<tcb>.der  certificates issued so far, by REPORTED_TCB (hex)
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

from keybroker.tee.sim import _der
from keybroker.tee.sim.pki import _instant, _iso, _mkdir_private, _write_atomic, _years
from keybroker.tee.snp import abi
from keybroker.tee.snp.abi import Product, SigningKey, Tcb
from keybroker.tee.snp.certs import RSA_PSS_SHA384
from keybroker.tee.snp.certtable import GUID_ARK, GUID_ASK, GUID_CRL, GUID_VCEK, GUID_VLEK, build_cert_table

__all__ = [
    "CRL_RENEW_MARGIN",
    "CRL_VALIDITY",
    "DEFAULT_MEASUREMENT",
    "DEFAULT_POLICY",
    "DEFAULT_TCB",
    "SNP_DEV_PKI_FORMAT",
    "SimSnpEvidence",
    "SnpDevPki",
    "snp_report",
]

SNP_DEV_PKI_FORMAT: Final = "keybroker-snp-dev-pki/1"
#: The name attributes besides CN of every dev certificate (AMD's: OU=Engineering, O=Advanced Micro Devices...).
_DEV_ORG: Final = "keybroker development PKI"
_DEV_OU: Final = "DEV SEV-SNP - NOT FOR PRODUCTION"
_DEV_COUNTRY: Final = "ZZ"
_DIST_BASE: Final = "https://keybroker-dev-pki.invalid"  # RFC 2606: nothing can be fetched from it

_ROOT_YEARS: Final = 25
_VCEK_YEARS: Final = 7
#: CRLs of the dev ARK are valid this long after issue.
CRL_VALIDITY: Final = dt.timedelta(days=30)
#: :meth:`SnpDevPki.renew_crls` re-issues CRLs that do not cover this long from now.
CRL_RENEW_MARGIN: Final = dt.timedelta(days=7)
#: Taken (``flock``) around every change of the CRLs and the revocations they list.
_CRL_LOCK: Final = ".crl.lock"

#: POLICY: SMT allowed, bit 17 (reserved, one); ABI 0.0. No debug, no migration agent.
DEFAULT_POLICY: Final = 0x30000
DEFAULT_MEASUREMENT: Final = hashlib.sha384(b"keybroker DEV SEV-SNP guest").digest()
#: A REPORTED_TCB per product (Turin has an FMC SPL).
DEFAULT_TCB: Final[dict[Product, Tcb]] = {
    "Milan": Tcb(bootloader=4, tee=0, snp=24, microcode=219),
    "Genoa": Tcb(bootloader=10, tee=0, snp=23, microcode=84),
    "Turin": Tcb(bootloader=1, tee=1, snp=1, microcode=9, fmc=1),
}
#: CPUID family, model, stepping per product (report version 3+).
_CPUID: Final[dict[Product, tuple[int, int, int]]] = {
    "Milan": (0x19, 0x01, 0x01),
    "Genoa": (0x19, 0x11, 0x01),
    "Turin": (0x1A, 0x02, 0x01),
}
_PRODUCT_NAME: Final[dict[Product, str]] = {"Milan": "Milan-B0", "Genoa": "Genoa", "Turin": "Turin"}
_FIRMWARE: Final = abi.FirmwareVersion(1, 55, 40)
#: PLATFORM_INFO: SMT enabled, TSME enabled, ECC enabled, alias check complete.
DEFAULT_PLATFORM_INFO: Final = 0x27

_AMD: Final = "1.3.6.1.4.1.3704.1"


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, _DEV_OU),
            x509.NameAttribute(NameOID.COUNTRY_NAME, _DEV_COUNTRY),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _DEV_ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _ia5(text: str) -> bytes:
    data = text.encode("ascii")
    if len(data) >= 0x80:
        raise ValueError("IA5String too long for this encoder")
    return bytes([0x16, len(data)]) + data


def _ext(oid: str, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)


@dataclass(frozen=True)
class _Issued:
    cert: x509.Certificate
    key: rsa.RSAPrivateKey


def _ca_cert(
    *, cn: str, key: rsa.RSAPrivateKey, issuer: _Issued | None, now: dt.datetime, crl_path: str
) -> x509.Certificate:
    """An ARK (``issuer`` None) or ASK/ASVK with the extensions of AMD's."""
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn) if issuer is None else issuer.cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(_years(now, _ROOT_YEARS))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(
            x509.BasicConstraints(ca=True, path_length=None if issuer is None else 0), critical=True
        )
        .add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        [x509.UniformResourceIdentifier(_DIST_BASE + crl_path)], None, None, None
                    )
                ]
            ),
            critical=False,
        )
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    signer = key if issuer is None else issuer.key
    return builder.sign(signer, hashes.SHA384(), rsa_padding=RSA_PSS_SHA384)


def _amd_extensions(
    product: Product, tcb: Tcb, *, hwid: bytes | None, csp_id: str | None
) -> list[x509.UnrecognizedExtension]:
    """AMD's VCEK/VLEK extensions in AMD's order (tee-facts.md §2)."""
    spl = _der.integer
    out = [
        _ext(f"{_AMD}.1", spl(1 if product == "Turin" else 0)),
        _ext(f"{_AMD}.2", _ia5(_PRODUCT_NAME[product] if hwid is not None else product)),
    ]
    if product == "Turin":
        assert tcb.fmc is not None
        out += [_ext(f"{_AMD}.3.9", spl(tcb.fmc))]
    out += [
        _ext(f"{_AMD}.3.1", spl(tcb.bootloader)),
        _ext(f"{_AMD}.3.2", spl(tcb.tee)),
    ]
    if product == "Turin":
        out += [_ext(f"{_AMD}.3.3", spl(tcb.snp))]
        out += [_ext(f"{_AMD}.3.{i}", spl(0)) for i in (5, 6, 7)]
    else:
        out += [_ext(f"{_AMD}.3.{i}", spl(0)) for i in (4, 5, 6, 7)]
        out += [_ext(f"{_AMD}.3.3", spl(tcb.snp))]
    out += [_ext(f"{_AMD}.3.8", spl(tcb.microcode))]
    if hwid is not None:
        out += [_ext(f"{_AMD}.4", hwid)]
    if csp_id is not None:
        out += [_ext(f"{_AMD}.5", _ia5(csp_id))]
    return out


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_atomic(path, data, 0o600)


def _read_key(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path} is not an RSA private key")
    return key


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class SimSnpEvidence:
    """A simulated report and what a guest gets with it from an extended report request."""

    report: bytes
    #: The VCEK or VLEK that signed ``report``.
    signer: x509.Certificate
    #: ASK (or ASVK), ARK.
    chain: tuple[x509.Certificate, x509.Certificate]
    #: The certificate table (configfs-tsm ``auxblob``): signer, intermediate, ARK and the ARK's
    #: current CRL of that side (what a verifier without a KDS cache checks revocation with).
    cert_table: bytes


class SnpDevPki:
    """A loaded SEV-SNP dev PKI for one product (see the module docstring for its files)."""

    def __init__(
        self,
        *,
        directory: Path,
        product: Product,
        ark: _Issued,
        ask: _Issued,
        asvk: _Issued,
        chip_secret: bytes,
        manifest: dict[str, Any],
    ) -> None:
        self.directory = directory
        self.product = product
        self.ark = ark
        self.ask = ask
        self.asvk = asvk
        self._chip_secret = chip_secret
        self._manifest = manifest
        self._issued: dict[tuple[str, bytes, bytes], tuple[x509.Certificate, ec.EllipticCurvePrivateKey]] = {}

    # -- views ---------------------------------------------------------------------------

    @property
    def root_cert(self) -> x509.Certificate:
        """The dev ARK: what ``verify_report(dev_roots=...)`` must be given to trust this PKI."""
        return self.ark.cert

    @property
    def root_fingerprint(self) -> str:
        return hashlib.sha256(self.ark.cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    @property
    def chip_id(self) -> bytes:
        """The simulated chip's CHIP_ID (64 bytes; on Turin only bytes 0-7 are non-zero)."""
        return bytes.fromhex(self._manifest["chip_id"])

    @property
    def csp_id(self) -> str:
        return str(self._manifest["csp_id"])

    def chain(self, kind: SigningKey = "vcek") -> tuple[x509.Certificate, x509.Certificate]:
        """ASK (or ASVK for a VLEK), ARK: the KDS ``cert_chain``."""
        return ((self.ask if kind == "vcek" else self.asvk).cert, self.ark.cert)

    def crl_path(self, kind: SigningKey = "vcek") -> Path:
        return self.directory / f"{kind}-crl.der"

    def crl(self, kind: SigningKey = "vcek") -> bytes:
        """The ARK's current CRL for ASKs (``vcek``) or ASVKs (``vlek``), DER."""
        return self.crl_path(kind).read_bytes()

    # -- VCEKs and VLEKs -------------------------------------------------------------------

    def _derived_key(self, kind: SigningKey, chip_id: bytes, tcb_raw: bytes) -> ec.EllipticCurvePrivateKey:
        """Like AMD's, the key is a function of the chip (here: the CSP for a VLEK) and the TCB."""
        info = b"keybroker dev SEV-SNP " + kind.encode() + b"\x00" + chip_id + tcb_raw
        okm = HKDF(algorithm=hashes.SHA384(), length=64, salt=None, info=info).derive(self._chip_secret)
        n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973
        return ec.derive_private_key(int.from_bytes(okm, "big") % (n - 1) + 1, ec.SECP384R1())

    def signer(
        self,
        tcb: Tcb,
        *,
        kind: SigningKey = "vcek",
        chip_id: bytes | None = None,
        now: dt.datetime | None = None,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """The VCEK (or VLEK) for ``tcb`` and its key, issued on first use and kept in the directory.

        ``chip_id`` defaults to this PKI's chip; a VLEK is bound to the CSP, not a chip.
        """
        chip = self.chip_id if chip_id is None else chip_id
        tcb_raw = tcb.encode(self.product)
        binding = chip if kind == "vcek" else self.csp_id.encode()
        memo_key = (kind, binding, tcb_raw)
        if memo_key in self._issued:
            return self._issued[memo_key]
        key = self._derived_key(kind, binding, tcb_raw)
        sub = self.directory / kind
        own = binding == (self.chip_id if kind == "vcek" else self.csp_id.encode())
        stem = tcb_raw.hex() if own else f"{hashlib.sha256(binding).hexdigest()[:16]}-{tcb_raw.hex()}"
        path = sub / f"{stem}.der"
        if path.exists():
            cert = x509.load_der_x509_certificate(path.read_bytes())
        else:
            cert = self._issue_leaf(kind, tcb, chip, key, _instant(now))
            _mkdir_private(sub)
            _write_atomic(path, cert.public_bytes(serialization.Encoding.DER), 0o644)
        self._issued[memo_key] = (cert, key)
        return cert, key

    def _issue_leaf(
        self, kind: SigningKey, tcb: Tcb, chip: bytes, key: ec.EllipticCurvePrivateKey, now: dt.datetime
    ) -> x509.Certificate:
        issuer = self.ask if kind == "vcek" else self.asvk
        if kind == "vcek":
            hwid: bytes | None = chip[:8] if self.product == "Turin" else chip
            csp: str | None = None
        else:
            hwid, csp = None, self.csp_id
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name("SEV-VCEK" if kind == "vcek" else "SEV-VLEK"))
            .issuer_name(issuer.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(_years(now, _VCEK_YEARS))
        )
        for ext in _amd_extensions(self.product, tcb, hwid=hwid, csp_id=csp):
            builder = builder.add_extension(ext, critical=False)
        return builder.sign(issuer.key, hashes.SHA384(), rsa_padding=RSA_PSS_SHA384)

    # -- revocation ------------------------------------------------------------------------

    def revoke_intermediate(self, kind: SigningKey = "vcek", *, now: dt.datetime | None = None) -> int:
        """Put the ASK (``vcek``) or ASVK (``vlek``) on the ARK's CRL; returns its serial."""
        serial = (self.ask if kind == "vcek" else self.asvk).cert.serial_number
        with self._crl_state():
            revoked: list[str] = self._manifest["revoked"][kind]
            if f"{serial:x}" not in revoked:
                revoked.append(f"{serial:x}")
            self._write_crl(kind, _instant(now))
            self._write_manifest()
        return serial

    def crls_expire_before(self, when: dt.datetime) -> bool:
        """Whether a CRL is missing, unreadable or has its nextUpdate before ``when``."""
        for kind in ("vcek", "vlek"):
            try:
                next_update = x509.load_der_x509_crl(self.crl(kind)).next_update_utc
            except (OSError, ValueError):
                return True
            if next_update is None or next_update < when:
                return True
        return False

    def reissue_crls(self, *, now: dt.datetime | None = None) -> None:
        """Issue both CRLs afresh at ``now`` (valid 30 days), keeping the revocations."""
        at = _instant(now)
        with self._crl_state():
            self._write_crl("vcek", at)
            self._write_crl("vlek", at)
            self._write_manifest()

    @classmethod
    def renew_crls(
        cls, directory: Path, *, now: dt.datetime | None = None, margin: dt.timedelta = CRL_RENEW_MARGIN
    ) -> bool:
        """Re-issue both of the dev PKI's CRLs at ``now`` when one held is not current from ``now``
        through ``now + margin``; whether it did. What keeps a long-running dev server verifying
        SEV-SNP reports (the CRLs are valid 30 days): cheap when there is nothing to do (two small
        files read), and safe for several processes (the check is repeated under the lock, and the
        revocations are read from the directory, never from a copy in memory, so none is dropped).

        A CRL that is missing or does not decode is left alone: that is not a CRL running out but one
        removed or damaged, and the verifier refuses reports naming it (the server's start, through
        :meth:`crls_expire_before` and :meth:`reissue_crls`, issues it again)."""
        at = _instant(now)
        if not _crls_run_out(directory, at, at + margin):
            return False
        with _locked(directory):
            if not _crls_run_out(directory, at, at + margin):
                return False  # another process renewed them meanwhile
            pki = cls.load(directory)
            pki._write_crl("vcek", at)
            pki._write_crl("vlek", at)
            pki._write_manifest()
        return True

    @contextmanager
    def _crl_state(self) -> Iterator[None]:
        """The CRL lock, held with this instance's CRL numbers and revocations re-read from the
        directory (another process, such as a dev server renewing the CRLs, may have changed them)."""
        with _locked(self.directory):
            try:
                on_disk = json.loads((self.directory / "snp-pki.json").read_text())
            except FileNotFoundError:
                on_disk = None  # being created
            if isinstance(on_disk, dict):
                for field in ("crl_numbers", "revoked"):
                    self._manifest[field] = on_disk[field]
            yield

    def _write_crl(self, kind: SigningKey, now: dt.datetime) -> None:
        numbers: dict[str, int] = self._manifest["crl_numbers"]
        numbers[kind] += 1
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ark.cert.subject)
            .last_update(now)
            .next_update(now + CRL_VALIDITY)
            .add_extension(x509.CRLNumber(numbers[kind]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ark.key.public_key()), critical=False
            )
        )
        for serial in self._manifest["revoked"][kind]:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(int(serial, 16)).revocation_date(now).build()
            )
        crl = builder.sign(self.ark.key, hashes.SHA384(), rsa_padding=RSA_PSS_SHA384)
        _write_atomic(self.crl_path(kind), crl.public_bytes(serialization.Encoding.DER), 0o644)

    def _write_manifest(self) -> None:
        _write_atomic(
            self.directory / "snp-pki.json", (json.dumps(self._manifest, indent=2) + "\n").encode(), 0o644
        )

    # -- creation and loading --------------------------------------------------------------

    @classmethod
    def create(
        cls, out_dir: Path, *, product: Product = "Genoa", now: dt.datetime | None = None
    ) -> SnpDevPki:
        """Create a dev PKI for ``product`` in ``out_dir`` (0700): three RSA-4096 keys, a few seconds."""
        if product not in abi.PRODUCTS:
            raise ValueError(f"product {product!r} is not one of {', '.join(abi.PRODUCTS)}")
        at = _instant(now)
        _mkdir_private(out_dir)
        ark_key = rsa.generate_private_key(65537, 4096)
        ark = _Issued(
            _ca_cert(
                cn=f"ARK-{product}", key=ark_key, issuer=None, now=at, crl_path=f"/vcek/v1/{product}/crl"
            ),
            ark_key,
        )
        ask_key = rsa.generate_private_key(65537, 4096)
        ask = _Issued(
            _ca_cert(
                cn=f"SEV-{product}", key=ask_key, issuer=ark, now=at, crl_path=f"/vcek/v1/{product}/crl"
            ),
            ask_key,
        )
        asvk_key = rsa.generate_private_key(65537, 4096)
        asvk = _Issued(
            _ca_cert(
                cn=f"SEV-VLEK-{product}", key=asvk_key, issuer=ark, now=at, crl_path=f"/vlek/v1/{product}/crl"
            ),
            asvk_key,
        )
        chip = secrets.token_bytes(8) + bytes(56) if product == "Turin" else secrets.token_bytes(64)
        manifest: dict[str, Any] = {
            "format": SNP_DEV_PKI_FORMAT,
            "warning": "development PKI - NOT FOR PRODUCTION; trust its ARK only as a dev root",
            "created": _iso(at),
            "product": product,
            "root_sha256": hashlib.sha256(ark.cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
            "chip_id": chip.hex(),
            "csp_id": "keybroker-dev-csp",
            "crl_numbers": {"vcek": 0, "vlek": 0},
            "revoked": {"vcek": [], "vlek": []},
        }
        chip_secret = secrets.token_bytes(32)
        _write_atomic(out_dir / "chip.key", chip_secret.hex().encode() + b"\n", 0o600)
        for stem, item in (("ark", ark), ("ask", ask), ("asvk", asvk)):
            _write_atomic(out_dir / f"{stem}.pem", _pem(item.cert), 0o644)
            _write_key(out_dir / f"{stem}.key", item.key)
        _write_atomic(out_dir / "cert_chain.pem", _pem(ask.cert) + _pem(ark.cert), 0o644)
        _write_atomic(out_dir / "vlek_cert_chain.pem", _pem(asvk.cert) + _pem(ark.cert), 0o644)
        pki = cls(
            directory=out_dir,
            product=product,
            ark=ark,
            ask=ask,
            asvk=asvk,
            chip_secret=chip_secret,
            manifest=manifest,
        )
        pki.reissue_crls(now=at)
        return pki

    @classmethod
    def load(cls, directory: Path) -> SnpDevPki:
        """Load a dev PKI written by :meth:`create`."""
        manifest = json.loads((directory / "snp-pki.json").read_text())
        if not isinstance(manifest, dict) or manifest.get("format") != SNP_DEV_PKI_FORMAT:
            raise ValueError(f"{directory} does not hold a {SNP_DEV_PKI_FORMAT} dev PKI")

        def issued(stem: str) -> _Issued:
            cert = x509.load_pem_x509_certificate((directory / f"{stem}.pem").read_bytes())
            return _Issued(cert, _read_key(directory / f"{stem}.key"))

        product = manifest["product"]
        if product not in abi.PRODUCTS:
            raise ValueError(f"{directory}: unknown product {product!r}")
        return cls(
            directory=directory,
            product=cast(Product, product),
            ark=issued("ark"),
            ask=issued("ask"),
            asvk=issued("asvk"),
            chip_secret=bytes.fromhex((directory / "chip.key").read_text().strip()),
            manifest=manifest,
        )

    @classmethod
    def load_or_create(
        cls, directory: Path, *, product: Product = "Genoa", now: dt.datetime | None = None
    ) -> SnpDevPki:
        if (directory / "snp-pki.json").exists():
            return cls.load(directory)
        return cls.create(directory, product=product, now=now)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """The dev PKI's CRL lock (``flock`` on ``.crl.lock``), released when the block ends."""
    fd = os.open(directory / _CRL_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _crls_run_out(directory: Path, start: dt.datetime, end: dt.datetime) -> bool:
    """Whether both CRLs in ``directory`` are held (readable) and one of them is not current from
    ``start`` through ``end`` (thisUpdate <= start, end <= nextUpdate). Their signatures are the
    verifier's to check."""
    windows = []
    for kind in ("vcek", "vlek"):
        try:
            crl = x509.load_der_x509_crl((directory / f"{kind}-crl.der").read_bytes())
        except (OSError, ValueError):
            return False
        windows.append((crl.last_update_utc, crl.next_update_utc))
    return any(next_update is None or not last <= start or next_update < end for last, next_update in windows)


def _current_crl(path: Path, at: dt.datetime) -> bytes | None:
    """The CRL at ``path`` if it is current at ``at`` (what a host would hand a guest), else None."""
    try:
        der = path.read_bytes()
        crl = x509.load_der_x509_crl(der)
    except (OSError, ValueError):
        return None
    next_update = crl.next_update_utc
    return der if next_update is not None and crl.last_update_utc <= at <= next_update else None


def _le(value: int, size: int) -> bytes:
    return value.to_bytes(size, "little")


def snp_report(
    pki: SnpDevPki,
    *,
    report_data: bytes = bytes(64),
    measurement: bytes = DEFAULT_MEASUREMENT,
    policy: int = DEFAULT_POLICY,
    version: int | None = None,
    signing_key: SigningKey = "vcek",
    reported_tcb: Tcb | None = None,
    committed_tcb: Tcb | None = None,
    current_tcb: Tcb | None = None,
    launch_tcb: Tcb | None = None,
    chip_id: bytes | None = None,
    mask_chip_id: bool = False,
    vmpl: int = 0,
    guest_svn: int = 0,
    family_id: bytes = bytes(16),
    image_id: bytes = bytes(16),
    host_data: bytes = bytes(32),
    id_key_digest: bytes = bytes(48),
    author_key_digest: bytes = bytes(48),
    author_key_en: bool = False,
    report_id: bytes | None = None,
    report_id_ma: bytes = b"\xff" * 32,
    platform_info: int = DEFAULT_PLATFORM_INFO,
    firmware: abi.FirmwareVersion = _FIRMWARE,
    committed_firmware: abi.FirmwareVersion | None = None,
    launch_mit_vector: int = 0,
    current_mit_vector: int = 0,
    cpuid: tuple[int, int, int] | None = None,
    signer_tcb: Tcb | None = None,
    signer_chip_id: bytes | None = None,
    now: dt.datetime | None = None,
) -> SimSnpEvidence:
    """An ATTESTATION_REPORT in AMD's format, signed by the dev VCEK (or VLEK) for ``reported_tcb``.

    ``version`` defaults to 5 on Turin (what Turin firmware emits) and 3 elsewhere; 2 has no
    CPUID. TCBs default to the product's :data:`DEFAULT_TCB` (committed and launch = reported,
    current = committed). ``chip_id`` defaults to the PKI's chip; ``mask_chip_id`` zeroes it (as
    MASK_CHIP_ID does; only a VLEK-signed report then verifies). The inputs are not validated
    beyond what the format needs: tests use this to build reports a verifier must refuse, with
    ``cpuid`` (family, model, stepping; default the product's), ``signer_tcb`` (the TCB of the
    signing key; default ``reported_tcb``) and ``signer_chip_id`` (whose VCEK signs; default
    ``chip_id``).
    """
    product = pki.product
    if version is None:
        version = 5 if product == "Turin" else 3
    if version not in abi.SUPPORTED_VERSIONS:
        raise ValueError(f"version {version} is not one the format defines here (2-5)")
    sizes = {
        "report_data": (report_data, 64),
        "measurement": (measurement, 48),
        "family_id": (family_id, 16),
        "image_id": (image_id, 16),
        "host_data": (host_data, 32),
        "id_key_digest": (id_key_digest, 48),
        "author_key_digest": (author_key_digest, 48),
        "report_id_ma": (report_id_ma, 32),
    }
    for field, (value, size) in sizes.items():
        if len(value) != size:
            raise ValueError(f"{field} must be {size} bytes, got {len(value)}")
    reported = reported_tcb or DEFAULT_TCB[product]
    committed = committed_tcb or reported
    current = current_tcb or committed
    launch = launch_tcb or committed
    chip = pki.chip_id if chip_id is None else chip_id
    if len(chip) != 64:
        raise ValueError("chip_id must be 64 bytes")
    signer, key = pki.signer(
        signer_tcb or reported, kind=signing_key, chip_id=signer_chip_id or chip_id, now=now
    )

    key_info = (int(author_key_en)) | (
        (abi.SIGNING_KEY_VCEK if signing_key == "vcek" else abi.SIGNING_KEY_VLEK) << 2
    )
    body = bytearray(abi.REPORT_SIZE)
    body[0:4] = _le(version, 4)
    body[4:8] = _le(guest_svn, 4)
    body[8:16] = _le(policy, 8)
    body[0x10:0x20] = family_id
    body[0x20:0x30] = image_id
    body[0x30:0x34] = _le(vmpl, 4)
    body[0x34:0x38] = _le(abi.SIGNATURE_ALGO_ECDSA_P384_SHA384, 4)
    body[0x38:0x40] = current.encode(product)
    body[0x40:0x48] = _le(platform_info, 8)
    body[0x48:0x4C] = _le(key_info, 4)
    body[0x50:0x90] = report_data
    body[0x90:0xC0] = measurement
    body[0xC0:0xE0] = host_data
    body[0xE0:0x110] = id_key_digest
    body[0x110:0x140] = author_key_digest
    body[0x140:0x160] = secrets.token_bytes(32) if report_id is None else report_id
    body[0x160:0x180] = report_id_ma
    body[0x180:0x188] = reported.encode(product)
    if version >= 3:
        body[0x188:0x18B] = bytes(cpuid or _CPUID[product])
    body[0x1A0:0x1E0] = bytes(64) if mask_chip_id else chip
    body[0x1E0:0x1E8] = committed.encode(product)
    fw_committed = committed_firmware or firmware
    body[0x1E8:0x1EB] = bytes([firmware.build, firmware.minor, firmware.major])
    body[0x1EC:0x1EF] = bytes([fw_committed.build, fw_committed.minor, fw_committed.major])
    body[0x1F0:0x1F8] = launch.encode(product)
    if version >= 5:
        body[0x1F8:0x200] = _le(launch_mit_vector, 8)
        body[0x200:0x208] = _le(current_mit_vector, 8)
    r, s = decode_dss_signature(key.sign(bytes(body[: abi.SIGNED_SIZE]), ec.ECDSA(hashes.SHA384())))
    body[abi.SIGNED_SIZE : abi.SIGNED_SIZE + 72] = _le(r, 72)
    body[abi.SIG_R_END : abi.SIG_R_END + 72] = _le(s, 72)
    chain = pki.chain(signing_key)
    der = serialization.Encoding.DER
    entries = [
        (GUID_VCEK if signing_key == "vcek" else GUID_VLEK, signer.public_bytes(der)),
        (GUID_ASK, chain[0].public_bytes(der)),
        (GUID_ARK, chain[1].public_bytes(der)),
    ]
    crl = _current_crl(pki.crl_path(signing_key), _instant(now))
    if crl is not None:  # a test may have taken it away; an expired one is not carried
        entries.append((GUID_CRL, crl))
    table = build_cert_table(entries)
    return SimSnpEvidence(report=bytes(body), signer=signer, chain=chain, cert_table=table)
