"""keybroker's TPM evidence document: what a TPM machine sends (``Attestation-Type: TPM``,
``/kbs/v0`` ``tee: tpm``, ``/attestation/v1``), built here so the workload client and the server's
parser (``keybroker.tee.tpm.evidence``) share one definition::

    {
      "quote": base64 TPMS_ATTEST (what the AK signed),
      "signature": base64 TPMT_SIGNATURE,
      "ak_public": base64 TPM2B_PUBLIC of the AK       (or "ak_public_key": base64 DER SPKI,
                                                        accepted only where the AK is given out of band),
      "ak_certificates": [base64 DER, ...],            (optional: the AK certificate, then intermediates)
      "pcrs": {"sha256": {"0": hex, ...}, ...},        (the quoted PCR values per bank and index)
      "event_log": base64                              (optional: the TCG PC Client crypto-agile log)
    }

JSON with sorted members, standard base64 with padding, lowercase hex.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = ["MEMBERS", "tpm_evidence"]

MEMBERS: Final = ("quote", "signature", "ak_public", "ak_public_key", "ak_certificates", "pcrs", "event_log")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def tpm_evidence(
    *,
    quote: bytes,
    signature: bytes,
    pcrs: Mapping[str, Mapping[int, bytes]],
    ak_public: bytes | None = None,
    ak_public_key: bytes | None = None,
    ak_certificates: Sequence[bytes] = (),
    event_log: bytes | None = None,
) -> bytes:
    """The evidence document's bytes. Exactly one of ``ak_public`` (TPM2B_PUBLIC) and
    ``ak_public_key`` (DER SPKI) is given."""
    if (ak_public is None) == (ak_public_key is None):
        raise ValueError("give exactly one of ak_public and ak_public_key")
    doc: dict[str, Any] = {
        "quote": _b64(quote),
        "signature": _b64(signature),
        "pcrs": {bank: {str(i): v.hex() for i, v in sorted(values.items())} for bank, values in pcrs.items()},
    }
    if ak_public is not None:
        doc["ak_public"] = _b64(ak_public)
    if ak_public_key is not None:
        doc["ak_public_key"] = _b64(ak_public_key)
    if ak_certificates:
        doc["ak_certificates"] = [_b64(c) for c in ak_certificates]
    if event_log is not None:
        doc["event_log"] = _b64(event_log)
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii")
