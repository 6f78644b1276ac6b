"""The ``tpm2-quote`` cases of the shared corpus, loaded into ``verify_quote`` arguments."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from tests.helpers.swtpm import parse_tools_pcrs
from tests.vectors.corpus import load_cases, read_bytes

from keybroker.tee.tpm.abi import parse_tpm2b_public
from keybroker.tee.tpm.verify import AkKey

CASES = load_cases("tpm2-quote")
#: The GCE AK certificates are valid 2021-08-31 .. 2051-08-24; the corpus gives no time for them.
GCE_AT = datetime(2025, 6, 1, tzinfo=UTC)
KEYLIME_PCRS = "tpm2-emulator/keylime/quotepcr.out"


@dataclass
class TpmCase:
    id: str
    message: bytes
    signature: bytes
    ak_bytes: bytes
    ak: AkKey
    nonce: bytes
    pcrs: dict[str, dict[int, bytes]]
    verdict: str
    cert_kwargs: dict[str, Any] = field(default_factory=dict)


def load_ak(raw: bytes) -> AkKey:
    if raw.startswith(b"-----BEGIN PUBLIC KEY-----"):
        key = load_pem_public_key(raw)
        return key  # type: ignore[return-value]
    return parse_tpm2b_public(raw)


def case_pcrs(c: dict[str, Any]) -> dict[str, dict[int, bytes]]:
    """The PCR values a case reports: ``pcrs_<bank>.json``, or keylime's tpm2-tools PCR file."""
    if "pcrs" in c:
        bank = c["pcrs"].rsplit("_", 1)[1].removesuffix(".json")
        return {bank: {int(k): bytes.fromhex(v) for k, v in json.loads(read_bytes(c["pcrs"])).items()}}
    if c["message"].endswith("keylime_quote.out_flip") or c["message"].startswith("tpm2-emulator/keylime"):
        return parse_tools_pcrs(read_bytes(KEYLIME_PCRS))
    return {}


def tpm_case(c: dict[str, Any]) -> TpmCase:
    ak_bytes = read_bytes(c["ak_pub"])
    cert_kwargs: dict[str, Any] = {}
    if "ak_cert" in c:
        *intermediates, root = (x509.load_der_x509_certificate(read_bytes(p)) for p in c["ak_ca"])
        cert_kwargs = {
            "ak_certificate": read_bytes(c["ak_cert"]),
            "ak_intermediates": intermediates,
            "ak_roots": [root],
            "at": GCE_AT,
        }
    return TpmCase(
        id=c["id"],
        message=read_bytes(c["message"]),
        signature=read_bytes(c["signature"]),
        ak_bytes=ak_bytes,
        ak=load_ak(ak_bytes),
        nonce=bytes.fromhex(c["nonce_hex"]),
        pcrs=case_pcrs(c),
        verdict=c["expect"]["verdict"],
        cert_kwargs=cert_kwargs,
    )
