"""Which database errors mean "unavailable" (503), the bounds on every wait, and one log line per
outage (store.db.Availability), on real databases: a refused port, a statement timeout."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError, OperationalError
from tests.helpers.postgres import PostgresServer, free_port

from keybroker.store import db as store_db
from keybroker.store.db import Database, unavailable_reason


def test_postgres_connections_get_a_statement_timeout_and_a_connect_timeout_by_default() -> None:
    args, t = store_db._pg_connect_args("postgresql+psycopg://u@h/db")
    assert args == {"options": "-c statement_timeout=5000ms", "connect_timeout": 5}
    assert (t.statement, t.round_trip, t.connect, t.pool) == (5.0, 6.0, 5, 5.0)


@pytest.mark.parametrize(
    ("query", "statement"),
    [
        ("options=-c%20statement_timeout%3D2s", 2.0),
        ("options=-c%20statement_timeout%3D1500", 1.5),  # PostgreSQL's unit: milliseconds
        ("options=--statement_timeout%3D1min%20-c%20lock_timeout%3D1s", 60.0),
    ],
)
def test_a_statement_timeout_in_the_url_options_is_kept_and_bounds_the_round_trips(
    query: str, statement: float
) -> None:
    args, t = store_db._pg_connect_args(f"postgresql+psycopg://u@h/db?{query}&connect_timeout=3")
    assert args == {}  # the URL's own options stand
    assert (t.statement, t.round_trip, t.connect) == (statement, statement + 1.0, 3.0)


def test_a_statement_timeout_of_zero_turns_the_client_deadline_off() -> None:
    _, t = store_db._pg_connect_args("postgresql+psycopg://u@h/db?options=-c%20statement_timeout%3D0")
    assert (t.statement, t.round_trip) == (None, None)


def test_an_unreadable_statement_timeout_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="statement_timeout='soon'"):
        store_db._pg_connect_args("postgresql+psycopg://u@h/db?options=-c%20statement_timeout%3Dsoon")


def test_a_refused_connection_is_unavailable_and_logged_once_per_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = Database(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none?connect_timeout=2")
    caplog.set_level(logging.INFO, logger="keybroker.store")
    for _ in range(3):
        with pytest.raises(OperationalError) as info, db.session() as s:
            s.execute(text("SELECT 1"))
        assert unavailable_reason(info.value) == "the database is unreachable"
    assert not db.availability.up and db.availability.outages == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "keybroker.store"]
    assert len(lines) == 1 and lines[0].startswith("database unavailable: the database is unreachable")
    db.dispose()


@pytest.mark.postgres
def test_a_statement_timeout_is_unavailable_and_the_next_answer_ends_the_outage(
    pg_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = pg_server.create_database("kb_" + uuid.uuid4().hex[:12]) + "?options=-c%20statement_timeout%3D300"
    db = Database(url)
    caplog.set_level(logging.INFO, logger="keybroker.store")
    with pytest.raises(OperationalError) as info, db.session() as s:
        s.execute(text("SELECT pg_sleep(5)"))
    assert info.value.orig is not None and info.value.orig.sqlstate == "57014"  # type: ignore[attr-defined]
    assert unavailable_reason(info.value) == "the database did not answer in time"
    assert not db.availability.up
    with db.session() as s:  # the same pooled connection, still good: the server cancelled
        assert s.execute(text("SELECT 1")).scalar() == 1
    assert db.availability.up
    lines = [r.getMessage() for r in caplog.records if r.name == "keybroker.store"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("database unavailable: the database did not answer in time")
    assert lines[1].startswith("database available again after")
    db.dispose()


def test_errors_of_the_request_or_the_code_are_not_unavailability(database_url: str) -> None:
    db = Database(database_url)
    db.migrate()
    with db.session() as s:
        s.execute(text("INSERT INTO audit_head (id, seq, hash) VALUES (7, 0, 'x')"))
    with pytest.raises(IntegrityError) as info, db.session() as s:
        s.execute(text("INSERT INTO audit_head (id, seq, hash) VALUES (7, 0, 'x')"))
    assert unavailable_reason(info.value) is None
    with pytest.raises(Exception) as bad, db.session() as s:  # noqa: B017 - the type differs per database
        s.execute(text("SELECT no_such_column FROM audit_head"))
    assert unavailable_reason(bad.value) is None
    assert db.availability.up and db.availability.outages == 0
    db.dispose()


def test_a_sqlite_file_locked_past_the_busy_timeout_is_unavailable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'kb.db'}"
    holder = Database(url)
    holder.migrate()
    impatient = create_engine(url, connect_args={"timeout": 0.2})
    try:
        with holder.session() as s, impatient.connect() as conn:
            s.execute(text("SELECT 1"))  # the holder's transaction began IMMEDIATE: the write lock
            conn.connection.dbapi_connection.isolation_level = None  # type: ignore[union-attr]
            with pytest.raises(OperationalError) as info:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
        assert unavailable_reason(info.value) == "the database file: database is locked"
    finally:
        impatient.dispose()
        holder.dispose()
