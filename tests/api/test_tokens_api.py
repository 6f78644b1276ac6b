"""Bearer tokens on record: listing and revocation over /kbs/v1/tokens, rotation of the signing key,
tokens across seal and unseal, and tokens that were never recorded."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.helpers.api import token_headers
from tests.helpers.server import keybroker

from keybroker.api.app import create_app
from keybroker.api.services import TOKEN_KEY_FILE, Services
from keybroker.auth.authn import Authenticator
from keybroker.auth.registry import CACHE_SECONDS, TokenRegistry
from keybroker.auth.tokens import TokenService, load_signing_key
from keybroker.config import Settings
from keybroker.errors import InvalidInput


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _audit(client: TestClient, headers: dict[str, str], action: str) -> list[dict[str, Any]]:
    records = client.get("/kbs/v1/audit", params={"limit": 1000}, headers=headers).json()
    return [r for r in records if r["action"] == action]


def test_a_revoked_token_is_refused_at_once(
    client: TestClient, services: Services, admin_headers: dict[str, str]
) -> None:
    victim = services.tokens.issue("ci-robot", ["keys:search"], client_permissions=["nginx"])
    assert client.get("/kbs/v1/keys", headers=_bearer(victim.token)).status_code == 200

    listed = client.get("/kbs/v1/tokens", headers=admin_headers).json()
    mine = next(t for t in listed if t["jti"] == victim.jti)
    assert (mine["subject"], mine["permissions"], mine["client_permissions"], mine["status"]) == (
        "ci-robot",
        ["keys:search"],
        ["nginx"],
        "active",
    )
    assert victim.token not in str(listed)  # ids and grants only, never the tokens

    r = client.delete(f"/kbs/v1/tokens/{victim.jti}", params={"reason": "laptop lost"}, headers=admin_headers)
    assert r.status_code == 204, r.text
    r = client.get("/kbs/v1/keys", headers=_bearer(victim.token))
    assert r.status_code == 401 and r.json()["detail"] == "the bearer token has been revoked"
    # the transfer path (workload tokens) refuses it too
    r = client.post(f"/kbs/v1/keys/{uuid.uuid4()}/transfer", headers=_bearer(victim.token))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]

    assert victim.jti not in [t["jti"] for t in client.get("/kbs/v1/tokens", headers=admin_headers).json()]
    every = client.get("/kbs/v1/tokens", params={"all": "true"}, headers=admin_headers).json()
    gone = next(t for t in every if t["jti"] == victim.jti)
    assert (gone["status"], gone["revoke_reason"]) == ("revoked", "laptop lost")
    assert gone["revoked_by"].startswith("token:test-admin#")

    # again: a no-op that keeps the first revocation; unknown ids are 404
    assert client.delete(f"/kbs/v1/tokens/{victim.jti}", headers=admin_headers).status_code == 204
    unknown = str(uuid.uuid4())
    assert client.delete(f"/kbs/v1/tokens/{unknown}", headers=admin_headers).status_code == 404
    assert client.delete("/kbs/v1/tokens/not-a-uuid", headers=admin_headers).status_code == 404
    revocations = _audit(client, admin_headers, "token.revoke")
    assert [(r["object_id"], r["outcome"]) for r in revocations] == [
        (victim.jti, "success"),
        (victim.jti, "success"),
        (unknown, "failed"),
        ("not-a-uuid", "failed"),
    ]
    assert [r["details"]["already_revoked"] for r in revocations[:2]] == [False, True]
    assert any(r["object_id"] == victim.jti for r in _audit(client, admin_headers, "token.create"))


def test_a_token_can_revoke_itself(client: TestClient, services: Services) -> None:
    token = services.tokens.issue("self", ["tokens:delete", "tokens:search"])
    r = client.delete(f"/kbs/v1/tokens/{token.jti}", headers=_bearer(token.token))
    assert r.status_code == 204
    assert client.get("/kbs/v1/tokens", headers=_bearer(token.token)).status_code == 401


def test_a_token_signed_with_the_key_but_never_recorded_is_refused(
    client: TestClient, services: Services, tmp_path: Path
) -> None:
    # what a copy of the signing key (or the code before records) mints: a valid signature, no record
    unrecorded = TokenService(load_signing_key(tmp_path / "data" / TOKEN_KEY_FILE)).mint("ghost", ["*:*"])
    r = client.get("/kbs/v1/keys", headers=_bearer(unrecorded))
    assert r.status_code == 401 and "not on record" in r.json()["detail"]


def test_a_signing_key_added_in_the_database_mints_no_admin_token(
    client: TestClient, services: Services
) -> None:
    """Whoever can write the database (not the root key, not a data dir) records a signing key of
    theirs as current, and a token of theirs for it, then calls the admin API with the token it
    signs. Before, a key on record was enough: 200 with every permission; now the token's key must
    also be the one in the replica's data dir (created there, or written from its sealed copy)."""
    from datetime import UTC, datetime

    from joserfc.jwk import ECKey

    from keybroker.auth import tokens
    from keybroker.store.models import BearerToken, BearerTokenKey

    attacker = ECKey.generate_key("P-384", private=True)
    forged = tokens.issue(attacker, "intruder", ["*:*"])
    now = datetime.now(UTC)
    with services.db.session() as s:
        s.add(BearerTokenKey(kid=forged.key_id, public_jwk=attacker.as_dict(private=False), created_at=now))
        s.flush()
        s.add(
            BearerToken(
                jti=forged.jti,
                kid=forged.key_id,
                subject="intruder",
                permissions=["*:*"],
                client_permissions=[],
                roles=[],
                issued_at=now,
                expires_at=forged.expires_at,
                issued_by="operator",
            )
        )
    r = client.get("/kbs/v1/keys", headers=_bearer(forged.token))
    assert r.status_code == 401, r.text
    assert "not the one this replica holds" in r.json()["detail"]
    r = client.post(
        "/kbs/v1/tokens", json={"subject": "x", "permissions": ["*:*"]}, headers=_bearer(forged.token)
    )
    assert r.status_code == 401
    # the broker's own tokens still work beside it
    assert (
        client.get("/kbs/v1/keys", headers=_bearer(services.tokens.mint("admin", ["*:*"]))).status_code == 200
    )


class _Clock:
    """The token registry's clock, moved by the test rather than by waiting."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry_clock(services: Services) -> _Clock:
    """``services`` with its token registry on a clock the test moves (its records cache lasts
    CACHE_SECONDS of that clock)."""
    clock = _Clock()
    services.tokens = TokenRegistry(services.db, services.settings.data_dir / TOKEN_KEY_FILE, clock=clock)
    services.authn = Authenticator(services.tokens, services.roles, services.oidc)
    return clock


def test_rotating_the_key_refuses_every_older_token(
    registry_clock: _Clock, client: TestClient, services: Services, tmp_path: Path, database_url: str
) -> None:
    old_admin = services.tokens.mint("old-admin", ["*:*"])
    old_workload = services.tokens.mint("old-workload", ["keys:search"])
    for t in (old_admin, old_workload):
        assert client.get("/kbs/v1/keys", headers=_bearer(t)).status_code == 200
    data = str(tmp_path / "data")

    r = keybroker("token", "rotate-key", "--yes", "--data-dir", data, "--database", database_url)
    assert r.returncode == 0, r.stderr
    registry_clock.now += CACHE_SECONDS + 0.5  # another process changed the records: read again after
    for t in (old_admin, old_workload):
        r2 = client.get("/kbs/v1/keys", headers=_bearer(t))
        assert r2.status_code == 401 and "retired" in r2.json()["detail"], r2.text

    # new tokens work: from the CLI, and from the running service (it reads the new key file)
    r = keybroker("token", "create", "--data-dir", data, "--database", database_url, "--permissions", "*:*")
    assert r.returncode == 0, r.stderr
    fresh = r.stdout.strip()
    assert client.get("/kbs/v1/keys", headers=_bearer(fresh)).status_code == 200
    assert client.get("/kbs/v1/keys", headers=token_headers(services, "keys:search")).status_code == 200

    every = client.get("/kbs/v1/tokens", params={"all": "true"}, headers=_bearer(fresh)).json()
    statuses = {t["subject"]: t["status"] for t in every}
    assert statuses["old-admin"] == statuses["old-workload"] == "key retired"
    assert statuses["admin"] == "active"
    rotations = _audit(client, _bearer(fresh), "token.key.rotate")
    assert len(rotations) == 1 and rotations[0]["actor"].startswith("cli:")


@pytest.fixture
def shamir_services(tmp_path: Path, database_url: str) -> Iterator[Services]:
    svc = Services.build(Settings(data_dir=tmp_path / "data", database=database_url))
    yield svc
    svc.db.dispose()


def test_tokens_outlive_seal_and_unseal_as_in_vault(shamir_services: Services) -> None:
    client = TestClient(create_app(shamir_services), base_url="https://testserver")
    out = client.post("/sys/v1/init", json={"shares": 3, "threshold": 2}).json()
    admin = _bearer(out["admin_token"])
    for share in out["unseal_shares"][:2]:
        client.post("/sys/v1/unseal", json={"key": share})
    assert client.get("/kbs/v1/keys", headers=admin).status_code == 200

    assert client.post("/sys/v1/seal", headers=admin).json()["sealed"] is True
    # while sealed, tokens can still be listed and revoked (an incident may need both)
    listed = client.get("/kbs/v1/tokens", headers=admin).json()
    assert [(t["subject"], t["issued_by"]) for t in listed] == [("initial-admin", "operator")]
    for share in out["unseal_shares"][1:]:
        client.post("/sys/v1/unseal", json={"key": share})
    assert client.get("/kbs/v1/keys", headers=admin).status_code == 200


def test_bad_token_requests(client: TestClient, services: Services, admin_headers: dict[str, str]) -> None:
    with pytest.raises(InvalidInput, match="subject"):
        services.tokens.mint("has space", ["*:*"])
    token = services.tokens.issue("x", ["keys:search"])
    r = client.delete(f"/kbs/v1/tokens/{token.jti}", params={"reason": "r" * 300}, headers=admin_headers)
    assert r.status_code == 400 and r.json()["field"] == "reason"
    assert client.get("/kbs/v1/keys", headers=_bearer(token.token)).status_code == 200
