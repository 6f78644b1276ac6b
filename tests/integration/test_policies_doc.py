"""docs/policies.md "Attaching a policy, step by step", pasted as a reader would, against a real
``keybroker serve --dev``: every ``sh`` block marked ``<!-- doc-test: run -->``, in order, in one
``bash``; then the outcomes the doc shows are checked, and the audit log is checked for what the
doc does not print."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.docblocks import run_blocks
from tests.helpers.server import Server, keybroker

DOC = Path(__file__).resolve().parents[2] / "docs" / "policies.md"


def test_attaching_policies_as_the_doc_shows(tmp_path: Path) -> None:
    script = run_blocks(DOC, at_least=4)
    assert "export PATH=$PWD/.venv/bin:$PATH" in script and "https://127.0.0.1:9443" in script
    server = Server(tmp_path / "data", extra=["--dev"]).start()
    try:
        script = script.replace(
            "export PATH=$PWD/.venv/bin:$PATH", f"export PATH={Path(sys.executable).parent}:$PATH"
        )
        script = script.replace("https://127.0.0.1:9443", server.url)
        r = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "COLUMNS": "200"},
        )
        audit = keybroker("audit", "list", "--data-dir", str(tmp_path / "data"), "--json")
    finally:
        server.stop()
    assert r.returncode == 0, r.stdout + r.stderr
    out, err = r.stdout, r.stderr
    other = "ab" * 48

    # 1. the dry runs
    assert "ALLOWED by td.rego (ear.status warning)" in out
    assert "DENIED by td.rego (ear.status contraindicated)" in out
    assert f"reason: mrtd {other} is not allowed (expected 4b422d53494d204d525444" in out
    # 2. the resource: refused under the default policy, released under the Rego policy, refused to the other TD
    assert "the evidence is simulated (it chains to the dev PKI, not to Intel)" in err
    assert "\ncorrect horse battery staple\n" in out
    assert f"- mrtd {other} is not allowed" in err
    assert "(expected" not in err  # an anonymous caller is not told the expected MRTD
    # 3. the key: released as a resource, refused to the other TD by both policies
    assert "wrote 256-bit secret demo/key/aes to " in err
    assert f"- resource policy: mrtd {other} is not allowed" in err
    assert f"- key policy: mrtd {other} is not in the policy's list" in err
    lines = out.splitlines()
    assert lines.count("exit 1") == 4 and lines.count("204") == 4

    # what the doc does not print: the audit log has each release decision, with the full reasons
    assert audit.returncode == 0, audit.stderr
    records = [line for line in audit.stdout.splitlines() if '"resource.release"' in line]
    outcomes = [("demo/key/aes" in line, '"success"' in line) for line in records]
    assert outcomes == [(False, False), (False, True), (False, False), (True, True), (True, False)]
    assert "(expected 4b422d53494d204d525444" in records[-1]
