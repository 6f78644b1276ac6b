"""``keybroker-client`` usage errors (exit 2), detection output, and exit 3 for an unreachable broker."""

from __future__ import annotations

import stat
import uuid
from pathlib import Path

import pytest
from tests.helpers.postgres import free_port
from typer.testing import CliRunner

from keybroker.cli.client import app
from keybroker.client.errors import OutputError
from keybroker.client.material import write_private_file

runner = CliRunner()
KEY = str(uuid.uuid4())


def _fake_tdx_machine(root: Path) -> Path:
    (root / "dev").mkdir(parents=True)
    (root / "dev" / "tdx_guest").write_bytes(b"")
    return root


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([KEY], "give either --out FILE or --pkcs11-module"),
        ([KEY, "--out", "k.pem", "--label", "X"], "give either --out FILE or --pkcs11-module"),
        ([KEY, "--label", "X"], "needs --pkcs11-module, --token-label"),
        (["not-a-uuid", "--out", "k.pem"], "is not a key id"),
        ([KEY, "--out", "k.pem", "--sim-field", "mrtd=00"], "sim-tdx, sim-sgx or sim-snp only"),
        ([KEY, "--out", "k.pem", "--tee", "sim-tdx"], "needs --dev-pki"),
        ([KEY, "--out", "k.pem", "--tee", "sev"], "is not one of auto, tdx"),
        ([KEY, "--out", "k.pem", "--ca-sha384", "abcd"], "96 hex digits"),
        ([KEY, "--label", "X", "--pkcs11-module", "m.so", "--token-label", "T"], "needs a PIN"),
        ([KEY, "--out", "/nonexistent/dir/k.pem", "--tee", "tdx"], "cannot create files in /nonexistent/dir"),
        (
            [KEY, "--out", "k.pem", "--tee", "tdx", "--dev-pki", "d"],
            "--dev-pki is for --tee sim-tdx, sim-sgx or sim-snp",
        ),
        (
            [KEY, "--label", "X", "--pkcs11-module", "m.so", "--token-label", "T", "--keep-existing"],
            "--keep-existing is for --out FILE",
        ),
    ],
)
def test_get_key_usage_errors(args: list[str], fragment: str, tmp_path: Path) -> None:
    root = _fake_tdx_machine(tmp_path / "root")
    result = runner.invoke(
        app, ["get-key", *args, "--server", "https://127.0.0.1:1", "--system-root", str(root)]
    )
    assert result.exit_code == 2, result.output
    assert fragment in result.output


def test_plain_http_server_is_a_usage_error(tmp_path: Path) -> None:
    root = _fake_tdx_machine(tmp_path / "root")
    result = runner.invoke(
        app,
        [
            "get-key",
            KEY,
            "--out",
            "k.pem",
            "--server",
            "http://127.0.0.1:1",
            "--tee",
            "tdx",
            "--system-root",
            str(root),
        ],
    )
    assert result.exit_code == 2 and "must be an https:// URL" in result.output


def test_auto_says_what_it_found(tmp_path: Path) -> None:
    result = runner.invoke(app, ["detect", "--system-root", str(tmp_path)])
    assert result.exit_code == 1
    assert (
        "configfs-tsm: no /sys/kernel/config/tsm/report" in result.output
        and "no TEE interface found" in result.output
    )
    result = runner.invoke(
        app,
        ["get-key", KEY, "--out", "k.pem", "--server", "https://127.0.0.1:1", "--system-root", str(tmp_path)],
    )
    assert result.exit_code == 1 and "--tee auto: configfs-tsm: no" in result.output
    root = _fake_tdx_machine(tmp_path / "tdx")
    result = runner.invoke(app, ["detect", "--system-root", str(root)])
    assert result.exit_code == 0 and "/dev/tdx_guest: present (TDX)" in result.output
    assert "--tee auto uses: /dev/tdx_guest" in result.output


def test_unreachable_broker_exits_3(tmp_path: Path) -> None:
    root = _fake_tdx_machine(tmp_path / "root")
    out = tmp_path / "k.pem"
    result = runner.invoke(
        app,
        ["get-key", KEY, "--out", str(out), "--server", f"https://127.0.0.1:{free_port()}", "--tee", "tdx"]
        + ["--system-root", str(root), "--retries", "1", "--timeout", "2"],
    )
    assert result.exit_code == 3, result.output
    assert "Key broker unreachable" in result.output and "ConnectError" in result.output
    assert not out.exists()


def test_provision_config_errors(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    base = ["provision", "--config", str(keys), "--server", "https://127.0.0.1:1", "--tee", "tdx"]
    result = runner.invoke(app, base)
    assert result.exit_code == 2 and "cannot read --config" in result.output
    keys.write_text(f"pkcs11:token=KMS;object=A {KEY}\n")
    result = runner.invoke(app, base)
    assert result.exit_code == 2 and "no module-path in the URI and no --pkcs11-module" in result.output
    result = runner.invoke(app, [*base, "--pkcs11-module", "/x.so", "--pin-file", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "cannot read the PIN file" in result.output


def test_key_files_are_0600_from_the_start(tmp_path: Path) -> None:
    target = tmp_path / "k.pem"
    target.write_bytes(b"old")
    target.chmod(0o644)
    write_private_file(target, b"new")
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["k.pem"]
    with pytest.raises(OutputError, match="cannot write"):
        write_private_file(tmp_path / "missing" / "k.pem", b"x")


@pytest.mark.parametrize("args", [["--version"], ["version"]])
def test_version_both_ways(args: list[str]) -> None:
    from keybroker import __version__
    from keybroker.cli.main import app as server_app

    result = runner.invoke(app, args)
    assert result.exit_code == 0 and result.output == f"keybroker-client {__version__}\n"
    result = runner.invoke(server_app, args)
    assert result.exit_code == 0 and result.output.strip() == f"keybroker {__version__}"
