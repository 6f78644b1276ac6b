"""The token registry's cache: records are read from the database at most once per CACHE_SECONDS per
token, a revocation in this process takes effect at once, one by another process after the cache time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from keybroker.auth.registry import TokenRegistry
from keybroker.auth.tokens import load_or_create_signing_key
from keybroker.errors import Unauthenticated
from keybroker.store.db import Database


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'kb.db'}")
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def statements(db: Database) -> list[str]:
    seen: list[str] = []

    @event.listens_for(db.engine, "before_cursor_execute")
    def _count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    return seen


def _registry(db: Database, tmp_path: Path, clock: Clock) -> TokenRegistry:
    key_file = tmp_path / "token-signing-key.pem"
    load_or_create_signing_key(key_file)
    registry = TokenRegistry(db, key_file, cache_seconds=5.0, clock=clock)
    registry.register_key()
    return registry


def test_verifying_reads_the_records_once_per_cache_time(
    db: Database, statements: list[str], tmp_path: Path
) -> None:
    clock = Clock()
    registry = _registry(db, tmp_path, clock)
    token = registry.mint("w", ["keys:search"])
    registry.verify(token)
    statements.clear()
    for _ in range(100):
        assert registry.verify(token).subject == "w"
    assert statements == []  # the hot path: signature and claims, then two dictionary lookups
    clock.now += 5.1
    registry.verify(token)
    assert any("bearer_tokens" in s for s in statements) and any("bearer_token_keys" in s for s in statements)


def test_revocation_here_is_immediate_and_elsewhere_within_the_cache_time(
    db: Database, tmp_path: Path
) -> None:
    clock = Clock()
    here = _registry(db, tmp_path, clock)
    elsewhere = TokenRegistry(db, tmp_path / "token-signing-key.pem", cache_seconds=5.0, clock=clock)
    a, b = here.issue("a", ["keys:search"]), here.issue("b", ["keys:search"])
    for t in (a, b):
        here.verify(t.token)
        elsewhere.verify(t.token)

    here.revoke(a.jti, actor="test")
    with pytest.raises(Unauthenticated, match="revoked"):
        here.verify(a.token)
    elsewhere.verify(a.token)  # still cached over there
    clock.now += 5.1
    with pytest.raises(Unauthenticated, match="revoked"):
        elsewhere.verify(a.token)
    assert elsewhere.verify(b.token).subject == "b"


def test_the_cache_is_bounded(db: Database, statements: list[str], tmp_path: Path) -> None:
    key_file = tmp_path / "token-signing-key.pem"
    load_or_create_signing_key(key_file)
    registry = TokenRegistry(db, key_file, cache_entries=2, clock=Clock())
    registry.register_key()
    t1, t2, t3 = (registry.mint(name, ["keys:search"]) for name in ("t1", "t2", "t3"))
    for t in (t1, t2, t3):
        registry.verify(t)
    statements.clear()
    registry.verify(t3)
    assert statements == []
    registry.verify(t1)  # the least recently used one left the cache: read again
    assert [s for s in statements if "bearer_tokens" in s]
