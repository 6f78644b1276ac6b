"""Unauthenticated challenges (a /kbs/v1 transfer with an empty body, /attestation/v1/nonce,
/kbs/v0/auth) each made a row kept for a day: anyone could fill the database. Regressions (issue 11,
item 8): outstanding challenges are capped (429 with Retry-After past the cap), issued ones stay
usable at the cap, and expired ones are dropped at their expiry, after which challenges are served
again.

Time passing is simulated as in the kbs_v0 housekeeping test: the rows' expiry is moved into the
past. The count is read at most once a second, hence the short sleeps."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from tests.api.test_kbs_v0 import _attest
from tests.api.test_transfer_v1 import _WORKLOAD, SGX_SIM_POLICY, Setup, _setup, _sgx, _transfer
from tests.helpers.api import unwrap_v1

from keybroker.api.app import create_app
from keybroker.api.services import Services
from keybroker.attestation.nonces import _id
from keybroker.config import LimitsSettings, Settings
from keybroker.store.models import KbsSession, Nonce

CAP = 3
AUTH = {"version": "0.4.0", "tee": "tdx", "extra-params": ""}
#: One more than the count's refresh period (keybroker.limits.OutstandingCap, 1 s).
RECOUNT = 1.1


def _settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database=database_url,
        dev=True,
        limits=LimitsSettings(outstanding_nonces=CAP, outstanding_sessions=CAP),
    )


@pytest.fixture
def capped(tmp_path: Path, database_url: str) -> Iterator[Services]:
    svc = Services.build(_settings(tmp_path, database_url))
    yield svc
    svc.db.dispose()


@pytest.fixture
def c(capped: Services) -> Iterator[TestClient]:
    with TestClient(create_app(capped), base_url="https://testserver") as client:
        yield client


@pytest.fixture
def sgx(c: TestClient, capped: Services) -> Setup:
    admin = {"Authorization": "Bearer " + capped.tokens.mint("test-admin", ["*:*"])}
    return _setup(c, capped, admin, SGX_SIM_POLICY)


def _challenge(s: Setup) -> Any:
    return s.client.post(f"/kbs/v1/keys/{s.key_id}/transfer")


def _too_many(r: Any, most: int) -> None:
    assert r.status_code == 429, r.text
    assert r.headers["content-type"] == "application/problem+json"
    retry = int(r.headers["Retry-After"])
    assert 1 <= retry <= most and r.json()["retry_after"] == retry
    assert f"{CAP} " in r.json()["detail"] and "outstanding" in r.json()["detail"]


def _age(capped: Services, table: Any, **where: Any) -> None:
    """Move the expiry of the rows into the past: their TTL has run out."""
    past = datetime.now(UTC) - timedelta(seconds=1)
    with capped.db.session() as s:
        s.execute(update(table).filter_by(**where).values(expires_at=past))


def _rows(capped: Services, table: Any) -> tuple[int, int]:
    """(rows, rows already expired)."""
    now = datetime.now(UTC)
    with capped.db.session() as s:
        total = s.scalar(select(func.count()).select_from(table))
        expired = s.scalar(select(func.count()).select_from(table).where(table.expires_at <= now))
    return total or 0, expired or 0


def test_transfer_challenges_past_the_cap_get_429_and_issued_nonces_stay_usable(
    sgx: Setup, capped: Services
) -> None:
    issued = [_challenge(sgx) for _ in range(CAP)]
    assert [r.status_code for r in issued] == [200] * CAP
    _too_many(_challenge(sgx), capped.settings.nonce_ttl_seconds)
    # the attestation service's nonces have their own cap: a flood of one does not block the other
    statuses = [sgx.client.post("/attestation/v1/nonce").status_code for _ in range(CAP + 1)]
    assert statuses == [200] * CAP + [429]

    # at the cap, a transfer with a nonce already issued goes through, once
    nonce = base64.b64decode(issued[0].json()["nonce"]["val"])
    r = _transfer(sgx, _sgx(sgx, nonce), nonce)
    assert r.status_code == 200, r.text
    assert unwrap_v1(r.json(), _WORKLOAD) == sgx.secret
    r = _transfer(sgx, _sgx(sgx, nonce), nonce)
    assert r.status_code == 403 and "replay" in r.json()["detail"]
    # the nonce used frees its place (at the next count)
    time.sleep(RECOUNT)
    assert _challenge(sgx).status_code == 200
    _too_many(_challenge(sgx), capped.settings.nonce_ttl_seconds)


def test_expired_nonces_are_dropped_and_challenges_served_again(sgx: Setup, capped: Services) -> None:
    issued = [base64.b64decode(_challenge(sgx).json()["nonce"]["val"]) for _ in range(CAP)]
    _too_many(_challenge(sgx), capped.settings.nonce_ttl_seconds)
    _age(capped, Nonce)
    assert _rows(capped, Nonce) == (CAP, CAP)
    time.sleep(RECOUNT)

    r = _challenge(sgx)
    assert r.status_code == 200, r.text
    assert _rows(capped, Nonce) == (1, 0)  # the expired ones are gone, the new one is kept
    with capped.db.session() as s:
        assert not set(s.scalars(select(Nonce.id))) & {_id(n) for n in issued}
    r = _transfer(sgx, _sgx(sgx, issued[1]), issued[1])
    assert r.status_code == 403 and "expired" in r.json()["detail"]
    assert [_challenge(sgx).status_code for _ in range(CAP)] == [200] * (CAP - 1) + [429]


def test_sessions_past_the_cap_get_429_and_expired_ones_are_dropped(c: TestClient, capped: Services) -> None:
    opened = [c.post("/kbs/v0/auth", json=AUTH) for _ in range(CAP - 1)]
    assert [r.status_code for r in opened] == [200] * (CAP - 1)
    assert _attest(c, capped, "tdx", ec.generate_private_key(ec.SECP256R1())).status_code == 200
    _too_many(c.post("/kbs/v0/auth", json=AUTH), 300)
    # an attested session no longer counts: its place is free at the next count
    time.sleep(RECOUNT)
    assert c.post("/kbs/v0/auth", json=AUTH).status_code == 200
    _too_many(c.post("/kbs/v0/auth", json=AUTH), 300)

    _age(capped, KbsSession)
    time.sleep(RECOUNT)
    assert c.post("/kbs/v0/auth", json=AUTH).status_code == 200
    assert _rows(capped, KbsSession) == (1, 0)


def test_the_cap_counts_every_replicas_challenges(
    sgx: Setup, capped: Services, tmp_path: Path, database_url: str
) -> None:
    for _ in range(CAP):
        assert _challenge(sgx).status_code == 200
    other = Services.build(_settings(tmp_path, database_url))  # another replica, same database
    try:
        with TestClient(create_app(other), base_url="https://testserver") as c2:
            _too_many(c2.post(f"/kbs/v1/keys/{sgx.key_id}/transfer"), capped.settings.nonce_ttl_seconds)
    finally:
        other.db.dispose()
