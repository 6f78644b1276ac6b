"""docs/collateral.md "Commands", pasted as a reader would from the repository root: the blocks
marked ``<!-- doc-test: run -->``, in order, in one ``bash``, on a data dir that ``keybroker serve
--dev`` built (its dev PKI in ``data/dev-pki``). The test runs in a temp dir holding ``data`` and a
link to the repository's ``tests`` (the example paths are the repository's own vectors), so nothing
is written into the checkout. A ``keybroker serve --dev`` runs on the data dir (as ``make run``) on a
free port, which replaces 127.0.0.1:9443 in the blocks. The blocks that fetch from Intel or AMD
need the network and are not marked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.docblocks import run_blocks
from tests.helpers.server import Server

from keybroker.api.services import Services
from keybroker.collateral.importers import read_file
from keybroker.collateral.items import TrustedRoots
from keybroker.collateral.kds import label
from keybroker.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "collateral.md"


def test_collateral_commands_as_the_doc_shows(tmp_path: Path) -> None:
    script = run_blocks(DOC, at_least=6)
    assert script.startswith("export PATH=$PWD/.venv/bin:$PATH\n")
    script = script.replace(
        "export PATH=$PWD/.venv/bin:$PATH", f"export PATH={Path(sys.executable).parent}:$PATH"
    )
    services = Services.build(Settings(data_dir=tmp_path / "data", dev=True))  # what `make run` leaves
    services.db.dispose()
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    server = Server(tmp_path / "data", extra=["--dev"]).start()  # `make run` going
    try:
        r = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", script.replace("https://127.0.0.1:9443", server.url)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "COLUMNS": "200"},
        )
    finally:
        server.stop()
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
    roots = sorted(i["root"] for i in json.loads(elsewhere.stdout) if i["tee"] != "snp")
    assert roots == ["dev"] * 4 + ["intel"] * 4
    # the simulator's quote: verified as the dev server would, refused without --dev, with the hint
    assert "the chain ends at a dev root: simulated evidence" in " ".join(out.split())
    assert "data/dev-pki holds the dev simulator's PKI: add --dev" in err

    # SEV-SNP: AMD's files imported, listed, exported and imported elsewhere
    snp_items = [i for i in json.loads(elsewhere.stdout) if i["tee"] == "snp"]
    bundle = json.loads((tmp_path / "snp-milan.json").read_text())
    assert (
        sorted(i["label"] for i in snp_items)
        == sorted(_label(i) for i in bundle["items"])
        == [
            "ASK+ARK Milan",
            "ASVK+ARK Milan",
            "VCEK Milan c38427a30d4c7af9…, TCB bl 3, tee 0, snp 8, ucode 115",
        ]
    )
    assert "3 SEV-SNP items" in out and {i["root"] for i in snp_items} == {"amd"}
    # the KDS endpoints: AMD's VCEK byte for byte, and a 400 naming the bad SPL
    vcek = ROOT / "tests/vectors/attestation/amd-sev-snp/coco-trustee/test-vcek.der"
    assert (tmp_path / "vcek.der").read_bytes() == vcek.read_bytes() and "CN = SEV-VCEK" in out
    assert '"detail":"blSPL: Input should be less than or equal to 255"' in out
    # fetched from the running keybroker into another data dir: the same three pieces, CRLs noted
    flat = " ".join(out.split())
    assert "note: no VCEK CRL Milan:" in flat and "404 no VCEK CRL Milan cached" in flat
    mirror = subprocess.run(
        [
            str(Path(sys.executable).parent / "keybroker"),
            "collateral",
            "list",
            "--snp",
            "--data-dir",
            "mirror",
            "--json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sorted(i["digest"] for i in json.loads(mirror.stdout)) == sorted(i["digest"] for i in snp_items)


def _label(item: dict[str, object]) -> str:
    return label(
        str(item["kind"]),
        str(item["signing_key"]),
        str(item["product"]),
        _hex(item.get("hwid")),
        _hex(item.get("tcb")),
    )


def _hex(value: object) -> bytes | None:
    return bytes.fromhex(value) if isinstance(value, str) else None
