"""Roles over /kbs/v1/roles and tokens minted over /kbs/v1/tokens: built-in roles are fixed, custom
roles apply to the tokens naming them at once, and nobody grants a permission they do not hold."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from tests.helpers.api import token_headers

from keybroker.api.services import Services
from keybroker.auth.roles import BUILTIN


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _audit(client: TestClient, headers: dict[str, str], action: str) -> list[dict[str, Any]]:
    records = client.get("/kbs/v1/audit", params={"limit": 1000}, headers=headers).json()
    return [r for r in records if r["action"] == action]


def test_builtin_roles_are_listed_and_fixed(client: TestClient, admin_headers: dict[str, str]) -> None:
    roles = client.get("/kbs/v1/roles", headers=admin_headers).json()
    builtin = {r["name"]: r for r in roles if r["builtin"]}
    assert set(builtin) == {"key-admin", "policy-admin", "auditor", "operator"}
    assert builtin["auditor"]["permissions"] == sorted(BUILTIN["auditor"][1])
    assert "audit:read" in builtin["auditor"]["permissions"]
    assert not any(p.endswith((":create", ":delete", ":update")) for p in builtin["auditor"]["permissions"])

    body = {"permissions": ["*:*"]}
    r = client.put("/kbs/v1/roles/key-admin", json=body, headers=admin_headers)
    assert r.status_code == 409 and "built-in" in r.json()["detail"]
    assert client.delete("/kbs/v1/roles/operator", headers=admin_headers).status_code == 409
    r = client.post("/kbs/v1/roles", json={"name": "auditor", **body}, headers=admin_headers)
    assert r.status_code == 400 and r.json()["field"] == "name"
    assert client.get("/kbs/v1/roles/key-admin", headers=admin_headers).json()["builtin"] is True
    assert client.get("/kbs/v1/roles/nope", headers=admin_headers).status_code == 404
    assert client.get("/kbs/v1/roles/Bad_Name", headers=admin_headers).status_code == 400
    r = client.post("/kbs/v1/roles", json={"name": "x", "permissions": ["keys:fly"]}, headers=admin_headers)
    assert r.status_code == 400
    r = client.post("/kbs/v1/roles", json={"name": "x", "permissions": []}, headers=admin_headers)
    assert r.status_code == 400
    assert [(a["object_id"], a["outcome"]) for a in _audit(client, admin_headers, "role.update")] == [
        ("key-admin", "failed")
    ]


def test_a_custom_role_applies_to_its_tokens_at_once(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    r = client.post(
        "/kbs/v1/roles",
        json={"name": "reader", "permissions": ["keys:search"], "description": "lists keys"},
        headers=admin_headers,
    )
    assert r.status_code == 201, r.text
    assert r.json() == {
        "name": "reader",
        "permissions": ["keys:search"],
        "description": "lists keys",
        "builtin": False,
    }
    r = client.post(
        "/kbs/v1/tokens",
        json={"subject": "ci-robot", "roles": ["reader"], "ttl": "10m"},
        headers=admin_headers,
    )
    assert r.status_code == 201, r.text
    minted = r.json()
    assert (minted["subject"], minted["roles"], minted["permissions"], minted["status"]) == (
        "ci-robot",
        ["reader"],
        [],
        "active",
    )
    robot = _bearer(minted["token"])
    assert client.get("/kbs/v1/keys", headers=robot).status_code == 200
    assert client.get("/kbs/v1/audit", headers=robot).status_code == 403

    r = client.put("/kbs/v1/roles/reader", json={"permissions": ["audit:read"]}, headers=admin_headers)
    assert r.status_code == 200, r.text
    assert client.get("/kbs/v1/keys", headers=robot).status_code == 403
    assert client.get("/kbs/v1/audit", headers=robot).status_code == 200

    assert client.delete("/kbs/v1/roles/reader", headers=admin_headers).status_code == 204
    assert client.get("/kbs/v1/audit", headers=robot).status_code == 403  # a deleted role grants nothing

    listed = client.get("/kbs/v1/tokens", headers=admin_headers).json()
    assert next(t for t in listed if t["jti"] == minted["jti"])["roles"] == ["reader"]
    assert minted["token"] not in str(listed)
    created = [a for a in _audit(client, admin_headers, "token.create") if a["object_id"] == minted["jti"]]
    assert created[0]["actor"].startswith("token:test-admin#")
    assert created[0]["details"]["roles"] == ["reader"]
    changes = [
        (a["action"], a["object_id"], a["outcome"])
        for a in client.get("/kbs/v1/audit", params={"limit": 1000}, headers=admin_headers).json()
        if a["action"] in ("role.create", "role.update", "role.delete")
    ]
    assert changes == [
        ("role.create", "reader", "success"),
        ("role.update", "reader", "success"),
        ("role.delete", "reader", "success"),
    ]


def test_minting_a_token_cannot_grant_more_than_the_minter_holds(
    client: TestClient, services: Services, admin_headers: dict[str, str]
) -> None:
    """The attack: a token with tokens:create (say, a CI deployer's) mints itself *:*, or a role
    it does not hold. Refused, and audited as denied."""
    minter = token_headers(services, "tokens:create", "keys:search")
    for body in (
        {"subject": "evil", "permissions": ["*:*"]},
        {"subject": "evil", "permissions": ["keys:delete"]},
        {"subject": "evil", "roles": ["key-admin"]},
        {"subject": "evil", "permissions": ["keys:search", "tokens:create", "roles:create"]},
    ):
        r = client.post("/kbs/v1/tokens", json=body, headers=minter)
        assert r.status_code == 403, (body, r.text)
        assert "you lack" in r.json()["detail"]
    r = client.post("/kbs/v1/tokens", json={"subject": "ok", "permissions": ["keys:search"]}, headers=minter)
    assert r.status_code == 201
    assert client.get("/kbs/v1/keys", headers=_bearer(r.json()["token"])).status_code == 200

    r = client.post("/kbs/v1/tokens", json={"subject": "x", "roles": ["no-such-role"]}, headers=admin_headers)
    assert r.status_code == 400 and r.json()["detail"] == "no role 'no-such-role'"
    r = client.post("/kbs/v1/tokens", json={"subject": "x", "ttl": "400d"}, headers=admin_headers)
    assert r.status_code == 400 and r.json()["field"] == "ttl"
    r = client.post("/kbs/v1/tokens", json={"subject": "x y"}, headers=admin_headers)
    assert r.status_code == 400 and r.json()["field"] == "subject"
    no_perm = token_headers(services, "keys:search")
    r = client.post("/kbs/v1/tokens", json={"subject": "x"}, headers=no_perm)
    assert r.status_code == 403 and r.json()["detail"] == "the token lacks the permission tokens:create"
    outcomes = [
        a["outcome"] for a in _audit(client, admin_headers, "token.create") if a["actor"] != "operator"
    ]
    assert outcomes.count("denied") == 5 and outcomes.count("failed") == 3


def test_writing_a_role_cannot_grant_more_than_the_writer_holds(
    client: TestClient, services: Services, admin_headers: dict[str, str]
) -> None:
    """The attack: roles:create/update is a way to *:* if a role may hold what its author lacks
    (the OpenID group mapped to the role gets it). Refused."""
    r = client.post("/kbs/v1/roles", json={"name": "ops", "permissions": ["sys:seal"]}, headers=admin_headers)
    assert r.status_code == 201
    writer = token_headers(services, "roles:create", "roles:update", "roles:delete", "keys:search")
    r = client.post("/kbs/v1/roles", json={"name": "god", "permissions": ["*:*"]}, headers=writer)
    assert r.status_code == 403 and "you lack *:*" in r.json()["detail"]
    r = client.post("/kbs/v1/roles", json={"name": "lister", "permissions": ["keys:search"]}, headers=writer)
    assert r.status_code == 201
    r = client.put(
        "/kbs/v1/roles/lister", json={"permissions": ["keys:search", "keys:delete"]}, headers=writer
    )
    assert r.status_code == 403
    # nor narrow or delete a role whose permissions it could not have given
    r = client.put("/kbs/v1/roles/ops", json={"permissions": ["keys:search"]}, headers=writer)
    assert r.status_code == 403 and "sys:seal" in r.json()["detail"]
    assert client.delete("/kbs/v1/roles/ops", headers=writer).status_code == 403
    assert client.get("/kbs/v1/roles/ops", headers=admin_headers).json()["permissions"] == ["sys:seal"]
    assert client.get("/kbs/v1/roles/god", headers=admin_headers).status_code == 404
