"""The TCG PC Client crypto-agile event log: parse with bounds, replay, bind to a verified quote.

Sources (little-endian, unlike the TPM's own structures):

* [PFP] TCG PC Client Platform Firmware Profile Specification: 10.2.1 "TCG_PCClientPCREvent" (the
  SHA-1 format of the first record), 10.2.2 "TCG_PCR_EVENT2", 10.4.5.1 "TCG_EfiSpecIdEvent"
  ("Spec ID Event03"), 10.4.5.3 "Startup Locality Event", 10.4.1 "Event Types" (Table 9),
  10.4.4 "UEFI_VARIABLE_DATA", 10.4.3 "UEFI_IMAGE_LOAD_EVENT", 3.3.4 PCR usage.
* GRUB 2 ``grub-core/commands/tpm.c``: PCR 8 EV_IPL events carry ``grub_cmd: <command>`` or
  ``kernel_cmdline: <line>`` with a NUL; the digest is of the text after the prefix, without it.

The log itself is not signed: an event is trustworthy only when its PCR's replay equals the value a
verified quote holds (:func:`verify_event_log`). Even then only the digest is bound, not the event
data; a claim read from event data (the SecureBoot value, the kernel command line, a separator)
is used only after the data hashes to that digest. Everything else in the data (image addresses,
file paths in PCR 9) is informational and said to be so.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from keybroker.errors import EvidenceParseError, VerificationError
from keybroker.tee.tpm.abi import BANK_NAMES, HASH_ALGS, HASH_SIZES
from keybroker.tee.tpm.verify import VerifiedQuote

__all__ = [
    "EV_EFI_ACTION",
    "EV_EFI_BOOT_SERVICES_APPLICATION",
    "EV_EFI_VARIABLE_AUTHORITY",
    "EV_EFI_VARIABLE_BOOT",
    "EV_EFI_VARIABLE_DRIVER_CONFIG",
    "EV_IPL",
    "EV_NO_ACTION",
    "EV_SEPARATOR",
    "CHECKS",
    "Event",
    "EventLog",
    "SpecId",
    "VerifiedEventLog",
    "parse_event_log",
    "replay",
    "verify_event_log",
]

CHECKS: Final = ("event_log_parse", "event_log_bank", "event_log_replay", "event_data")

# --- [PFP] Table 9 "Event Types" ------------------------------------------------------------------
EV_PREBOOT_CERT: Final = 0x00000000
EV_POST_CODE: Final = 0x00000001
EV_NO_ACTION: Final = 0x00000003
EV_SEPARATOR: Final = 0x00000004
EV_ACTION: Final = 0x00000005
EV_EVENT_TAG: Final = 0x00000006
EV_S_CRTM_CONTENTS: Final = 0x00000007
EV_S_CRTM_VERSION: Final = 0x00000008
EV_CPU_MICROCODE: Final = 0x00000009
EV_PLATFORM_CONFIG_FLAGS: Final = 0x0000000A
EV_TABLE_OF_DEVICES: Final = 0x0000000B
EV_COMPACT_HASH: Final = 0x0000000C
EV_IPL: Final = 0x0000000D
EV_IPL_PARTITION_DATA: Final = 0x0000000E
EV_NONHOST_CODE: Final = 0x0000000F
EV_NONHOST_CONFIG: Final = 0x00000010
EV_NONHOST_INFO: Final = 0x00000011
EV_OMIT_BOOT_DEVICE_EVENTS: Final = 0x00000012
EV_EFI_VARIABLE_DRIVER_CONFIG: Final = 0x80000001
EV_EFI_VARIABLE_BOOT: Final = 0x80000002
EV_EFI_BOOT_SERVICES_APPLICATION: Final = 0x80000003
EV_EFI_BOOT_SERVICES_DRIVER: Final = 0x80000004
EV_EFI_RUNTIME_SERVICES_DRIVER: Final = 0x80000005
EV_EFI_GPT_EVENT: Final = 0x80000006
EV_EFI_ACTION: Final = 0x80000007
EV_EFI_PLATFORM_FIRMWARE_BLOB: Final = 0x80000008
EV_EFI_HANDOFF_TABLES: Final = 0x80000009
EV_EFI_PLATFORM_FIRMWARE_BLOB2: Final = 0x8000000A
EV_EFI_HANDOFF_TABLES2: Final = 0x8000000B
EV_EFI_VARIABLE_BOOT2: Final = 0x8000000C
EV_EFI_HCRTM_EVENT: Final = 0x80000010
EV_EFI_VARIABLE_AUTHORITY: Final = 0x800000E0
EV_EFI_SPDM_FIRMWARE_BLOB: Final = 0x800000E1
EV_EFI_SPDM_FIRMWARE_CONFIG: Final = 0x800000E2

EVENT_TYPE_NAMES: Final = {v: k for k, v in globals().items() if k.startswith("EV_") and isinstance(v, int)}

# --- UEFI variable GUIDs (RFC 4122 byte order is not used by UEFI: EFI_GUID is little-endian) -------
_EFI_GLOBAL_VARIABLE: Final = bytes.fromhex("61dfe48bca93d211aa0d00e098032b8c")  # 8be4df61-93ca-11d2-...
_EFI_IMAGE_SECURITY_DATABASE: Final = bytes.fromhex("cbb219d73a3d9645a3bcdad00e67656f")  # d719b2cb-3d3a-...
_SECURE_BOOT_VARIABLES: Final = {
    (_EFI_GLOBAL_VARIABLE, "SecureBoot"): "secure_boot",
    (_EFI_GLOBAL_VARIABLE, "PK"): "pk",
    (_EFI_GLOBAL_VARIABLE, "KEK"): "kek",
    (_EFI_IMAGE_SECURITY_DATABASE, "db"): "db",
    (_EFI_IMAGE_SECURITY_DATABASE, "dbx"): "dbx",
}

_SPEC_ID_SIGNATURE: Final = b"Spec ID Event03\x00"
_STARTUP_LOCALITY_SIGNATURE: Final = b"StartupLocality\x00"
_GRUB_CMD: Final = b"grub_cmd: "
_GRUB_CMDLINE: Final = b"kernel_cmdline: "

#: Bounds: real firmware logs are tens of KiB (a dbx update makes the largest events).
MAX_EVENT_LOG: Final = 4 * 1024 * 1024
MAX_EVENT_DATA: Final = 1024 * 1024
MAX_EVENTS: Final = 16384
_MAX_PCR: Final = 31
_SEPARATOR_OK: Final = (b"\x00\x00\x00\x00",)
_SEPARATOR_ERROR: Final = b"\xff\xff\xff\xff"
#: Event data a separator may have been measured from (normal, and the error values firmware uses:
#: 0xFFFFFFFF and the UINT32 1): any of them ends PCR 7's firmware part.
_SEPARATOR_VALUES: Final = (b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x01\x00\x00\x00")


@dataclass(frozen=True, slots=True)
class SpecId:
    """[PFP] TCG_EfiSpecIdEvent: the log's banks (TPM_ALG_ID, digest size) in their order."""

    platform_class: int
    spec_version: tuple[int, int, int]
    uintn_size: int
    algorithms: tuple[tuple[int, int], ...]
    vendor_info: bytes


@dataclass(frozen=True, slots=True)
class Event:
    """[PFP] TCG_PCR_EVENT2. ``number`` counts from 0 after the Spec ID record; ``offset`` is in the log."""

    number: int
    offset: int
    pcr: int
    event_type: int
    digests: tuple[tuple[int, bytes], ...]
    data: bytes

    def digest(self, alg: int) -> bytes:
        for a, d in self.digests:
            if a == alg:
                return d
        raise KeyError(alg)

    @property
    def type_name(self) -> str:
        return EVENT_TYPE_NAMES.get(self.event_type, f"0x{self.event_type:08x}")


@dataclass(frozen=True, slots=True)
class EventLog:
    """A parsed, **unverified** event log."""

    spec_id: SpecId
    events: tuple[Event, ...]
    #: PCR 0's initial value's last byte, from a Startup Locality event (0 without one).
    startup_locality: int

    @property
    def banks(self) -> tuple[str, ...]:
        return tuple(HASH_ALGS[a] for a, _ in self.spec_id.algorithms if a in HASH_ALGS)


class _R:
    """A little-endian cursor; every read bounds-checked."""

    __slots__ = ("pos", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.pos = 0

    def fail(self, field: str, detail: str, at: int | None = None) -> EvidenceParseError:
        offset = self.pos if at is None else at
        return EvidenceParseError(f"event log {field}: {detail}", field=f"event_log.{field}", offset=offset)

    def take(self, n: int, field: str) -> bytes:
        if n > len(self.raw) - self.pos:
            raise self.fail(
                field, f"need {n} bytes at offset {self.pos}, only {len(self.raw) - self.pos} left"
            )
        out = self.raw[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        v: int = struct.unpack("<H", self.take(2, field))[0]
        return v

    def u32(self, field: str) -> int:
        v: int = struct.unpack("<I", self.take(4, field))[0]
        return v


def _parse_spec_id(r: _R) -> SpecId:
    """[PFP] 10.2.1 + 10.4.5.1: the first record, in the SHA-1 log format."""
    pcr = r.u32("header.pcrIndex")
    event_type = r.u32("header.eventType")
    if pcr != 0 or event_type != EV_NO_ACTION:
        raise r.fail("header", f"first record is PCR {pcr} type 0x{event_type:x}, not PCR 0 EV_NO_ACTION", 0)
    if r.take(20, "header.digest") != bytes(20):
        raise r.fail("header.digest", "must be 20 zero bytes", 8)
    size = r.u32("header.eventSize")
    body = _R(r.take(size, "header.event"))
    base = r.pos - size
    if body.take(16, "specId.signature") != _SPEC_ID_SIGNATURE:
        raise r.fail("specId.signature", "not 'Spec ID Event03' (only crypto-agile logs are supported)", base)
    platform_class = body.u32("specId.platformClass")
    minor, major, errata = (
        body.u8("specId.versionMinor"),
        body.u8("specId.versionMajor"),
        body.u8("specId.errata"),
    )
    if major != 2:
        raise r.fail("specId.specVersionMajor", f"{major}, expected 2", base + 21)
    uintn = body.u8("specId.uintnSize")
    if uintn not in (1, 2):
        raise r.fail("specId.uintnSize", f"{uintn}, expected 1 (32-bit) or 2 (64-bit)", base + 23)
    count = body.u32("specId.numberOfAlgorithms")
    if not 1 <= count <= 16:
        raise r.fail("specId.numberOfAlgorithms", f"{count}, expected 1 to 16", base + 24)
    algorithms: list[tuple[int, int]] = []
    for i in range(count):
        alg, digest_size = (
            body.u16(f"specId.digestSizes[{i}].algorithmId"),
            body.u16(f"specId.digestSizes[{i}].digestSize"),
        )
        if any(a == alg for a, _ in algorithms):
            raise r.fail(
                f"specId.digestSizes[{i}]", f"algorithm 0x{alg:04x} listed twice", base + body.pos - 4
            )
        known = HASH_SIZES.get(alg)
        if (known is not None and digest_size != known) or not 1 <= digest_size <= 64:
            raise r.fail(
                f"specId.digestSizes[{i}]", f"digest size {digest_size} for 0x{alg:04x}", base + body.pos - 2
            )
        algorithms.append((alg, digest_size))
    vendor_info = body.take(body.u8("specId.vendorInfoSize"), "specId.vendorInfo")
    if body.pos != size:
        raise r.fail("specId", f"{size - body.pos} bytes after vendorInfo", base + body.pos)
    return SpecId(platform_class, (major, minor, errata), uintn, tuple(algorithms), vendor_info)


def parse_event_log(raw: bytes) -> EventLog:
    """Parse a crypto-agile event log that fills ``raw`` (trailing zero bytes, as the kernel's
    securityfs file may pad, are not accepted: the log ends after its last event)."""
    if len(raw) > MAX_EVENT_LOG:
        raise EvidenceParseError(f"event log of {len(raw)} bytes exceeds {MAX_EVENT_LOG}", field="event_log")
    r = _R(raw)
    spec = _parse_spec_id(r)
    sizes = dict(spec.algorithms)
    events: list[Event] = []
    locality = 0
    locality_seen = False
    extended: set[int] = set()
    while r.pos < len(raw):
        n = len(events)
        if n >= MAX_EVENTS:
            raise r.fail("events", f"more than {MAX_EVENTS} events")
        start = r.pos
        pcr = r.u32(f"event[{n}].pcrIndex")
        if pcr > _MAX_PCR:
            raise r.fail(f"event[{n}].pcrIndex", f"PCR {pcr} does not exist", start)
        event_type = r.u32(f"event[{n}].eventType")
        count = r.u32(f"event[{n}].digests.count")
        if count != len(spec.algorithms):
            detail = f"{count} digests, the Spec ID event lists {len(spec.algorithms)} banks"
            raise r.fail(f"event[{n}].digests.count", detail, r.pos - 4)
        digests: list[tuple[int, bytes]] = []
        for i in range(count):
            at = r.pos
            alg = r.u16(f"event[{n}].digests[{i}].hashAlg")
            if alg not in sizes or any(a == alg for a, _ in digests):
                raise r.fail(
                    f"event[{n}].digests[{i}].hashAlg", f"0x{alg:04x} is not a listed bank or repeats", at
                )
            digests.append((alg, r.take(sizes[alg], f"event[{n}].digests[{i}].digest")))
        size = r.u32(f"event[{n}].eventSize")
        if size > MAX_EVENT_DATA:
            raise r.fail(f"event[{n}].eventSize", f"{size} bytes exceeds {MAX_EVENT_DATA}", r.pos - 4)
        data = r.take(size, f"event[{n}].event")
        if event_type == EV_NO_ACTION:
            if data.startswith(_STARTUP_LOCALITY_SIGNATURE):
                if pcr != 0 or len(data) != 17 or 0 in extended or locality_seen:
                    raise r.fail(
                        f"event[{n}]", "misplaced, repeated or malformed StartupLocality event", start
                    )
                locality, locality_seen = data[16], True
        else:
            extended.add(pcr)
        events.append(Event(n, start, pcr, event_type, tuple(digests), data))
    return EventLog(spec_id=spec, events=tuple(events), startup_locality=locality)


def replay(log: EventLog, alg: int) -> dict[int, bytes]:
    """PCR values after replaying ``log`` in bank ``alg``: PCR_new = H(PCR_old || digest), from zeros
    (PCR 0 from the startup locality), skipping EV_NO_ACTION. Only PCRs with events are returned."""
    size = HASH_SIZES[alg]
    pcrs: dict[int, bytes] = {}
    for event in log.events:
        if event.event_type == EV_NO_ACTION:
            continue
        current = pcrs.get(event.pcr)
        if current is None:
            current = bytes(size - 1) + bytes([log.startup_locality if event.pcr == 0 else 0])
        pcrs[event.pcr] = hashlib.new(HASH_ALGS[alg], current + event.digest(alg)).digest()
    return pcrs


# --- binding to a quote, and the claims ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedEventLog:
    """Events of PCRs whose replay matched the verified quote, and what they say."""

    bank: str
    verified_pcrs: tuple[int, ...]
    #: Quoted PCRs with no event in the log that hold their initial value in every bank: nothing was
    #: measured into them (an empty list of events, known).
    empty_pcrs: tuple[int, ...]
    #: PCRs with events in the log that the quote does not cover: their events are not used.
    unquoted_pcrs: tuple[int, ...]
    events: tuple[Event, ...]
    claims: dict[str, Any]
    checks: tuple[str, ...]


def _hash(alg: int, data: bytes) -> bytes:
    return hashlib.new(HASH_ALGS[alg], data).digest()


def _data_bound(event: Event, alg: int, forms: Iterable[bytes]) -> bytes:
    """The first of ``forms`` that hashes to the event's digest; else the data lies."""
    digest = event.digest(alg)
    for form in forms:
        if _hash(alg, form) == digest:
            return form
    raise VerificationError(
        f"event {event.number} ({event.type_name}, PCR {event.pcr}): its data does not hash to its "
        f"{HASH_ALGS[alg]} digest, so what it says is not what was measured",
        check="event_data",
    )


def _uefi_variable(event: Event) -> tuple[bytes, str, bytes] | None:
    """[PFP] UEFI_VARIABLE_DATA: (VariableName GUID, UnicodeName, VariableData), None if malformed."""
    data = event.data
    if len(data) < 32:
        return None
    guid = data[:16]
    name_len, data_len = struct.unpack_from("<QQ", data, 16)
    if name_len > 1024 or data_len > len(data) or 32 + 2 * name_len + data_len != len(data):
        return None
    try:
        name = data[32 : 32 + 2 * name_len].decode("utf-16-le")
    except UnicodeDecodeError:
        return None
    return guid, name, data[32 + 2 * name_len :]


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _grub(ev: Event, alg: int) -> tuple[bytes, str] | None:
    """(prefix, text) of a PCR 8 GRUB event whose text is what was measured; None if not GRUB's."""
    if ev.event_type != EV_IPL:
        return None
    for prefix in (_GRUB_CMD, _GRUB_CMDLINE):
        if ev.data.startswith(prefix):
            body = ev.data[len(prefix) :]
            return prefix, _text(_data_bound(ev, alg, [body.removesuffix(b"\x00"), body]))
    return None


def _before_separator(events: list[Event], pcr: int, alg: int) -> list[Event] | None:
    """``pcr``'s events before its first separator, which firmware measures before it hands over to
    the boot loader (PCRs 0-7): those the OS cannot have extended. The separator is found by its
    *digest* (a separator's value), not by its unmeasured type. None: no separator."""
    mine = [e for e in events if e.pcr == pcr]
    separators = {_hash(alg, v) for v in _SEPARATOR_VALUES}
    boundary = next((i for i, e in enumerate(mine) if e.digest(alg) in separators), None)
    return None if boundary is None else mine[:boundary]


def _crtm_version(events: list[Event], alg: int) -> str | None:
    """[PFP] 3.3.4.1: the S-CRTM version firmware measured into PCR 0 before its separator, when
    exactly one event there says it is one and its data is what was measured."""
    firmware = _before_separator(events, 0, alg) or []
    found = [e for e in firmware if e.event_type == EV_S_CRTM_VERSION]
    if len(found) != 1:
        return None
    raw = _data_bound(found[0], alg, [found[0].data])
    return raw.decode("utf-16-le", errors="replace").rstrip("\x00")


def _secure_boot(events: list[Event], alg: int) -> dict[str, Any]:
    """[PFP] 3.3.4.8, 10.4.4: the Secure Boot configuration firmware measured into PCR 7 before PCR 7's
    separator. After the separator the OS runs and can extend PCR 7 itself, and an event's type is not
    measured: so a variable counts only before the first event whose *digest* is a separator's
    (whatever its type says), and it is recognized by its data (which must hash to its digest), not by
    its type. No separator in PCR 7: nothing is known. EV_EFI_VARIABLE_AUTHORITY events after the
    separator (the certificates that verified boot images, also named ``db``) are not the variables."""
    secure_boot: dict[str, Any] = {"enabled": None, "pk": None, "kek": None, "db": None, "dbx": None}
    firmware = _before_separator(events, 7, alg)
    if firmware is None:
        return secure_boot
    seen: set[str] = set()
    for ev in firmware:
        if _hash(alg, ev.data) != ev.digest(alg):
            continue  # not a variable whose data was measured as it is
        var = _uefi_variable(ev)
        key = None if var is None else _SECURE_BOOT_VARIABLES.get((var[0], var[1]))
        if var is None or key is None:
            continue
        if key in seen:
            raise VerificationError(
                f"event {ev.number}: UEFI variable {var[1]} is measured twice before PCR 7's separator",
                check="event_data",
            )
        seen.add(key)
        if key == "secure_boot":
            secure_boot["enabled"] = var[2] == b"\x01"
        else:
            secure_boot[key] = ev.digest(alg).hex()
    return secure_boot


def _claims(events: list[Event], alg: int, known: set[int]) -> dict[str, Any]:
    """Claims from verified events. Event types and most event data are not measured, so a list
    claim is complete or None ("unknown"), never a partial list an edited type could shorten; and a
    list claim of a PCR whose value the log does not account for (``known``: replayed to the quote,
    or quoted at its initial value with no event) is None, never an empty list: a quote that leaves
    PCR 4 out, or a log that leaves its events out, must not read as "no boot application"."""
    separators: dict[str, str] = {}
    boot_apps: list[str] = []
    grub: list[tuple[bytes, str]] | None = []
    ipl_files: list[dict[str, Any]] = []
    for ev in events:
        digest_hex = ev.digest(alg).hex()
        if ev.event_type == EV_EFI_VARIABLE_DRIVER_CONFIG:
            # [PFP] 10.4.4: the digest is of the whole UEFI_VARIABLE_DATA, so the data must match it
            _data_bound(ev, alg, [ev.data])
            if _uefi_variable(ev) is None:
                raise VerificationError(
                    f"event {ev.number} ({ev.type_name}, PCR {ev.pcr}): malformed UEFI_VARIABLE_DATA",
                    check="event_data",
                )
        elif ev.event_type == EV_SEPARATOR:
            value = _data_bound(ev, alg, [ev.data])
            separators[str(ev.pcr)] = (
                "ok" if value in _SEPARATOR_OK else ("error" if value == _SEPARATOR_ERROR else value.hex())
            )
        elif ev.event_type == EV_EFI_ACTION:
            _data_bound(ev, alg, [ev.data])  # an action string is hashed as it is
        elif ev.event_type == EV_S_CRTM_VERSION:
            _data_bound(ev, alg, [ev.data])
        if ev.pcr == 4 and ev.event_type not in (EV_EFI_ACTION, EV_SEPARATOR):
            # boot loaders and applications (Authenticode digests, not checkable here): every other
            # PCR 4 event counts, whatever its (unmeasured) type says
            boot_apps.append(digest_hex)
        elif ev.pcr == 8 and grub is not None:
            found = _grub(ev, alg)
            grub = None if found is None else [*grub, found]
        elif ev.pcr == 9:
            path = _text(ev.data.removesuffix(b"\x00")) if ev.event_type == EV_IPL else None
            ipl_files.append({"digest": digest_hex, "path": path})
    if 8 not in known:
        grub = None
    grub_commands = None if grub is None else [t for p, t in grub if p == _GRUB_CMD]
    cmdlines = [] if grub is None else [t for p, t in grub if p == _GRUB_CMDLINE]
    cmdline = cmdlines[0] if len(cmdlines) == 1 else None
    kernel = initrd = None
    if cmdline is not None:
        kernel_path = cmdline.split(" ", 1)[0]
        kernel = next((f["digest"] for f in ipl_files if f["path"] == kernel_path), None)
    initrd_paths = [
        c.split()[1] for c in grub_commands or () if c.startswith("initrd ") and len(c.split()) > 1
    ]
    initrd = next((f["digest"] for f in ipl_files if f["path"] in initrd_paths), None)
    return {
        "secure_boot": _secure_boot(events, alg),
        "separators": separators,
        "boot_applications": boot_apps if 4 in known else None,
        "crtm_version": _crtm_version(events, alg),
        # None unless every PCR 8 event is a GRUB command or command line whose text was measured
        "grub_commands": grub_commands,
        "kernel_cmdline": cmdline,
        # PCR 9 file paths are not measured (only the files are) and the OS can extend PCR 9: the
        # kernel/initrd digests are the files whose (unmeasured) paths the measured kernel_cmdline /
        # initrd name, and a policy relies on them only with every PCR 9 file allowed (tpm section).
        "ipl_files": ipl_files if 9 in known else None,
        "kernel": kernel if 9 in known else None,
        "initrd": initrd if 9 in known else None,
    }


_BANK_PREFERENCE: Final = ("sha256", "sha384", "sha512", "sha1")


def verify_event_log(raw: bytes | EventLog, quote: VerifiedQuote) -> VerifiedEventLog:
    """Replay the log in every bank the verified ``quote`` holds and the log records; every PCR that
    has events and that the quote selects must match. Claims come from those PCRs' events only, with
    the digests of the preferred verified bank (SHA-256 first). Raises ``EvidenceParseError``
    (malformed log) or ``VerificationError`` (``event_log_bank``, ``event_log_replay``, ``event_data``).
    """
    log = raw if isinstance(raw, EventLog) else parse_event_log(raw)
    checks = ["event_log_parse"]
    log_algs = {a for a, _ in log.spec_id.algorithms}
    quoted = {bank: dict(values) for bank, values in quote.pcrs}
    banks = [b for b in quoted if BANK_NAMES[b] in log_algs]
    if not banks:
        raise VerificationError(
            f"the quote holds the {', '.join(quoted) or 'no'} bank(s), the event log records "
            f"{', '.join(log.banks) or 'none this verifier knows'}",
            check="event_log_bank",
        )
    checks.append("event_log_bank")
    with_events = {e.pcr for e in log.events if e.event_type != EV_NO_ACTION}
    verified: set[int] | None = None
    empty: set[int] | None = None
    for bank in banks:
        alg = BANK_NAMES[bank]
        replayed = replay(log, alg)
        size = HASH_SIZES[alg]
        untouched = {
            pcr
            for pcr, value in quoted[bank].items()
            if pcr not in with_events
            and value == bytes(size - 1) + bytes([log.startup_locality if pcr == 0 else 0])
        }
        empty = untouched if empty is None else empty & untouched
        covered = with_events & quoted[bank].keys()
        for pcr in sorted(covered):
            if replayed[pcr] != quoted[bank][pcr]:
                raise VerificationError(
                    f"{bank} PCR {pcr}: the event log replays to {replayed[pcr].hex()}, the quote holds "
                    f"{quoted[bank][pcr].hex()}",
                    check="event_log_replay",
                )
        verified = covered if verified is None else verified & covered
    assert verified is not None and empty is not None
    checks.append("event_log_replay")
    bank = next(b for b in _BANK_PREFERENCE if b in banks)
    alg = BANK_NAMES[bank]
    events = [e for e in log.events if e.event_type != EV_NO_ACTION and e.pcr in verified]
    claims = _claims(events, alg, verified | empty)
    checks.append("event_data")
    return VerifiedEventLog(
        bank=bank,
        verified_pcrs=tuple(sorted(verified)),
        empty_pcrs=tuple(sorted(empty)),
        unquoted_pcrs=tuple(sorted(with_events - verified)),
        events=tuple(events),
        claims=claims,
        checks=tuple(checks),
    )
