"""A ``/kbs/v1`` transfer whose outcome cannot be recorded spends nothing (PostgreSQL).

The fault: the database cannot take the transfer's audit record (here another session holds the
audit chain's head row, so the append waits past the statement timeout; a database that goes away
at that moment does the same). Before: the nonce had been spent by a transaction of its own before
the evidence was looked at, so the 503 left a used nonce with no audited outcome, and the client's
retry of the same request was refused as a replay. Now: the nonce is spent by the transaction that
records the outcome, so the 503 leaves the nonce unused and no record, and the same request, sent
again once the database answers, gets its outcome (released, or denied for its own reason), with
exactly one audit record.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from tests.api.test_transfer_v1 import _WORKLOAD, SGX_SIM_POLICY, SPKI
from tests.helpers import postgres
from tests.helpers.api import unwrap_v1

from keybroker.api.app import create_app
from keybroker.api.services import DEV_PKI_DIR, Services
from keybroker.config import Settings
from keybroker.tee import sim
from keybroker.wire import binding

pytestmark = pytest.mark.postgres

#: Long enough for the race test to line two requests up behind locks, short enough for the outage
#: tests, where a request waits this long for the audit head and then fails.
STATEMENT_TIMEOUT_S = 3


@dataclass
class Broker:
    client: TestClient
    engine: Engine  # the test's own connections (the lock holder, the checks)
    admin: dict[str, str]
    key_id: str
    secret: bytes
    pki: sim.DevPki


@pytest.fixture
def broker(pg_server: postgres.PostgresServer, tmp_path: Path) -> Iterator[Broker]:
    url = pg_server.create_database("kb_" + uuid.uuid4().hex[:12])
    settings = Settings(
        data_dir=tmp_path / "data",
        database=url + f"?options=-c%20statement_timeout%3D{STATEMENT_TIMEOUT_S}s",
        dev=True,
    )
    services = Services.build(settings)
    engine = create_engine(url)
    try:
        with TestClient(create_app(services), base_url="https://testserver") as client:
            admin = {"Authorization": "Bearer " + services.tokens.mint("test-admin", ["*:*"])}
            pid = client.post("/kbs/v1/key-transfer-policies", json=SGX_SIM_POLICY, headers=admin).json()[
                "id"
            ]
            secret = os.urandom(32)
            r = client.post(
                "/kbs/v1/keys",
                json={
                    "key_information": {"algorithm": "AES", "key_string": base64.b64encode(secret).decode()},
                    "transfer_policy_id": pid,
                },
                headers=admin,
            )
            assert r.status_code == 201, r.text
            pki = sim.DevPki.load(settings.data_dir / DEV_PKI_DIR)
            yield Broker(client, engine, admin, r.json()["key_information"]["id"], secret, pki)
    finally:
        engine.dispose()
        services.db.dispose()


def _request(b: Broker, **fields: Any) -> tuple[bytes, dict[str, Any]]:
    r = b.client.post(f"/kbs/v1/keys/{b.key_id}/transfer")
    assert r.status_code == 200, r.text
    nonce = base64.b64decode(r.json()["nonce"]["val"])
    quote = sim.sgx_quote(
        b.pki, report_data=binding.v1_report_data(nonce, SPKI), isvprodid=7, isvsvn=2, **fields
    )
    body = {
        "quote": base64.b64encode(quote).decode(),
        "nonce": {"val": base64.b64encode(nonce).decode()},
        "user_data": base64.b64encode(SPKI).decode(),
    }
    return nonce, body


def _send(b: Broker, body: dict[str, Any]) -> Any:
    return b.client.post(f"/kbs/v1/keys/{b.key_id}/transfer", json=body, headers={"Attestation-Type": "SGX"})


def _send_while_the_audit_head_is_held(b: Broker, body: dict[str, Any]) -> Any:
    with b.engine.connect() as holder, holder.begin():
        holder.execute(text("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE"))
        return _send(b, body)


def _state(b: Broker, nonce: bytes) -> tuple[bool, list[str]]:
    """(the nonce is used, the outcomes of the key's key.transfer records)"""
    with b.engine.connect() as conn:
        used = conn.execute(
            text("SELECT used_at IS NOT NULL FROM nonces WHERE id = :id"),
            {"id": hashlib.sha256(nonce).hexdigest()},
        ).scalar_one()
        outcomes = conn.execute(
            text(
                "SELECT outcome FROM audit_log WHERE action = 'key.transfer' AND object_id = :k ORDER BY seq"
            ),
            {"k": b.key_id},
        ).scalars()
        return bool(used), list(outcomes)


def _assert_unavailable(r: Any) -> None:
    assert r.status_code == 503, r.text
    problem = r.json()
    assert problem["title"] == "Backend unavailable"
    assert problem["detail"].startswith("the database is unavailable: "), problem
    assert int(r.headers["retry-after"]) >= 1


def test_release_not_recorded_spends_no_nonce_and_can_be_sent_again(broker: Broker) -> None:
    nonce, body = _request(broker)
    _assert_unavailable(_send_while_the_audit_head_is_held(broker, body))
    assert _state(broker, nonce) == (False, [])  # nothing spent, nothing released

    r = _send(broker, body)  # the very same request, once the database answers
    assert r.status_code == 200, r.text
    assert unwrap_v1(r.json(), _WORKLOAD) == broker.secret
    assert _state(broker, nonce) == (True, ["success"])

    r = _send(broker, body)
    assert r.status_code == 403 and "already used" in r.json()["detail"]
    assert _state(broker, nonce) == (True, ["success", "denied"])


def test_denial_not_recorded_spends_no_nonce(broker: Broker) -> None:
    nonce, body = _request(broker, mrenclave=b"\x02" * 32)
    _assert_unavailable(_send_while_the_audit_head_is_held(broker, body))
    assert _state(broker, nonce) == (False, [])

    r = _send(broker, body)  # denied for its own reason, not as a replay
    assert r.status_code == 403, r.text
    assert any("mrenclave" in reason.lower() for reason in r.json()["reasons"])
    assert _state(broker, nonce) == (True, ["denied"])


def _waiting_on_locks(b: Broker) -> int:
    with b.engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + STATEMENT_TIMEOUT_S - 0.5
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_a_nonce_spent_meanwhile_makes_the_outcome_a_replay_denial(broker: Broker) -> None:
    """Two requests present one nonce: both pass its check before either has spent it, and both
    reach their outcome's transaction. The one that spends it first has its outcome; the other is
    denied as a replay and audited so, whatever its own evidence said (here: a wrong MRENCLAVE)."""
    nonce, good = _request(broker)
    quote = sim.sgx_quote(
        broker.pki,
        report_data=binding.v1_report_data(nonce, SPKI),
        isvprodid=7,
        isvsvn=2,
        mrenclave=b"\x02" * 32,
    )
    bad = dict(good, quote=base64.b64encode(quote).decode())
    answers: dict[str, Any] = {}

    def send(name: str, body: dict[str, Any]) -> None:
        answers[name] = _send(broker, body)

    with broker.engine.connect() as holder, holder.begin():
        holder.execute(text("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE"))
        first = threading.Thread(target=send, args=("good", good))
        first.start()
        _until(lambda: _waiting_on_locks(broker) == 1, "the release did not reach the audit head")
        # the release holds the nonce's row (spent, not committed) and waits for the audit head
        second = threading.Thread(target=send, args=("bad", bad))
        second.start()
        _until(lambda: _waiting_on_locks(broker) == 2, "the denial did not reach the nonce")
    first.join(30)
    second.join(30)
    assert answers["good"].status_code == 200, answers["good"].text
    r = answers["bad"]
    assert r.status_code == 403 and "already used" in r.json()["detail"], r.text
    assert _state(broker, nonce) == (True, ["success", "denied"])
    # the release keeps the input it was decided on; the replay, refused as if its nonce had been
    # spent first, was decided on none (its own evidence's is not kept under the replay's record)
    with broker.engine.connect() as conn:
        kept = conn.execute(
            text(
                "SELECT a.outcome, i.audit_seq IS NOT NULL FROM audit_log a LEFT JOIN appraisal_inputs i "
                "ON i.audit_seq = a.seq WHERE a.action = 'key.transfer' AND a.object_id = :k ORDER BY a.seq"
            ),
            {"k": broker.key_id},
        ).all()
    assert [tuple(row) for row in kept] == [("success", True), ("denied", False)]
