"""The console's Tokens and Roles pages through the ASGI app: the same services and permission rules
as ``/kbs/v1/tokens`` and ``/kbs/v1/roles`` (nobody grants what they do not hold), the token shown
once and never stored, actions hidden from and refused to those without the permission (audited),
CSRF on every form, bad input a 4xx page."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from tests.api.test_console import LOCAL, _audit, sign_in

from keybroker.api.app import create_app
from keybroker.api.services import Services
from keybroker.store.models import BearerToken

TOKEN_ADMIN = ["tokens:search", "tokens:create", "tokens:delete", "keys:search", "audit:read"]
ROLE_ADMIN = ["roles:search", "roles:create", "roles:update", "roles:delete", "keys:search", "audit:read"]


@pytest.fixture
def console(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services), base_url="https://127.0.0.1:9443", client=LOCAL) as c:
        yield c


def _outcomes(services: Services, action: str) -> list[tuple[str, str]]:
    return [(x["actor"], x["outcome"]) for x in _audit(services) if x["action"] == action]


def _minted(text: str) -> str:
    m = re.search(r'<textarea id="minted"[^>]*>([^<]+)</textarea>', text)
    assert m, text[-1500:]
    return m.group(1).strip()


def _records(services: Services) -> int:
    with services.db.session() as s:
        return len(list(s.scalars(select(BearerToken.jti))))


def test_a_token_is_minted_shown_once_and_revoked(console: TestClient, services: Services) -> None:
    services.roles.create("token-admin", TOKEN_ADMIN, actor="test")
    csrf = sign_in(console, "tom", ["token-admin"])
    page = console.get("/ui/tokens")
    assert page.status_code == 200 and 'action="/ui/tokens"' in page.text
    offered = set(re.findall(r'name="permissions" value="([^"]+)"', page.text))
    assert offered == set(TOKEN_ADMIN)  # only what he holds; never *:*
    offered_roles = set(re.findall(r'name="roles" value="([^"]+)"', page.text))
    assert offered_roles == {"token-admin"}  # no built-in role is within his permissions

    r = console.post(
        "/ui/tokens",
        data={"csrf": csrf, "subject": "ci-reader", "permissions": ["keys:search"], "ttl": "2h"},
    )
    assert r.status_code == 200 and "shown only this once" in r.text
    token = _minted(r.text)
    jti = re.search(r'<code id="minted-jti">([^<]+)</code>', r.text)
    assert jti is not None
    assert console.get("/kbs/v1/keys", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    with services.db.session() as s:  # only its record is kept
        row = s.get(BearerToken, jti.group(1))
        assert row is not None and row.issued_by == "dev:tom" and row.permissions == ["keys:search"]
        assert token not in repr([list(r) for r in s.execute(select(BearerToken.__table__)).all()])
    assert "ci-reader" in console.get("/ui/tokens").text
    assert token not in console.get("/ui/tokens").text
    assert ("dev:tom", "success") in _outcomes(services, "token.create")

    # revoked from the console: refused on the API from now on
    r = console.post(f"/ui/tokens/{jti.group(1)}/revoke", data={"csrf": csrf, "reason": "rotated"})
    assert r.status_code == 200 and f"token {jti.group(1)} revoked" in r.text
    assert console.get("/kbs/v1/keys", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert "rotated" in console.get("/ui/tokens", params={"all": "1"}).text
    assert ("dev:tom", "success") in _outcomes(services, "token.revoke")


def test_nobody_mints_what_they_do_not_hold(console: TestClient, services: Services) -> None:
    """The attack: someone allowed to mint tokens mints one with more than they hold, to escalate.
    Refused as ``POST /kbs/v1/tokens`` refuses it (the same check), audited, nothing issued."""
    services.roles.create("token-admin", TOKEN_ADMIN, actor="test")
    csrf = sign_in(console, "tom", ["token-admin"])
    api = {"Authorization": "Bearer " + services.tokens.mint("peer", TOKEN_ADMIN)}
    before = _records(services)
    for data in (
        {"permissions": ["keys:create"]},
        {"permissions": ["*:*"]},
        {"roles": ["key-admin"]},
        {"permissions": ["keys:fly"]},
    ):
        r = console.post("/ui/tokens", data={"csrf": csrf, "subject": "x", **data})
        assert r.status_code == 403 and "a token can carry only permissions its issuer holds" in r.text, (
            r.text
        )
        same = console.post("/kbs/v1/tokens", json={"subject": "x", **data}, headers=api)
        assert same.status_code == 403 and same.json()["detail"] in html.unescape(r.text)
    assert _records(services) == before  # nothing issued, by either
    assert _outcomes(services, "token.create").count(("dev:tom", "denied")) == 4


def test_token_form_refusals_are_4xx_pages(console: TestClient, services: Services) -> None:
    services.roles.create("token-admin", TOKEN_ADMIN, actor="test")
    csrf = sign_in(console, "tom", ["token-admin"])
    before = _records(services)
    for data, text in [
        ({"subject": "not a subject!"}, "subject: String should match pattern"),
        ({"subject": "x", "ttl": "forever"}, "ttl: String should match pattern"),
        ({"subject": "x", "ttl": "999d"}, "must be between 1s and 366d"),
        ({"subject": "x", "client_permissions": "ok, not/ok"}, "client_permissions.1"),
        ({"subject": "x", "roles": ["no-such-role"]}, "no role 'no-such-role'"),
        ({"subject": "x", "roles": ["Bad Role"]}, "roles.0: String should match pattern"),
        ({"subject": ""}, "subject"),
    ]:
        r = console.post("/ui/tokens", data={"csrf": csrf, **data})
        assert r.status_code == 400 and text in html.unescape(r.text), (data, r.status_code, r.text[-1200:])
        assert r.headers["content-type"].startswith("text/html")
    r = console.post("/ui/tokens", data={"csrf": csrf, "subject": "x", "admin": "1"})
    assert r.status_code == 400 and "unknown form field" in r.text
    r = console.post("/ui/tokens", data={"subject": "x", "permissions": ["keys:search"]})
    assert r.status_code == 403 and "CSRF" in r.text
    r = console.post("/ui/tokens/not-a-uuid/revoke", data={"csrf": csrf})
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert console.get("/ui/tokens", params={"all": "1", "x": "1"}).status_code == 400
    assert _records(services) == before


def test_without_the_permission_the_action_is_hidden_and_refused(
    console: TestClient, services: Services
) -> None:
    victim = services.tokens.issue("victim", ["keys:search"])
    csrf = sign_in(console, "audrey", ["auditor"])  # tokens:search and roles:search, nothing more
    nav = console.get("/ui/system").text
    assert 'href="/ui/tokens"' in nav and 'href="/ui/roles"' in nav
    tokens = console.get("/ui/tokens").text
    assert "victim" in tokens and "Revoke" not in tokens and "Mint" not in tokens
    roles = console.get("/ui/roles").text
    assert "key-admin" in roles and "New role" not in roles
    r = console.post(f"/ui/tokens/{victim.jti}/revoke", data={"csrf": csrf})
    assert r.status_code == 403 and "tokens:delete" in r.text
    r = console.post("/ui/tokens", data={"csrf": csrf, "subject": "x", "permissions": ["keys:search"]})
    assert r.status_code == 403 and "tokens:create" in r.text
    r = console.post("/ui/roles", data={"csrf": csrf, "name": "mine", "permissions": ["audit:read"]})
    assert r.status_code == 403 and "roles:create" in r.text
    assert services.tokens.get(victim.jti).revoked_at is None
    assert ("dev:audrey", "denied") in _outcomes(services, "token.revoke")
    assert ("dev:audrey", "denied") in _outcomes(services, "role.create")
    # a person whose roles grant none of it sees neither page
    with TestClient(create_app(services), base_url="https://127.0.0.1:9443", client=LOCAL) as other:
        sign_in(other, "kim", ["key-admin"])
        nav = other.get("/ui/system").text
        assert 'href="/ui/tokens"' not in nav and 'href="/ui/roles"' not in nav
        assert other.get("/ui/tokens").status_code == 403
        assert other.get("/ui/roles").status_code == 403


def test_custom_roles_through_the_console(console: TestClient, services: Services) -> None:
    services.roles.create("role-admin", ROLE_ADMIN, actor="test")
    services.roles.create("powerful", ["keys:delete", "keys:search"], actor="test")
    csrf = sign_in(console, "rose", ["role-admin"])
    page = console.get("/ui/roles")
    assert set(re.findall(r'name="permissions" value="([^"]+)"', page.text)) == set(ROLE_ADMIN)

    r = console.post(
        "/ui/roles",
        data={"csrf": csrf, "name": "reader", "permissions": ["keys:search"], "description": "reads keys"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/ui/roles/reader"
    assert services.roles.get("reader").permissions == {"keys:search"}
    # changed: every token and session naming it gets the new set
    r = console.post(
        "/ui/roles/reader",
        data={"csrf": csrf, "permissions": ["keys:search", "audit:read"], "description": "reads"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and services.roles.get("reader").permissions == {"keys:search", "audit:read"}

    # the attack: a role admin writes a role with a permission he lacks, or takes over one that has it
    for data, status, text in [
        ({"name": "escalate", "permissions": ["keys:delete"]}, 403, "you lack keys:delete"),
        ({"name": "star", "permissions": ["*:*"]}, 403, "you lack *:*"),
        ({"name": "Bad Name", "permissions": ["keys:search"]}, 400, "role name"),
        ({"name": "key-admin", "permissions": ["keys:search"]}, 400, "built-in role"),
        ({"name": "reader", "permissions": ["keys:search"]}, 409, "exists"),
        ({"name": "empty"}, 400, "at least one permission"),
        ({"name": "odd", "permissions": ["keys:fly"]}, 400, "unknown permission"),
    ]:
        r = console.post("/ui/roles", data={"csrf": csrf, **data})
        assert r.status_code == status and text in html.unescape(r.text), (data, r.status_code, r.text[-900:])
    for name in ("escalate", "star", "empty", "odd"):
        assert name not in [x.name for x in services.roles.list()]
    r = console.post("/ui/roles/reader", data={"csrf": csrf, "permissions": ["keys:search", "keys:delete"]})
    assert r.status_code == 403 and services.roles.get("reader").permissions == {"keys:search", "audit:read"}
    powerful = console.get("/ui/roles/powerful").text
    assert "You cannot change this role" in powerful and "Delete the role" not in powerful
    r = console.post("/ui/roles/powerful", data={"csrf": csrf, "permissions": ["keys:search"]})
    assert r.status_code == 403 and services.roles.get("powerful").permissions == {
        "keys:delete",
        "keys:search",
    }
    r = console.post("/ui/roles/powerful/delete", data={"csrf": csrf, "confirm": "powerful"})
    assert r.status_code == 403 and "powerful" in [x.name for x in services.roles.list()]
    builtin = console.get("/ui/roles/key-admin").text
    assert "Save" not in builtin and "Delete the role" not in builtin
    r = console.post("/ui/roles/key-admin", data={"csrf": csrf, "permissions": ["keys:search"]})
    assert r.status_code == 409 and "built-in" in r.text

    # deleted after its name is typed
    r = console.post("/ui/roles/reader/delete", data={"csrf": csrf, "confirm": "yes"})
    assert r.status_code == 400 and "reader" in [x.name for x in services.roles.list()]
    r = console.post("/ui/roles/reader/delete", data={"csrf": "", "confirm": "reader"})
    assert r.status_code == 403 and "CSRF" in r.text
    r = console.post(
        "/ui/roles/reader/delete", data={"csrf": csrf, "confirm": "reader"}, follow_redirects=False
    )
    assert r.status_code == 303 and "reader" not in [x.name for x in services.roles.list()]
    assert console.get("/ui/roles/reader").status_code == 404
    assert console.get("/ui/roles/NOPE").status_code == 400

    acts = [(x["action"], x["object_id"], x["outcome"]) for x in _audit(services) if x["actor"] == "dev:rose"]
    for expected in [
        ("role.create", "reader", "success"),
        ("role.update", "reader", "success"),
        ("role.delete", "reader", "success"),
        ("role.create", "escalate", "denied"),
        ("role.update", "powerful", "denied"),
        ("role.delete", "powerful", "denied"),
    ]:
        assert expected in acts, expected


def test_a_parameter_of_the_wrong_type_is_a_4xx_page(console: TestClient) -> None:
    """Before, FastAPI's own refusal of a query parameter (``?before=abc``) left the console as an
    ``application/problem+json`` document; every console refusal is an HTML page."""
    sign_in(console, "audrey", ["auditor"])
    for url, field in [
        ("/ui/tokens?all=abc", "all"),
        ("/ui/audit?before=abc", "before"),
        ("/ui/roles/auditor?saved=x", "saved"),
    ]:
        r = console.get(url)
        assert r.status_code == 400 and r.headers["content-type"].startswith("text/html"), (url, r.text[:300])
        assert f"{field}: " in r.text and "Content-Security-Policy" in r.headers
