"""docs/console.md: its runnable blocks against a data dir, and its [oidc] example as configuration."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers.docblocks import run_blocks
from tests.helpers.server import Server

from keybroker.auth.roles import BUILTIN
from keybroker.config import load_settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "console.md"


def test_the_role_commands_run(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", extra=["--dev"]).start()
    try:
        env = {
            **os.environ,
            "KB_DATA": str(server.data_dir),
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        }
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", run_blocks(DOC, at_least=1)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert "release-engineer" in done.stdout
        assert (tmp_path / "token.txt").read_text().count(".") == 2
    finally:
        server.stop()


def test_the_oidc_example_is_valid_configuration(tmp_path: Path) -> None:
    toml = re.search(r"```toml\n(\[oidc\].*?)```", DOC.read_text(), re.S)
    assert toml
    conf = tmp_path / "kb.toml"
    conf.write_text(toml.group(1))
    settings = load_settings(conf, {})
    assert settings.oidc is not None and settings.oidc.roles_claim == "groups"
    assert {r for roles in settings.oidc.role_mapping.values() for r in roles} <= set(BUILTIN)


def test_the_role_table_is_the_code() -> None:
    text = DOC.read_text()
    for name, (_, perms) in BUILTIN.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        for p in perms:
            service, verb = p.split(":")
            assert f"`{p}`" in row or f"`:{verb}`" in row, (name, p)
