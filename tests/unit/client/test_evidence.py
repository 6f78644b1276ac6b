"""Evidence providers against a fake configfs-tsm tree, fake /dev/tdx_guest and Gramine files, and the
simulator for real."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from keybroker.cli.client_sim import Simulator
from keybroker.client import evidence as ev
from keybroker.client.errors import EvidenceUnavailable
from keybroker.errors import InvalidInput
from keybroker.tee import sim
from keybroker.tee.dcap.abi import parse_quote
from keybroker.tee.sim.snp import SnpDevPki
from keybroker.tee.snp.plugin import SnpVerifier
from keybroker.tee.verifier import Verifier
from keybroker.wire.certtable import GUID_ASK, GUID_VCEK, build_cert_table

RD = hashlib.sha512(b"report data").digest()


# --- configfs-tsm ------------------------------------------------------------------------------------


class FakeTsm:
    """The kernel's side of configfs-tsm in a temp dir: ``mkdir`` makes an entry with its attributes,
    writing ``inblob`` bumps ``generation`` and produces ``outblob``."""

    def __init__(
        self,
        provider: str = "tdx_guest",
        make: Callable[[bytes], bytes] = lambda rd: b"QUOTE:" + rd,
        bump: int = 1,
        aux: bytes | None = None,
    ) -> None:
        self.provider, self.make, self.bump, self.aux = provider, make, bump, aux
        self.created: list[Path] = []

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)
        self.created.append(path)
        (path / "provider").write_text(self.provider + "\n")
        (path / "generation").write_text("0\n")
        (path / "outblob").write_bytes(b"")
        (path / "inblob").write_bytes(b"")
        if self.aux is not None:
            (path / "auxblob").write_bytes(self.aux)

    def rmdir(self, path: Path) -> None:
        shutil.rmtree(path)

    def read(self, path: Path) -> bytes:
        return path.read_bytes()

    def write(self, path: Path, data: bytes) -> None:
        path.write_bytes(data)
        if path.name == "inblob":
            gen = int((path.parent / "generation").read_text()) + self.bump
            (path.parent / "generation").write_text(f"{gen}\n")
            (path.parent / "outblob").write_bytes(self.make(data))


def _tsm_root(tmp_path: Path) -> Path:
    (tmp_path / ev.CONFIGFS_TSM_REPORT).mkdir(parents=True)
    return tmp_path


def test_configfs_tdx_quote_and_entry_removed(tmp_path: Path) -> None:
    fake = FakeTsm()
    tsm = ev.ConfigfsTsm(_tsm_root(tmp_path), fake)
    got = tsm.evidence(RD)
    assert (got.tee, got.quote, got.source, got.aux, got.simulated) == (
        "tdx",
        b"QUOTE:" + RD,
        "configfs-tsm (tdx_guest)",
        None,
        False,
    )
    assert fake.created and all(p.name.startswith(f"keybroker-{os.getpid()}-") for p in fake.created)
    assert list((tmp_path / ev.CONFIGFS_TSM_REPORT).iterdir()) == []


def test_configfs_snp_returns_the_certificate_table(tmp_path: Path) -> None:
    table = build_cert_table([(GUID_VCEK, b"vcek"), (GUID_ASK, b"ask")])
    tsm = ev.ConfigfsTsm(_tsm_root(tmp_path), FakeTsm("sev_guest", aux=table))
    got = tsm.evidence(RD)
    assert got.tee == "snp" and got.aux == table and tsm.tee == "snp"
    # an auxblob that is not a certificate table is dropped: the report goes alone
    junk = ev.ConfigfsTsm(_tsm_root(tmp_path / "junk"), FakeTsm("sev_guest", aux=b"CERTS"))
    assert junk.evidence(RD).aux is None


@pytest.mark.parametrize(
    ("fake", "fragment"),
    [
        (FakeTsm(bump=2), "generation went 0 -> 2 -> 2"),
        (FakeTsm(make=lambda rd: b"an old report"), "does not carry the requested report data"),
        (FakeTsm(make=lambda rd: b""), "empty outblob"),
        (FakeTsm(provider="arm_cca_guest"), "provider 'arm_cca_guest' is not one"),
    ],
)
def test_configfs_refuses_what_may_not_be_ours(tmp_path: Path, fake: FakeTsm, fragment: str) -> None:
    with pytest.raises(EvidenceUnavailable, match=fragment):
        ev.ConfigfsTsm(_tsm_root(tmp_path), fake).evidence(RD)


def test_configfs_missing_tree_and_bad_report_data(tmp_path: Path) -> None:
    with pytest.raises(EvidenceUnavailable, match="cannot create a report entry"):
        ev.ConfigfsTsm(tmp_path).evidence(RD)
    with pytest.raises(InvalidInput, match="64 bytes, got 3"):
        ev.ConfigfsTsm(_tsm_root(tmp_path), FakeTsm()).evidence(b"abc")


# --- /dev/tdx_guest ----------------------------------------------------------------------------------


def test_ioctl_numbers_match_the_kernel_header() -> None:
    # _IOWR('T', 1, struct tdx_report_req /* 1088 bytes */) and _IOR('T', 2, struct tdx_quote_req /* 16 */)
    assert ev.TDX_CMD_GET_REPORT0 == 0xC4405401
    assert ev.TDX_CMD_GET_QUOTE == 0x80105402


def _tdreport(report_data: bytes) -> bytes:
    return bytes(ev.TDREPORT_REPORTDATA_START) + report_data + b"\x5a" * (1024 - 192)


class FakeTdxKernel:
    """The TDX guest driver and the host's quoting service behind ``ioctl``."""

    def __init__(
        self, status: int = ev.GET_QUOTE_SUCCESS, quote: Callable[[bytes], bytes] | None = None
    ) -> None:
        self.status = status
        self.quote = quote or (lambda tdreport: b"TDXQUOTE" + tdreport[128:192])
        self.requests: list[int] = []
        self.seen_quote_header: tuple[int, int, int, int] | None = None

    def __call__(self, fd: int, request: int, arg: bytearray) -> None:
        self.requests.append(request)
        if request == ev.TDX_CMD_GET_REPORT0:
            assert len(arg) == 1088
            arg[64:] = _tdreport(bytes(arg[:64]))
        elif request == ev.TDX_CMD_GET_QUOTE:
            addr, length = struct.unpack("<QQ", arg)
            buf = ctypes.string_at(addr, length)
            self.seen_quote_header = struct.unpack_from("<QQII", buf)
            tdreport = buf[24 : 24 + 1024]
            quote = self.quote(tdreport)
            out = struct.pack("<QQII", 1, self.status, 1024, len(quote)) + quote
            ctypes.memmove(addr, out, len(out))
        else:
            raise OSError(errno.ENOTTY, "bad ioctl")


def _device(tmp_path: Path) -> Path:
    (tmp_path / "dev").mkdir(parents=True, exist_ok=True)
    (tmp_path / ev.TDX_GUEST).write_bytes(b"")
    return tmp_path


def test_tdx_guest_report_then_quote(tmp_path: Path) -> None:
    kernel = FakeTdxKernel()
    got = ev.TdxGuestDevice(_device(tmp_path), kernel).evidence(RD)
    assert got.tee == "tdx" and got.quote == b"TDXQUOTE" + RD and got.source == "/dev/tdx_guest"
    assert kernel.requests == [ev.TDX_CMD_GET_REPORT0, ev.TDX_CMD_GET_QUOTE]
    # version 1, status 0, in_len = TDREPORT size, out_len 0 (GHCI GetQuote)
    assert kernel.seen_quote_header == (1, 0, 1024, 0)


@pytest.mark.parametrize(
    ("status", "fragment"),
    [
        (ev.GET_QUOTE_SERVICE_UNAVAILABLE, "QGS"),
        (ev.GET_QUOTE_IN_FLIGHT, "in flight"),
        (ev.GET_QUOTE_ERROR, "status 0x8000000000000000"),
    ],
)
def test_tdx_guest_quote_status(tmp_path: Path, status: int, fragment: str) -> None:
    with pytest.raises(EvidenceUnavailable, match=fragment):
        ev.TdxGuestDevice(_device(tmp_path), FakeTdxKernel(status)).evidence(RD)


def test_tdx_guest_errors(tmp_path: Path) -> None:
    with pytest.raises(EvidenceUnavailable, match="cannot open"):
        ev.TdxGuestDevice(tmp_path, FakeTdxKernel()).evidence(RD)

    def eio(fd: int, request: int, arg: bytearray) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(EvidenceUnavailable, match="ioctl failed"):
        ev.TdxGuestDevice(_device(tmp_path), eio).evidence(RD)

    def foreign(fd: int, request: int, arg: bytearray) -> None:
        arg[64:] = _tdreport(bytes(64))

    with pytest.raises(EvidenceUnavailable, match="TDREPORT does not carry"):
        ev.TdxGuestDevice(_device(tmp_path), foreign).evidence(RD)


def test_quote_buffer_marshalling() -> None:
    buf = ev.encode_quote_buffer(bytes(1024), 4096)
    assert len(buf) == 4096 and buf[:24] == struct.pack("<QQII", 1, 0, 1024, 0)
    good = struct.pack("<QQII", 1, 0, 0, 3) + b"abc" + bytes(10)
    assert ev.decode_quote_buffer(good) == b"abc"
    with pytest.raises(EvidenceUnavailable, match="does not fit"):
        ev.decode_quote_buffer(struct.pack("<QQII", 1, 0, 0, 99) + b"abc")
    with pytest.raises(EvidenceUnavailable, match="version 2"):
        ev.decode_quote_buffer(struct.pack("<QQII", 2, 0, 0, 3) + b"abc")
    with pytest.raises(EvidenceUnavailable, match="no header"):
        ev.decode_quote_buffer(b"short")
    with pytest.raises(InvalidInput):
        ev.encode_quote_buffer(bytes(10))


# --- Gramine -----------------------------------------------------------------------------------------


def _gramine(tmp_path: Path, kind: str, quote: bytes) -> Path:
    d = tmp_path / ev.GRAMINE_ATTESTATION
    d.mkdir(parents=True)
    (d / "attestation_type").write_text(kind + "\n")
    (d / "user_report_data").write_bytes(bytes(64))
    (d / "quote").write_bytes(quote)
    return tmp_path


def test_gramine_writes_report_data_and_reads_the_quote(tmp_path: Path) -> None:
    root = _gramine(tmp_path, "dcap", b"SGXQUOTE" + RD)
    got = ev.GramineAttestation(root).evidence(RD)
    assert got.tee == "sgx" and got.quote == b"SGXQUOTE" + RD
    assert (root / ev.GRAMINE_ATTESTATION / "user_report_data").read_bytes() == RD


def test_gramine_needs_dcap(tmp_path: Path) -> None:
    with pytest.raises(EvidenceUnavailable, match="'epid'; keybroker needs DCAP"):
        ev.GramineAttestation(_gramine(tmp_path, "epid", b"x")).evidence(RD)


# --- detect and choose ---------------------------------------------------------------------------------


def test_detect_empty_machine(tmp_path: Path) -> None:
    found = ev.detect(tmp_path)
    assert found.provider is None
    assert found.findings == (
        "configfs-tsm: no /sys/kernel/config/tsm/report",
        "/dev/tdx_guest: absent",
        "Gramine /dev/attestation: absent",
    )
    with pytest.raises(EvidenceUnavailable, match="no interface for it"):
        ev.provider_for("tdx", root=tmp_path)


def test_detect_prefers_configfs_and_reports_everything(tmp_path: Path) -> None:
    root = _device(_tsm_root(tmp_path))
    found = ev.detect(root, FakeTsm())
    assert isinstance(found.provider, ev.ConfigfsTsm)
    assert found.findings[:2] == (
        "configfs-tsm at /sys/kernel/config/tsm/report: provider tdx_guest (TDX)",
        "/dev/tdx_guest: present (TDX)",
    )
    # without configfs-tsm, the ioctl device
    found = ev.detect(_device(tmp_path / "other"), ioctl=FakeTdxKernel())
    assert isinstance(found.provider, ev.TdxGuestDevice)
    assert isinstance(ev.provider_for("tdx", root=tmp_path / "other"), ev.TdxGuestDevice)
    # Gramine without DCAP is reported, not chosen
    found = ev.detect(_gramine(tmp_path / "g", "none", b""))
    assert found.provider is None and "attestation type none" in found.summary()


def test_provider_for_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not one of"):
        ev.provider_for("sev", root=tmp_path)
    with pytest.raises(InvalidInput, match="needs --dev-pki"):
        ev.provider_for("sim-tdx", root=tmp_path, simulator=Simulator)
    with pytest.raises(InvalidInput, match="sim-tdx, sim-sgx or sim-snp only"):
        ev.provider_for("auto", root=tmp_path, sim_fields={"mrtd": "00"})
    with pytest.raises(InvalidInput, match="not a readable dev PKI"):
        ev.provider_for("sim-tdx", root=tmp_path, dev_pki=tmp_path / "nothing", simulator=Simulator)


# --- simulator -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("client-sim") / "pki"
    sim.DevPki.create(d)
    return d


def test_simulator_quotes_carry_report_data_and_fields(pki_dir: Path) -> None:
    tdx = ev.provider_for(
        "sim-tdx", dev_pki=pki_dir, sim_fields={"mrtd": "11" * 48, "tcb": "outofdate"}, simulator=Simulator
    )
    got = tdx.evidence(RD)
    assert got.simulated and got.tee == "tdx" and "NOT FOR PRODUCTION" in got.source
    quote = parse_quote(got.quote)
    assert quote.report_data == RD
    assert RD in got.quote and bytes.fromhex("11" * 48) in got.quote
    sgx = Simulator("sgx", pki_dir, {"isvprodid": "7", "isvsvn": "0x2", "debug": "false"})
    assert parse_quote(sgx.evidence(RD).quote).report_data == RD


@pytest.mark.parametrize(
    ("tee", "fields", "fragment"),
    [
        ("tdx", {"mrtd": "zz"}, "sim-field mrtd is not hex"),
        ("tdx", {"mrtd": "00" * 32}, "must be 48 bytes"),
        ("tdx", {"mrenclave": "00" * 32}, "'mrenclave' is not a simulated TDX field"),
        ("sgx", {"isvsvn": "70000"}, "0..65535"),
        ("sgx", {"isvprodid": "seven"}, "not a number"),
        ("sgx", {"debug": "maybe"}, "true or false"),
        ("tdx", {"tcb": "great"}, "one of uptodate"),
    ],
)
def test_sim_field_errors(tee: str, fields: dict[str, str], fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        ev.parse_sim_fields("tdx" if tee == "tdx" else "sgx", fields)


@pytest.fixture(scope="module")
def snp_pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A broker-shaped dev PKI directory holding only the SEV-SNP part (DIR/snp)."""
    base = tmp_path_factory.mktemp("snp-dev-pki")
    SnpDevPki.create(base / "snp", product="Genoa")
    return base


def test_sim_snp_provider_makes_reports_the_broker_verifies(snp_pki_dir: Path) -> None:
    provider = ev.provider_for(
        "sim-snp",
        dev_pki=snp_pki_dir,
        sim_fields={"measurement": "22" * 48, "host_data": "33" * 32, "vmpl": "1", "guest_svn": "9"},
        simulator=Simulator,
    )
    got = provider.evidence(RD)
    assert got.tee == "snp" and got.simulated and "sim-snp" in got.source and got.aux
    pki = SnpDevPki.load(snp_pki_dir / "snp")
    verified = Verifier([SnpVerifier([pki.root_cert])]).verify("snp", got.quote + got.aux, RD)
    claims = verified.claims
    assert claims["measurement"] == "22" * 48 and claims["host_data"] == "33" * 32
    assert (claims["vmpl"], claims["guest_svn"], claims["debug"]) == (1, 9, False) and verified.sim
    debug = Simulator("snp", snp_pki_dir / "snp", {"debug": "true", "migrate_ma": "1", "signing_key": "vlek"})
    made = debug.evidence(RD)
    checked = Verifier([SnpVerifier([pki.root_cert])]).verify("snp", made.quote + (made.aux or b""), RD)
    assert checked.claims["debug"] and checked.claims["policy"]["migrate_ma"]
    assert checked.claims["signing_key"] == "vlek" and checked.claims["chip_id"] == "00" * 64


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"measurement": "00" * 32}, "must be 48 bytes"),
        ({"vmpl": "4"}, "0..3"),
        ({"signing_key": "vmrk"}, "one of vcek, vlek"),
        ({"mrtd": "00" * 48}, "'mrtd' is not a simulated SNP field"),
    ],
)
def test_sim_snp_field_errors(fields: dict[str, str], fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        ev.parse_sim_fields("snp", fields)
