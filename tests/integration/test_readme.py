"""The README quickstart, pasted as a new user would, against a real `keybroker serve --dev`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers.server import Server

README = Path(__file__).resolve().parents[2] / "README.md"


def _quickstart() -> str:
    text = README.read_text()
    section = text[text.index("## Quickstart") :]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_quickstart_runs(tmp_path: Path) -> None:
    script = _quickstart()
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
    finally:
        server.stop()
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "released RSA key of 3072 bits" in out
    assert "mrtd" in out and "is not in the policy's list" in out
    assert "secp256r1" in out and "subject=CN = nginx.example.com" in out
    assert "/tmp/nginx-chain.pem: OK" in out
    assert "\n204\n" in out
    assert "audit chain intact" in out
    assert "wrote RSA-3072 private key" in r.stderr and "already holds key" in r.stderr
    assert r.stderr.count("nothing released") == 1
