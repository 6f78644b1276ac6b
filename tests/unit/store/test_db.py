"""Database sessions: durable and lazy commits, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from keybroker.store.db import Database


@pytest.fixture
def db(database_url: str) -> Database:
    database = Database(database_url)
    database.migrate()
    return database


def _commit_mode(db: Database, durable: bool) -> str:
    query = "PRAGMA synchronous" if db.engine.dialect.name == "sqlite" else "SHOW synchronous_commit"
    with db.session(durable=durable) as s:
        return str(s.execute(text(query)).scalar())


def test_lazy_commits_do_not_wait_for_the_disk_and_durable_ones_do(db: Database) -> None:
    sqlite = db.engine.dialect.name == "sqlite"
    durable, lazy = ("2", "1") if sqlite else ("on", "off")  # SQLite: FULL=2, NORMAL=1
    # the same pooled connection alternates; a lazy transaction leaves nothing behind
    for _ in range(2):
        assert _commit_mode(db, durable=True) == durable
        assert _commit_mode(db, durable=False) == lazy
        assert _commit_mode(db, durable=True) == durable


def test_lazy_commits_are_committed(db: Database) -> None:
    with db.session(durable=False) as s:
        s.execute(text("INSERT INTO audit_head (id, seq, hash) VALUES (2, 0, 'x')"))
    with db.session() as s:
        assert s.execute(text("SELECT hash FROM audit_head WHERE id = 2")).scalar() == "x"


def test_a_failed_lazy_transaction_rolls_back(db: Database) -> None:
    with pytest.raises(RuntimeError), db.session(durable=False) as s:
        s.execute(text("INSERT INTO audit_head (id, seq, hash) VALUES (3, 0, 'y')"))
        raise RuntimeError("boom")
    with db.session() as s:
        assert s.execute(text("SELECT count(*) FROM audit_head WHERE id = 3")).scalar() == 0
