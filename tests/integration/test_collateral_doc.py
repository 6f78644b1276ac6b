"""docs/collateral.md "Commands", pasted as a reader would from the repository root: the blocks
marked ``<!-- doc-test: run -->``, in order, in one ``bash``, on a data dir that ``keybroker serve
--dev`` built (its dev PKI in ``data/dev-pki``). The test runs in a temp dir holding ``data`` and a
link to the repository's ``tests`` (the example paths are the repository's own vectors), so nothing
is written into the checkout. The fetch block needs the network and is not marked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.docblocks import run_blocks

from keybroker.api.services import Services
from keybroker.collateral.importers import read_file
from keybroker.collateral.items import TrustedRoots
from keybroker.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "collateral.md"


def test_collateral_commands_as_the_doc_shows(tmp_path: Path) -> None:
    script = run_blocks(DOC, at_least=3)
    assert script.startswith("export PATH=$PWD/.venv/bin:$PATH\n")
    script = script.replace(
        "export PATH=$PWD/.venv/bin:$PATH", f"export PATH={Path(sys.executable).parent}:$PATH"
    )
    services = Services.build(Settings(data_dir=tmp_path / "data", dev=True))  # what `make run` leaves
    services.db.dispose()
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    r = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    out, err = r.stdout, " ".join(r.stderr.split())

    # import, list
    assert "TCB Info TDX 00806F050000" in out
    listed = json.loads((tmp_path / "collateral-list.json").read_text())
    assembled = sorted((ROOT / "tests/vectors/attestation/intel-dcap/assembled").glob("*.json"))
    digests = {i.digest for f in assembled for i in read_file(f, TrustedRoots())}
    assert {i["digest"] for i in listed} == digests and {i["root"] for i in listed} == {"intel"}
    # verification from the store, now and in June (June's collateral)
    assert "VERIFIED" in out and "UpToDate" in out
    june = json.loads((tmp_path / "verified-june.json").read_text())
    assert june["verdict"] == "verified" and june["collateral_expiry"].startswith("2025-07")
    # export and import elsewhere, then the dev collateral: refused with the flag named, then trusted
    assert "wrote 4 items to tdx-00806F050000.json" in " ".join(out.split())
    assert (
        "it is the root in data/dev-pki/root.pem: if you trust it, add --trust-root data/dev-pki/root.pem"
        in err
    )
    assert out.count("exit 1") == 2
    elsewhere = subprocess.run(
        [
            str(Path(sys.executable).parent / "keybroker"),
            "collateral",
            "list",
            "--data-dir",
            "elsewhere",
            "--json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    roots = sorted(i["root"] for i in json.loads(elsewhere.stdout))
    assert roots == ["dev"] * 4 + ["intel"] * 4
    # the simulator's quote: verified as the dev server would, refused without --dev, with the hint
    assert "the chain ends at a dev root: simulated evidence" in " ".join(out.split())
    assert "data/dev-pki holds the dev simulator's PKI: add --dev" in err
