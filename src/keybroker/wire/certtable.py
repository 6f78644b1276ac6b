"""The SEV-SNP certificate table: what an extended report request, or configfs-tsm's ``auxblob``, carries.

In ``wire`` because both sides read it: the workload client turns a guest's ``auxblob`` into
Trustee's ``cert_chain`` entries (``/kbs/v0``), and the verifier (``tee.snp``) reads the table that
``/kbs/v1`` evidence carries after the report.

Source: AMD "SEV-ES Guest-Hypervisor Communication Block Standardization" (56421), section
4.1.8.1 "MSG_REPORT_REQ" / the certificate table; google/go-sev-guest ``abi.CertTableHeaderEntry``;
Linux ``Documentation/ABI/testing/configfs-tsm`` (``auxblob``: for SEV-SNP, this table).

Layout (little-endian): entries of {GUID 16 bytes, offset u32, length u32}, ended by an all-zero
entry; offsets count from the start of the table. GUID bytes are in RFC 4122 order
(``uuid.UUID(bytes=...)``, as go-sev-guest and virtee/sev read them).

The table is not signed: it only says where the host put certificates, which ``verify`` checks
like any other input. The parse is strict about the structure (a terminator, entries inside the
blob and after the header, no overlaps, no GUID twice) and keeps entries with unknown GUIDs.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from keybroker.errors import EvidenceParseError

__all__ = [
    "ENTRY_SIZE",
    "GUID_ARK",
    "GUID_ASK",
    "GUID_CRL",
    "GUID_NAMES",
    "GUID_VCEK",
    "GUID_VLEK",
    "MAX_CERT_TABLE_SIZE",
    "CertTable",
    "CertTableEntry",
    "build_cert_table",
    "parse_cert_table",
]

# [go-sev-guest abi.go; virtee/sev host/types/snp.rs] (tee-facts.md §3)
GUID_VCEK: Final = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
GUID_VLEK: Final = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
#: The ASK, or the ASVK when the table carries a VLEK.
GUID_ASK: Final = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
GUID_ARK: Final = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
GUID_CRL: Final = uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea")
GUID_NAMES: Final = {GUID_VCEK: "vcek", GUID_VLEK: "vlek", GUID_ASK: "ask", GUID_ARK: "ark", GUID_CRL: "crl"}

ENTRY_SIZE: Final = 24  # GUID 16 + offset 4 + length 4
#: The kernel hands the guest at most a few pages of certificates; a megabyte is far above that.
MAX_CERT_TABLE_SIZE: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class CertTableEntry:
    guid: uuid.UUID
    #: "vcek", "vlek", "ask", "ark", "crl", or None for a GUID this code does not know.
    name: str | None
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class CertTable:
    """The entries of a certificate table, in table order."""

    entries: tuple[CertTableEntry, ...]

    def get(self, guid: uuid.UUID) -> bytes | None:
        return next((e.data for e in self.entries if e.guid == guid), None)

    @property
    def vcek(self) -> bytes | None:
        return self.get(GUID_VCEK)

    @property
    def vlek(self) -> bytes | None:
        return self.get(GUID_VLEK)

    @property
    def ask(self) -> bytes | None:
        """The ASK (or ASVK): the intermediate of the table's VCEK (or VLEK)."""
        return self.get(GUID_ASK)

    @property
    def ark(self) -> bytes | None:
        return self.get(GUID_ARK)

    @property
    def crl(self) -> bytes | None:
        return self.get(GUID_CRL)

    def signer(self, kind: Literal["vcek", "vlek"]) -> bytes | None:
        """The certificate for the report's SIGNING_KEY: never fall back to the other kind."""
        return self.vcek if kind == "vcek" else self.vlek

    def chain(self) -> tuple[bytes, ...]:
        """The intermediate and the ARK the table carries (for ``verify_report(chain=...)``)."""
        return tuple(d for d in (self.ask, self.ark) if d is not None)


def _fail(detail: str, offset: int | None = None) -> EvidenceParseError:
    return EvidenceParseError(f"certificate table: {detail}", field="cert_table", offset=offset)


def parse_cert_table(blob: bytes) -> CertTable:
    """Parse a certificate table (an extended report's certificate buffer or a configfs ``auxblob``).

    Bytes after the last certificate are padding and are not read.
    """
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise _fail("must be bytes", 0)
    blob = bytes(blob)
    if len(blob) > MAX_CERT_TABLE_SIZE:
        raise _fail(f"{len(blob)} bytes, limit {MAX_CERT_TABLE_SIZE}", 0)
    headers: list[tuple[uuid.UUID, int, int, int]] = []
    pos = 0
    while True:
        if pos + ENTRY_SIZE > len(blob):
            raise _fail(f"no all-zero terminator entry before the end ({len(blob)} bytes)", pos)
        raw_guid = blob[pos : pos + 16]
        offset, length = struct.unpack_from("<II", blob, pos + 16)
        if raw_guid == bytes(16):
            if offset or length:
                raise _fail(f"entry {len(headers)} has a zero GUID but offset {offset}, length {length}", pos)
            break
        headers.append((uuid.UUID(bytes=raw_guid), offset, length, pos))
        pos += ENTRY_SIZE
    table_end = pos + ENTRY_SIZE
    entries: list[CertTableEntry] = []
    spans: list[tuple[int, int, int]] = []
    seen: set[uuid.UUID] = set()
    for i, (guid, offset, length, at) in enumerate(headers):
        if guid in seen:
            raise _fail(f"entry {i}: GUID {guid} appears twice", at)
        seen.add(guid)
        if length == 0:
            raise _fail(f"entry {i} ({guid}) is empty", at)
        if offset < table_end or offset + length > len(blob):
            raise _fail(
                f"entry {i} ({guid}): bytes {offset}..{offset + length} are not between the table's end "
                f"({table_end}) and the end of the blob ({len(blob)})",
                at,
            )
        for j, start, end in spans:
            if offset < end and start < offset + length:
                raise _fail(f"entries {j} and {i} overlap", at)
        spans.append((i, offset, offset + length))
        entries.append(CertTableEntry(guid, GUID_NAMES.get(guid), offset, blob[offset : offset + length]))
    return CertTable(tuple(entries))


def build_cert_table(items: Sequence[tuple[uuid.UUID, bytes]]) -> bytes:
    """A certificate table holding ``items`` in order (the simulator's extended report, tests)."""
    header = bytearray()
    body = bytearray()
    offset = (len(items) + 1) * ENTRY_SIZE
    for guid, data in items:
        header += guid.bytes + struct.pack("<II", offset + len(body), len(data))
        body += data
    header += bytes(ENTRY_SIZE)
    return bytes(header + body)
