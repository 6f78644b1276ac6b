"""The Alembic history is one line to one head, and its newest steps go down and up again, on
SQLite and PostgreSQL. Two branches that each add a migration after the same parent give two heads
(``alembic upgrade head`` then refuses to run): this is where that is caught."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

import keybroker.store.db as store_db
from keybroker.store.db import Database

#: The newest revision, and the tables each of the newest ones adds (0013 adds columns: TAGGED).
HEAD = "0013"
ADDED = {
    "0013": set(),
    "0012": {"appraisal_inputs"},
    "0011": {"shared_secrets"},
    "0010": {"tpm_aks", "tpm_enrolments", "tpm_ak_clocks"},
    "0009": {"snp_collateral_items"},
}


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(store_db._MIGRATIONS))
    return cfg


def test_one_line_of_revisions_to_one_head() -> None:
    script = ScriptDirectory.from_config(_config())
    assert script.get_heads() == [HEAD]
    chain = [r.revision for r in script.walk_revisions()]  # newest first
    assert chain[:6] == ["0013", "0012", "0011", "0010", "0009", "0008"]
    assert chain == [f"{n:04d}" for n in range(len(chain), 0, -1)]
    for rev in script.walk_revisions():
        assert rev.module.__file__ is not None and rev.module.__file__.split("/")[-1].startswith(rev.revision)
        assert rev.down_revision == (None if rev.revision == "0001" else f"{int(rev.revision) - 1:04d}")


def _tables(db: Database) -> set[str]:
    return set(inspect(db.engine).get_table_names())


#: The tables whose rows 0013 gives an integrity tag.
TAGGED = ("transfer_policies", "keys", "kbs_resources", "tpm_aks")


def _tagged(db: Database) -> set[str]:
    found = inspect(db.engine)
    tables = set(found.get_table_names())
    return {t for t in TAGGED if t in tables and "integrity_tag" in {c["name"] for c in found.get_columns(t)}}


def test_the_newest_revisions_go_down_and_up_again(database_url: str) -> None:
    db = Database(database_url)
    db.migrate()
    every = _tables(db)
    assert set().union(*ADDED.values()) <= every
    cfg = _config()
    try:
        gone: set[str] = set()
        assert _tagged(db) == set(TAGGED)
        for rev in ("0012", "0011", "0010", "0009", "0008"):
            with db.engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.downgrade(cfg, rev)
            gone |= ADDED[f"{int(rev) + 1:04d}"]
            assert _tables(db) == every - gone, rev
            assert _tagged(db) == set(), rev
        db.migrate()
        assert _tables(db) == every and _tagged(db) == set(TAGGED)
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == HEAD
    finally:
        db.dispose()
