"""Evidence providers: ask the TEE for a quote over 64 bytes of report data.

- :class:`ConfigfsTsm`: Linux configfs-tsm (``/sys/kernel/config/tsm/report``, Linux >= 6.7), TDX
  (provider ``tdx_guest``: a TDX quote) and SEV-SNP (``sev_guest``: an attestation report, with the
  certificate table in ``auxblob``). ABI: Documentation/ABI/testing/configfs-tsm.
- :class:`TdxGuestDevice`: ``/dev/tdx_guest`` ioctls (``TDX_CMD_GET_REPORT0``, then
  ``TDX_CMD_GET_QUOTE`` through the GHCI GetQuote buffer), for kernels before configfs-tsm.
  ABI: include/uapi/linux/tdx-guest.h of the TDX guest kernels.
- :class:`GramineAttestation`: SGX under Gramine (``/dev/attestation``, DCAP).
- the dev TEE simulator (``--tee sim-sgx|sim-tdx|sim-snp --dev-pki DIR``): ``keybroker.cli.client_sim``,
  injected into :func:`provider_for` (it signs with server code). NOT FOR PRODUCTION: its quotes
  verify only where the dev root is trusted (``keybroker serve --dev``).

Every path hangs off ``root`` (``/`` by default) and file and ioctl access is injectable, so tests run
against a fake configfs tree and fake device files in a temp dir. :func:`detect` looks for each
interface in that order and says what it found.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import secrets
import struct
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from keybroker.client.errors import EvidenceUnavailable
from keybroker.errors import EvidenceParseError, InvalidInput
from keybroker.wire.certtable import parse_cert_table

log = logging.getLogger("keybroker.client")

TeeName = Literal["sgx", "tdx", "snp", "tpm", "az-snp-vtpm", "az-tdx-vtpm"]
#: TEEs whose evidence is a TPM quote: the binding is the quote's extraData (SHA-256(nonce || SPKI)
#: on /kbs/v1, the runtime-data hash on /kbs/v0), not 64 bytes of REPORTDATA, and the evidence a
#: JSON document (``evidence(binding)`` takes the extraData).
TPM_QUOTE_TEES: frozenset[str] = frozenset({"tpm", "az-snp-vtpm", "az-tdx-vtpm"})
REPORT_DATA_SIZE = 64
TEE_CHOICES = (
    "auto",
    "tdx",
    "snp",
    "sgx",
    "tpm",
    "az-snp-vtpm",
    "az-tdx-vtpm",
    "sim-tdx",
    "sim-sgx",
    "sim-snp",
)
SimTee = Literal["sgx", "tdx", "snp"]


@dataclass(frozen=True)
class Evidence:
    tee: TeeName
    quote: bytes
    #: Where it came from, for messages ("configfs-tsm (tdx_guest)", "/dev/tdx_guest", ...).
    source: str
    #: SEV-SNP: the certificate table from ``auxblob``; None otherwise.
    aux: bytes | None = None
    simulated: bool = False


class Provider(Protocol):
    @property
    def tee(self) -> TeeName: ...

    @property
    def source(self) -> str: ...

    def evidence(self, report_data: bytes) -> Evidence: ...


def check_report_data(report_data: bytes) -> None:
    if len(report_data) != REPORT_DATA_SIZE:
        raise InvalidInput(
            f"report data must be {REPORT_DATA_SIZE} bytes, got {len(report_data)}", field="report_data"
        )


def usable_auxblob(aux: bytes | None, source: str) -> bytes | None:
    """An SEV-SNP certificate table that parses, else None (and a warning): the report is still
    sent, and the broker then needs its own KDS cache to verify it."""
    if not aux:
        return None
    try:
        parse_cert_table(aux)
    except EvidenceParseError as exc:
        log.warning("%s: ignoring a malformed certificate table (auxblob): %s", source, exc.detail)
        return None
    return aux


def _check_bound(evidence: Evidence, report_data: bytes) -> Evidence:
    """The evidence must carry the report data just asked for (not a stale or foreign report)."""
    if report_data not in evidence.quote:
        raise EvidenceUnavailable(
            f"{evidence.source} returned evidence that does not carry the requested report data "
            "(stale or foreign report)"
        )
    return evidence


# --- configfs-tsm ----------------------------------------------------------------------------------

CONFIGFS_TSM_REPORT = Path("sys/kernel/config/tsm/report")
TSM_PROVIDERS: dict[str, TeeName] = {"tdx_guest": "tdx", "sev_guest": "snp"}


class TsmFs(Protocol):
    """File operations on the configfs tree (a fake in tests)."""

    def mkdir(self, path: Path) -> None: ...

    def rmdir(self, path: Path) -> None: ...

    def read(self, path: Path) -> bytes: ...

    def write(self, path: Path, data: bytes) -> None: ...


class OsFs:
    def mkdir(self, path: Path) -> None:
        os.mkdir(path, 0o700)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def read(self, path: Path) -> bytes:
        return path.read_bytes()

    def write(self, path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            if os.write(fd, data) != len(data):
                raise OSError(f"short write to {path}")
        finally:
            os.close(fd)


class ConfigfsTsm:
    """One report entry per request (a private directory; removed afterwards)."""

    def __init__(self, root: Path = Path("/"), fs: TsmFs | None = None) -> None:
        self.report_dir = root / CONFIGFS_TSM_REPORT
        self._fs = fs or OsFs()
        self._provider: str | None = None

    @staticmethod
    def present(root: Path = Path("/")) -> bool:
        return (root / CONFIGFS_TSM_REPORT).is_dir()

    @contextmanager
    def _entry(self) -> Iterator[Path]:
        entry = self.report_dir / f"keybroker-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            self._fs.mkdir(entry)
        except OSError as exc:
            raise EvidenceUnavailable(
                f"configfs-tsm: cannot create a report entry in {self.report_dir}: {exc}"
            ) from None
        try:
            yield entry
        finally:
            try:
                self._fs.rmdir(entry)
            except OSError as exc:
                log.warning("configfs-tsm: could not remove %s: %s", entry, exc)

    def _read(self, path: Path) -> bytes:
        try:
            return self._fs.read(path)
        except OSError as exc:
            raise EvidenceUnavailable(f"configfs-tsm: reading {path.name}: {exc}") from None

    def _generation(self, entry: Path) -> int:
        text = self._read(entry / "generation").decode("ascii", "replace").strip()
        if not text.isdigit():
            raise EvidenceUnavailable(f"configfs-tsm: generation is not a number: {text[:20]!r}")
        return int(text)

    def provider(self) -> str:
        """The kernel's provider name (``tdx_guest``, ``sev_guest``); probed once."""
        if self._provider is None:
            with self._entry() as entry:
                self._provider = self._read(entry / "provider").decode("ascii", "replace").strip()
        return self._provider

    @property
    def tee(self) -> TeeName:
        name = self.provider()
        if name not in TSM_PROVIDERS:
            raise EvidenceUnavailable(
                f"configfs-tsm provider {name!r} is not one keybroker-client knows ({', '.join(TSM_PROVIDERS)})"
            )
        return TSM_PROVIDERS[name]

    @property
    def source(self) -> str:
        return f"configfs-tsm ({self.provider()})"

    def evidence(self, report_data: bytes) -> Evidence:
        check_report_data(report_data)
        tee = self.tee
        with self._entry() as entry:
            provider = self._read(entry / "provider").decode("ascii", "replace").strip()
            if provider != self._provider:
                raise EvidenceUnavailable(
                    f"configfs-tsm provider changed from {self._provider} to {provider}"
                )
            before = self._generation(entry)
            try:
                self._fs.write(entry / "inblob", report_data)
            except OSError as exc:
                raise EvidenceUnavailable(f"configfs-tsm: writing inblob: {exc}") from None
            written = self._generation(entry)
            outblob = self._read(entry / "outblob")
            after = self._generation(entry)
            # The kernel counts writes: anything but exactly ours means the outblob may be someone else's.
            if written != before + 1 or after != written:
                raise EvidenceUnavailable(
                    f"configfs-tsm: generation went {before} -> {written} -> {after}; another writer "
                    "raced on the report entry, so the outblob cannot be trusted to be ours"
                )
            aux = None
            if tee == "snp" and (entry / "auxblob").exists():
                aux = usable_auxblob(self._read(entry / "auxblob"), f"configfs-tsm ({provider})")
        if not outblob:
            raise EvidenceUnavailable("configfs-tsm: empty outblob")
        return _check_bound(Evidence(tee, outblob, f"configfs-tsm ({provider})", aux), report_data)


# --- /dev/tdx_guest ----------------------------------------------------------------------------------

TDX_GUEST = Path("dev/tdx_guest")
TDX_REPORTDATA_LEN = 64
TDX_REPORT_LEN = 1024
#: REPORTDATA inside TDREPORT_STRUCT: REPORTMACSTRUCT bytes 128..192 (TDX module ABI, REPORTMACSTRUCT).
TDREPORT_REPORTDATA_START = 128
TDREPORT_REPORTDATA_END = TDREPORT_REPORTDATA_START + TDX_REPORTDATA_LEN

_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(direction: int, kind: str, nr: int, size: int) -> int:
    """Linux ``_IOC(dir, type, nr, size)`` (asm-generic/ioctl.h)."""
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | nr


#: ``_IOWR('T', 1, struct tdx_report_req)``: u8 reportdata[64] in, u8 tdreport[1024] out.
TDX_CMD_GET_REPORT0 = _ioc(_IOC_READ | _IOC_WRITE, "T", 1, TDX_REPORTDATA_LEN + TDX_REPORT_LEN)
#: ``_IOR('T', 2, struct tdx_quote_req)``: u64 buf (address), u64 len.
TDX_CMD_GET_QUOTE = _ioc(_IOC_READ, "T", 2, 16)
QUOTE_REQ = struct.Struct("<QQ")
#: ``struct tdx_quote_hdr``: u64 version, u64 status, u32 in_len, u32 out_len, then data (GHCI GetQuote).
QUOTE_HDR = struct.Struct("<QQII")
QUOTE_HDR_VERSION = 1
QUOTE_BUF_SIZE = 16 * 1024
GET_QUOTE_SUCCESS = 0
GET_QUOTE_IN_FLIGHT = 0xFFFFFFFFFFFFFFFF
GET_QUOTE_ERROR = 0x8000000000000000
GET_QUOTE_SERVICE_UNAVAILABLE = 0x8000000000000001

#: ``ioctl(fd, request, arg)``: ``arg`` is the argument struct, updated in place by the kernel.
Ioctl = Callable[[int, int, bytearray], None]


def _os_ioctl(fd: int, request: int, arg: bytearray) -> None:
    fcntl.ioctl(fd, request, arg, True)


def encode_report_request(report_data: bytes) -> bytearray:
    check_report_data(report_data)
    return bytearray(report_data + bytes(TDX_REPORT_LEN))


def decode_report_response(req: bytes | bytearray, report_data: bytes) -> bytes:
    if len(req) != TDX_REPORTDATA_LEN + TDX_REPORT_LEN:
        raise EvidenceUnavailable(f"/dev/tdx_guest: report request is {len(req)} bytes, not 1088")
    tdreport = bytes(req[TDX_REPORTDATA_LEN:])
    if tdreport[TDREPORT_REPORTDATA_START:TDREPORT_REPORTDATA_END] != report_data:
        raise EvidenceUnavailable("/dev/tdx_guest: the TDREPORT does not carry the requested REPORTDATA")
    return tdreport


def encode_quote_buffer(tdreport: bytes, size: int = QUOTE_BUF_SIZE) -> bytes:
    """The GetQuote shared buffer: header (version 1, status 0, in_len, out_len 0) then the TDREPORT."""
    if len(tdreport) != TDX_REPORT_LEN:
        raise InvalidInput(f"a TDREPORT is {TDX_REPORT_LEN} bytes, got {len(tdreport)}", field="tdreport")
    body = QUOTE_HDR.pack(QUOTE_HDR_VERSION, GET_QUOTE_SUCCESS, len(tdreport), 0) + tdreport
    if len(body) > size:
        raise InvalidInput(f"quote buffer of {size} bytes cannot hold the request", field="size")
    return body + bytes(size - len(body))


def decode_quote_buffer(buf: bytes) -> bytes:
    if len(buf) < QUOTE_HDR.size:
        raise EvidenceUnavailable(f"/dev/tdx_guest: quote buffer of {len(buf)} bytes has no header")
    version, status, _, out_len = QUOTE_HDR.unpack_from(buf)
    if status == GET_QUOTE_SERVICE_UNAVAILABLE:
        raise EvidenceUnavailable(
            "/dev/tdx_guest: the quote generation service is unavailable (is QGS running on the host?)"
        )
    if status == GET_QUOTE_IN_FLIGHT:
        raise EvidenceUnavailable("/dev/tdx_guest: the quote request is still in flight (timed out)")
    if status != GET_QUOTE_SUCCESS:
        raise EvidenceUnavailable(f"/dev/tdx_guest: GetQuote failed with status {status:#x}")
    if version != QUOTE_HDR_VERSION:
        raise EvidenceUnavailable(
            f"/dev/tdx_guest: quote buffer version {version}, expected {QUOTE_HDR_VERSION}"
        )
    if out_len == 0 or out_len > len(buf) - QUOTE_HDR.size:
        raise EvidenceUnavailable(
            f"/dev/tdx_guest: quote length {out_len} does not fit the {len(buf) - QUOTE_HDR.size}-byte buffer"
        )
    return bytes(buf[QUOTE_HDR.size : QUOTE_HDR.size + out_len])


class TdxGuestDevice:
    def __init__(
        self, root: Path = Path("/"), ioctl: Ioctl | None = None, buf_size: int = QUOTE_BUF_SIZE
    ) -> None:
        self.path = root / TDX_GUEST
        self._ioctl = ioctl or _os_ioctl
        self._buf_size = buf_size

    @staticmethod
    def present(root: Path = Path("/")) -> bool:
        return (root / TDX_GUEST).exists()

    tee: TeeName = "tdx"

    @property
    def source(self) -> str:
        return f"/dev/tdx_guest ({self.path})"

    def evidence(self, report_data: bytes) -> Evidence:
        req = encode_report_request(report_data)
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError as exc:
            raise EvidenceUnavailable(f"cannot open {self.path}: {exc}") from None
        try:
            self._ioctl(fd, TDX_CMD_GET_REPORT0, req)
            tdreport = decode_report_response(req, report_data)
            shared = ctypes.create_string_buffer(
                encode_quote_buffer(tdreport, self._buf_size), self._buf_size
            )
            arg = bytearray(QUOTE_REQ.pack(ctypes.addressof(shared), self._buf_size))
            self._ioctl(fd, TDX_CMD_GET_QUOTE, arg)
            quote = decode_quote_buffer(shared.raw)
        except OSError as exc:
            raise EvidenceUnavailable(f"{self.path}: ioctl failed: {exc}") from None
        finally:
            os.close(fd)
        return _check_bound(Evidence("tdx", quote, "/dev/tdx_guest"), report_data)


# --- Gramine /dev/attestation ------------------------------------------------------------------------

GRAMINE_ATTESTATION = Path("dev/attestation")


class GramineAttestation:
    tee: TeeName = "sgx"

    def __init__(self, root: Path = Path("/")) -> None:
        self.dir = root / GRAMINE_ATTESTATION

    @staticmethod
    def present(root: Path = Path("/")) -> bool:
        return (root / GRAMINE_ATTESTATION / "quote").exists()

    def attestation_type(self) -> str:
        try:
            return (self.dir / "attestation_type").read_text().strip()
        except OSError as exc:
            raise EvidenceUnavailable(
                f"Gramine: cannot read {self.dir / 'attestation_type'}: {exc}"
            ) from None

    @property
    def source(self) -> str:
        return f"Gramine {self.dir}"

    def evidence(self, report_data: bytes) -> Evidence:
        check_report_data(report_data)
        kind = self.attestation_type()
        if kind != "dcap":
            raise EvidenceUnavailable(
                f"Gramine attestation type is {kind!r}; keybroker needs DCAP quotes "
                '(sgx.remote_attestation = "dcap" in the manifest)'
            )
        try:
            (self.dir / "user_report_data").write_bytes(report_data)
            quote = (self.dir / "quote").read_bytes()
        except OSError as exc:
            raise EvidenceUnavailable(f"Gramine {self.dir}: {exc}") from None
        return _check_bound(Evidence("sgx", quote, "Gramine /dev/attestation"), report_data)


# --- simulator ----------------------------------------------------------------------------------------

_TDX_HEX = {"mrtd": 48, "rtmr0": 48, "rtmr1": 48, "rtmr2": 48, "rtmr3": 48, "mrseam": 48, "mrsignerseam": 48}
_SGX_HEX = {"mrenclave": 32, "mrsigner": 32}
_SNP_HEX = {
    "measurement": 48,
    "host_data": 32,
    "id_key_digest": 48,
    "author_key_digest": 48,
    "family_id": 16,
    "image_id": 16,
}
_HEX: dict[str, dict[str, int]] = {"tdx": _TDX_HEX, "sgx": _SGX_HEX, "snp": _SNP_HEX}
#: Integer fields and their maxima.
_INTS: dict[str, dict[str, int]] = {
    "tdx": {"seamsvn": 0xFFFF},
    "sgx": {"isvprodid": 0xFFFF, "isvsvn": 0xFFFF},
    "snp": {"guest_svn": 0xFFFF_FFFF, "vmpl": 3},
}
_BOOLS = {"tdx": ("debug", "sept_ve_disable"), "sgx": ("debug",), "snp": ("debug", "migrate_ma")}
#: Fields naming one of a few values.
_CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    "tdx": {"tcb": ("uptodate", "swhardening", "outofdate", "revoked")},
    "sgx": {"tcb": ("uptodate", "swhardening", "outofdate", "revoked")},
    "snp": {"signing_key": ("vcek", "vlek")},
}
TCB_LEVELS = ("uptodate", "swhardening", "outofdate", "revoked")


def sim_field_names(tee: SimTee) -> list[str]:
    return [*_HEX[tee], *_INTS[tee], *_BOOLS[tee], *_CHOICES[tee]]


def parse_sim_fields(tee: SimTee, fields: Mapping[str, str]) -> dict[str, Any]:
    """``--sim-field NAME=VALUE`` values as keyword arguments of the simulator's builders."""
    hexes = _HEX[tee]
    out: dict[str, Any] = {}
    for name, value in fields.items():
        field = f"sim-field {name}"
        if name in hexes:
            try:
                raw = bytes.fromhex(value)
            except ValueError:
                raise InvalidInput(f"{field} is not hex", field=field) from None
            if len(raw) != hexes[name]:
                raise InvalidInput(
                    f"{field} must be {hexes[name]} bytes ({2 * hexes[name]} hex digits), got {len(raw)}",
                    field=field,
                )
            out[name] = raw
        elif name in _INTS[tee]:
            try:
                number = int(value, 0)
            except ValueError:
                raise InvalidInput(f"{field} is not a number", field=field) from None
            if not 0 <= number <= _INTS[tee][name]:
                raise InvalidInput(f"{field} must be 0..{_INTS[tee][name]}", field=field)
            out[name] = number
        elif name in _BOOLS[tee]:
            if value.lower() not in ("true", "false", "1", "0"):
                raise InvalidInput(f"{field} must be true or false", field=field)
            out[name] = value.lower() in ("true", "1")
        elif name in _CHOICES[tee]:
            choices = _CHOICES[tee][name]
            if value not in choices:
                raise InvalidInput(f"{field} must be one of {', '.join(choices)}", field=field)
            out[name] = value
        else:
            raise InvalidInput(
                f"{name!r} is not a simulated {tee.upper()} field; use {', '.join(sim_field_names(tee))}",
                field="sim-field",
            )
    return out


#: Makes the simulator's provider (``keybroker.cli.client_sim.Simulator``): the simulator signs with
#: the dev PKI of ``keybroker.tee.sim``, which is server code, so this library only takes it injected.
SimulatorFactory = Callable[[SimTee, Path, Mapping[str, str]], "Provider"]


# --- choosing ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detection:
    provider: Provider | None
    #: One line per interface looked at, in order.
    findings: tuple[str, ...]

    def summary(self) -> str:
        return "; ".join(self.findings)


def detect(root: Path = Path("/"), fs: TsmFs | None = None, ioctl: Ioctl | None = None) -> Detection:
    """The first usable hardware interface: configfs-tsm, /dev/tdx_guest, Gramine. Never the simulator."""
    findings: list[str] = []
    chosen: Provider | None = None
    if ConfigfsTsm.present(root):
        tsm = ConfigfsTsm(root, fs)
        try:
            name = tsm.provider()
        except EvidenceUnavailable as exc:
            findings.append(f"configfs-tsm at /{CONFIGFS_TSM_REPORT}: unusable ({exc.detail})")
        else:
            if name in TSM_PROVIDERS:
                findings.append(
                    f"configfs-tsm at /{CONFIGFS_TSM_REPORT}: provider {name} ({TSM_PROVIDERS[name].upper()})"
                )
                chosen = tsm
            else:
                findings.append(f"configfs-tsm at /{CONFIGFS_TSM_REPORT}: unknown provider {name!r}")
    else:
        findings.append(f"configfs-tsm: no /{CONFIGFS_TSM_REPORT}")
    if TdxGuestDevice.present(root):
        findings.append(f"/{TDX_GUEST}: present (TDX)")
        chosen = chosen or TdxGuestDevice(root, ioctl)
    else:
        findings.append(f"/{TDX_GUEST}: absent")
    if GramineAttestation.present(root):
        gramine = GramineAttestation(root)
        try:
            kind = gramine.attestation_type()
        except EvidenceUnavailable as exc:
            kind = f"unreadable ({exc.detail})"
        findings.append(f"Gramine /{GRAMINE_ATTESTATION}: attestation type {kind} (SGX)")
        if kind == "dcap":
            chosen = chosen or gramine
    else:
        findings.append(f"Gramine /{GRAMINE_ATTESTATION}: absent")
    return Detection(chosen, tuple(findings))


def provider_for(
    tee: str,
    *,
    root: Path = Path("/"),
    dev_pki: Path | None = None,
    sim_fields: Mapping[str, str] | None = None,
    fs: TsmFs | None = None,
    ioctl: Ioctl | None = None,
    simulator: SimulatorFactory | None = None,
) -> Provider:
    """The provider for ``--tee``: ``auto`` (detect), ``tdx``, ``snp``, ``sgx``, ``sim-tdx``, ``sim-sgx``,
    ``sim-snp`` (``sim-*`` with ``simulator``, which ``keybroker-client`` passes)."""
    if tee not in TEE_CHOICES:
        raise InvalidInput(f"--tee {tee!r} is not one of {', '.join(TEE_CHOICES)}", field="tee")
    if tee in TPM_QUOTE_TEES:
        raise InvalidInput(
            f"--tee {tee}: TPM evidence comes from keybroker.client.tpm (TpmProvider, AzureVtpmProvider)",
            field="tee",
        )
    if tee.startswith("sim-"):
        if dev_pki is None:
            raise InvalidInput(f"--tee {tee} needs --dev-pki DIR (the broker's dev PKI)", field="dev_pki")
        if simulator is None:
            raise InvalidInput(
                f"--tee {tee}: the simulator is not part of this library (keybroker-client has it)",
                field="tee",
            )
        sim_tee: SimTee = "sgx" if tee == "sim-sgx" else "snp" if tee == "sim-snp" else "tdx"
        return simulator(sim_tee, dev_pki, sim_fields or {})
    if sim_fields:
        raise InvalidInput("--sim-field is for --tee sim-tdx, sim-sgx or sim-snp only", field="sim-field")
    found = detect(root, fs, ioctl)
    if tee == "auto":
        if found.provider is None:
            raise EvidenceUnavailable("no TEE interface found: " + found.summary())
        log.info("--tee auto: %s", found.summary())
        return found.provider
    if tee in ("tdx", "snp"):
        if ConfigfsTsm.present(root):
            tsm = ConfigfsTsm(root, fs)
            if TSM_PROVIDERS.get(tsm.provider()) == tee:
                return tsm
        if tee == "tdx" and TdxGuestDevice.present(root):
            return TdxGuestDevice(root, ioctl)
    if tee == "sgx" and GramineAttestation.present(root):
        return GramineAttestation(root)
    raise EvidenceUnavailable(f"--tee {tee}: no interface for it on this machine: " + found.summary())
