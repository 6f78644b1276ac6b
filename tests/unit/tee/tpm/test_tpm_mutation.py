"""Mutation sweeps: a change to any signed or measured byte is rejected.

* every bit-0 and bit-7 flip of every byte of each good corpus quote (TPMS_ATTEST) and signature;
* every byte of every reported PCR value;
* the GCE event log against its SHA-256 quote: every byte of each event's PCR index, digest count,
  quoted-bank digest and size, every 8th byte of the data the verifier reads claims from (checked
  against the digest), every 17th byte elsewhere. A change the verifier accepts must lie in bytes
  the TPM never measured (the Spec ID event, event types, the digests of banks the quote does not
  hold, image-load and boot-variable data, PCR 9 paths), and then the claims carry no new
  information: each claim is the original one or absent.
"""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.tee.tpm.corpus import CASES, tpm_case
from tests.vectors.corpus import read_bytes

from keybroker.errors import EvidenceError
from keybroker.tee.tpm.eventlog import (
    EV_EFI_ACTION,
    EV_EFI_VARIABLE_DRIVER_CONFIG,
    EV_IPL,
    EV_S_CRTM_VERSION,
    EV_SEPARATOR,
    parse_event_log,
    verify_event_log,
)
from keybroker.tee.tpm.verify import verify_quote

GOOD = [c for c in CASES if c["expect"]["verdict"] == "accept"]


def _flip(data: bytes, at: int, mask: int) -> bytes:
    return data[:at] + bytes([data[at] ^ mask]) + data[at + 1 :]


@pytest.mark.parametrize("c", GOOD, ids=[c["id"] for c in GOOD])
def test_every_quote_signature_and_pcr_byte(c: dict[str, Any]) -> None:
    t = tpm_case(c)

    def rejected(message: bytes = t.message, signature: bytes = t.signature, pcrs: Any = t.pcrs) -> bool:
        try:
            verify_quote(message, signature, t.ak, pcrs=pcrs, expected_extra_data=t.nonce)
        except EvidenceError:
            return True
        return False

    assert not rejected()
    accepted = [
        f"{part}[{at}]^{mask:#x}"
        for part, data in (("message", t.message), ("signature", t.signature))
        for at in range(len(data))
        for mask in (0x01, 0x80)
        if not rejected(**{part: _flip(data, at, mask)})
    ]
    for bank, values in t.pcrs.items():
        for index, value in values.items():
            for at in range(len(value)):
                changed = {b: dict(v) for b, v in t.pcrs.items()}
                changed[bank][index] = _flip(value, at, 0x01)
                if not rejected(pcrs=changed):
                    accepted.append(f"pcrs.{bank}.{index}[{at}]")
    assert accepted == []


_CHECKED_DATA = {EV_EFI_VARIABLE_DRIVER_CONFIG, EV_SEPARATOR, EV_EFI_ACTION, EV_S_CRTM_VERSION}


def _regions(raw: bytes, bank_alg: int) -> tuple[set[int], set[int], set[int]]:
    """Offsets of (bound structure and the quoted bank's digests, data checked against a digest,
    bytes the TPM never measured: the Spec ID event, event types, other banks' digests, other data)."""
    log = parse_event_log(raw)
    structure: set[int] = set()
    checked: set[int] = set()
    unmeasured: set[int] = set(range(log.events[0].offset))
    for ev in log.events:
        structure |= set(range(ev.offset, ev.offset + 4)) | set(range(ev.offset + 8, ev.offset + 12))
        unmeasured |= set(range(ev.offset + 4, ev.offset + 8))  # the event type is not measured
        at = ev.offset + 12
        for alg, digest in ev.digests:
            (structure if alg == bank_alg else unmeasured).update(range(at + 2, at + 2 + len(digest)))
            structure |= {at, at + 1}
            at += 2 + len(digest)
        structure |= set(range(at, at + 4))
        start = at + 4
        data = set(range(start, start + len(ev.data)))
        if ev.event_type in _CHECKED_DATA:
            checked |= data
        elif ev.event_type == EV_IPL and ev.pcr == 8:  # GRUB measures the text after its prefix, no NUL
            prefix = ev.data.index(b": ") + 2
            text = set(range(start + prefix, start + len(ev.data) - 1))
            checked |= text
            unmeasured |= data - text
        else:
            unmeasured |= data
    return structure, checked, unmeasured


def _no_new_information(original: dict[str, Any], mutated: dict[str, Any]) -> bool:
    """Each claim is the original or unknown: lists whole or None, dict entries equal or gone."""
    for key, value in mutated.items():
        before = original[key]
        if key == "ipl_files":  # the digests are bound, the paths are informational
            if [f["digest"] for f in value] != [f["digest"] for f in before]:
                return False
        elif isinstance(value, dict):
            if any(v is not None and before.get(k) != v for k, v in value.items()):
                return False
        elif value is not None and value != before:
            return False
    return True


def test_every_measured_event_log_byte() -> None:
    c = next(c for c in CASES if c["id"] == "tpm-gce-gce-cos-85-nonce9009-sha256")
    t = tpm_case(c)
    quote = verify_quote(t.message, t.signature, t.ak, pcrs=t.pcrs, expected_extra_data=t.nonce)
    raw = read_bytes(c["message"].rsplit("/", 1)[0] + "/event_log.bin")
    original = verify_event_log(raw, quote).claims
    structure, checked, unmeasured = _regions(raw, 0x000B)
    assert structure | checked | unmeasured == set(range(len(raw)))
    measured = structure | checked
    # every byte of the structure and digests, every 8th of checked data, every 17th of the rest
    positions = sorted(
        structure | {a for a in checked if a % 8 == 0} | {a for a in unmeasured if a % 17 == 0}
    )
    accepted_measured, new_information = [], []
    for at in positions:
        try:
            claims = verify_event_log(_flip(raw, at, 0x01), quote).claims
        except EvidenceError:
            continue
        if at in measured:
            accepted_measured.append(at)
        elif not _no_new_information(original, claims):
            new_information.append(at)
    assert accepted_measured == []
    assert new_information == []
