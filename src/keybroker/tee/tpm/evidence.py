"""keybroker's TPM evidence document (``keybroker.wire.tpm``): JSON to typed, **unverified** parts.

Strict: I-JSON (``strictjson``), no unknown member, standard padded base64 in canonical form,
lowercase-or-uppercase hex of the bank's digest size, PCR indices 0-31 in decimal without leading
zeros, bounded sizes. The binary parts are parsed here too (TPMS_ATTEST, TPMT_SIGNATURE,
TPM2B_PUBLIC, the event log): every error names the member (``EvidenceParseError.field``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keybroker import strictjson
from keybroker.errors import EvidenceParseError, InvalidInput
from keybroker.tee.tpm.abi import (
    BANK_NAMES,
    HASH_SIZES,
    Attest,
    TpmPublic,
    TpmSignature,
    parse_attest,
    parse_signature,
    parse_tpm2b_public,
)
from keybroker.tee.tpm.eventlog import MAX_EVENT_LOG, EventLog, parse_event_log
from keybroker.wire.tpm import MEMBERS

__all__ = ["MAX_EVIDENCE", "TpmEvidence", "looks_like_tpm_evidence", "parse_tpm_evidence"]

#: The event log's bound, in base64, plus room for the rest.
MAX_EVIDENCE: Final = MAX_EVENT_LOG * 4 // 3 + 256 * 1024
_MAX_BLOB: Final = 16 * 1024
_MAX_CERTS: Final = 5
_MAX_CERT: Final = 8 * 1024
_INDEX: Final = re.compile(r"0|[1-9][0-9]?")
_HEXCHARS: Final = re.compile(r"[0-9a-fA-F]*")


@dataclass(frozen=True, slots=True)
class TpmEvidence:
    """The parts of one TPM evidence document, parsed but **unverified**."""

    attest: Attest
    signature: TpmSignature
    #: The AK as a public area (its attributes can be checked), or None when only its key was given.
    ak_public: TpmPublic | None
    ak_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    #: DER, the AK certificate first, then intermediates (empty: none sent).
    ak_certificates: tuple[bytes, ...]
    pcrs: dict[str, dict[int, bytes]]
    event_log: EventLog | None
    event_log_raw: bytes | None

    @property
    def evidence_sha256(self) -> str:
        """SHA-256 of the TPMS_ATTEST: one quote, one digest (however it is wrapped or re-signed)."""
        return hashlib.sha256(self.attest.raw).hexdigest()


def _fail(detail: str, field: str) -> EvidenceParseError:
    return EvidenceParseError(f"evidence.{field}: {detail}", field=f"evidence.{field}")


def _b64(value: Any, field: str, limit: int) -> bytes:
    if not isinstance(value, str) or len(value) > (limit + 2) // 3 * 4:
        raise _fail(f"expected base64 of at most {limit} bytes", field)
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise _fail("not base64", field) from None
    if base64.b64encode(raw).decode("ascii") != value:
        raise _fail("not canonical padded base64", field)
    return raw


def _pcrs(value: Any) -> dict[str, dict[int, bytes]]:
    if not isinstance(value, dict):
        raise _fail("expected an object of PCR banks", "pcrs")
    out: dict[str, dict[int, bytes]] = {}
    for bank, values in value.items():
        alg = BANK_NAMES.get(bank)
        if alg is None:
            raise _fail(f"unknown bank {bank!r}; expected one of {sorted(BANK_NAMES)}", "pcrs")
        if not isinstance(values, dict) or not values:
            raise _fail("expected an object of PCR index to hex value", f"pcrs.{bank}")
        size = HASH_SIZES[alg]
        bank_values: dict[int, bytes] = {}
        for index, hex_value in values.items():
            field = f"pcrs.{bank}.{index}"
            if not _INDEX.fullmatch(index) or int(index) > 31:
                raise _fail("a PCR index is 0 to 31 in decimal", field)
            if (
                not isinstance(hex_value, str)
                or len(hex_value) != 2 * size
                or not _HEXCHARS.fullmatch(hex_value)
            ):
                raise _fail(f"a {bank} PCR value is {size} bytes of hex", field)
            bank_values[int(index)] = bytes.fromhex(hex_value)
        out[bank] = bank_values
    return out


def _ak_key(der: bytes) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError):
        raise _fail("not a DER SubjectPublicKeyInfo", "ak_public_key") from None
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise _fail("the AK is not an RSA or EC key", "ak_public_key")
    return key


def looks_like_tpm_evidence(raw: bytes) -> bool:
    """A header check: a JSON object naming a quote and an AK (``recognizes``; trusts nothing)."""
    if raw.lstrip()[:1] != b"{" or len(raw) > MAX_EVIDENCE:
        return False
    try:
        doc = strictjson.loads(raw, what="TPM evidence", field="evidence")
    except InvalidInput:
        return False
    return isinstance(doc, dict) and "quote" in doc and ("ak_public" in doc or "ak_public_key" in doc)


def parse_tpm_evidence(raw: bytes) -> TpmEvidence:
    """Parse keybroker's TPM evidence document (``keybroker.wire.tpm``)."""
    if len(raw) > MAX_EVIDENCE:
        raise _fail(f"{len(raw)} bytes, at most {MAX_EVIDENCE}", "size")
    try:
        doc = strictjson.loads(raw, what="the TPM evidence", field="evidence")
    except InvalidInput as exc:
        raise EvidenceParseError(exc.detail, field="evidence") from None
    if not isinstance(doc, dict):
        raise _fail("expected a JSON object", "root")
    unknown = sorted(set(doc) - set(MEMBERS))
    if unknown:
        raise _fail(f"unknown members {unknown}", "root")
    for required in ("quote", "signature", "pcrs"):
        if required not in doc:
            raise _fail("missing", required)
    if ("ak_public" in doc) == ("ak_public_key" in doc):
        raise _fail("give exactly one of ak_public (TPM2B_PUBLIC) and ak_public_key (SPKI)", "ak_public")

    attest = parse_attest(_b64(doc["quote"], "quote", _MAX_BLOB))
    signature = parse_signature(_b64(doc["signature"], "signature", _MAX_BLOB))
    ak_public: TpmPublic | None = None
    if "ak_public" in doc:
        ak_public = parse_tpm2b_public(_b64(doc["ak_public"], "ak_public", _MAX_BLOB), name="ak_public")
        ak_key = ak_public.public_key()
    else:
        ak_key = _ak_key(_b64(doc["ak_public_key"], "ak_public_key", _MAX_BLOB))
    ak_certificates: tuple[bytes, ...] = ()
    if "ak_certificates" in doc:
        certs = doc["ak_certificates"]
        if not isinstance(certs, list) or not 1 <= len(certs) <= _MAX_CERTS:
            raise _fail(f"expected 1 to {_MAX_CERTS} certificates (the AK's first)", "ak_certificates")
        ak_certificates = tuple(_b64(c, f"ak_certificates.{i}", _MAX_CERT) for i, c in enumerate(certs))
    pcrs = _pcrs(doc["pcrs"])
    event_log = event_log_raw = None
    if "event_log" in doc:
        event_log_raw = _b64(doc["event_log"], "event_log", MAX_EVENT_LOG)
        event_log = parse_event_log(event_log_raw)
    return TpmEvidence(
        attest=attest,
        signature=signature,
        ak_public=ak_public,
        ak_key=ak_key,
        ak_certificates=ak_certificates,
        pcrs=pcrs,
        event_log=event_log,
        event_log_raw=event_log_raw,
    )
