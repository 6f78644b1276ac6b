"""Azure vTPM evidence as Confidential Containers Trustee's attesters send it (JSON), to bytes.

Forms (``az_snp_vtpm`` / ``az_tdx_vtpm`` ``compat.rs`` in Trustee; all six corpus files):

* SNP v0 (no ``version``): ``quote{signature, message, pcrs[24]}`` and ``report`` as byte arrays,
  ``vcek`` as PEM.
* SNP v1 and v2 (``version``): ``tpm_quote{signature, message, pcrs[24]}`` in hex, ``hcl_report`` and
  ``vcek`` (DER) in padded base64url. v2 puts the report data into the HCL report's ``user-data``.
* TDX v0 (no ``version``): ``tpm_quote`` (byte arrays), ``hcl_report`` and ``td_quote`` as byte arrays.
* TDX v1: ``tpm_quote`` in hex, ``hcl_report`` and ``td_quote`` in padded base64url.

The quote's ``signature`` is a bare RSASSA-PKCS1-v1_5 SHA-256 signature by HCLAkPub; ``pcrs`` are
the 24 SHA-256 PCR values. Nothing here is trusted; ``verify`` checks it all.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Final, Literal

from keybroker import strictjson
from keybroker.errors import EvidenceParseError, InvalidInput

__all__ = ["AzureEvidence", "parse_trustee_evidence"]

MAX_EVIDENCE: Final = 64 * 1024
_MAX_BLOB: Final = 16 * 1024
Tee = Literal["snp", "tdx"]


@dataclass(frozen=True, slots=True)
class AzureEvidence:
    """The parts of an Azure vTPM evidence document, as bytes (unverified)."""

    tee: Tee
    version: int
    hcl_report: bytes
    quote: bytes
    signature: bytes
    pcrs: tuple[bytes, ...]
    #: SNP: the VCEK (DER) the attester sent; None for TDX.
    vcek: bytes | None
    #: TDX: the TD quote; None for SNP.
    td_quote: bytes | None


def _fail(detail: str, field: str) -> EvidenceParseError:
    return EvidenceParseError(f"evidence.{field}: {detail}", field=f"evidence.{field}")


def _bytes_array(value: Any, field: str) -> bytes:
    if not isinstance(value, list) or len(value) > _MAX_BLOB:
        raise _fail("expected an array of at most 16384 bytes", field)
    if not all(type(b) is int and 0 <= b <= 255 for b in value):
        raise _fail("array items must be integers 0-255", field)
    return bytes(value)


def _hex(value: Any, field: str) -> bytes:
    if not isinstance(value, str) or len(value) > 2 * _MAX_BLOB:
        raise _fail("expected a hex string", field)
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise _fail("not hex", field) from None


def _b64url(value: Any, field: str) -> bytes:
    if not isinstance(value, str) or len(value) > 2 * _MAX_BLOB:
        raise _fail("expected a base64url string", field)
    try:
        raw = base64.urlsafe_b64decode(value.encode("ascii"))
    except (ValueError, binascii.Error, UnicodeEncodeError):
        raise _fail("not padded base64url", field) from None
    if base64.urlsafe_b64encode(raw).decode() != value:
        raise _fail("not canonical padded base64url", field)
    return raw


def _pem_certificate(value: Any, field: str) -> bytes:
    """The DER inside one PEM CERTIFICATE block (not decoded here: the hardware verifier does)."""
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    if not isinstance(value, str) or len(value) > 2 * _MAX_BLOB:
        raise _fail("expected a PEM certificate", field)
    text = value.strip()
    if not text.startswith(begin) or not text.endswith(end) or text.count(begin) != 1:
        raise _fail("expected exactly one PEM CERTIFICATE block", field)
    body = "".join(text[len(begin) : -len(end)].split())
    try:
        return base64.b64decode(body.encode("ascii"), validate=True)
    except (ValueError, binascii.Error, UnicodeEncodeError):
        raise _fail("the PEM body is not base64", field) from None


def _object(value: Any, field: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail("expected an object", field)
    unknown = set(value) - keys
    missing = keys - set(value)
    if unknown or missing:
        raise _fail(f"unknown members {sorted(unknown)}, missing {sorted(missing)}", field)
    return value


def _quote(value: Any, field: str, decode: Any) -> tuple[bytes, bytes, tuple[bytes, ...]]:
    q = _object(value, field, {"signature", "message", "pcrs"})
    pcrs = q["pcrs"]
    if not isinstance(pcrs, list) or len(pcrs) != 24:
        raise _fail("expected the 24 SHA-256 PCR values", f"{field}.pcrs")
    values = tuple(decode(p, f"{field}.pcrs.{i}") for i, p in enumerate(pcrs))
    for i, v in enumerate(values):
        if len(v) != 32:
            raise _fail(f"{len(v)} bytes, a SHA-256 PCR is 32", f"{field}.pcrs.{i}")
    return decode(q["message"], f"{field}.message"), decode(q["signature"], f"{field}.signature"), values


def parse_trustee_evidence(raw: bytes, tee: Tee) -> AzureEvidence:
    """Parse Trustee's ``az-snp-vtpm`` (``tee="snp"``) or ``az-tdx-vtpm`` (``tee="tdx"``) evidence JSON."""
    if len(raw) > MAX_EVIDENCE:
        raise _fail(f"{len(raw)} bytes, at most {MAX_EVIDENCE}", "size")
    try:
        doc = strictjson.loads(raw, what="the Azure vTPM evidence", field="evidence")
    except InvalidInput as exc:
        raise EvidenceParseError(exc.detail, field="evidence") from None
    if not isinstance(doc, dict):
        raise _fail("expected a JSON object", "root")
    version = doc.get("version", 0)
    if type(version) is not int or version not in ((0, 1, 2) if tee == "snp" else (0, 1)):
        raise _fail(f"unsupported version {version!r}", "version")
    if tee == "snp" and version == 0:
        d = _object(doc, "root", {"quote", "report", "vcek"})
        message, signature, pcrs = _quote(d["quote"], "quote", _bytes_array)
        hcl = _bytes_array(d["report"], "report")
        vcek = _pem_certificate(d["vcek"], "vcek")
        return AzureEvidence(tee, version, hcl, message, signature, pcrs, vcek, None)
    if tee == "snp":
        d = _object(doc, "root", {"version", "tpm_quote", "hcl_report", "vcek"})
        message, signature, pcrs = _quote(d["tpm_quote"], "tpm_quote", _hex)
        return AzureEvidence(
            tee,
            version,
            _b64url(d["hcl_report"], "hcl_report"),
            message,
            signature,
            pcrs,
            _b64url(d["vcek"], "vcek"),
            None,
        )
    keys = {"tpm_quote", "hcl_report", "td_quote"} | ({"version"} if version else set())
    d = _object(doc, "root", keys)
    if version == 0:
        message, signature, pcrs = _quote(d["tpm_quote"], "tpm_quote", _bytes_array)
        hcl, td = _bytes_array(d["hcl_report"], "hcl_report"), _bytes_array(d["td_quote"], "td_quote")
    else:
        message, signature, pcrs = _quote(d["tpm_quote"], "tpm_quote", _hex)
        hcl, td = _b64url(d["hcl_report"], "hcl_report"), _b64url(d["td_quote"], "td_quote")
    return AzureEvidence(tee, version, hcl, message, signature, pcrs, None, td)
