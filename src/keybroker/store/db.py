"""Engine and session set-up; migrations applied on start, one process at a time.

A database that fails or hangs must cost a request a bounded wait and a 503, never a 500 or a
thread stuck for ever. On PostgreSQL every statement has a server-side ``statement_timeout`` and
every round trip a client-side deadline a little longer (a server that is stopped, not dead, never
answers, and its kernel keeps acknowledging the TCP stream); connecting and waiting for a pooled
connection are bounded too. :func:`unavailable_reason` tells which errors mean "the database is
unavailable" (the API answers 503 ``Backend unavailable`` with ``Retry-After``), and
:class:`Availability` logs one line when an outage starts and one when it ends.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
import urllib.parse
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from psycopg import errors as pg_errors
from sqlalchemy import Connection, Engine, create_engine, event, inspect, make_url, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from keybroker import stages

log = logging.getLogger("keybroker.store")

_MIGRATIONS = Path(__file__).with_name("migrations")
#: Execution option: this transaction's commit need not reach the disk before it returns.
_LAZY_COMMIT = "keybroker_lazy_commit"

#: PostgreSQL's ``statement_timeout`` unless the URL's ``options`` set one (seconds).
DEFAULT_STATEMENT_TIMEOUT = 5.0
#: The client-side deadline of one round trip is the statement timeout plus this: a live server
#: cancels the statement first (a clean error, the connection kept); only a server that does not
#: answer at all meets the deadline (the connection is closed).
ROUND_TRIP_GRACE = 1.0
#: libpq's ``connect_timeout`` unless the URL sets one (seconds; libpq's minimum is 2).
DEFAULT_CONNECT_TIMEOUT = 5
#: The migration transaction's statement timeout (seconds): the advisory lock wait included, as
#: another process may be migrating a large database.
MIGRATION_TIMEOUT = 600.0
#: ``Retry-After`` of a 503 for an unavailable database (seconds).
RETRY_AFTER_SECONDS = 5
#: ``pg_advisory_xact_lock`` key that serializes migrations ("keybrokr" as a big-endian int64).
MIGRATION_LOCK_KEY = int.from_bytes(b"keybrokr", "big")


@dataclass(frozen=True)
class Timeouts:
    """The bounds on a PostgreSQL database's waits (seconds). None: unbounded (SQLite, or a
    ``statement_timeout`` of 0 set in the URL)."""

    statement: float | None
    round_trip: float | None
    connect: float | None
    pool: float


#: SQLite's: no server to wait for; the pool's default wait.
_UNBOUNDED = Timeouts(None, None, None, 30.0)
#: Each PostgreSQL engine's bounds.
_TIMEOUTS: weakref.WeakKeyDictionary[Engine, Timeouts] = weakref.WeakKeyDictionary()

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_STATEMENT_TIMEOUT_OPTION = re.compile(r"(?:^|\s)(?:-c\s*|--)statement_timeout=(\S+)")


def _pg_duration(value: str) -> float:
    """A PostgreSQL time setting in seconds ("5000" is milliseconds, "5s", "1min", ...)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(us|ms|s|min|h|d)?", value.strip())
    if m is None:
        raise ValueError(f"statement_timeout={value!r} in the database URL's options is not a duration")
    return float(m.group(1)) * _UNITS[m.group(2) or "ms"]


def _pg_connect_args(url: str) -> tuple[dict[str, Any], Timeouts]:
    """libpq parameters that bound every wait, unless the URL already sets them: ``options`` gets
    ``-c statement_timeout=5s``, and ``connect_timeout`` is 5 s."""
    query = make_url(url).query
    given = query.get("options", "")
    options = " ".join(given) if isinstance(given, tuple) else given
    args: dict[str, Any] = {}
    found = _STATEMENT_TIMEOUT_OPTION.search(options)
    if found is not None:
        statement = _pg_duration(found.group(1))
    else:
        statement = DEFAULT_STATEMENT_TIMEOUT
        args["options"] = f"{options} -c statement_timeout={int(statement * 1000)}ms".strip()
    connect: float | None
    if "connect_timeout" in query:
        connect = float(str(query["connect_timeout"])) or None
    else:
        connect = DEFAULT_CONNECT_TIMEOUT
        args["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
    round_trip = statement + ROUND_TRIP_GRACE if statement > 0 else None
    pool = statement if statement > 0 else DEFAULT_STATEMENT_TIMEOUT
    return args, Timeouts(statement or None, round_trip, connect, pool)


class _BoundedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every round trip (statement, commit, rollback, ping) has a
    deadline: past it the connection is closed, its transaction lost, and the call raises
    ``OperationalError``, which SQLAlchemy sees as a disconnect (the pool drops the connection)."""

    round_trip_timeout: float | None = None

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        limit = timeout if timeout is not None else self.round_trip_timeout
        try:
            return super().wait(gen, interval, limit)
        except pg_errors._WaitTimeout:
            if timeout is not None:
                raise  # psycopg's own bounded wait (a cancel, a notification): its caller handles it
            self.close()
            raise psycopg.OperationalError(
                f"the database did not answer within {limit:g} s (connection closed)"
            ) from None


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
    connect_args, timeouts = _pg_connect_args(url)
    engine = create_engine(url, pool_pre_ping=True, pool_timeout=timeouts.pool, connect_args=connect_args)
    _TIMEOUTS[engine] = timeouts

    @event.listens_for(engine, "do_connect")
    def _bounded_connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        conn = _BoundedConnection.connect(*cargs, **cparams)
        conn.round_trip_timeout = timeouts.round_trip
        return conn

    return engine


def timeouts_of(engine: Engine) -> Timeouts:
    """The engine's bounds (see :class:`Timeouts`)."""
    return _TIMEOUTS.get(engine, _UNBOUNDED)


@contextmanager
def _round_trip_timeout(conn: Connection, seconds: float | None) -> Iterator[None]:
    """Another client-side deadline for ``conn``'s round trips, for the block."""
    raw = conn.connection.dbapi_connection
    if not isinstance(raw, _BoundedConnection):
        yield
        return
    before, raw.round_trip_timeout = raw.round_trip_timeout, seconds
    try:
        yield
    finally:
        raw.round_trip_timeout = before


def lock_transaction(conn: Connection | Session, key: int) -> None:
    """Hold the lock ``key`` until the transaction ends, so that the transactions taking it run one
    at a time (a check and the write it decides, as one step between replicas): PostgreSQL a
    transaction-level advisory lock (``pg_advisory_xact_lock``, released at commit, rollback or
    when the connection drops; a wait is bounded by the statement timeout); SQLite nothing more, as
    every transaction here begins ``IMMEDIATE`` and so already holds the database's one write lock.
    ``key`` is a signed 64-bit integer, one per thing serialized (e.g. :data:`MIGRATION_LOCK_KEY`)."""
    dialect = conn.dialect if isinstance(conn, Connection) else conn.get_bind().dialect
    if dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision, one process at a time.

    Replicas that start together on a new database would otherwise create the same tables at once
    (PostgreSQL: ``duplicate key value violates unique constraint "pg_type_typname_nsp_index"``).
    The migration runs in one transaction that first takes a lock, so the others wait, then find
    the schema at head and do nothing: PostgreSQL a transaction-scoped advisory lock (released at
    commit or when the connection drops), SQLite the write lock (every transaction here begins
    ``IMMEDIATE``; the 30 s busy timeout is the wait)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = '{int(MIGRATION_TIMEOUT)}s'")
            with _round_trip_timeout(conn, MIGRATION_TIMEOUT + ROUND_TRIP_GRACE):
                lock_transaction(conn, MIGRATION_LOCK_KEY)
                _upgrade(cfg, conn)
        else:
            _upgrade(cfg, conn)


def _upgrade(cfg: Config, conn: Connection) -> None:
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


# --- unavailability ----------------------------------------------------------------------------

#: PostgreSQL SQLSTATEs (or their two-character classes) that mean the database cannot serve now,
#: not that the request or the code is wrong.
_PG_UNAVAILABLE = {
    "08": "the connection to the database failed",  # connection exception
    "53": "the database is out of resources",  # insufficient resources: connections, disk, memory
    "58": "the database had a system error",  # system error: I/O
    "57P01": "the database is shutting down",  # admin_shutdown
    "57P02": "the database is shutting down",  # crash_shutdown
    "57P03": "the database is starting up or shutting down",  # cannot_connect_now
    "57014": "the database did not answer in time",  # query_canceled: statement_timeout
    "55P03": "a database lock was not granted in time",  # lock_not_available
    "25006": "the database is read-only (a standby?)",  # read_only_sql_transaction
}
_SQLITE_UNAVAILABLE = (
    "database is locked",
    "disk i/o error",
    "unable to open database file",
    "database or disk is full",
)


def unavailable_reason(exc: BaseException) -> str | None:
    """Why ``exc`` means the database is unavailable (a connection lost or refused, a timeout, a
    server shutting down or out of resources), or None when it is another error (a bug, a
    constraint): only the former are answered 503. The reason names no host and no SQL."""
    if isinstance(exc, sa_exc.TimeoutError):  # the pool: no connection free in time
        return "no database connection became free in time"
    if isinstance(exc, sa_exc.DisconnectionError):
        return "the connection to the database was lost"
    if not isinstance(exc, sa_exc.DBAPIError):
        return None
    orig = exc.orig
    if isinstance(orig, psycopg.Error):
        state = orig.sqlstate
        if state is not None:
            return _PG_UNAVAILABLE.get(state) or _PG_UNAVAILABLE.get(state[:2])
        # no SQLSTATE: raised by the client (connection refused, closed, timed out)
        if isinstance(orig, psycopg.OperationalError | psycopg.InterfaceError):
            if "did not answer within" in str(orig):
                return "the database did not answer in time"
            return "the database is unreachable"
        return None
    if exc.connection_invalidated:
        return "the connection to the database was lost"
    if isinstance(orig, sqlite3.OperationalError):
        text_ = str(orig).lower()
        return next((f"the database file: {m}" for m in _SQLITE_UNAVAILABLE if m in text_), None)
    return None


_SEEN = "_keybroker_availability_seen"


class Availability:
    """Whether the database answered last time, and one log line per outage (not per request):
    an error when the first call fails, a warning when one succeeds again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._failures = 0
        self.outages = 0
        self.reason: str | None = None

    @property
    def up(self) -> bool:
        return self._down_since is None

    def failed(self, exc: BaseException) -> str | None:
        """Record ``exc`` if it means the database is unavailable; return the reason (or None)."""
        reason = unavailable_reason(exc)
        if reason is None:
            return None
        if getattr(exc, _SEEN, False):  # seen on its way up (engine event, then the API)
            return reason
        setattr(exc, _SEEN, True)
        with self._lock:
            self._failures += 1
            if self._down_since is not None:
                return reason
            self._down_since = time.monotonic()
            self._failures = 1
            self.outages += 1
            self.reason = reason
        log.error(
            "database unavailable: %s (%s); answering 503 until it answers again", reason, type(exc).__name__
        )
        return reason

    def succeeded(self) -> None:
        if self._down_since is None:  # the common case, without the lock
            return
        with self._lock:
            since, self._down_since = self._down_since, None
            failures, self.reason = self._failures, None
        if since is not None:
            log.warning(
                "database available again after %.1f s (%d call(s) failed meanwhile)",
                time.monotonic() - since,
                failures,
            )


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
        self.timeouts = timeouts_of(self.engine)
        #: Whether the database answered last time; logs outages (see :class:`Availability`).
        self.availability = Availability()
        _watch(self.engine, self.availability)
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
        try:
            with stages.stage("database"), self._serial, self._sessions() as session, session.begin():
                if not durable:
                    if self._sqlite:
                        session.connection(execution_options={_LAZY_COMMIT: True})
                    else:
                        session.execute(text("SET LOCAL synchronous_commit TO OFF"))
                yield session
        except sa_exc.TimeoutError as exc:  # the pool's: no DBAPI call, so no engine event saw it
            self.availability.failed(exc)
            raise

    def dispose(self) -> None:
        self.engine.dispose()


def _watch(engine: Engine, availability: Availability) -> None:
    """Tell ``availability`` of every database error (connecting included) and of every
    statement that succeeds after an outage."""

    @event.listens_for(engine, "handle_error")
    def _failed(ctx: Any) -> None:
        availability.failed(ctx.sqlalchemy_exception or ctx.original_exception)

    @event.listens_for(engine, "after_cursor_execute")
    def _answered(*_args: Any) -> None:
        availability.succeeded()
