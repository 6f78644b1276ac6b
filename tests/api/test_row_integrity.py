"""Whoever can write the database cannot loosen what a key is released on: a transfer policy, a key's
binding to its policy, a ``/kbs/v0`` resource's policy changed in the database is never released on
(``keybroker.seal.integrity``). Rows without a tag (written before tags existed) are refused until an
administrator adopts them through ``/sys/v1/integrity``.

Each attack writes the database directly, as its administrator or a stolen credential would, then
asks for the key through HTTP with evidence the key's own policy denies; on the code before integrity
tags each released the key.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from sqlalchemy import update
from tests.api.test_kbs_v0 import REGO_ALLOW_SIM_TDX, _attest, _key, _map_key, _policy, _put
from tests.api.test_transfer_v1 import _WORKLOAD, SGX_SIM_POLICY, Setup, _nonce, _setup, _sgx, _transfer
from tests.helpers.api import token_headers, unwrap_v1

from keybroker.api.services import Services
from keybroker.store.models import KbsResource, Key, TransferPolicy


@pytest.fixture
def sgx(client: TestClient, services: Services, admin_headers: dict[str, str]) -> Setup:
    """An AES key under the simulator's SGX policy (ISV product 7 only)."""
    return _setup(client, services, admin_headers, SGX_SIM_POLICY)


def _write(services: Services, statement: Any) -> None:
    """The attacker's write, straight to the database."""
    with services.db.session() as s:
        s.execute(statement)


def _loose(policy: dict[str, Any]) -> dict[str, Any]:
    """``policy`` with any ISV product id allowed."""
    loose = copy.deepcopy(policy)
    loose["sgx"]["attributes"]["isvprodid"] = [7, 9]
    return loose


def _transfer_audit(s: Setup) -> list[dict[str, Any]]:
    return [
        r
        for r in s.client.get("/kbs/v1/audit?limit=1000", headers=s.admin).json()
        if r["action"] == "key.transfer"
    ]


def test_a_policy_loosened_in_the_database_releases_nothing(sgx: Setup) -> None:
    # the key's policy allows ISV product 7 only: product 9 is denied
    nonce, _ = _nonce(sgx)
    r = _transfer(sgx, _sgx(sgx, nonce, isvprodid=9), nonce)
    assert r.status_code == 403, r.text
    policy_id = _transfer_audit(sgx)[-1]["details"]["policy_id"]
    early, _ = _nonce(sgx)  # a nonce issued before the change
    _write(
        sgx.services,
        update(TransferPolicy).where(TransferPolicy.id == policy_id).values(body=_loose(SGX_SIM_POLICY)),
    )
    r = sgx.client.post(f"/kbs/v1/keys/{sgx.key_id}/transfer")
    assert r.status_code == 403 and "changed outside keybroker" in r.json()["detail"], r.text
    r = _transfer(sgx, _sgx(sgx, early, isvprodid=9), early)
    assert r.status_code == 403, r.text
    assert f"transfer policy {policy_id} was changed outside keybroker" in r.json()["detail"]
    denial = _transfer_audit(sgx)[-1]
    assert denial["outcome"] == "denied" and "integrity tag" in denial["reason"]
    # the enclave the policy was written for is refused too: the row is not what was written
    r = _transfer(sgx, _sgx(sgx, early), early)
    assert r.status_code == 403
    # the administrator saves the policy again (as written, after review): released again
    r = sgx.client.put(f"/kbs/v1/key-transfer-policies/{policy_id}", json=SGX_SIM_POLICY, headers=sgx.admin)
    assert r.status_code == 200, r.text
    nonce, _ = _nonce(sgx)
    r = _transfer(sgx, _sgx(sgx, nonce), nonce)
    assert r.status_code == 200 and unwrap_v1(r.json(), _WORKLOAD) == sgx.secret


def test_a_key_bound_to_a_looser_policy_in_the_database_releases_nothing(sgx: Setup) -> None:
    loose_id = sgx.client.post(
        "/kbs/v1/key-transfer-policies", json=_loose(SGX_SIM_POLICY), headers=sgx.admin
    ).json()["id"]
    early, _ = _nonce(sgx)  # a nonce issued before the change
    _write(sgx.services, update(Key).where(Key.id == sgx.key_id).values(transfer_policy_id=loose_id))
    r = sgx.client.post(f"/kbs/v1/keys/{sgx.key_id}/transfer")
    assert r.status_code == 403, r.text
    assert f"key {sgx.key_id} was changed outside keybroker" in r.json()["detail"]
    r = _transfer(sgx, _sgx(sgx, early, isvprodid=9), early)
    assert r.status_code == 403, r.text
    assert f"key {sgx.key_id} was changed outside keybroker" in r.json()["detail"]
    assert _transfer_audit(sgx)[-1]["outcome"] == "denied"


def test_a_resource_policy_replaced_in_the_database_releases_nothing(
    client: TestClient, services: Services
) -> None:
    _put(client, services, "repo/secret/db", b"hunter2")
    assert _policy(client, services, "repo/secret/db", {"rego": REGO_ALLOW_SIM_TDX}).status_code == 204
    priv = ec.generate_private_key(ec.SECP384R1())
    # a TD with another MRTD: denied by the resource's policy
    assert _attest(client, services, "tdx", priv, mrtd=b"\x07" * 48).status_code == 200
    r = client.get("/kbs/v0/resource/repo/secret/db")
    assert r.status_code == 403 and "wrong MRTD" in r.json()["reasons"]
    for loosened in ({"rego": "package keybroker\ndefault allow := true\n"}, None):
        _write(
            services, update(KbsResource).where(KbsResource.path == "repo/secret/db").values(policy=loosened)
        )
        r = client.get("/kbs/v0/resource/repo/secret/db")
        assert r.status_code == 403, r.text
        assert "resource repo/secret/db was changed outside keybroker" in r.json()["detail"]
        assert "hunter2" not in r.text


def test_a_key_resource_whose_key_is_rebound_in_the_database_releases_nothing(
    client: TestClient, services: Services, admin_headers: dict[str, str]
) -> None:
    key_id, _ = _key(client, admin_headers, SGX_SIM_POLICY)
    loose_id = client.post(
        "/kbs/v1/key-transfer-policies", json=_loose(SGX_SIM_POLICY), headers=admin_headers
    ).json()["id"]
    assert (
        _map_key(client, services, "repo/key/one", key_id, "resources:write", "keys:transfer").status_code
        == 204
    )
    assert _policy(client, services, "repo/key/one", {"transfer_policy_id": loose_id}).status_code == 204
    priv = ec.generate_private_key(ec.SECP384R1())
    assert _attest(client, services, "sgx", priv, isvprodid=9).status_code == 200
    r = client.get("/kbs/v0/resource/repo/key/one")
    assert r.status_code == 403, r.text  # the key's own policy denies product 9
    _write(services, update(Key).where(Key.id == key_id).values(transfer_policy_id=loose_id))
    r = client.get("/kbs/v0/resource/repo/key/one")
    assert r.status_code == 403, r.text
    assert f"key {key_id} was changed outside keybroker" in r.json()["detail"]


def test_rows_written_before_tags_are_refused_until_an_administrator_adopts_them(
    sgx: Setup, client: TestClient, services: Services
) -> None:
    _put(client, services, "repo/secret/db", b"hunter2")
    for model in (TransferPolicy, Key, KbsResource):
        _write(services, update(model).values(integrity_tag=None))  # as before migration 0013
    r = client.post(f"/kbs/v1/keys/{sgx.key_id}/transfer")
    assert r.status_code == 403 and "has no integrity tag" in r.json()["detail"], r.text
    assert "keybroker operator integrity --adopt" in r.json()["detail"]

    h = token_headers(services, "sys:integrity")
    assert client.get("/sys/v1/integrity", headers=token_headers(services, "keys:search")).status_code == 403
    report = client.get("/sys/v1/integrity", headers=h).json()
    states = {(f["table"], f["id"]): f["state"] for f in report["findings"]}
    assert states[("keys", sgx.key_id)] == "untagged"
    assert states[("kbs_resources", "repo/secret/db")] == "untagged"
    assert {t for t, _ in states} == {"transfer_policies", "keys", "kbs_resources"}

    # one policy changed after it was tagged is not adopted with the rest
    other = client.post("/kbs/v1/key-transfer-policies", json=SGX_SIM_POLICY, headers=sgx.admin).json()["id"]
    _write(
        services, update(TransferPolicy).where(TransferPolicy.id == other).values(body=_loose(SGX_SIM_POLICY))
    )
    r = client.post("/sys/v1/integrity/adopt", json={}, headers=h)
    assert r.status_code == 200, r.text
    after = {(f["table"], f["id"]): f["state"] for f in r.json()["findings"]}
    assert after[("keys", sgx.key_id)] == "adopted"
    assert after[("transfer_policies", other)] == "changed"
    record = [
        x
        for x in client.get("/kbs/v1/audit?limit=1000", headers=sgx.admin).json()
        if x["action"] == "integrity.adopt"
    ][-1]
    adopted = {(f["table"], f["id"]): f["sha256"] for f in record["details"]["adopted"]}
    assert (
        adopted[("keys", sgx.key_id)]
        == report["findings"][
            [(f["table"], f["id"]) for f in report["findings"]].index(("keys", sgx.key_id))
        ]["sha256"]
    )
    assert ("transfer_policies", other) not in adopted

    nonce2, _ = _nonce(sgx)
    r = _transfer(sgx, _sgx(sgx, nonce2), nonce2)
    assert r.status_code == 200 and unwrap_v1(r.json(), _WORKLOAD) == sgx.secret
    left = client.get("/sys/v1/integrity", headers=h).json()["findings"]
    assert [(f["table"], f["id"], f["state"]) for f in left] == [("transfer_policies", other, "changed")]
    # an unknown field is a 400, not an adoption
    assert client.post("/sys/v1/integrity/adopt", json={"everything": True}, headers=h).status_code == 400
    r = client.post("/sys/v1/integrity/adopt", json={"include_changed": True}, headers=h)
    assert r.status_code == 200 and client.get("/sys/v1/integrity", headers=h).json()["findings"] == []
