"""Azure vTPM evidence of a simulated confidential VM, in Trustee's JSON (version 1): what Azure's
paravisor and vTPM would give a guest, built from the dev PKI's SEV-SNP simulator (the hardware
report) and a real swtpm (the vTPM: its AK is HCLAkPub, its quote carries the challenge).

The HCL report is laid out as ``keybroker.tee.azure.hcl`` documents it, written here independently:
header ("HCLA", version, report_size, request_type 2, status 0, reserved), the 1184-byte SEV-SNP
report whose REPORT_DATA is SHA-256(runtime data) zero-padded, the IGVM request data (report type 2,
hash type 1), the runtime JSON with HCLAkPub as a JWK, zeros to 2600 bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from tests.helpers.swtpm import Ak, Swtpm

from keybroker.tee.sim.snp import SnpDevPki, snp_report
from keybroker.tee.tpm.abi import parse_tpm2b_public

_HCL_SIZE = 2600
_VAR_DATA_START = 0x4D4
ALL_PCRS = "sha256:" + ",".join(str(i) for i in range(24))


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


def runtime_data(ak: Ak, user_data: bytes = bytes(64)) -> bytes:
    key = parse_tpm2b_public(ak.public).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    numbers = key.public_numbers()
    doc = {
        "keys": [
            {
                "kid": "HCLAkPub",
                "key_ops": ["sign"],
                "kty": "RSA",
                "e": _b64url_uint(numbers.e),
                "n": _b64url_uint(numbers.n),
            }
        ],
        "vm-configuration": {
            "console-enabled": False,
            "secure-boot": True,
            "tpm-enabled": True,
            "vmUniqueId": "sim",
        },
        "user-data": user_data.hex().upper(),
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def hcl_report(report: bytes, runtime: bytes) -> bytes:
    assert len(report) == 0x4A0
    header = b"HCLA" + struct.pack("<7I", 1, _VAR_DATA_START + len(runtime), 2, 0, 0, 0, 0)
    igvm = struct.pack("<5I", 20 + len(runtime), 1, 2, 1, len(runtime))
    return (header + report + igvm + runtime).ljust(_HCL_SIZE, b"\x00")


def azure_snp_evidence(pki: SnpDevPki, swtpm: Swtpm, ak: Ak, extra_data: bytes, **snp_fields: Any) -> bytes:
    """Trustee's ``az-snp-vtpm`` evidence v1: an HCL report binding ``ak`` under a simulated SEV-SNP
    report (``snp_fields``: its fields), and the AK's quote of the 24 SHA-256 PCRs with ``extra_data``."""
    runtime = runtime_data(ak)
    made = snp_report(pki, report_data=hashlib.sha256(runtime).digest().ljust(64, b"\x00"), **snp_fields)
    quote = swtpm.quote(ak, ALL_PCRS, extra_data)
    assert quote.signature[:4] == b"\x00\x14\x00\x0b"  # RSASSA-SHA256: Trustee's form is the bare signature
    doc = {
        "version": 1,
        "tpm_quote": {
            "signature": quote.signature[6:].hex(),
            "message": quote.message.hex(),
            "pcrs": [quote.pcrs["sha256"][i].hex() for i in range(24)],
        },
        "hcl_report": _b64url(hcl_report(made.report, runtime)),
        "vcek": _b64url(made.signer.public_bytes(Encoding.DER)),
    }
    return json.dumps(doc).encode()
