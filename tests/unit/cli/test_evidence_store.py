"""`keybroker evidence verify` without --collateral uses the service's collateral store."""

from __future__ import annotations

import json
from pathlib import Path

from tests.vectors import corpus
from typer.testing import CliRunner

from keybroker.cli.main import app

runner = CliRunner()


def test_verify_from_store(tmp_path: Path) -> None:
    c = corpus.case("dcap-tdx-phala")
    data = tmp_path / "data"
    r = runner.invoke(
        app, ["collateral", "import", "--data-dir", str(data), str(corpus.path(c["collateral"]))]
    )
    assert r.exit_code == 0, r.output
    args = [
        "evidence",
        "verify",
        "--quote",
        str(corpus.path(c["quote"])),
        "--at",
        str(c["verify_at"]),
        "--data-dir",
        str(data),
        "--json",
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["status"] == "UpToDate"
    # an SGX quote whose FMSPC is not cached: exit 1 naming what was asked
    s = corpus.case("dcap-sgx-phala")
    r = runner.invoke(
        app,
        [
            "evidence",
            "verify",
            "--quote",
            str(corpus.path(s["quote"])),
            "--at",
            str(s["verify_at"]),
            "--data-dir",
            str(data),
        ],
    )
    assert r.exit_code == 1 and "FMSPC" in r.output
