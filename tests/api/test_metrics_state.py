"""/metrics tells a load balancer or an operator what ``/readyz`` sums up (issue 15): the seal
state, the unseal progress of this replica's attempt, the database's reachability and the key
store's health (the database's under a real outage: tests/integration/test_faults.py)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from keybroker.api import metrics
from keybroker.api.app import create_app
from keybroker.api.services import Services
from keybroker.config import Settings


def _gauges(client: TestClient) -> dict[str, float]:
    values = {}
    for line in client.get("/metrics").text.splitlines():
        m = re.fullmatch(
            r"(keybroker_(?:sealed|initialized|unseal_progress|unseal_threshold|database_up|database_outages_total|keystore_up)(?:\{[^}]*\})?) (\S+)",
            line,
        )
        if m:
            values[m.group(1)] = float(m.group(2))
    return values


@pytest.fixture
def fresh(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setattr(metrics, "KEYSTORE_CHECK_SECONDS", 0.0)  # no cached key store health here
    svc = Services.build(Settings(data_dir=tmp_path / "data", database=database_url))
    with TestClient(create_app(svc), base_url="https://testserver") as client:
        yield client
    svc.db.dispose()


def test_seal_state_and_unseal_progress(fresh: TestClient) -> None:
    g = _gauges(fresh)
    assert g["keybroker_initialized"] == 0 and g["keybroker_sealed"] == 1
    assert g["keybroker_database_up"] == 1 and g["keybroker_database_outages_total"] == 0
    assert g['keybroker_keystore_up{backend="builtin"}'] == 0  # the built-in store: only while unsealed
    out = fresh.post("/sys/v1/init", json={"shares": 3, "threshold": 2}).json()
    g = _gauges(fresh)
    assert g["keybroker_initialized"] == 1 and g["keybroker_unseal_threshold"] == 2
    assert g["keybroker_unseal_progress"] == 0
    fresh.post("/sys/v1/unseal", json={"key": out["unseal_shares"][0]})
    assert _gauges(fresh)["keybroker_unseal_progress"] == 1
    fresh.post("/sys/v1/unseal", json={"key": out["unseal_shares"][1]})
    g = _gauges(fresh)
    assert g["keybroker_sealed"] == 0 and g["keybroker_unseal_progress"] == 0
    assert g['keybroker_keystore_up{backend="builtin"}'] == 1
    fresh.post("/sys/v1/seal", headers={"Authorization": f"Bearer {out['admin_token']}"})
    time.sleep(0.01)
    g = _gauges(fresh)
    assert g["keybroker_sealed"] == 1 and g['keybroker_keystore_up{backend="builtin"}'] == 0
