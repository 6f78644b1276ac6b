"""Every admin route needs a token (401) with the right permission (403)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from tests.helpers.api import SGX_POLICY, token_headers

from keybroker.api.services import Services

KID = "0b7d1d0e-7f6b-4b1e-9d7c-2f5d7f1d2a11"
ROUTES = [
    ("POST", "/kbs/v1/keys", {"key_information": {"algorithm": "AES", "key_length": 256}}, "keys:create"),
    ("GET", "/kbs/v1/keys", None, "keys:search"),
    ("GET", f"/kbs/v1/keys/{KID}", None, "keys:retrieve"),
    ("DELETE", f"/kbs/v1/keys/{KID}", None, "keys:delete"),
    ("POST", f"/kbs/v1/keys/{KID}/certificate", {"common_name": "x"}, "keys:certify"),
    ("POST", "/kbs/v1/key-transfer-policies", SGX_POLICY, "key_transfer_policies:create"),
    ("GET", "/kbs/v1/key-transfer-policies", None, "key_transfer_policies:search"),
    ("GET", f"/kbs/v1/key-transfer-policies/{KID}", None, "key_transfer_policies:retrieve"),
    ("PUT", f"/kbs/v1/key-transfer-policies/{KID}", SGX_POLICY, "key_transfer_policies:update"),
    ("DELETE", f"/kbs/v1/key-transfer-policies/{KID}", None, "key_transfer_policies:delete"),
    ("GET", "/kbs/v1/audit", None, "audit:read"),
    ("GET", "/kbs/v1/tokens", None, "tokens:search"),
    ("DELETE", f"/kbs/v1/tokens/{KID}", None, "tokens:delete"),
    ("GET", "/kbs/v1/audit/checkpoint", None, "audit:read"),
]


@pytest.mark.parametrize(("method", "path", "body", "permission"), ROUTES)
def test_permissions(
    client: TestClient, services: Services, method: str, path: str, body: object, permission: str
) -> None:
    r = client.request(method, path, json=body)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = client.request(method, path, json=body, headers={"Authorization": "Bearer garbage"})
    assert r.status_code == 401
    other = "audit:read" if permission != "audit:read" else "keys:search"
    r = client.request(method, path, json=body, headers=token_headers(services, other))
    assert r.status_code == 403, r.text
    assert permission in r.json()["detail"]
    r = client.request(method, path, json=body, headers=token_headers(services, permission))
    assert r.status_code not in (401, 403), r.text


def test_import_needs_keys_register(client: TestClient, services: Services) -> None:
    body = {"key_information": {"algorithm": "AES", "key_length": 256, "key_string": "A" * 43 + "="}}
    r = client.post("/kbs/v1/keys", json=body, headers=token_headers(services, "keys:create"))
    assert r.status_code == 403 and "keys:register" in r.json()["detail"]
    r = client.post("/kbs/v1/keys", json=body, headers=token_headers(services, "keys:register"))
    assert r.status_code == 201, r.text


def test_failures_are_audited_with_actor(
    client: TestClient, services: Services, admin_headers: dict[str, str]
) -> None:
    client.get("/kbs/v1/keys")
    client.post(
        "/kbs/v1/keys", json={"key_information": {"algorithm": "RSA", "key_length": 1}}, headers=admin_headers
    )
    client.get("/kbs/v1/keys", headers=token_headers(services, "audit:read"))
    records = client.get("/kbs/v1/audit", headers=admin_headers).json()
    outcomes = [(r["actor"].split("#")[0], r["outcome"], r["action"]) for r in records]
    outcomes = [o for o in outcomes if o[2] != "token.create"]  # each mint is audited too
    assert outcomes == [
        ("anonymous", "denied", "key.search"),
        ("token:test-admin", "failed", "key.create"),
        ("token:tester", "denied", "key.search"),
    ]
    bad = next(r for r in records if r["outcome"] == "failed")
    assert "key_length" in bad["reason"]
