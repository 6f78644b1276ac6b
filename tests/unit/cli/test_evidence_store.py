"""`keybroker evidence verify` and `keybroker policy test` trust what the server of the same data
dir and configuration trusts: its collateral store, ``trust.dev_roots``, and with ``--dev`` (or
``dev = true``) the data dir's dev PKI, root and collateral (``collateral.trust``, shared with
``api.services``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.vectors import corpus
from typer.testing import CliRunner

from keybroker.api.services import DEV_PKI_DIR, Services
from keybroker.cli.main import app
from keybroker.config import Settings, TrustSettings
from keybroker.tee.sim import DEFAULT_MRTD, DevPki, tdx_quote
from keybroker.tee.verifier import NO_REPORT_DATA

runner = CliRunner()


def _invoke(*args: str) -> tuple[int, str]:
    r = runner.invoke(app, list(args))
    return r.exit_code, r.output


def test_verify_from_store(tmp_path: Path) -> None:
    c = corpus.case("dcap-tdx-phala")
    data = tmp_path / "data"
    code, out = _invoke("collateral", "import", "--data-dir", str(data), str(corpus.path(c["collateral"])))
    assert code == 0, out
    args = ["--quote", str(corpus.path(c["quote"])), "--at", str(c["verify_at"]), "--data-dir", str(data)]
    code, out = _invoke("evidence", "verify", *args, "--json")
    assert code == 0, out
    assert json.loads(out)["status"] == "UpToDate"
    # an SGX quote whose FMSPC is not cached: exit 1 naming what was asked
    s = corpus.case("dcap-sgx-phala")
    code, out = _invoke(
        "evidence",
        "verify",
        "--quote",
        str(corpus.path(s["quote"])),
        "--at",
        str(s["verify_at"]),
        "--data-dir",
        str(data),
    )
    assert code == 1 and "FMSPC" in out
    assert "--dev" not in out  # no dev PKI in this data dir: nothing to suggest


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[Services]:
    """What `keybroker serve --dev --data-dir DATA` builds, with Intel collateral imported too."""
    data = tmp_path / "data"
    code, out = _invoke(
        "collateral",
        "import",
        "--data-dir",
        str(data),
        str(corpus.path(corpus.case("dcap-tdx-phala")["collateral"])),
    )
    assert code == 0, out
    services = Services.build(Settings(data_dir=data, dev=True))
    yield services
    services.db.dispose()


def _sim_quote(services: Services, tmp_path: Path, **fields: Any) -> tuple[Path, bytes]:
    pki = DevPki.load(services.settings.data_dir / DEV_PKI_DIR)
    quote = tdx_quote(pki, report_data=bytes(64), **fields)
    path = tmp_path / "sim.quote"
    path.write_bytes(quote)
    return path, quote


def test_dev_data_dir_is_trusted_as_the_dev_server_trusts_it(dev_server: Services, tmp_path: Path) -> None:
    quote_file, quote = _sim_quote(dev_server, tmp_path)
    data = str(dev_server.settings.data_dir)
    server = dev_server.verifier.verify("tdx", quote, NO_REPORT_DATA)  # the server accepts it
    assert server.sim

    # without --dev the CLI does not trust the dev PKI, and says how to
    code, out = _invoke("evidence", "verify", "--quote", str(quote_file), "--data-dir", data)
    assert code == 1
    flat = " ".join(out.split())
    assert "no TDX TCB Info for FMSPC 00DE7D000000 cached" in flat
    assert f"{Path(data) / DEV_PKI_DIR} holds the dev simulator's PKI: add --dev" in flat

    # with --dev it sees what the server sees: the same verdict and claims
    code, out = _invoke(
        "evidence", "verify", "--quote", str(quote_file), "--data-dir", data, "--dev", "--json"
    )
    assert code == 0, out
    doc = json.loads(out)
    assert doc["verdict"] == "verified" and doc["sim"] is True
    assert doc["claims"] == server.claims and doc["status"] == server.status

    # dev = true in the configuration file is the same
    config = tmp_path / "kb.toml"
    config.write_text(f'data_dir = "{data}"\ndev = true\n')
    code, out = _invoke("evidence", "verify", "--quote", str(quote_file), "--config", str(config))
    assert code == 0, out
    assert "VERIFIED" in out

    # and the store stays behind the dev collateral, as in the server: Intel quotes still verify
    c = corpus.case("dcap-tdx-phala")
    code, out = _invoke(
        "evidence",
        "verify",
        "--quote",
        str(corpus.path(c["quote"])),
        "--at",
        str(c["verify_at"]),
        "--data-dir",
        data,
        "--dev",
    )
    assert code == 0, out


def test_dev_mode_without_a_dev_pki_is_a_usage_error(tmp_path: Path) -> None:
    c = corpus.case("dcap-tdx-phala")
    code, out = _invoke(
        "evidence", "verify", "--quote", str(corpus.path(c["quote"])), "--data-dir", str(tmp_path), "--dev"
    )
    assert code == 2
    assert f"{tmp_path / DEV_PKI_DIR / 'root.pem'} does not exist" in " ".join(out.split())


def test_configured_dev_roots_are_trusted_as_by_the_server(tmp_path: Path) -> None:
    """trust.dev_roots: the server verifies quotes of that root against stored collateral of that
    root; so does the CLI with the same configuration, without a --trust-root."""
    other = DevPki.create(tmp_path / "other-pki")
    data = tmp_path / "data"
    config = tmp_path / "kb.toml"
    config.write_text(f'data_dir = "{data}"\n[trust]\ndev_roots = ["{other.root_pem_path}"]\n')
    code, out = _invoke("collateral", "import", "--config", str(config), str(other.collateral_path("tdx")))
    assert code == 0, out
    quote = tmp_path / "q"
    quote.write_bytes(tdx_quote(other, report_data=bytes(64)))
    services = Services.build(Settings(data_dir=data, trust=TrustSettings(dev_roots=[other.root_pem_path])))
    try:
        assert services.verifier.verify("tdx", quote.read_bytes(), NO_REPORT_DATA).sim
    finally:
        services.db.dispose()
    code, out = _invoke("evidence", "verify", "--quote", str(quote), "--config", str(config), "--json")
    assert code == 0, out
    assert json.loads(out)["sim"] is True
    # a data dir configured without that root refuses the same quote at the PCK chain
    code, out = _invoke("evidence", "verify", "--quote", str(quote), "--data-dir", str(data), "--json")
    assert code == 1 and json.loads(out)["failed_check"] == "pck_chain"


def test_policy_test_on_a_dev_data_dir(dev_server: Services, tmp_path: Path) -> None:
    quote_file, _ = _sim_quote(dev_server, tmp_path)
    data = str(dev_server.settings.data_dir)
    policy = tmp_path / "p.rego"
    policy.write_text(
        "package keybroker\n\ndefault allow := false\n\n"
        f'allow if {{ input.tee == "tdx"; input.claims.mr_td == "{DEFAULT_MRTD.hex()}"; input.sim }}\n'
    )
    args = ["policy", "test", "--policy", str(policy), "--quote", str(quote_file), "--data-dir", data]
    code, out = _invoke(*args, "--dev")
    assert code == 0, out
    assert "ALLOWED" in out
    code, out = _invoke(*args)  # without --dev: no collateral for the dev FMSPC, and the hint
    assert code == 1
    assert "add --dev" in " ".join(out.split())
    other_quote, _ = _sim_quote(dev_server, tmp_path, mrtd=b"\x07" * 48)
    code, out = _invoke(
        "policy", "test", "--policy", str(policy), "--quote", str(other_quote), "--data-dir", data, "--dev"
    )
    assert code == 1 and "DENIED" in out
