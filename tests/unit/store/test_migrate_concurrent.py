"""Migrations are serialized: any number of processes may migrate one new database at once (replicas
started together). Before the advisory lock, all but one of six processes failed on PostgreSQL with
``duplicate key value violates unique constraint "pg_type_typname_nsp_index"``."""

from __future__ import annotations

import multiprocessing
import time
import uuid
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from keybroker.store import db as store_db

PROCESSES = 6


def _migrate(url: str, start_at: float) -> str:
    """In a fresh process: wait for the common start, migrate, say how it went."""
    from keybroker.store.db import Database

    while time.time() < start_at:
        pass
    try:
        database = Database(url)
        database.migrate()
        database.dispose()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which asserts on it
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def _head() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(store_db.__file__).with_name("migrations")))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def _migrate_at_once(url: str) -> list[str]:
    start_at = time.time() + 3  # every process imported and waiting by then
    with multiprocessing.get_context("spawn").Pool(PROCESSES) as pool:
        return pool.starmap(_migrate, [(url, start_at)] * PROCESSES)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'new.db'}"
    return str(request.getfixturevalue("pg_server").create_database("kb_mig_" + uuid.uuid4().hex[:10]))


def test_processes_migrating_one_new_database_at_once_all_succeed(fresh_url: str) -> None:
    results = _migrate_at_once(fresh_url)
    assert results == ["ok"] * PROCESSES, results
    engine = create_engine(fresh_url)
    try:
        with engine.connect() as conn:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert versions == [_head()]  # at head, recorded once
    assert {"seal_config", "audit_log", "audit_head", "keys", "nonces"} <= tables


@pytest.mark.postgres
def test_a_migration_waits_for_the_lock_rather_than_failing(pg_server: object) -> None:
    """While another session holds the migration lock, migrate() waits (longer than the statement
    timeout of ordinary statements) and then finds the schema at head."""
    url = pg_server.create_database("kb_mig_" + uuid.uuid4().hex[:10])  # type: ignore[attr-defined]
    short = url + "?options=-c%20statement_timeout%3D1s"
    first = store_db.Database(short)
    first.migrate()
    holder = create_engine(url)
    try:
        with holder.connect() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": store_db.MIGRATION_LOCK_KEY})
            start_at = time.time() + 0.2
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                pending = pool.apply_async(_migrate, (short, start_at))
                time.sleep(4)  # the waiter is blocked on the lock, past its 1 s statement timeout
                assert not pending.ready()
                conn.commit()  # releases the lock
                assert pending.get(timeout=60) == "ok"
    finally:
        holder.dispose()
        first.dispose()
