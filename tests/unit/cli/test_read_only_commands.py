"""The read-only commands (``audit list``, ``audit verify``, ``keystore check``, ``token list``,
``role list``, ``collateral list``, ``collateral export``) given
a wrong --data-dir or --database: "no keybroker data", exit 2, and nothing created there. Before,
``audit verify`` in a wrong folder left an empty ``keybroker.db`` behind."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect
from typer.testing import CliRunner

from keybroker.api.services import Services
from keybroker.cli.main import app
from keybroker.config import Settings

COMMANDS = [
    ["audit", "list"],
    ["audit", "verify"],
    ["keystore", "check"],
    ["token", "list"],
    ["role", "list"],
    ["collateral", "list"],
    ["collateral", "export", "--fmspc", "00906ED50000", "--out", "bundle.json"],
]
IDS = [" ".join(c[:2]) for c in COMMANDS]


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its SHA-256 (directories as "dir")."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[str(Path(dirpath, name).relative_to(root))] = "dir"
        for name in filenames:
            path = Path(dirpath, name)
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})
    return r.exit_code, " ".join(r.output.split())


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("KEYBROKER_DATA_DIR", "KEYBROKER_DATABASE", "KEYBROKER_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # ./data, the default, must not appear either


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_a_data_dir_that_does_not_exist(command: list[str], tmp_path: Path) -> None:
    wrong = tmp_path / "no-such-dir"
    code, out = _run(*command, "--data-dir", str(wrong))
    assert code == 2, out
    assert f"error: no keybroker data at {wrong} (no such directory)" in out
    assert not wrong.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_a_folder_that_is_not_a_data_dir(command: list[str], tmp_path: Path) -> None:
    wrong = tmp_path / "photos"
    wrong.mkdir()
    (wrong / "holiday.jpg").write_bytes(b"\xff\xd8 not a database")
    before = _tree(tmp_path)
    code, out = _run(*command, "--data-dir", str(wrong))
    assert code == 2, out
    assert f"error: no keybroker data at {wrong} (no keybroker.db in it)" in out
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_a_keybroker_db_that_is_not_keybrokers(command: list[str], tmp_path: Path) -> None:
    wrong = tmp_path / "other-app"
    wrong.mkdir()
    con = sqlite3.connect(wrong / "keybroker.db")
    con.execute("CREATE TABLE notes (body TEXT)")
    con.commit()
    con.close()
    before = _tree(tmp_path)
    code, out = _run(*command, "--data-dir", str(wrong))
    assert code == 2, out
    assert f"error: no keybroker data at {wrong} (its keybroker.db holds no keybroker tables)" in out
    assert _tree(tmp_path) == before  # no table created, not even switched to WAL


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_an_explicit_sqlite_database_is_never_created(command: list[str], tmp_path: Path) -> None:
    target = tmp_path / "typo.db"
    code, out = _run(*command, "--database", f"sqlite:///{target}", "--data-dir", str(tmp_path))
    assert code == 2, out
    assert f"error: no keybroker data in sqlite:///{target} (no such file)" in out
    assert not target.exists()


@pytest.mark.postgres
@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_an_empty_postgres_database_gets_no_tables(command: list[str], pg_server: object) -> None:
    url = pg_server.create_database("kb_" + uuid.uuid4().hex[:12])  # type: ignore[attr-defined]
    code, out = _run(*command, "--database", url)
    assert code == 2, out
    assert "error: no keybroker data in postgresql" in out and "(it holds no keybroker tables)" in out
    engine = create_engine(url)
    try:
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


def test_a_real_data_dir_still_reads(tmp_path: Path) -> None:
    """The same commands on a data dir a keybroker has used: they read it, and write nothing."""
    data = tmp_path / "data"
    services = Services.build(Settings(data_dir=data))
    services.tokens.mint("someone", ["keys:search"])
    services.db.dispose()
    assert (data / "keybroker.db").is_file()
    code, out = _run("token", "list", "--data-dir", str(data))
    assert code == 0 and "someone" in out, out
    code, out = _run("audit", "list", "--data-dir", str(data), "--json")
    assert code == 0 and '"action": "token.create"' in out, out
    code, out = _run("keystore", "check", "--data-dir", str(data))
    assert code == 0 and "builtin" in out, out
    code, out = _run("audit", "verify", "--data-dir", str(data), "--no-checkpoints")
    assert code == 0 and "audit chain intact" in out, out
    code, out = _run("collateral", "list", "--data-dir", str(data))
    assert code == 0 and "0 items" in out, out
