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

__all__ = ["MEMBERS", "parse_tools_pcrs", "tpm_evidence"]

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


#: TPM_ALG_ID of the PCR banks tpm2-tools writes.
_BANKS: Final = {0x0004: ("sha1", 20), 0x000B: ("sha256", 32), 0x000C: ("sha384", 48), 0x000D: ("sha512", 64)}
_SELECTION_SLOTS: Final = 16
_DIGESTS_PER_LIST: Final = 8
_DIGEST_SLOT: Final = 2 + 64


def parse_tools_pcrs(raw: bytes) -> dict[str, dict[int, bytes]]:
    """tpm2-tools' PCR values file (``tpm2_quote -o``, ``tpm2_pcrread -o``; its default format):
    host-order (little-endian) C structures: TPML_PCR_SELECTION (u32 count, 16 slots of u16 hash,
    u8 sizeofSelect, u8[4] bitmap, u8 padding), u32 n, then n TPML_DIGEST (u32 count, 8 slots of u16
    size, u8[64]); the values follow the selection's order. ``ValueError`` if it is not that."""
    selection_end = 4 + _SELECTION_SLOTS * 8
    if len(raw) < selection_end + 4:
        raise ValueError(f"{len(raw)} bytes: too short for a tpm2-tools PCR file")
    count = int.from_bytes(raw[0:4], "little")
    if not 1 <= count <= _SELECTION_SLOTS:
        raise ValueError(f"{count} PCR banks selected")
    selection: list[tuple[str, int, list[int]]] = []
    for i in range(count):
        slot = raw[4 + 8 * i : 12 + 8 * i]
        alg, size = int.from_bytes(slot[0:2], "little"), slot[2]
        if alg not in _BANKS or not 1 <= size <= 4:
            raise ValueError(f"bank {i}: hash 0x{alg:04x}, sizeofSelect {size}")
        bitmap = slot[3 : 3 + size]
        bank, digest_size = _BANKS[alg]
        selection.append((bank, digest_size, [j for j in range(size * 8) if bitmap[j // 8] >> (j % 8) & 1]))
    lists = int.from_bytes(raw[selection_end : selection_end + 4], "little")
    list_size = 4 + _DIGESTS_PER_LIST * _DIGEST_SLOT
    if len(raw) != selection_end + 4 + lists * list_size:
        raise ValueError(f"{len(raw)} bytes do not hold {lists} digest lists")
    digests: list[bytes] = []
    for k in range(lists):
        base = selection_end + 4 + k * list_size
        n = int.from_bytes(raw[base : base + 4], "little")
        if n > _DIGESTS_PER_LIST:
            raise ValueError(f"digest list {k} holds {n} digests")
        for d in range(n):
            at = base + 4 + d * _DIGEST_SLOT
            size = int.from_bytes(raw[at : at + 2], "little")
            if size > 64:
                raise ValueError(f"digest of {size} bytes")
            digests.append(raw[at + 2 : at + 2 + size])
    wanted = sum(len(pcrs) for _, _, pcrs in selection)
    if len(digests) != wanted:
        raise ValueError(f"{len(digests)} values for {wanted} selected PCRs")
    out: dict[str, dict[int, bytes]] = {}
    it = iter(digests)
    for bank, digest_size, pcrs in selection:
        values = {i: next(it) for i in pcrs}
        if any(len(v) != digest_size for v in values.values()):
            raise ValueError(f"a {bank} value is not {digest_size} bytes")
        out[bank] = values
    return out
