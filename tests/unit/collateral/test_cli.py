"""``keybroker collateral import/list/export`` (through CliRunner): exit codes, all-or-nothing, round trip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.unit.collateral.conftest import CORPUS_FILES
from tests.vectors.corpus import path
from typer.testing import CliRunner

from keybroker.cli.collateral import app
from keybroker.tee.sim import DevPki

runner = CliRunner()
GOOD = [str(path(rel)) for rel in CORPUS_FILES]


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def _list(data: Path) -> list[dict[str, object]]:
    code, out = _run("list", "--data-dir", str(data), "--json")
    assert code == 0, out
    items: list[dict[str, object]] = json.loads(out)
    return items


def test_import_list_export_and_import_elsewhere(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    code, out = _run("import", *GOOD, "--data-dir", str(first), "--json")
    assert code == 0, out
    report = json.loads(out)
    assert len(report["added"]) == len(_list(first)) and not report["already_stored"]
    code, out = _run("import", GOOD[0], "--data-dir", str(first))
    assert code == 0 and "0 added, 4 already stored" in out

    bundle = tmp_path / "bundle.json"
    code, out = _run(
        "export", "--fmspc", "00806f050000", "--tee", "tdx", "--out", str(bundle), "--data-dir", str(first)
    )
    assert code == 0, out
    assert "wrote 5 items" in out and "TCB Info TDX 00806F050000" in out
    doc = json.loads(bundle.read_text())
    assert (
        doc["format"] == "keybroker-collateral-bundle/1" and not bundle.with_name(".bundle.json.tmp").exists()
    )

    code, out = _run("import", str(bundle), "--data-dir", str(second))
    assert code == 0, out
    assert sorted(i["digest"] for i in _list(second)) == sorted(i["digest"] for i in doc["items"])


def test_one_bad_file_imports_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert _run("import", GOOD[0], "--data-dir", str(data))[0] == 0
    before = _list(data)
    bad = str(path("tampered/tdx_quote_collateral.tcbsig_flip.json"))
    code, out = _run("import", *GOOD[1:], bad, "--data-dir", str(data))
    assert code == 1
    assert "tdx_quote_collateral.tcbsig_flip.json: TCB Info signature does not verify" in " ".join(
        out.split()
    )
    assert _list(data) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["import", "/nonexistent/x.json"], "cannot read"),
        (["import", "__NOT_JSON__"], "not JSON"),
        (["import", "__OTHER_JSON__"], "matches no known form"),
        (["export", "--fmspc", "00806F05", "--out", "x.json"], "expected 12 hex digits"),
        (["export", "--fmspc", "00806F050000", "--tee", "sev", "--out", "x.json"], "expected sgx or tdx"),
        (["list"], "no keybroker data at"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "n.txt").write_text("not json")
    (tmp_path / "o.json").write_text('{"hello": 1}')
    args = [
        str(tmp_path / "n.txt")
        if a == "__NOT_JSON__"
        else str(tmp_path / "o.json")
        if a == "__OTHER_JSON__"
        else a
        for a in args
    ]
    code, out = _run(*args, "--data-dir", str(tmp_path / "empty"))
    assert code == 2, out
    assert message in " ".join(out.split())


def test_export_of_an_uncached_fmspc_fails(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert _run("import", GOOD[0], "--data-dir", str(data))[0] == 0
    code, out = _run(
        "export", "--fmspc", "00906ED50000", "--out", str(tmp_path / "b.json"), "--data-dir", str(data)
    )
    assert code == 1
    assert "no TCB Info cached for FMSPC 00906ED50000; cached TCB Info:" in " ".join(out.split())
    assert not (tmp_path / "b.json").exists()


def test_sim_collateral_needs_trust_root(tmp_path: Path, dev_pki: DevPki) -> None:
    data = tmp_path / "data"
    code, out = _run("import", str(dev_pki.collateral_path("sgx")), "--data-dir", str(data))
    flat = " ".join(out.split())
    assert code == 1 and "not the Intel SGX Root CA" in flat
    # the refusal names the flag and the file that holds the root (beside the imported file)
    assert (
        f"it is the root in {dev_pki.root_pem_path}: if you trust it, add --trust-root {dev_pki.root_pem_path}"
        in flat
    )
    code, out = _run(
        "import",
        str(dev_pki.collateral_path("sgx")),
        "--trust-root",
        str(dev_pki.root_pem_path),
        "--data-dir",
        str(data),
    )
    assert code == 0, out
    assert [i["root"] for i in _list(data)] == ["dev"] * 4
    # trust.dev_roots from the configuration works as well
    config = tmp_path / "kb.toml"
    config.write_text(f'data_dir = "{data}"\n[trust]\ndev_roots = ["{dev_pki.root_pem_path}"]\n')
    code, out = _run("import", str(dev_pki.collateral_path("tdx")), "--config", str(config))
    assert code == 0, out
    assert len(_list(data)) == 7  # TDX TCB Info, TD_QE identity, platform CA CRL; the root CA CRL is shared


def test_untrusted_root_hint_names_the_data_dirs_dev_root(tmp_path: Path, dev_pki: DevPki) -> None:
    """Dev collateral copied elsewhere, imported into a data dir whose dev PKI signed it: the hint
    names <data-dir>/dev-pki/root.pem; collateral of an unknown root gets the general advice."""
    data = tmp_path / "data"
    shutil.copytree(dev_pki.directory, data / "dev-pki")
    copy = tmp_path / "elsewhere" / "sgx.json"
    copy.parent.mkdir()
    shutil.copy(dev_pki.collateral_path("sgx"), copy)
    code, out = _run("import", str(copy), "--data-dir", str(data))
    root = data / "dev-pki" / "root.pem"
    assert code == 1 and f"add --trust-root {root}" in " ".join(out.split())

    stranger = DevPki.create(tmp_path / "stranger")
    shutil.copy(stranger.collateral_path("tdx"), copy)
    code, out = _run("import", str(copy), "--data-dir", str(data))
    flat = " ".join(out.split())
    assert code == 1
    assert (
        "if you trust 'keybroker DEV SGX Root CA - NOT FOR PRODUCTION', add --trust-root with its PEM file"
        in flat
    )
    assert "e.g. data/dev-pki/root.pem" in flat
    assert not (data / "keybroker.db").exists()  # nothing was stored, not even a database
