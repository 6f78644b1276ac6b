"""docs/tpm.md pasted as a reader would: every ``sh`` block marked ``<!-- doc-test: run -->``, in
order, in one ``bash`` (a swtpm manufactured and started, ``keybroker serve --dev`` trusting its local
CA, enrolment, approval, a policy from the golden machine, a key through both protocols, a changed
PCR denied, the GCE event-log policy, the Azure evidence); then the outcomes the doc shows are checked.
The swtpm and the server the script starts are stopped by the pids it wrote."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers.docblocks import run_blocks
from tests.helpers.postgres import free_port
from tests.helpers.swtpm import MISSING, SKIP_REASON, _free_port_pair
from tests.vectors.corpus import CORPUS

pytestmark = pytest.mark.skipif(bool(MISSING), reason=SKIP_REASON)

DOC = Path(__file__).resolve().parents[2] / "docs" / "tpm.md"


def _stop(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def test_the_tpm_walkthrough_runs_as_written(tmp_path: Path) -> None:
    script = run_blocks(DOC, at_least=8)
    for needle in ("export PATH=$PWD/.venv/bin:$PATH", "127.0.0.1:9443", "port=2321", "port=2322"):
        assert needle in script
    tpm_port = _free_port_pair()
    ctrl_port = tpm_port + 1  # the swtpm TCTI finds the control port at port + 1
    script = (
        script.replace("export PATH=$PWD/.venv/bin:$PATH", f"export PATH={Path(sys.executable).parent}:$PATH")
        .replace("127.0.0.1:9443", f"127.0.0.1:{free_port()}")
        .replace("port=2321", f"port={tpm_port}")
        .replace("port=2322", f"port={ctrl_port}")
        .replace("$PWD/tests/vectors/attestation", "@CORPUS@")
        .replace("tests/vectors/attestation", "@CORPUS@")
        .replace("@CORPUS@", str(CORPUS))
    )
    try:
        r = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "COLUMNS": "200"},
        )
    finally:
        _stop(tmp_path / "serve.pid")
        _stop(tmp_path / "tpm" / "swtpm.pid")
    claims = [p.read_text()[:2000] for p in sorted(tmp_path.glob("*-claims.json"))]
    assert r.returncode == 0, "\n".join(
        [r.stdout, r.stderr, *claims, (tmp_path / "serve.log").read_text()[-3000:]]
    )
    out, err = r.stdout, r.stderr
    lines = out.splitlines()
    # enrolment: pending, listed, approved
    assert lines[0] == "pending"
    assert "approved" in out and "web-1" in out
    # the golden machine: enrolled AK, its PCR 16, the policy allows it
    assert "enrolled" in lines and "ALLOWED by tpm-policy.json" in out
    # both protocols released the same key; then the changed PCR is denied with the reason
    assert lines.count("204") == 2 and "same key" in lines
    assert "pcrs.sha256.16" in err and "is not in the policy's list" in err and "exit 1" in lines
    assert not (tmp_path / "v1-again.key").exists()
    # the event log: Secure Boot on, GCE's boot applications; the policy from it allows, an old dbx denies
    assert '"enabled":true' in out and "GCE Virtual Firmware v1" in out
    assert "ALLOWED by gce-policy.json" in out
    assert "DENIED by gce-old-dbx.json" in out and "dbx 39beff4f43000748" in out
    # Azure: verified, no TCB status from AMD, the policy from its claims allows it
    assert "verified" in lines and "NoVendorStatus" in lines and "ALLOWED by azure-policy.json" in out
