"""Concurrent writers append one intact chain and spend a nonce once (regression: SQLite's driver
began transactions lazily, so two requests read the same chain head; found by bench/transfer.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from keybroker.attestation import nonces
from keybroker.audit import log as audit
from keybroker.errors import Forbidden
from keybroker.store.db import Database


def _db(database_url: str) -> Database:
    db = Database(database_url)
    db.migrate()
    return db


def test_parallel_appends_keep_the_chain(database_url: str) -> None:
    db = _db(database_url)

    def append(i: int) -> None:
        with db.session() as s:
            audit.append(s, actor="t", action="key.search", outcome="success", object_id=str(i))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(append, range(200)))
    with db.session() as s:
        result = audit.verify_chain(s)
    assert result.ok and result.records == 200
    db.dispose()


def test_a_nonce_is_spent_once_under_contention(database_url: str) -> None:
    db = _db(database_url)
    with db.session() as s:
        issued = nonces.issue(s, purpose="p", subject=None, ttl=timedelta(minutes=5))

    def spend(_: int) -> bool:
        try:
            with db.session() as s:
                nonces.consume(s, issued.value, purpose="p", subject=None)
            return True
        except Forbidden:
            return False

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(spend, range(16)))
    assert outcomes.count(True) == 1
    db.dispose()
