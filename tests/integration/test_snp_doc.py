"""docs/snp.md "Step by step", pasted as a reader would, against a real ``keybroker serve --dev``:
every ``sh`` block marked ``<!-- doc-test: run -->``, in order, in one ``bash``; then the outcomes
the doc shows are checked, and the audit log for what it does not print."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers.docblocks import run_blocks
from tests.helpers.server import Server, keybroker

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "snp.md"


def test_snp_as_the_doc_shows(tmp_path: Path) -> None:
    script = run_blocks(DOC, at_least=6)
    server = Server(tmp_path / "data", extra=["--dev"]).start()
    try:
        script = script.replace(
            "export PATH=$PWD/.venv/bin:$PATH", f"export PATH={Path(sys.executable).parent}:$PATH"
        )
        script = script.replace("https://127.0.0.1:9443", server.url)
        script = script.replace("data/", f"{tmp_path / 'data'}/").replace(
            "--data-dir data", f"--data-dir {tmp_path / 'data'}"
        )
        r = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", script],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "COLUMNS": "200"},
        )
        audit = keybroker("audit", "list", "--data-dir", str(tmp_path / "data"), "--json")
    finally:
        server.stop()
    assert r.returncode == 0, r.stdout + r.stderr
    out, err = r.stdout, r.stderr
    # 1. real hardware: verified; a tampered report refused by its signature
    assert "verified Milan amd" in out
    assert "REJECTED" in out and "report_signature" in out
    assert out.count("exit 1") == 2  # the tampered report, the debug guest
    # 2. the measurement before boot (Debian's OVMF installed by scripts/install-system-deps.sh)
    if Path("/usr/share/OVMF/OVMF_CODE_4M.fd").is_file():
        assert re.search(r"^[0-9a-f]{96}$", out, re.M)
    # 3. the simulated guest: allowed by the policy test, the key released, the debug guest refused
    assert "ALLOWED by snp-policy.json (ear.status warning)" in out
    assert "wrote 256-bit secret" in err and "snp.key (mode 0600)" in err
    assert "debug guest (POLICY.DEBUG is set) and the policy does not set allow_debug" in err
    # 4. the secret over /kbs/v0
    assert "\nsnp guest secret\n" in out
    assert out.splitlines().count("204") == 2
    # the audit log has both transfers and the release
    assert audit.returncode == 0, audit.stderr
    transfers = [line for line in audit.stdout.splitlines() if '"key.transfer"' in line]
    assert ['"success"' in line for line in transfers] == [True, False]
    assert "POLICY.DEBUG" in transfers[-1]
    assert any('"resource.release"' in line and '"success"' in line for line in audit.stdout.splitlines())
