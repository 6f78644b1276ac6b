"""Engine and session set-up; migrations applied on start."""

from __future__ import annotations

import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.orm import Session, sessionmaker

from keybroker import stages

_MIGRATIONS = Path(__file__).with_name("migrations")
#: Execution option: this transaction's commit need not reach the disk before it returns.
_LAZY_COMMIT = "keybroker_lazy_commit"


def _create_private_sqlite_file(url: str) -> None:
    """Create a SQLite database file 0600 before SQLite does (it would use 0644 less the umask); its
    WAL and shared-memory files take the database file's mode."""
    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except (FileExistsError, FileNotFoundError):
        return  # there already, or no such directory (SQLite will say so)
    os.close(fd)


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and a busy timeout."""
    if url.startswith("sqlite"):
        _create_private_sqlite_file(url)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # pysqlite starts a transaction only before the first write, so two requests could read
            # the same audit chain head or session row and race. Take the driver's hands off
            # transactions and begin each one IMMEDIATE (the write lock, up front) below.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA secure_delete=ON")  # deleted key material is overwritten
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # synchronous=NORMAL for a transaction opened with durable=False (see Database.session).
            # On the driver's connection: SQLAlchemy's execution path (events, a result) costs more
            # than the statements, and these two run on every transaction.
            driver = conn.connection.driver_connection
            want = "NORMAL" if conn.get_execution_options().get(_LAZY_COMMIT) else "FULL"
            if conn.info.get("synchronous") != want:
                driver.execute(f"PRAGMA synchronous={want}")
                conn.info["synchronous"] = want
            driver.execute("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


#: Tables every keybroker database has had since its first migration.
_KEYBROKER_TABLES = frozenset({"alembic_version", "seal_config", "audit_log"})


def has_keybroker_schema(url: str) -> bool:
    """Whether the database at ``url`` holds keybroker's tables, found without creating or changing
    anything (for the read-only commands): a SQLite file is opened read-only and never created, and
    no migration runs."""
    if url.startswith("sqlite"):
        path = make_url(url).database
        if not path or path == ":memory:" or path.startswith("file:") or not Path(path).is_file():
            return False
        try:
            con = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True, timeout=30)
            try:
                rows = con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
            finally:
                con.close()
        except sqlite3.DatabaseError:  # not a SQLite file at all
            return False
        return _KEYBROKER_TABLES <= {name for (name,) in rows}
    engine = create_engine(url, pool_pre_ping=True)
    try:
        return _KEYBROKER_TABLES <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time and every transaction begins IMMEDIATE: queue the
        # process's threads on a lock (woken at once) rather than in SQLite's sleep-and-retry busy
        # handler, whose growing sleeps made the tail latency seconds under load.
        self._sqlite = self.engine.dialect.name == "sqlite"
        self._serial: AbstractContextManager[object] = threading.RLock() if self._sqlite else nullcontext()

    def migrate(self) -> None:
        migrate(self.engine)

    @contextmanager
    def session(self, *, durable: bool = True) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any error.

        ``durable=False``: the commit does not wait for the disk (SQLite ``synchronous=NORMAL`` in
        WAL mode; PostgreSQL ``synchronous_commit=off``). A crash of the machine (not of the
        process) may then lose it, but never out of order: both logs are written sequentially, so
        the next durable commit makes every earlier commit durable too. Only for writes whose loss
        is harmless, such as a nonce issued (the client asks again) or a nonce used by a request
        whose outcome is committed durably next (the release or the denial's audit record).
        """
        with stages.stage("database"), self._serial, self._sessions() as session, session.begin():
            if not durable:
                if self._sqlite:
                    session.connection(execution_options={_LAZY_COMMIT: True})
                else:
                    session.execute(text("SET LOCAL synchronous_commit TO OFF"))
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
