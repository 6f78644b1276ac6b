"""AMD SEV-SNP behind the verifier interface (``keybroker.tee.verifier.TeeVerifier``).

The evidence is the 1184-byte ATTESTATION_REPORT, optionally followed by the certificate table a
guest got with it (the extended report's certificate buffer, configfs-tsm's ``auxblob``):
``report || cert_table``. That is what ``/kbs/v1`` carries in ``quote`` and what ``/kbs/v0``'s
Trustee form (``{"attestation_report", "cert_chain"}``, :meth:`SnpVerifier.kbs_v0_evidence`) is
turned into, so every entry point hands the verifier the same bytes.

Endorsements (the VCEK or VLEK, its ASK/ASVK and ARK, AMD's CRLs), first found wins: the caller's
(``evidence verify --cert``, ``/attestation/v1/verify``'s ``collateral``), the evidence's own
certificate table, then the configured source (a KDS cache, ``tee.trust.EvidenceTrust.snp_endorsements``).
Wherever they come from, the chain is verified to AMD's pinned ARKs or a configured dev ARK
(``verify.verify_report``); none of them is trusted for how it arrived. With none at all the
verification fails with ``CollateralNotFound`` saying so.

Revocation is the broker's, not the evidence's: once the chain verifies, the trusted CRL source (the
KDS cache: ``tee.trust.EvidenceTrust.snp_crls``) is asked for the CRLs of its ARK, and all it holds
are applied, whoever supplied the certificates; CRLs that came with them are applied as well (all
must pass). With ``require_crl`` (the default; ``snp.require_crl``) the source must hold a CRL of
that ARK for the chain's side (ASKs: ``/vcek/v1/{P}/crl``; ASVKs: ``/vlek/v1/{P}/crl``), else
``CollateralNotFound`` (check ``crl``) names it and how to fetch it; without a source (the offline
CLI with no database) one of the CRLs given must apply.

AMD publishes no TCB status (there is no TCB Info for SEV-SNP as Intel's for DCAP): the result's
``tcb.status`` is :data:`TCB_STATUS` ("NoVendorStatus"), never UpToDate, and a policy judges the
TCB by its minimum SPLs per component (``appraisal.sections.snp``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from keybroker import strictjson
from keybroker.errors import (
    CollateralError,
    CollateralNotFound,
    EvidenceParseError,
    InvalidInput,
    VerificationError,
)
from keybroker.tee.snp.abi import (
    PRODUCTS,
    REPORT_SIZE,
    SIGNATURE_ALGO_ECDSA_P384_SHA384,
    SUPPORTED_VERSIONS,
    AttestationReport,
    SigningKey,
    parse_report,
)
from keybroker.tee.snp.certs import VerifiedChain, spki_sha256, verify_chain
from keybroker.tee.snp.certtable import (
    ENTRY_SIZE,
    GUID_ARK,
    GUID_ASK,
    GUID_CRL,
    GUID_VCEK,
    GUID_VLEK,
    MAX_CERT_TABLE_SIZE,
    CertTable,
    build_cert_table,
    parse_cert_table,
)
from keybroker.tee.snp.sources import (
    SnpCrlQuery,
    SnpCrlSource,
    SnpEndorsements,
    SnpEndorsementSource,
    SnpPlatform,
)
from keybroker.tee.snp.verify import (
    CHECKS,
    VerifiedSnpReport,
    canonical_report,
    signing_key_of,
    verify_report,
)
from keybroker.tee.verifier import NO_VENDOR_STATUS, Binding, VerifiedEvidence, report_data_64
from keybroker.tee.x509 import X509_DECODE_ERRORS, decode_certificate, decode_crl, split_pem_chain

__all__ = [
    "TCB_STATUS",
    "SnpEvidence",
    "SnpResult",
    "SnpVerifier",
    "dev_arks",
    "split_evidence",
]

#: ``tcb.status`` of every SEV-SNP result: AMD publishes no TCB status to compare with.
TCB_STATUS: Final = NO_VENDOR_STATUS
_LEAF_CN: Final[Mapping[SigningKey, str]] = {"vcek": "SEV-VCEK", "vlek": "SEV-VLEK"}
_ARK_CNS: Final = frozenset(f"ARK-{p}" for p in PRODUCTS)
#: Offsets of the header fields ``recognizes`` reads (abi: VERSION 0x000, POLICY 0x008, SIGNATURE_ALGO 0x034).
_POLICY_OFFSET: Final = 0x008
_SIGNATURE_ALGO_OFFSET: Final = 0x034
_POLICY_RESERVED_ONE: Final = 1 << 17
#: Trustee's ``cert_chain`` entry types (virtee/sev ``CertType``) and their table GUIDs.
_CERT_TYPES: Final[Mapping[str, uuid.UUID]] = {
    "VCEK": GUID_VCEK,
    "VLEK": GUID_VLEK,
    "ASK": GUID_ASK,
    "ARK": GUID_ARK,
    "CRL": GUID_CRL,
}
_MAX_ENDORSEMENT_ITEMS: Final = 16


@dataclass(frozen=True, slots=True)
class SnpEvidence:
    """Parsed, **unverified** evidence: the report and the certificate table that came with it."""

    unverified_report: AttestationReport
    table: CertTable | None


def split_evidence(evidence: bytes) -> tuple[bytes, bytes]:
    """(report, certificate table bytes) of ``report || cert_table`` evidence; the table may be empty."""
    return evidence[:REPORT_SIZE], evidence[REPORT_SIZE:]


@dataclass(frozen=True, slots=True)
class SnpResult:
    """A verified report as the verifier interface hands it out (``tee.verifier.TeeResult``)."""

    verified: VerifiedSnpReport

    def report(self) -> dict[str, Any]:
        return {
            **self.verified.to_dict(),
            "status": TCB_STATUS,
            "advisory_ids": [],
            "expiry": self.verified.expiry,
        }

    def summary(self) -> list[tuple[str, str]]:
        v = self.verified
        c = v.claims.to_dict()
        reported = v.tcbs.reported.components()
        signer = v.signing_key.upper() + ("" if v.csp_id is None else f" (CSP {v.csp_id})")
        return [
            ("TEE", f"SNP (report v{v.report.version}, {v.product})"),
            ("signing key", signer),
            ("root", v.root),
            ("measurement", c["measurement"]),
            ("reported TCB", ", ".join(f"{k} {n}" for k, n in reported.items())),
            ("guest policy", f"0x{v.report.policy.value:x} (debug {'on' if c['debug'] else 'off'})"),
            ("VMPL", str(v.report.vmpl)),
            ("TCB status", f"{TCB_STATUS} (AMD publishes none; policies set minimum SPLs)"),
            ("chain expiry", v.expiry.isoformat()),
            ("checks", ", ".join(v.checks)),
        ]

    def ear_claims(self) -> dict[str, Any]:
        """Flat claims in the style of Intel Trust Authority's (``snp_*``)."""
        v = self.verified
        r = v.report
        return {
            "attester_type": "SNP",
            "snp_measurement": r.measurement.hex(),
            "snp_host_data": r.host_data.hex(),
            "snp_id_key_digest": r.id_key_digest.hex(),
            "snp_author_key_digest": r.author_key_digest.hex(),
            "snp_family_id": r.family_id.hex(),
            "snp_image_id": r.image_id.hex(),
            "snp_guest_svn": r.guest_svn,
            "snp_vmpl": r.vmpl,
            "snp_policy": f"{r.policy.value:016x}",
            "snp_is_debuggable": r.policy.debug,
            "snp_product": v.product,
            "snp_signing_key": v.signing_key,
            "snp_reported_tcb": v.tcbs.reported.components(),
        }


def dev_arks(roots: Iterable[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    """The configured dev roots that are ARKs (``ARK-{Milan,Genoa,Turin}``): ``trust.dev_roots`` holds
    every simulator's root, and ``tee.snp.certs`` refuses a dev root that is not an ARK."""
    out = []
    for root in roots:
        cns = root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(cns) == 1 and cns[0].value in _ARK_CNS:
            out.append(root)
    return tuple(out)


class SnpVerifier:
    """Verifies SEV-SNP attestation reports (``snp``)."""

    def __init__(
        self,
        dev_roots: Iterable[x509.Certificate] = (),
        source: SnpEndorsementSource | None = None,
        *,
        crl_source: SnpCrlSource | None = None,
        require_crl: bool = True,
    ) -> None:
        self._dev_roots = dev_arks(dev_roots)
        self._source = source
        self._crl_source = crl_source
        self._require_crl = require_crl

    @property
    def name(self) -> str:
        return "snp"

    @property
    def checks(self) -> tuple[str, ...]:
        return CHECKS

    def recognizes(self, evidence: bytes) -> bool:
        """An ATTESTATION_REPORT header (version 2-5, ECDSA P-384 signature algorithm, POLICY bit 17
        set), the report's exact length or a certificate table after it."""
        size = len(evidence)
        if not (size == REPORT_SIZE or REPORT_SIZE + ENTRY_SIZE <= size <= REPORT_SIZE + MAX_CERT_TABLE_SIZE):
            return False
        version, sig_algo = (
            struct.unpack_from("<I", evidence, 0)[0],
            struct.unpack_from("<I", evidence, _SIGNATURE_ALGO_OFFSET)[0],
        )
        policy = struct.unpack_from("<Q", evidence, _POLICY_OFFSET)[0]
        return (
            version in SUPPORTED_VERSIONS
            and sig_algo == SIGNATURE_ALGO_ECDSA_P384_SHA384
            and bool(policy & _POLICY_RESERVED_ONE)
        )

    def parse(self, evidence: bytes) -> SnpEvidence:
        raw_report, raw_table = split_evidence(bytes(evidence))
        unverified_report = parse_report(raw_report)  # exactly REPORT_SIZE bytes, or an error saying so
        table = parse_cert_table(raw_table) if raw_table else None
        return SnpEvidence(unverified_report, table)

    def _endorsements(self, parsed: SnpEvidence, kind: SigningKey, at: datetime) -> SnpEndorsements:
        table = parsed.table
        signer = None if table is None else table.signer(kind)
        if table is not None and signer is not None:
            certs = tuple(c for c in (signer, table.ask, table.ark) if c is not None)
            crls = () if table.crl is None else (table.crl,)
            return SnpEndorsements(certs, crls, origin="the evidence's certificate table")
        if self._source is not None:
            return self._source(_platform(parsed.unverified_report, kind, at))
        carried = (
            "no certificate table"
            if table is None
            else f"a certificate table without a {kind.upper()} ({len(table.entries)} entries)"
        )
        raise CollateralNotFound(
            f"the SEV-SNP evidence carries {carried} and no endorsement source (KDS cache) is configured: "
            f"send the {kind.upper()} with the report (configfs-tsm auxblob), or give the certificates"
        )

    def source_endorsements(self, parsed: SnpEvidence, at: datetime) -> SnpEndorsements | None:
        """What the configured source (the KDS cache) holds for this report; None when no source is
        configured. ``CollateralNotFound`` when it holds nothing for it."""
        if self._source is None:
            return None
        report = parsed.unverified_report
        return self._source(_platform(report, signing_key_of(report), at))

    def verify(self, parsed: SnpEvidence, *, at: datetime, endorsements: object | None) -> VerifiedSnpReport:
        kind = signing_key_of(parsed.unverified_report)
        if endorsements is None:
            found = self._endorsements(parsed, kind, at)
        elif isinstance(endorsements, SnpEndorsements):
            found = endorsements
        else:
            raise TypeError(f"SEV-SNP endorsements are SnpEndorsements, not {type(endorsements).__name__}")
        leaf, chain = _leaf_and_chain(found, kind)
        # the chain is verified here (cached by its bytes) to ask for its ARK's CRLs; verify_report
        # verifies it again (from that cache) in its own order of checks
        trusted_crls = self._trusted_crls(verify_chain(leaf, chain, kind=kind, dev_roots=self._dev_roots), at)
        return verify_report(
            parsed.unverified_report.raw,
            vcek_or_vlek=leaf,
            chain=chain,
            crls=tuple(dict.fromkeys((*found.crls, *trusted_crls))),  # each once (the cache's may be both)
            at=at,
            dev_roots=self._dev_roots,
            require_crl=self._require_crl,
        )

    def _trusted_crls(self, chain: VerifiedChain, at: datetime) -> tuple[bytes, ...]:
        """The CRL source's CRLs of the chain's ARK (both sides), or ``CollateralNotFound`` when
        ``require_crl`` and it holds none for the chain's side."""
        if self._crl_source is None:
            return ()
        query = SnpCrlQuery(chain.product, chain.kind, spki_sha256(chain.ark), at)
        held = self._crl_source(query)
        if self._require_crl and not any(_current(crl, at) for crl in held.side):
            which = "VCEK CRL (of ASKs)" if chain.kind == "vcek" else "VLEK CRL (of ASVKs)"
            root = "the simulator's dev ARK" if chain.root == "dev" else "AMD's ARK"
            what = "no" if not held.side else "no current"
            stale = "" if not held.side else f" (the one held is not valid at {at.isoformat()})"
            raise CollateralNotFound(
                f"{what} {which} {chain.product} of {root} (key sha256 {query.ark_spki_sha256[:16]}…) is "
                f"held{stale}, and SEV-SNP reports are verified only against a current CRL of their chain's "
                "ARK (crl). "
                + (f"{held.held}. " if held.held else "")
                + (f"Add it with {held.fix}" if held.fix else "Fetch it into the KDS cache"),
                asked={"product": chain.product, "signing_key": chain.kind, "what": "crl"},
                check="crl",
            )
        return (*held.side, *held.other)

    def claims(self, verified: VerifiedSnpReport) -> VerifiedEvidence:
        return VerifiedEvidence(
            tee="snp",
            claims=verified.claims.to_dict(),
            tcb={"status": TCB_STATUS, "advisory_ids": []},
            report_data=verified.report_data,
            sim=verified.sim,
            evidence_sha256=verified.evidence_sha256,
            checks=verified.checks,
            detail=SnpResult(verified),
        )

    def expected_report_data(self, bound: Binding) -> bytes:
        """REPORT_DATA, 64 bytes: SHA-512(nonce || SPKI) (``/kbs/v1``), or the ``/kbs/v0`` hash zero-padded."""
        return report_data_64(bound)

    def evidence_sha256(self, evidence: bytes) -> str:
        """SHA-256 of the report with S in its low form, without the certificate table (the table
        is not signed and not the evidence): one report, one digest."""
        raw_report, _ = split_evidence(bytes(evidence))
        try:
            return hashlib.sha256(canonical_report(parse_report(raw_report))).hexdigest()
        except EvidenceParseError:
            return hashlib.sha256(bytes(evidence)).hexdigest()

    def endorsements(self, text: str | bytes) -> SnpEndorsements:
        """``{"certificates": [...], "crls": [...]}``: each a PEM text (one or more blocks) or the
        base64 of one DER; certificates in any order (the VCEK or VLEK, optionally ASK/ASVK, ARK)."""
        try:
            doc = strictjson.loads(text, what="SEV-SNP endorsements", field="collateral")
        except InvalidInput as exc:
            raise CollateralError(exc.detail) from None
        if not isinstance(doc, dict) or not set(doc) <= {"certificates", "crls"} or "certificates" not in doc:
            raise CollateralError('SEV-SNP endorsements are {"certificates": [...], "crls": [...]}')
        return SnpEndorsements(
            certificates=_items(doc["certificates"], "certificates", crl=False),
            crls=_items(doc.get("crls", []), "crls", crl=True),
        )

    def kbs_v0_evidence(self, primary: Mapping[str, Any]) -> bytes:
        """Trustee's ``{"attestation_report", "cert_chain"}``: the report as base64 or as an array of
        its 1184 bytes; ``cert_chain`` null or a list of ``{"cert_type": "VCEK"|"VLEK"|"ASK"|"ARK"|"CRL"
        (or {"OTHER": uuid}), "data": base64 or a byte array}`` (virtee/sev ``CertTableEntry``)."""
        prefix = "tee-evidence.primary_evidence"
        unknown = set(primary) - {"attestation_report", "cert_chain"}
        if unknown:
            raise InvalidInput(
                f"SEV-SNP primary_evidence has unknown members: {', '.join(sorted(unknown))}", field=prefix
            )
        report = _bytes_member(primary.get("attestation_report"), f"{prefix}.attestation_report")
        if len(report) != REPORT_SIZE:
            raise InvalidInput(
                f"attestation_report is {len(report)} bytes, a report is {REPORT_SIZE}",
                field=f"{prefix}.attestation_report",
            )
        chain = primary.get("cert_chain")
        if chain is None:
            return report
        field = f"{prefix}.cert_chain"
        if not isinstance(chain, list) or len(chain) > _MAX_ENDORSEMENT_ITEMS:
            raise InvalidInput(
                f"cert_chain must be null or a list of at most {_MAX_ENDORSEMENT_ITEMS} entries", field=field
            )
        items: list[tuple[uuid.UUID, bytes]] = []
        for i, entry in enumerate(chain):
            where = f"{field}.{i}"
            if not isinstance(entry, dict) or set(entry) != {"cert_type", "data"}:
                raise InvalidInput('a cert_chain entry is {"cert_type", "data"}', field=where)
            guid = _cert_type(entry["cert_type"], f"{where}.cert_type")
            if any(g == guid for g, _ in items):
                raise InvalidInput(f"cert_chain has two {entry['cert_type']} entries", field=where)
            data = _bytes_member(entry["data"], f"{where}.data")
            if not data:
                raise InvalidInput("a cert_chain entry's data is empty", field=f"{where}.data")
            items.append((guid, data))
        return report + build_cert_table(items) if items else report


def _current(der: bytes, at: datetime) -> bool:
    """Whether a CRL's thisUpdate..nextUpdate holds ``at`` (its signature and the rest are checked by
    ``verify_report``; one that does not decode is left for it to refuse)."""
    try:
        crl = decode_crl(der)
    except X509_DECODE_ERRORS:
        return True
    next_update = crl.next_update_utc
    return next_update is not None and crl.last_update_utc <= at <= next_update


def _platform(report: AttestationReport, kind: SigningKey, at: datetime) -> SnpPlatform:
    """What an (unverified) report says of its signing key: a source's lookup key."""
    return SnpPlatform(
        product=report.cpuid_product,
        signing_key=kind,
        chip_id=report.chip_id,
        reported_tcb=report.reported_tcb,
        at=at,
    )


def _leaf_and_chain(found: SnpEndorsements, kind: SigningKey) -> tuple[bytes, tuple[bytes, ...] | None]:
    """The VCEK or VLEK the report's SIGNING_KEY names, and the rest as its chain (None: AMD's
    shipped ASK/ASVK). The certificates are only sorted here; ``verify_report`` checks them all."""
    want = _LEAF_CN[kind]
    leaves: list[int] = []
    for i, der in enumerate(found.certificates):
        try:
            cns = _common_names(bytes(der))
        except X509_DECODE_ERRORS as exc:
            raise VerificationError(
                f"certificate {i} from {found.origin} does not decode ({exc})", check="cert_chain"
            ) from None
        if cns == (want,):
            leaves.append(i)
    n = len(found.certificates)
    if not leaves:
        raise VerificationError(
            f"the report is signed by its {kind.upper()} (KEY_INFO), but none of the {n} certificate(s) from "
            f"{found.origin} is one (CN {want})",
            check="cert_chain",
        )
    if len(leaves) > 1:
        raise VerificationError(
            f"{len(leaves)} certificates from {found.origin} are named {want}: give the one of this report",
            check="cert_chain",
        )
    (index,) = leaves
    chain = tuple(d for i, d in enumerate(found.certificates) if i != index)
    return found.certificates[index], (chain or None)


@lru_cache(maxsize=1024)
def _common_names(der: bytes) -> tuple[str, ...]:
    """The subject CNs of a certificate, decoded in full first (cached by its bytes, as the chain's
    verification is: a running service sees the same few certificates again and again)."""
    cert = decode_certificate(der)
    return tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))


def _items(value: object, field: str, *, crl: bool) -> tuple[bytes, ...]:
    """PEM texts and base64 DERs to DERs (a CRL's or certificate's form is checked here, its
    signature by the verifier)."""
    if (
        not isinstance(value, list)
        or len(value) > _MAX_ENDORSEMENT_ITEMS
        or not all(isinstance(v, str) for v in value)
    ):
        raise CollateralError(
            f"{field} must be a list of at most {_MAX_ENDORSEMENT_ITEMS} strings (PEM or base64 DER)"
        )
    out: list[bytes] = []
    for i, text in enumerate(value):
        data = text.encode("ascii", "replace")
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                out.extend(_pem_crls(data) if crl else split_pem_chain(data, field=f"{field}.{i}"))
            else:
                out.append(base64.b64decode(data, validate=True))
        except (EvidenceParseError, binascii.Error, *X509_DECODE_ERRORS) as exc:
            why = exc.detail if isinstance(exc, EvidenceParseError) else "not PEM or base64"
            raise CollateralError(f"{field}[{i}]: {why}") from None
    return tuple(out)


_PEM_CRL: Final = re.compile(rb"-----BEGIN X509 CRL-----[A-Za-z0-9+/=\s]+-----END X509 CRL-----")


def _pem_crls(data: bytes) -> list[bytes]:
    """Every PEM CRL block in ``data`` (and nothing else), as DER, each decoded in full."""
    blocks = _PEM_CRL.findall(data)
    rest = _PEM_CRL.sub(b"", data)
    if not blocks or rest.strip():
        raise ValueError("not PEM CRLs")
    out = []
    for block in blocks:
        der = x509.load_pem_x509_crl(block).public_bytes(Encoding.DER)
        decode_crl(der)
        out.append(der)
    return out


def _bytes_member(value: object, field: str) -> bytes:
    """base64 text, or a JSON array of byte values (how serde writes ``Vec<u8>``)."""
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("not valid base64", field=field) from None
    if isinstance(value, list) and len(value) <= REPORT_SIZE + MAX_CERT_TABLE_SIZE:
        if all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in value):
            return bytes(value)
        raise InvalidInput("a byte array holds integers 0-255 only", field=field)
    if isinstance(value, dict):
        raise InvalidInput(
            "the structured (field by field) form of a report is not accepted: send its bytes, as "
            "base64 or as an array of 1184 byte values",
            field=field,
        )
    raise InvalidInput("must be base64 text or an array of byte values", field=field)


def _cert_type(value: object, field: str) -> uuid.UUID:
    if isinstance(value, str) and value in _CERT_TYPES:
        return _CERT_TYPES[value]
    if isinstance(value, dict) and set(value) == {"OTHER"} and isinstance(value["OTHER"], str):
        try:
            return uuid.UUID(value["OTHER"])
        except ValueError:
            raise InvalidInput(f"{value['OTHER']!r} is not a UUID", field=field) from None
    raise InvalidInput(f'cert_type must be one of {", ".join(_CERT_TYPES)} or {{"OTHER": uuid}}', field=field)
