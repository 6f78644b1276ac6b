"""Azure vTPM evidence: the binding steps on the six corpus cases, the attacks on them, and a sweep.

The TDX cases run the whole chain for real: the TD quote is verified by ``tee.dcap`` against the
corpus collateral at its time (``dcap-tdx-azure-td``: signatures valid, TCB OutOfDate). The SEV-SNP
report's own verification belongs to the ``tee.snp`` package, not here: in these unit tests of the
binding ONLY, the SNP hardware verifier is a stub that reads REPORT_DATA from the unverified report
(:func:`unverified_snp_report_data`). The full SNP path, the report verified for real, is
``test_azure_plugin.py``.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from tests.vectors.corpus import case, load_cases, read_bytes, read_text, verify_at

from keybroker.errors import EvidenceError, EvidenceParseError, VerificationError
from keybroker.tee.azure.evidence import AzureEvidence, parse_trustee_evidence
from keybroker.tee.azure.hcl import TDREPORT_FIELDS, VAR_DATA_START, parse_hcl_report
from keybroker.tee.azure.verify import (
    HardwareEvidence,
    VerifiedAzureVtpm,
    VerifiedHardware,
    verify_azure_vtpm,
)
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.verify import verify_quote as dcap_verify_quote
from keybroker.tee.tpm.verify import NO_NONCE

CASES = load_cases("az-vtpm")
#: The quotes' extraData (the nonce Trustee's tests used): "challenge", or the 48-byte report data
#: that evidence v2 also carries in the HCL user-data (and Genoa's test used).
NONCES = {
    "evidence-v2.json": bytes.fromhex(
        "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef"
    ),
    "evidence-genoa.json": bytes.fromhex(
        "0218488bae25d2509232bf676f1a66a30d7372add909109b36016ef136f2938ca05475f8b46094de6b64270ea35d950f"
    ),
}
TD_CASE = case("dcap-tdx-azure-td")
TD_COLLATERAL = QuoteCollateral.from_json(read_text(TD_CASE["collateral"]))


def unverified_snp_report_data(e: HardwareEvidence) -> VerifiedHardware:
    """STUB for the binding tests only: REPORT_DATA (0x50..0x90) of the *unverified* SNP report."""
    assert e.tee == "snp" and len(e.report) == 0x4A0 and e.vcek
    return VerifiedHardware(e.report[0x50:0x90], {"stub": "snp report not verified here"})


def hardware(e: HardwareEvidence) -> VerifiedHardware:
    if e.tee == "snp":
        return unverified_snp_report_data(e)
    verified = dcap_verify_quote(e.report, TD_COLLATERAL, at=verify_at(TD_CASE))
    return VerifiedHardware(
        verified.report_data, {"tcb_status": verified.status, "mr_td": verified.claims.to_dict()["mr_td"]}
    )


def load(c: dict[str, Any]) -> tuple[AzureEvidence, bytes]:
    tee = "snp" if c["hw"].startswith("snp") else "tdx"
    return parse_trustee_evidence(read_bytes(c["evidence"]), tee), NONCES.get(
        c["evidence"].rsplit("/", 1)[1], b"challenge"
    )


def verify(e: AzureEvidence, nonce: Any) -> VerifiedAzureVtpm:
    return verify_azure_vtpm(e, expected_nonce=nonce, verify_hardware=hardware)


def refused(check: str, e: AzureEvidence, nonce: Any) -> str:
    with pytest.raises(VerificationError) as info:
        verify(e, nonce)
    assert info.value.check == check, str(info.value)
    return str(info.value)


def with_hcl(e: AzureEvidence, hcl: bytes) -> AzureEvidence:
    return AzureEvidence(e.tee, e.version, hcl, e.quote, e.signature, e.pcrs, e.vcek, e.td_quote)


@pytest.mark.parametrize("c", CASES, ids=[c["id"] for c in CASES])
def test_corpus_case(c: dict[str, Any]) -> None:
    assert c["expect"]["verdict"] == "accept"
    e, nonce = load(c)
    v = verify(e, nonce)
    want = ["hcl_report", "hardware", "report_data", "signature", "extra_data", "pcr_selection", "pcr_digest"]
    if e.tee == "tdx":
        want.insert(3, "td_report")
        assert v.hardware.claims["tcb_status"] == "OutOfDate"
    if e.version == 2:
        want.append("user_data")
    assert list(v.checks) == want
    claims = v.claims()
    assert json.loads(json.dumps(claims)) == claims
    assert claims["tee"] == f"azure-{e.tee}-vtpm"
    assert claims["hcl"]["vm_configuration"]["secure-boot"] is True
    assert len(claims["tpm"]["pcrs"]["sha256"]) == 24
    assert claims["tpm"]["quote"]["extra_data"] == nonce.hex()


def test_v2_user_data_starts_with_the_nonce() -> None:
    e, nonce = load(next(c for c in CASES if c["evidence"].endswith("evidence-v2.json")))
    hcl = parse_hcl_report(e.hcl_report)
    assert hcl.user_data is not None and bytes.fromhex(hcl.user_data)[:48] == nonce


@pytest.mark.parametrize("c", CASES, ids=[c["id"] for c in CASES])
def test_wrong_nonce(c: dict[str, Any]) -> None:
    e, nonce = load(c)
    refused("extra_data", e, nonce + b"x")
    assert "extra_data" not in verify(e, NO_NONCE).checks


def _rebuild(hcl: bytes, runtime: dict[str, Any], *, snp_report_data: bool) -> bytes:
    """The HCL report with other runtime data (sizes fixed up); for SNP also the slot's REPORT_DATA,
    which the stub then "verifies" (isolating the steps after the hardware check)."""
    var = json.dumps(runtime, separators=(",", ":")).encode()
    out = bytearray(hcl[:VAR_DATA_START] + var).ljust(2600, b"\x00")
    struct.pack_into("<I", out, 8, VAR_DATA_START + len(var))
    struct.pack_into("<I", out, 0x4C0, 20 + len(var))
    struct.pack_into("<I", out, 0x4D0, len(var))
    if snp_report_data:
        out[0x20 + 0x50 : 0x20 + 0x90] = hashlib.sha256(var).digest().ljust(64, b"\x00")
    return bytes(out)


def _jwk_n(key: rsa.RSAPublicKey) -> str:
    import base64

    n = key.public_numbers().n
    return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()


@pytest.mark.parametrize("c", CASES, ids=[c["id"] for c in CASES])
def test_an_attackers_ak_is_not_bound_to_the_hardware(c: dict[str, Any]) -> None:
    """Swap HCLAkPub for the attacker's key and sign the quote with it: REPORT_DATA no longer matches."""
    e, nonce = load(c)
    hcl = parse_hcl_report(e.hcl_report)
    mine = rsa.generate_private_key(65537, 2048)
    runtime = json.loads(hcl.runtime_data)
    runtime["keys"][0]["n"] = _jwk_n(mine.public_key())
    forged = _rebuild(e.hcl_report, runtime, snp_report_data=False)
    signature = mine.sign(e.quote, padding.PKCS1v15(), hashes.SHA256())
    attack = AzureEvidence(e.tee, e.version, forged, e.quote, signature, e.pcrs, e.vcek, e.td_quote)
    assert "HCLAkPub is not bound" in refused("report_data", attack, nonce)


def test_user_data_must_carry_the_nonce() -> None:
    """v2 binds the HCL report to the challenge through user-data (stubbed SNP hardware check)."""
    e, nonce = load(next(c for c in CASES if c["evidence"].endswith("evidence-v2.json")))
    runtime = json.loads(parse_hcl_report(e.hcl_report).runtime_data)
    runtime["user-data"] = "00" * 64
    refused("user_data", with_hcl(e, _rebuild(e.hcl_report, runtime, snp_report_data=True)), nonce)
    runtime["user-data"] = "not hex"
    refused("user_data", with_hcl(e, _rebuild(e.hcl_report, runtime, snp_report_data=True)), nonce)


@pytest.mark.parametrize(
    ("offset", "needle"), [(0x80, "REPORTDATA"), (528, "MR_TD"), (720 + 47, "RTMR0"), (256 + 30, "MR_SEAM")]
)
def test_td_report_must_be_the_quoted_one(offset: int, needle: str) -> None:
    e, nonce = load(next(c for c in CASES if c["id"] == "azvtpm-az-tdx-vtpm-evidence-v1"))
    hcl = bytearray(e.hcl_report)
    hcl[0x20 + offset] ^= 1
    assert needle in refused("td_report", with_hcl(e, bytes(hcl)), nonce)


def test_tee_mismatch_and_missing_parts() -> None:
    e, nonce = load(next(c for c in CASES if c["id"] == "azvtpm-az-snp-vtpm-evidence-v1"))
    as_tdx = AzureEvidence("tdx", 1, e.hcl_report, e.quote, e.signature, e.pcrs, None, b"")
    refused("hcl_report", as_tdx, nonce)
    with pytest.raises(EvidenceParseError):
        parse_trustee_evidence(read_bytes("azure-vtpm/coco-trustee/az-snp-vtpm/evidence-v1.json"), "tdx")
    doc = json.loads(read_bytes("azure-vtpm/coco-trustee/az-snp-vtpm/evidence-v1.json"))
    for change, field in (
        ({"version": 3}, "evidence.version"),
        ({"extra": 1}, "evidence.root"),
        ({"hcl_report": doc["hcl_report"].rstrip("=")}, "evidence.hcl_report"),
        (
            {"tpm_quote": {**doc["tpm_quote"], "pcrs": doc["tpm_quote"]["pcrs"][:23]}},
            "evidence.tpm_quote.pcrs",
        ),
        ({"tpm_quote": {**doc["tpm_quote"], "message": "zz"}}, "evidence.tpm_quote.message"),
    ):
        with pytest.raises(EvidenceParseError) as info:
            parse_trustee_evidence(json.dumps({**doc, **change}).encode(), "snp")
        assert info.value.field == field


def test_hcl_report_parse_refusals() -> None:
    raw = parse_trustee_evidence(
        read_bytes("azure-vtpm/coco-trustee/az-snp-vtpm/evidence-v1.json"), "snp"
    ).hcl_report
    for n in (0, 4, 0x4D3, 0x4D4, 1000):
        with pytest.raises(EvidenceParseError):
            parse_hcl_report(raw[:n])
    with pytest.raises(EvidenceParseError, match="at most 2600"):
        parse_hcl_report(raw + b"\x00")
    cases = {
        0: ("hcl_report.signature", b"HCLB"),
        4: ("hcl_report.version", struct.pack("<I", 3)),
        12: ("hcl_report.request_type", struct.pack("<I", 1)),
        16: ("hcl_report.status", struct.pack("<I", 1)),
        24: ("hcl_report.reserved", b"\x01"),
        0x4C4: ("hcl_report.igvm.version", struct.pack("<I", 2)),
        0x4C8: ("hcl_report.igvm.report_type", struct.pack("<I", 3)),
        0x4CC: ("hcl_report.igvm.hash_type", struct.pack("<I", 4)),
        0x4C0: ("hcl_report.igvm.data_size", struct.pack("<I", 7)),
        2599: ("hcl_report.padding", b"\x01"),
    }
    for offset, (field, value) in cases.items():
        bad = bytearray(raw)
        bad[offset : offset + len(value)] = value
        with pytest.raises(EvidenceParseError) as info:
            parse_hcl_report(bytes(bad))
        assert info.value.field == field, (offset, info.value)


@pytest.mark.parametrize("c", CASES, ids=[c["id"] for c in CASES])
def test_every_hcl_report_byte(c: dict[str, Any]) -> None:
    """Flip each byte of the HCL report: header, IGVM header, runtime data and padding changes are all
    refused; in the hardware slot, REPORT_DATA is refused here. The slot's other bytes are the
    hardware verifier's: an SNP report is verified by ``tee.snp`` (stubbed here), and a TDREPORT is
    not remotely verifiable at all (its MAC is checked only on the platform), so nothing is read from it
    but the REPORTDATA the TD quote must repeat."""
    e, nonce = load(c)
    slot = range(0x20, 0x4C0)
    if e.tee == "snp":
        checked = set(range(0x20 + 0x50, 0x20 + 0x90))
    else:  # REPORTDATA and every field the TD quote body repeats; the TDREPORT after 1024 B must be zero
        checked = set(range(0x20 + 0x80, 0x20 + 0xC0)) | set(range(0x20 + 1024, 0x4C0))
        checked |= {0x20 + a for _, start, end in TDREPORT_FIELDS for a in range(start, end)}
    accepted = []
    for at in range(len(e.hcl_report)):
        if at in slot and at not in checked:
            continue
        hcl = bytearray(e.hcl_report)
        hcl[at] ^= 0x01
        try:
            verify(with_hcl(e, bytes(hcl)), nonce)
        except EvidenceError:
            continue
        accepted.append(at)
    assert accepted == []


@pytest.mark.parametrize("c", CASES[:1] + CASES[-1:], ids=[c["id"] for c in CASES[:1] + CASES[-1:]])
def test_every_quote_signature_and_pcr_byte(c: dict[str, Any]) -> None:
    e, nonce = load(c)
    accepted = []
    for part in ("quote", "signature"):
        data = getattr(e, part)
        for at in range(len(data)):
            changed = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]
            kw = {"quote": e.quote, "signature": e.signature, part: changed}
            m = AzureEvidence(
                e.tee, e.version, e.hcl_report, kw["quote"], kw["signature"], e.pcrs, e.vcek, e.td_quote
            )
            try:
                verify(m, nonce)
            except EvidenceError:
                continue
            accepted.append(f"{part}[{at}]")
    for i in range(24):
        pcrs = list(e.pcrs)
        pcrs[i] = bytes([pcrs[i][0] ^ 1]) + pcrs[i][1:]
        m = AzureEvidence(
            e.tee, e.version, e.hcl_report, e.quote, e.signature, tuple(pcrs), e.vcek, e.td_quote
        )
        try:
            verify(m, nonce)
        except EvidenceError:
            continue
        accepted.append(f"pcrs[{i}]")
    assert accepted == []
