"""The README quickstart, pasted as a new user would, against a real `keybroker serve --dev`; and its
"Production start" commands against a real `keybroker serve` on a random port."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.helpers.postgres import free_port
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


def _production_blocks() -> tuple[str, list[str]]:
    """The "Production start" section's two blocks: the serve command, and the operator commands."""
    text = README.read_text()
    section = text[text.index("## Production start") : text.index("## Configuration")]
    serve, operator = re.findall(r"```sh\n(.*?)```", section, re.S)
    lines = [line for line in operator.splitlines() if line.strip() and not line.startswith("#")]
    return serve.strip(), lines


def test_production_start_runs_on_any_port(tmp_path: Path) -> None:
    """The production commands as printed, on a random port instead of 9443 and listening on every
    address: the operator commands find the server through the data dir alone (before, they went
    to 127.0.0.1:9443 whatever --listen was)."""
    serve, lines = _production_blocks()
    data = tmp_path / "var-lib-keybroker"
    port = free_port()

    def here(line: str) -> str:
        assert "9443" in line or "/var/lib/keybroker" in line, line
        return line.replace("/var/lib/keybroker", str(data)).replace("9443", str(port))

    argv = shlex.split(here(serve))
    assert argv[:2] == ["keybroker", "serve"] and f"0.0.0.0:{port}" in argv, serve
    server = Server(data, port=port, host="0.0.0.0", argv=argv[1:]).start()  # noqa: S104
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "COLUMNS": "200"}
    assert not any("--server" in line or "9443" in line for line in lines), lines  # the data dir is enough

    def run(line: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", here(line)],
            cwd=tmp_path,
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    try:
        init, unseal, status, seal = lines
        assert "operator init" in init and "operator unseal" in unseal
        assert "operator status" in status and "operator seal" in seal
        r = run(init)
        assert r.returncode == 0, r.stderr
        shares = re.findall(r"^Unseal share \d: (\S+)$", r.stdout, re.M)
        token = re.search(r"^Initial admin token \(\*:\*, 24 h\): (\S+)$", r.stdout, re.M)
        assert len(shares) == 5 and token is not None, r.stdout
        for i, share in enumerate(shares[:3], 1):  # "once per share", from stdin
            r = run(unseal, share + "\n")
            assert r.returncode == 0, r.stderr
            if i < 3:
                assert r.stdout.startswith(f"sealed: {i}/3 shares given (unseal attempt "), r.stdout
            else:
                assert r.stdout.strip() == "unsealed", r.stdout
        r = run(status)
        assert r.returncode == 0 and re.search(r"^sealed\s+False$", r.stdout, re.M), r.stdout + r.stderr
        env["TOKEN"] = token.group(1)
        r = run(seal)
        assert r.returncode == 0 and r.stdout.strip() == "sealed", r.stderr
        r = run(status)
        assert r.returncode == 1 and re.search(r"^sealed\s+True$", r.stdout, re.M), r.stdout + r.stderr
    finally:
        server.stop()
    # a clean shutdown leaves the record, marked stopped: the next command says what it tried
    record = json.loads((data / "server.json").read_text())
    assert record["url"] == f"https://127.0.0.1:{port}" and record["stopped_at"] is not None
    r = run(status)
    assert r.returncode == 3, r.stderr
    assert f"cannot reach https://127.0.0.1:{port} (recorded in {data}/server.json)" in r.stderr
    assert "connection refused" in r.stderr and "stopped at" in r.stderr
