"""Replicas starting together on a new database: one token signing key is current, the same for all.

Each replica comes with a data dir key of its own and finds no key on record. Before the first key
was recorded under a lock, both recorded theirs: two ``bearer_token_keys`` rows stayed current until a
rotation, and which one a replica took for "current" was whichever the database returned first.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from tests.helpers.postgres import PostgresServer

from keybroker.auth.registry import TokenRegistry
from keybroker.auth.tokens import key_id, load_or_create_signing_key
from keybroker.errors import Conflict, Unauthenticated
from keybroker.store.db import Database
from keybroker.store.models import BearerTokenKey

REPLICAS = 2


@pytest.fixture
def url(pg_server: PostgresServer) -> Iterator[str]:
    name = "kb_keys_" + uuid.uuid4().hex[:10]
    url = pg_server.create_database(name)
    Database(url).migrate()
    yield url
    pg_server.drop_database(name)


def _all_look_first(databases: list[Database], threads: list[threading.Thread]) -> None:
    """Hold each of ``threads`` after its first look at the signing keys until all have looked: every
    replica sees a new database with no key, the race at its worst."""
    met = threading.Barrier(len(threads), timeout=30)
    waiting = {t.name for t in threads}

    for database in databases:

        @event.listens_for(database.engine, "after_cursor_execute")
        def _after(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
            me = threading.current_thread().name
            if "bearer_token_keys" in statement and me in waiting:
                waiting.discard(me)
                met.wait()


@pytest.mark.postgres
def test_replicas_registering_at_once_record_one_current_key(url: str, tmp_path: Path) -> None:
    databases = [Database(url) for _ in range(REPLICAS)]
    registries = []
    for i, database in enumerate(databases):
        key_file = tmp_path / f"replica-{i}" / "token-signing-key.pem"
        load_or_create_signing_key(key_file)
        registries.append(TokenRegistry(database, key_file))
    errors: list[BaseException] = []

    def register(registry: TokenRegistry) -> None:
        try:
            registry.register_key()
        except BaseException as exc:  # noqa: BLE001 - asserted on below
            errors.append(exc)

    threads = [
        threading.Thread(target=register, args=(r,), name=f"replica-{i}") for i, r in enumerate(registries)
    ]
    _all_look_first(databases, threads)
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    try:
        with databases[0].session() as s:
            current = list(s.scalars(select(BearerTokenKey.kid).where(BearerTokenKey.retired_at.is_(None))))
        assert len(current) == 1, current
        kids = {r.current_kid() for r in registries}
        assert kids == {current[0]}
        # the winner's data dir key is the current one; the other replica's is not (it takes the
        # shared one from the database once unsealed) and it cannot sign with its own
        local = [key_id(k) for r in registries if (k := r.local_key()) is not None]
        assert sorted(kid == current[0] for kid in local) == [False, True]
        loser = next(
            r for r in registries if r.local_key() is not None and key_id(r.local_key()) != current[0]
        )  # type: ignore[arg-type]
        winner = next(r for r in registries if r is not loser)
        token = winner.mint("w", ["keys:search"])
        assert winner.verify(token).subject == "w"
        with pytest.raises(Conflict, match="not the broker's current one"):
            loser.mint("w", ["keys:search"])
        with pytest.raises(Unauthenticated, match="not the one this replica holds"):
            loser.verify(token)
    finally:
        for database in databases:
            database.dispose()


def test_two_current_keys_of_an_older_database_name_the_oldest_one_current(tmp_path: Path) -> None:
    """A database from before the lock may hold two current keys: every replica takes the oldest."""
    database = Database(f"sqlite:///{tmp_path / 'kb.db'}")
    database.migrate()
    older, newer = (
        TokenRegistry(database, tmp_path / name / "token-signing-key.pem") for name in ("older", "newer")
    )
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with database.session() as s:
        for registry, created in ((newer, at + timedelta(seconds=1)), (older, at)):
            key = load_or_create_signing_key(registry.key_file)
            s.add(BearerTokenKey(kid=key_id(key), public_jwk=key.as_dict(private=False), created_at=created))
    oldest = key_id(load_or_create_signing_key(older.key_file))
    assert older.current_kid() == newer.current_kid() == oldest
    assert older.verify(older.mint("w", ["keys:search"])).key_id == oldest
    with pytest.raises(Conflict, match=f"not the broker's current one \\({oldest}\\)"):
        newer.mint("w", ["keys:search"])
    database.dispose()
