"""``keybroker collateral import/list/export`` with SEV-SNP collateral (through CliRunner): AMD's
files as the KDS serves them, offline bundles (SEV-SNP alone or with Intel's), refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.helpers.snp_kds import CHAIN_FILES, TURIN_VCEK, VCEK_CASES, SimKds, real_case, sim_kds
from tests.vectors.corpus import path
from typer.testing import CliRunner

from keybroker.cli.collateral import app

pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number")

runner = CliRunner()
TDX = str(path("intel-dcap/assembled/tdx_00806F050000_2025-10.json"))
REAL = [str(path(f)) for f in CHAIN_FILES.values()] + [
    *(str(path(real_case(c).signer_path)) for c in VCEK_CASES),
    str(path(TURIN_VCEK)),
]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimKds:
    return sim_kds(tmp_path_factory.mktemp("kds-cli-sim") / "genoa")


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


def _list(data: Path, *args: str) -> list[dict[str, Any]]:
    code, out = _run("list", "--data-dir", str(data), "--json", *args)
    assert code == 0, out
    items: list[dict[str, Any]] = json.loads(out)
    return items


def test_import_list_export_and_import_elsewhere(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    # the VCEKs are named before the chains: their chains are imported first all the same
    code, out = _run("import", *REAL[3:], *REAL[:3], TDX, "--data-dir", str(first), "--json")
    assert code == 0, out
    added = json.loads(out)["added"]
    assert len(added) == 4 + 10 and {i["tee"] for i in added} == {"tdx", None, "snp"}
    snp = _list(first, "--snp")
    assert len(snp) == 10 and {i["root"] for i in snp} == {"amd"}
    assert [i["kind"] for i in _list(first, "--product", "Turin")] == ["snp_cert_chain"] * 2 + ["snp_vcek"]
    assert len(_list(first)) == 4 + 10 and [i["kind"] for i in _list(first, "--fmspc", "00806F050000")] == [
        "tcb_info"
    ]
    code, out = _run("import", *REAL, "--data-dir", str(first))
    assert code == 0 and "0 added, 10 already stored" in out
    code, out = _run("list", "--data-dir", str(first))
    assert code == 0 and "4 items" in out and "10 SEV-SNP items" in out  # Intel's table, then SEV-SNP's
    # an SEV-SNP bundle, and a bundle of both
    bundle, both = tmp_path / "snp.json", tmp_path / "both.json"
    code, out = _run("export", "--snp", "--product", "Milan", "--out", str(bundle), "--data-dir", str(first))
    assert code == 0 and "wrote 5 items" in out and "VCEK Milan 3ac3fe21e13fb099…" in out, out
    doc = json.loads(bundle.read_text())
    assert doc["note"] == "SEV-SNP Milan, exported by keybroker collateral export"
    assert {i["product"] for i in doc["items"]} == {"Milan"}
    code, out = _run(
        "export", "--fmspc", "00806F050000", "--snp", "--out", str(both), "--data-dir", str(first)
    )
    assert code == 0 and "wrote 14 items" in out, out
    code, out = _run("import", str(bundle), str(both), "--data-dir", str(second))
    assert code == 0, out
    assert sorted(i["digest"] for i in _list(second)) == sorted(i["digest"] for i in _list(first))
    code, out = _run(
        "export", "--snp", "--product", "Genoa", "--out", str(tmp_path / "x.json"), "--data-dir", str(second)
    )
    assert code == 0  # AMD's Genoa chains are cached
    code, out = _run("export", "--out", str(tmp_path / "y.json"), "--data-dir", str(first))
    assert code == 2 and "give --fmspc (Intel collateral) or --snp" in out


def test_refusals_store_nothing(tmp_path: Path, sim: SimKds) -> None:
    data = tmp_path / "data"
    assert _run("import", REAL[0], "--data-dir", str(data))[0] == 0
    before = _list(data)
    bad = str(path("amd-sev-snp/coco-trustee/test-vcek-invalid-new.der"))
    code, out = _run("import", *REAL[1:], bad, "--data-dir", str(data))
    assert code == 1 and "test-vcek-invalid-new.der: " in out and "is not signed by" in out, out
    assert _list(data) == before
    # the simulator's chain names the flag and the file that holds its ARK (beside it)
    chain = sim.pki.directory / "cert_chain.pem"
    code, out = _run("import", str(chain), "--data-dir", str(data))
    ark = sim.pki.directory / "ark.pem"
    assert code == 1 and f"it is the ARK in {ark}: if you trust it, add --trust-root {ark}" in out, out
    code, out = _run(
        "import", str(sim.pki.crl_path("vcek")), "--trust-root", str(ark), "--data-dir", str(data)
    )
    assert code == 2 and "give --crl-for vcek or --crl-for vlek" in out
    assert _list(data) == before
    code, out = _run(
        "import",
        str(chain),
        str(sim.pki.crl_path("vcek")),
        "--crl-for",
        "vcek",
        "--trust-root",
        str(ark),
        "--data-dir",
        str(data),
    )
    assert code == 0 and "2 added" in out, out
    assert {i["label"] for i in _list(data, "--product", "Genoa")} == {"ASK+ARK Genoa", "VCEK CRL Genoa"}
    # a bundle whose entry names another chip than its certificate's: refused whole
    bundle = tmp_path / "b.json"
    assert _run("export", "--snp", "--out", str(bundle), "--data-dir", str(data))[0] == 0
    doc = json.loads(bundle.read_text())
    doc["items"][0]["product"] = "Turin"
    bundle.write_text(json.dumps(doc))
    code, out = _run("import", str(bundle), "--trust-root", str(ark), "--data-dir", str(tmp_path / "other"))
    assert code == 1 and "items[0].product: says 'Turin'" in out
    for args, message in (
        (["import", str(tmp_path / "b.json"), "--crl-for", "ask"], "--crl-for 'ask': expected vcek or vlek"),
        (["list", "--fmspc", "00806F050000", "--snp"], "--fmspc lists Intel collateral"),
        (["export", "--snp", "--product", "Naples", "--out", "x.json"], "expected Milan, Genoa or Turin"),
    ):
        code, out = _run(*args, "--data-dir", str(data))
        assert code == 2 and message in out, (args, out)
    (tmp_path / "junk.der").write_bytes(b"\x30\x03\x02\x01\x00")
    code, out = _run("import", str(tmp_path / "junk.der"), "--data-dir", str(data))
    assert code == 2 and "neither a DER certificate nor a DER CRL" in out


def test_a_database_that_predates_the_kds_cache(tmp_path: Path) -> None:
    """The read-only commands open a database as found: one at revision 0008 (the server not yet
    restarted on this version) still lists Intel's collateral, and says why SEV-SNP's is not there."""
    from alembic import command
    from alembic.config import Config

    import keybroker.store.db as store_db

    data = tmp_path / "data"
    assert _run("import", TDX, "--data-dir", str(data))[0] == 0
    db = store_db.Database(f"sqlite:///{data / 'keybroker.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(store_db._MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0008")
    db.dispose()
    assert len(_list(data)) == 4
    for args in (["list", "--snp"], ["export", "--snp", "--out", str(tmp_path / "x.json")]):
        code, out = _run(*args, "--data-dir", str(data))
        assert code == 2 and "predates the SEV-SNP KDS cache (schema revision 0009)" in out, out
    assert _run("import", REAL[0], "--data-dir", str(data))[0] == 0  # a writing command upgrades it
    assert len(_list(data, "--snp")) == 2
