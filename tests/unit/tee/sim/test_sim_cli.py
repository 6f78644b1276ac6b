"""``keybroker dev-pki`` and ``keybroker-client evidence`` with the simulator: outputs and exit codes (0, 2)."""

from __future__ import annotations

import hashlib
import stat
import time
from pathlib import Path
from typing import Any, Literal

import dcap_qvl  # type: ignore[import-untyped]
import pytest
import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from typer.testing import CliRunner

from keybroker.cli import client_evidence, devpki
from keybroker.tee.sim import SGX_TCB, TDX_TCB, DevPki

runner = CliRunner()
REPORT_DATA = hashlib.sha512(b"cli").digest()
Tee = Literal["sgx", "tdx"]


def _init(out: Path, *extra: str) -> DevPki:
    result = runner.invoke(devpki.app, ["init", "--dev-pki", str(out), *extra])
    assert result.exit_code == 0, result.output
    return DevPki.load(out)


def _verify(pki_dir: Path, quote: bytes, tee: Tee) -> dcap_qvl.VerifiedReport:
    pki = DevPki.load(pki_dir)
    coll = dcap_qvl.QuoteCollateralV3.from_json(pki.collateral_json(tee))
    return dcap_qvl.verify_with_root_ca(quote, coll, pki.root_der, int(time.time()))


@pytest.fixture(scope="module")
def cli_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "pki"
    _init(out)
    return out


def test_init_creates_the_pki_and_prints_the_root_fingerprint(tmp_path: Path) -> None:
    out = tmp_path / "dev"
    result = runner.invoke(devpki.app, ["init", "--dev-pki", str(out)])
    assert result.exit_code == 0, result.output
    pki = DevPki.load(out)
    assert f"Root CA SHA-256 fingerprint: {pki.root_fingerprint}" in result.output
    root = x509.load_pem_x509_certificate((out / "root.pem").read_bytes())
    assert pki.root_fingerprint == root.fingerprint(hashes.SHA256()).hex()
    for name in ("root.pem", "collateral-sgx.json", "collateral-tdx.json", "platforms/sgx/ak.key"):
        assert f"  {name}\n" in result.output
    assert "NOT FOR PRODUCTION" in result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "root.key").stat().st_mode) == 0o600


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "dev"
    first = _init(out)
    again = runner.invoke(devpki.app, ["init", "--dev-pki", str(out)])
    assert again.exit_code == 2
    assert "refusing to overwrite" in again.output and "--force" in again.output
    assert DevPki.load(out).root_fingerprint == first.root_fingerprint  # untouched
    forced = _init(out, "--force")
    assert forced.root_fingerprint != first.root_fingerprint


def test_init_usage_errors_exit_2(tmp_path: Path) -> None:
    assert runner.invoke(devpki.app, ["init"]).exit_code == 2  # --dev-pki missing
    a_file = tmp_path / "file"
    a_file.write_text("x")
    result = runner.invoke(devpki.app, ["init", "--dev-pki", str(a_file)])
    assert result.exit_code == 2 and "is not a directory" in result.output
    assert runner.invoke(devpki.app, ["init", "--dev-pki", str(tmp_path / "x"), "--bogus"]).exit_code == 2
    # the old spellings are gone: one name for the dev PKI directory in every command
    assert runner.invoke(devpki.app, ["init", "--out", str(tmp_path / "y")]).exit_code == 2
    assert runner.invoke(devpki.app, ["refresh", "--dir", str(tmp_path / "y")]).exit_code == 2
    assert not (tmp_path / "y").exists()


def test_revoke_pck(tmp_path: Path) -> None:
    out = tmp_path / "dev"
    pki = _init(out)
    quote_file = tmp_path / "q.bin"
    ok = runner.invoke(
        client_evidence.app,
        [
            "--tee",
            "sim-sgx",
            "--dev-pki",
            str(out),
            "--report-data",
            REPORT_DATA.hex(),
            "--out",
            str(quote_file),
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert _verify(out, quote_file.read_bytes(), "sgx").status == "UpToDate"
    result = runner.invoke(devpki.app, ["revoke-pck", "--dev-pki", str(out), "--platform", "sgx"])
    assert result.exit_code == 0, result.output
    serial = pki.platforms["sgx"].pck["uptodate"].cert.serial_number
    assert f"Revoked PCK serial {serial:x}" in result.output
    with pytest.raises(ValueError, match="CertRevoked"):
        _verify(out, quote_file.read_bytes(), "sgx")


def test_revoke_pck_single_level_and_usage_errors(tmp_path: Path) -> None:
    out = tmp_path / "dev"
    pki = _init(out)
    result = runner.invoke(
        devpki.app, ["revoke-pck", "--dev-pki", str(out), "--platform", "tdx", "--tcb", "outofdate"]
    )
    assert result.exit_code == 0, result.output
    assert DevPki.load(out).revoked_serials("platform") == [
        pki.platforms["tdx"].pck["outofdate"].cert.serial_number
    ]
    bad_platform = runner.invoke(devpki.app, ["revoke-pck", "--dev-pki", str(out), "--platform", "sev"])
    assert bad_platform.exit_code == 2
    not_a_pki = runner.invoke(
        devpki.app, ["revoke-pck", "--dev-pki", str(tmp_path / "none"), "--platform", "sgx"]
    )
    assert not_a_pki.exit_code == 2 and "is not a readable dev PKI" in not_a_pki.output


def _evidence(pki: Path, tee: str, out: Path, *fields: str, report_data: str | None = None) -> Any:
    args = ["--tee", tee, "--dev-pki", str(pki), "--report-data", report_data or REPORT_DATA.hex()]
    args += ["--out", str(out)]
    for field in fields:
        args += ["--sim-field", field]
    return runner.invoke(client_evidence.app, args)


def test_evidence_sgx_with_every_field(cli_pki: Path, tmp_path: Path) -> None:
    out = tmp_path / "sgx.bin"
    mrenclave, mrsigner = "ab" * 32, "cd" * 32
    result = _evidence(
        cli_pki, "sim-sgx", out, f"mrenclave={mrenclave}", f"mrsigner={mrsigner}", "isvprodid=9", "isvsvn=4",
        "tcb=swhardening",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"wrote simulated SGX evidence ({out.stat().st_size} bytes)" in result.output
    assert "NOT FOR PRODUCTION" in result.output
    report = _verify(cli_pki, out.read_bytes(), "sgx")
    assert (report.status, report.advisory_ids) == (
        "SWHardeningNeeded",
        list(SGX_TCB["swhardening"].advisory_ids),
    )
    body = dcap_qvl.parse_quote(out.read_bytes()).report
    assert (body.mr_enclave.hex(), body.mr_signer.hex(), body.report_data) == (
        mrenclave,
        mrsigner,
        REPORT_DATA,
    )
    raw = out.read_bytes()  # ISVPRODID and ISVSVN: u16 at 48 + 256 and 48 + 258 (SGX quote v3 body)
    assert (int.from_bytes(raw[304:306], "little"), int.from_bytes(raw[306:308], "little")) == (9, 4)
    assert body.attributes[0] & 0x02 == 0


def test_evidence_sgx_debug(cli_pki: Path, tmp_path: Path) -> None:
    out = tmp_path / "sgx.bin"
    assert _evidence(cli_pki, "sim-sgx", out, "debug=true").exit_code == 0
    assert dcap_qvl.parse_quote(out.read_bytes()).report.attributes[0] & 0x02


def test_evidence_tdx_with_every_field(cli_pki: Path, tmp_path: Path) -> None:
    out = tmp_path / "tdx.bin"
    values = {
        n: hashlib.sha384(n.encode()).hexdigest()
        for n in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrseam")
    }
    fields = [f"{k}={v}" for k, v in values.items()]
    result = _evidence(
        cli_pki, "sim-tdx", out, *fields, "mrsignerseam=" + "00" * 48, f"seamsvn={0x0105}", "tcb=outofdate"
    )
    assert result.exit_code == 0, result.output
    report = _verify(cli_pki, out.read_bytes(), "tdx")
    assert (report.status, report.advisory_ids) == ("OutOfDate", list(TDX_TCB["outofdate"].advisory_ids))
    body = dcap_qvl.parse_quote(out.read_bytes()).report
    assert body.mr_td.hex() == values["mrtd"]
    assert [body.rt_mr0.hex(), body.rt_mr1.hex(), body.rt_mr2.hex(), body.rt_mr3.hex()] == [
        values[f"rtmr{i}"] for i in range(4)
    ]
    assert body.mr_seam.hex() == values["mrseam"]
    assert body.tee_tcb_svn[:2] == b"\x05\x01"
    assert body.report_data == REPORT_DATA
    assert body.td_attributes == (1 << 28).to_bytes(8, "little")


def test_evidence_tdx_flags(cli_pki: Path, tmp_path: Path) -> None:
    out = tmp_path / "tdx.bin"
    assert _evidence(cli_pki, "sim-tdx", out, "debug=true", "sept_ve_disable=false").exit_code == 0
    assert dcap_qvl.parse_quote(out.read_bytes()).report.td_attributes == (1).to_bytes(8, "little")


@pytest.mark.parametrize(
    ("tee", "report_data", "fields", "message"),
    [
        ("sim-sgx", "00" * 63, [], "--report-data must be exactly 64 bytes (128 hex characters), got 63"),
        ("sim-tdx", "00" * 65, [], "--report-data must be exactly 64 bytes (128 hex characters), got 65"),
        ("sim-sgx", "zz" * 64, [], "--report-data is not hex"),
        (
            "sim-sgx",
            None,
            ["mrenclave=" + "00" * 48],
            "sim-field mrenclave must be 32 bytes (64 hex digits), got 48",
        ),
        ("sim-sgx", None, ["mrtd=" + "00" * 48], "'mrtd' is not a simulated SGX field"),
        ("sim-sgx", None, ["sept_ve_disable=false"], "'sept_ve_disable' is not a simulated SGX field"),
        ("sim-tdx", None, ["mrtd=" + "00" * 32], "sim-field mrtd must be 48 bytes (96 hex digits), got 32"),
        ("sim-tdx", None, ["rtmr3=0"], "sim-field rtmr3 is not hex"),
        ("sim-tdx", None, ["isvsvn=1"], "'isvsvn' is not a simulated TDX field"),
        ("sim-tdx", None, ["mrtd"], "--sim-field 'mrtd' is not NAME=VALUE"),
        ("sim-tdx", None, ["debug=yes"], "sim-field debug must be true or false"),
        ("sim-tdx", None, ["tcb=1", "tcb=2"], "--sim-field tcb is given twice"),
        (
            "sim-tpm",
            None,
            [],
            "--tee 'sim-tpm' is not one of auto, tdx, snp, sgx, tpm, az-snp-vtpm, az-tdx-vtpm, sim-tdx, sim-sgx, "
            "sim-snp",
        ),
        (
            "sim-snp",
            None,
            ["measurement=00"],
            "sim-field measurement must be 48 bytes (96 hex digits), got 1",
        ),
        ("sim-sgx", None, ["tcb=bogus"], "sim-field tcb must be one of uptodate, swhardening"),
        ("sim-sgx", None, ["isvsvn=70000"], "sim-field isvsvn must be 0..65535"),
        ("tdx", None, [], "--dev-pki is for --tee sim-tdx, sim-sgx or sim-snp only"),
    ],
)
def test_evidence_usage_errors_exit_2(
    cli_pki: Path, tmp_path: Path, tee: str, report_data: str | None, fields: list[str], message: str
) -> None:
    out = tmp_path / "q.bin"
    result = _evidence(cli_pki, tee, out, *fields, report_data=report_data)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not out.exists()


def test_evidence_missing_options_and_missing_pki_exit_2(tmp_path: Path) -> None:
    out = tmp_path / "q.bin"
    assert runner.invoke(client_evidence.app, ["--tee", "sim-sgx"]).exit_code == 2
    result = _evidence(tmp_path / "nope", "sim-sgx", out)
    assert result.exit_code == 2 and "is not a readable dev PKI" in result.output
    # the old per-field options are gone: --sim-field NAME=VALUE, as get-key takes them
    result = runner.invoke(
        client_evidence.app,
        ["--tee", "sim-tdx", "--report-data", REPORT_DATA.hex(), "--out", str(out), "--mrtd", "00" * 48],
    )
    assert result.exit_code == 2 and not out.exists()


def test_evidence_from_the_hardware_providers(tmp_path: Path) -> None:
    """Without the simulator: --tee auto finds nothing here and says what it looked for (exit 1)."""
    out = tmp_path / "q.bin"
    result = runner.invoke(
        client_evidence.app,
        ["--report-data", REPORT_DATA.hex(), "--out", str(out), "--system-root", str(tmp_path)],
    )
    assert result.exit_code == 1, result.output
    assert "--tee auto: configfs-tsm: no /sys/kernel/config/tsm/report" in result.output
    assert "no TEE interface found" in result.output and not out.exists()


def test_register_adds_the_evidence_command(cli_pki: Path, tmp_path: Path) -> None:
    host = typer.Typer()

    @host.command("other")
    def other() -> None:
        """Another command, so that the host app is a group."""

    client_evidence.register(host)
    out = tmp_path / "q.bin"
    result = runner.invoke(
        host,
        [
            "evidence",
            "--tee",
            "sim-tdx",
            "--dev-pki",
            str(cli_pki),
            "--report-data",
            REPORT_DATA.hex(),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert _verify(cli_pki, out.read_bytes(), "tdx").status == "UpToDate"


def test_refresh(tmp_path: Path) -> None:
    out = tmp_path / "dev"
    _init(out)
    before = (out / "collateral-sgx.json").read_text()
    result = runner.invoke(devpki.app, ["refresh", "--dev-pki", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "collateral-sgx.json").read_text() != before  # new CRL numbers and signatures
    assert runner.invoke(devpki.app, ["refresh", "--dev-pki", str(tmp_path / "none")]).exit_code == 2


def test_what_evidence_produces_keybroker_evidence_verify_verifies(cli_pki: Path, tmp_path: Path) -> None:
    """The producer and the verifier are a pair: the client writes, ``keybroker evidence verify`` reads."""
    import json

    from keybroker.cli.main import app as server_app

    out = tmp_path / "tdx.bin"
    assert _evidence(cli_pki, "sim-tdx", out, "mrtd=" + "ab" * 48).exit_code == 0
    result = runner.invoke(
        server_app,
        ["evidence", "verify", "--quote", str(out), "--collateral", str(cli_pki / "collateral-tdx.json")]
        + ["--trust-root", str(cli_pki / "root.pem"), "--json"],
    )
    assert result.exit_code == 0, result.output
    verified = json.loads(result.output)
    assert verified["verdict"] == "verified"
    assert "ab" * 48 in json.dumps(verified) and REPORT_DATA.hex() in json.dumps(verified)
