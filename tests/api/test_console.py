"""The web console through the ASGI app (HTTP from the outside): the dev login, CSRF on every form,
strict form bodies, the security headers and cookie flags, permissions that hide and refuse actions
(audited as the API audits them), sessions that end."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from tests.helpers.api import TDX_POLICY

from keybroker.api.app import create_app
from keybroker.api.services import Services
from keybroker.config import ConsoleSettings, Settings
from keybroker.ui import security

LOCAL = ("127.0.0.1", 50000)
ALL_ROLES = ["key-admin", "policy-admin", "auditor", "operator"]


@pytest.fixture
def console(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services), base_url="https://127.0.0.1:9443", client=LOCAL) as c:
        yield c


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html[:2000]
    return m.group(1)


def sign_in(c: TestClient, name: str = "dev", roles: list[str] = ALL_ROLES) -> str:
    """The dev login; returns the session's CSRF token."""
    page = c.get("/ui/login")
    assert page.status_code == 200
    r = c.post(
        "/ui/auth/dev",
        data={"csrf": _csrf(page.text), "name": name, "roles": roles},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    return _csrf(c.get("/ui/system").text)


def _audit(services: Services) -> list[dict[str, Any]]:
    from keybroker.audit import log as audit

    with services.db.session() as s:
        return [audit.to_dict(r) for r in audit.iter_records(s)]


def test_every_console_route_is_strict(console: TestClient, services: Services) -> None:
    from keybroker.ui.forms import StrictFormRoute

    app = create_app(services)
    routes = [rc.route for rc in iter_route_contexts(app.routes) if (rc.path or "").startswith("/ui")]
    assert len(routes) > 20 and all(isinstance(r, StrictFormRoute) for r in routes)
    assert not any(p.startswith("/ui") for p in console.get("/openapi.json").json()["paths"])


def test_create_app_refuses_a_route_without_its_strict_class(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, the checks looked at ``app.routes``, where FastAPI keeps each included router as one
    entry: a loose route (JSON without the strict reader, a form without CSRF) passed them."""
    from keybroker.api import app as app_module
    from keybroker.ui.forms import StrictFormRoute

    loose = APIRouter()
    loose.add_api_route("/kbs/v1/loose", lambda: {}, methods=["GET"])
    monkeypatch.setattr(app_module, "ROUTERS", (*app_module.ROUTERS, loose))
    with pytest.raises(RuntimeError, match="/kbs/v1/loose"):
        create_app(services)
    form_on_api = APIRouter(route_class=StrictFormRoute)
    form_on_api.add_api_route("/kbs/v1/form", lambda: {}, methods=["GET"])
    monkeypatch.setattr(app_module, "ROUTERS", (*app_module.ROUTERS[:-1], form_on_api))
    with pytest.raises(RuntimeError, match="/kbs/v1/form"):
        create_app(services)
    unaudited = APIRouter(route_class=app_module.StrictRoute)
    unaudited.add_api_route("/kbs/v1/unaudited", lambda: {}, methods=["GET"])
    monkeypatch.setattr(app_module, "ROUTERS", (*app_module.ROUTERS[:-1], unaudited))
    with pytest.raises(RuntimeError, match="FAILURE_ACTIONS"):
        create_app(services)


def test_sign_in_sets_a_strict_session_cookie_and_pages_carry_a_strict_csp(
    console: TestClient, services: Services
) -> None:
    assert console.get("/ui/keys", follow_redirects=False).headers["location"] == "/ui/login"
    login = console.get("/ui/login")
    cookie = login.headers["set-cookie"]
    assert cookie.startswith(f"{security.LOGIN_COOKIE}=") and "HttpOnly" in cookie and "Secure" in cookie
    r = console.post(
        "/ui/auth/dev",
        data={"csrf": _csrf(login.text), "name": "dana", "roles": ["auditor"]},
        follow_redirects=False,
    )
    session_cookie = next(
        v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("__Host-kb_session=")
    )
    for flag in ("HttpOnly", "Secure", "SameSite=strict", "Path=/"):
        assert flag.lower() in session_cookie.lower(), session_cookie
    assert "domain" not in session_cookie.lower() and "max-age" not in session_cookie.lower()
    page = console.get("/ui/audit")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["cache-control"] == "no-store" and page.headers["x-frame-options"] == "DENY"
    assert "<script>" not in page.text and " on" + "click=" not in page.text and "style=" not in page.text
    assert re.findall(r"<script[^>]*>", page.text) == ['<script src="/ui/static/htmx.min.js" defer>']
    js = console.get("/ui/static/htmx.min.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    logins = [r for r in _audit(services) if r["action"] == "console.login"]
    assert logins[-1]["actor"] == "dev:dana" and logins[-1]["details"]["roles"] == ["auditor"]


def test_forms_without_the_session_csrf_token_are_refused(console: TestClient, services: Services) -> None:
    """The attack: a page elsewhere posts a form to the console in the operator's browser. Without the
    token derived from the session cookie (which it cannot read) nothing happens."""
    csrf = sign_in(console)
    policy = (
        '{"attestation_type": ["SGX"], "sgx": {"attributes": {"mrsigner": ["'
        + "a" * 64
        + '"], "isvprodid": [1]}}}'
    )
    for data in ({"policy": policy}, {"policy": policy, "csrf": "x" * 43}, {"policy": policy, "csrf": ""}):
        r = console.post("/ui/policies", data=data)
        assert r.status_code == 403 and "CSRF" in r.text
    # another origin, even with a token, and the browser's own cross-site marker
    r = console.post(
        "/ui/policies", data={"policy": policy, "csrf": csrf}, headers={"Origin": "https://evil.example"}
    )
    assert r.status_code == 403
    r = console.post(
        "/ui/policies", data={"policy": policy, "csrf": csrf}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert r.status_code == 403
    assert console.get("/kbs/v1/key-transfer-policies", headers=_admin(services)).json() == []
    assert not [r for r in _audit(services) if r["action"] == "policy.create"]
    # the token of another session does not work either
    with TestClient(create_app(services), base_url="https://127.0.0.1:9443", client=LOCAL) as other:
        other_csrf = sign_in(other, "eve")
    r = console.post("/ui/policies", data={"policy": policy, "csrf": other_csrf})
    assert r.status_code == 403
    r = console.post("/ui/policies", data={"policy": policy, "csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303  # the control: with the token it works


def _admin(services: Services) -> dict[str, str]:
    return {"Authorization": "Bearer " + services.tokens.mint("admin", ["*:*"])}


def test_form_bodies_are_read_strictly(console: TestClient) -> None:
    csrf = sign_in(console)
    form = "application/x-www-form-urlencoded"
    cases = [
        (
            {"content": f"csrf={csrf}&policy=a&policy=b", "headers": {"Content-Type": form}},
            400,
            "given 2 times",
        ),
        (
            {"content": f"csrf={csrf}&policy=a&admin=1", "headers": {"Content-Type": form}},
            400,
            "unknown form field",
        ),
        ({"content": f"csrf={csrf}&policy=%00", "headers": {"Content-Type": form}}, 400, "NUL"),
        ({"content": f"csrf={csrf}&policy=%ff", "headers": {"Content-Type": form}}, 400, "UTF-8"),
        ({"content": f"csrf={csrf}&&=", "headers": {"Content-Type": form}}, 400, "malformed"),
        ({"json": {"csrf": csrf, "policy": "{}"}}, 415, "x-www-form-urlencoded"),
        ({"content": f"csrf={csrf}", "headers": {"Content-Type": form + "; charset=latin-1"}}, 415, "UTF-8"),
    ]
    for kwargs, status, text in cases:
        r = console.post("/ui/policies", **kwargs)
        assert r.status_code == status and text in r.text, (kwargs, r.status_code, r.text[-800:])
        assert r.headers["content-type"].startswith("text/html")
    r = console.get("/ui/keys", params={"algorithm": "RSA", "sneaky": "1"})
    assert r.status_code == 400 and "unknown query parameter" in r.text


def test_a_role_without_a_permission_does_not_see_the_action_and_is_refused(
    console: TestClient, services: Services
) -> None:
    csrf = sign_in(console, "audrey", ["auditor"])
    keys = console.get("/ui/keys")
    assert keys.status_code == 200
    assert "New key" not in keys.text and "/ui/keys/new" not in keys.text
    nav = console.get("/ui/system").text
    assert 'href="/ui/audit"' in nav and "Seal now" not in nav
    policies = console.get("/ui/policies").text
    assert "New policy" not in policies
    # and posting anyway is refused, and audited as the API would
    r = console.post(
        "/ui/keys", data={"csrf": csrf, "mode": "generate", "algorithm": "AES", "key_length": "256"}
    )
    assert r.status_code == 403 and "keys:create" in r.text
    r = console.post("/ui/system/seal", data={"csrf": csrf})
    assert r.status_code == 403
    assert not services.barrier.sealed
    denied = [(r["actor"], r["action"], r["outcome"]) for r in _audit(services) if r["outcome"] == "denied"]
    assert ("dev:audrey", "key.create", "denied") in denied and ("dev:audrey", "sys.seal", "denied") in denied


def test_keys_and_policies_through_the_console(console: TestClient, services: Services) -> None:
    csrf = sign_in(console, "kim")
    bad = console.post(
        "/ui/policies", data={"csrf": csrf, "policy": '{"attestation_type": ["TDX"], "tdx": {}}'}
    )
    assert bad.status_code == 400 and "tdx.attributes" in bad.text
    import json

    r = console.post(
        "/ui/policies", data={"csrf": csrf, "policy": json.dumps(TDX_POLICY)}, follow_redirects=False
    )
    assert r.status_code == 303
    policy_id = r.headers["location"].rsplit("/", 1)[1]
    r = console.post(
        "/ui/keys",
        data={
            "csrf": csrf,
            "mode": "generate",
            "algorithm": "RSA",
            "key_length": "3072",
            "label": "web",
            "transfer_policy_id": policy_id,
        },
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    key_id = r.headers["location"].rsplit("/", 1)[1]
    page = console.get(f"/ui/keys/{key_id}").text
    assert "web" in page and policy_id in page and "BEGIN PUBLIC KEY" in page
    assert key_id in console.get("/ui/keys", params={"algorithm": "RSA"}).text
    assert key_id not in console.get("/ui/keys", params={"algorithm": "AES"}).text
    # deletion needs the id typed
    r = console.post(f"/ui/keys/{key_id}/delete", data={"csrf": csrf, "confirm": "yes"})
    assert r.status_code == 400
    r = console.post(
        f"/ui/keys/{key_id}/delete", data={"csrf": csrf, "confirm": key_id}, follow_redirects=False
    )
    assert r.status_code == 303
    acts = [(r["actor"], r["action"], r["object_id"]) for r in _audit(services) if r["outcome"] == "success"]
    assert ("dev:kim", "policy.create", policy_id) in acts
    assert ("dev:kim", "key.create", key_id) in acts and ("dev:kim", "key.delete", key_id) in acts
    failed = [
        (r["action"], r["outcome"])
        for r in _audit(services)
        if r["actor"] == "dev:kim" and r["outcome"] != "success"
    ]
    assert ("policy.create", "failed") in failed


def test_sign_out_and_timeouts_end_the_session(tmp_path: Path, database_url: str) -> None:
    settings = Settings(
        data_dir=tmp_path / "d",
        database=database_url,
        dev=True,
        console=ConsoleSettings(session_idle_seconds=60),
    )
    svc = Services.build(settings)
    try:
        with TestClient(create_app(svc), base_url="https://127.0.0.1:9443", client=LOCAL) as c:
            csrf = sign_in(c)
            secret = c.cookies.get(security.SESSION_COOKIE)
            assert c.get("/ui/audit").status_code == 200
            r = c.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
            assert r.status_code == 303
            c.cookies.set(security.SESSION_COOKIE, secret, domain="127.0.0.1")  # a stolen copy of the cookie
            assert c.get("/ui/audit", follow_redirects=False).headers["location"] == "/ui/login"
            # idle timeout
            sign_in(c)
            from datetime import UTC, datetime, timedelta

            from keybroker.store.models import ConsoleSession

            with svc.db.session() as s:
                for row in s.query(ConsoleSession):
                    row.last_seen_at = datetime.now(UTC) - timedelta(seconds=61)
            assert c.get("/ui/audit", follow_redirects=False).status_code == 303
    finally:
        svc.db.dispose()


def test_the_dev_login_is_for_this_machine_under_dev_only(
    services: Services, tmp_path: Path, database_url: str
) -> None:
    with TestClient(
        create_app(services), base_url="https://kb.example", client=("203.0.113.9", 4000)
    ) as remote:
        page = remote.get("/ui/login")
        assert "Dev login" not in page.text
        r = remote.post("/ui/auth/dev", data={"csrf": _csrf_of_login(page.text, remote), "name": "x"})
        assert r.status_code == 403
    prod = Services.build(
        Settings(
            data_dir=tmp_path / "p",
            database=f"sqlite:///{tmp_path / 'p.db'}",  # the sign-in page, not the database, is tested
        )
    )
    try:
        with TestClient(create_app(prod), base_url="https://127.0.0.1:9443", client=LOCAL) as c:
            assert "No way to sign in is configured" in c.get("/ui/login").text
    finally:
        prod.db.dispose()


def _csrf_of_login(html: str, c: TestClient) -> str:
    secret = c.cookies.get(security.LOGIN_COOKIE)
    assert secret
    return security.csrf_token(secret)


def test_a_sealed_key_store_is_a_503_page_and_no_error_log(
    console: TestClient, services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """As on the API: a sealed replica's refusal is its state (audited when it was sealed), not an
    error to log per request, and carries no Retry-After (it stays sealed until an operator unseals
    it). Before, the console logged every such refusal as an error."""
    csrf = sign_in(console, "kim", ["key-admin"])
    services.barrier.seal()
    caplog.set_level("INFO", logger="keybroker.ui")
    r = console.post(
        "/ui/keys",
        data={"csrf": csrf, "mode": "generate", "algorithm": "AES", "key_length": "256"},
        follow_redirects=False,
    )
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert "retry-after" not in r.headers
    assert r.headers["content-security-policy"] == security.CSP
    assert "sealed" in r.text.lower()
    assert not [rec for rec in caplog.records if rec.name == "keybroker.ui" and rec.levelname == "ERROR"]
