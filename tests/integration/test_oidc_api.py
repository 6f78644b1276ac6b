"""JWTs of a real OpenID provider (oidc-provider) as bearer tokens on the API: roles from the
``groups`` claim, and every check on the token (signature by the provider's keys, algorithm, issuer,
audience, expiry) made from the outside, with tokens signed by the provider itself or forged."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey
from tests.helpers.oidc import API_AUDIENCE, CLIENT_ID, OidcProvider

from keybroker.api.app import create_app
from keybroker.api.services import Services
from keybroker.config import Settings, load_settings

pytestmark = pytest.mark.oidc


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    idp = OidcProvider(tmp_path_factory.mktemp("idp"), ["https://127.0.0.1:9/ui/auth/callback"]).start()
    yield idp
    idp.stop()


def _services(tmp_path: Path, provider: OidcProvider, *, api: bool = True) -> Services:
    conf = tmp_path / "keybroker.toml"
    conf.write_text(provider.config_toml(api=api))
    settings = load_settings(conf, {}, data_dir=tmp_path / "data", dev=True)
    assert isinstance(settings, Settings) and settings.oidc is not None
    return Services.build(settings)


@pytest.fixture
def client(tmp_path: Path, provider: OidcProvider) -> Iterator[TestClient]:
    svc = _services(tmp_path, provider)
    with TestClient(create_app(svc), base_url="https://testserver") as c:
        yield c
    svc.db.dispose()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _signed(provider: OidcProvider, kid: str = "ec-1", alg: str = "ES256", **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": provider.issuer,
        "aud": API_AUDIENCE,
        "sub": "forged",
        "iat": now,
        "exp": now + 300,
        **claims,
    }
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode({"alg": alg, "kid": kid}, body, provider.signing_keys[kid], algorithms=[alg])


def test_a_provider_access_token_gets_the_roles_of_its_groups(
    client: TestClient, provider: OidcProvider
) -> None:
    deployer = _bearer(provider.machine_token("ci-deployer"))  # groups: kb-audit -> auditor
    assert client.get("/kbs/v1/audit", headers=deployer).status_code == 200
    assert client.get("/kbs/v1/keys", headers=deployer).status_code == 200
    r = client.post("/kbs/v1/key-transfer-policies", json={"attestation_type": ["SGX"]}, headers=deployer)
    assert r.status_code == 403 and "key_transfer_policies:create" in r.json()["detail"]

    stranger = _bearer(provider.machine_token("stranger"))  # no groups: no role, no permission
    assert client.get("/kbs/v1/audit", headers=stranger).status_code == 403

    records = client.get("/kbs/v1/audit", params={"limit": 1000}, headers=deployer).json()
    denied = [(r["actor"], r["action"], r["outcome"]) for r in records if r["outcome"] == "denied"]
    assert ("oidc:ci-deployer", "policy.create", "denied") in denied
    assert ("oidc:stranger", "audit.read", "denied") in denied


def test_tokens_the_provider_did_not_sign_for_this_api_are_refused(
    client: TestClient, provider: OidcProvider
) -> None:
    good = _signed(provider, groups=["kb-audit"])
    assert client.get("/kbs/v1/audit", headers=_bearer(good)).status_code == 200  # the control: accepted
    rs = _signed(provider, kid="rs-1", alg="RS256", groups=["kb-audit"])
    assert client.get("/kbs/v1/audit", headers=_bearer(rs)).status_code == 200

    now = int(time.time())
    attacker = ECKey.generate_key("P-256", parameters={"kid": "ec-1"}, private=True)
    body = {"iss": provider.issuer, "aud": API_AUDIENCE, "sub": "x", "exp": now + 300, "groups": ["kb-audit"]}
    public_jwk = json.dumps(provider.signing_keys["ec-1"].as_dict(private=False))

    def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
        enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
        return f"{enc(header)}.{enc(claims)}."

    cases = {
        # the attacker's key under the provider's kid
        "forged signature": (
            jwt.encode({"alg": "ES256", "kid": "ec-1"}, body, attacker, algorithms=["ES256"]),
            "signature does not verify",
        ),
        "alg none": (unsigned({"alg": "none", "kid": "ec-1"}, body), "signed with 'none'"),
        # HMAC keyed with the provider's public key (the algorithm confusion attack)
        "HS256 with the public key": (
            jwt.encode(
                {"alg": "HS256", "kid": "ec-1"}, body, OctKey.import_key(public_jwk), algorithms=["HS256"]
            ),
            "signed with 'HS256'",
        ),
        "unknown kid": (
            jwt.encode({"alg": "ES256", "kid": "ec-9"}, body, attacker, algorithms=["ES256"]),
            "not signed by a key of the OpenID provider",
        ),
        "ID token audience": (_signed(provider, aud=CLIENT_ID, groups=["kb-audit"]), "aud"),
        "no audience": (_signed(provider, aud=None, groups=["kb-audit"]), "aud"),
        "expired": (_signed(provider, exp=now - 120, groups=["kb-audit"]), "expired"),
        "not yet valid": (_signed(provider, nbf=now + 600, groups=["kb-audit"]), "not yet valid"),
        "no subject": (_signed(provider, sub=None, groups=["kb-audit"]), "sub"),
    }
    for name, (token, why) in cases.items():
        r = client.get("/kbs/v1/audit", headers=_bearer(token))
        assert r.status_code == 401, (name, r.text)
        assert why in r.json()["detail"], (name, r.json()["detail"])
    # another issuer's token goes to keybroker's own verifier, which refuses it
    other = _signed(provider, iss="https://evil.example", groups=["kb-audit"])
    assert client.get("/kbs/v1/audit", headers=_bearer(other)).status_code == 401


def test_without_an_api_audience_the_api_takes_no_provider_tokens(
    tmp_path: Path, provider: OidcProvider
) -> None:
    svc = _services(tmp_path, provider, api=False)
    with TestClient(create_app(svc), base_url="https://testserver") as c:
        r = c.get("/kbs/v1/audit", headers=_bearer(provider.machine_token("ci-deployer")))
    svc.db.dispose()
    assert r.status_code == 401 and "no oidc.api_audience" in r.json()["detail"]


def test_a_sign_in_response_this_browser_did_not_ask_for_is_refused(
    client: TestClient, provider: OidcProvider
) -> None:
    """Login CSRF: the attacker sends the victim's browser to the callback with the attacker's own
    code (or replays a state). Without this browser's sign-in cookie and state, no session."""
    r = client.get("/ui/auth/callback", params={"code": "attacker-code", "state": "x"})
    assert r.status_code == 401 and "started no sign-in" in r.text
    assert "__Host-kb_session" not in r.headers.get("set-cookie", "")
    start = client.get("/ui/auth/oidc", follow_redirects=False)
    assert start.status_code == 303 and start.headers["location"].startswith(provider.issuer)
    assert "code_challenge_method=S256" in start.headers["location"]
    r = client.get("/ui/auth/callback", params={"code": "attacker-code", "state": "not-the-state"})
    assert r.status_code == 401 and "state does not match" in r.text
    # the pending sign-in was used up by that attempt (and its cookie cleared)
    r = client.get("/ui/auth/callback", params={"code": "attacker-code", "state": "not-the-state"})
    assert r.status_code == 401 and "started no sign-in" in r.text
    admin = {"Authorization": "Bearer " + client.app.state.services.tokens.mint("a", ["*:*"])}  # type: ignore[attr-defined]
    records = client.get("/kbs/v1/audit", params={"limit": 1000}, headers=admin).json()
    assert [r["outcome"] for r in records if r["action"] == "console.login"] == ["denied"] * 3


def test_a_sign_in_begun_on_one_replica_is_taken_once_by_another(
    tmp_path: Path, provider: OidcProvider
) -> None:
    """Behind a load balancer the provider sends the browser back to whichever replica: the sign-in
    under way (state, nonce, PKCE verifier) is a row in the shared database, found by the browser's
    sign-in cookie on any replica, and used once on all of them."""
    from urllib.parse import parse_qs, urlsplit

    from keybroker.api.services import DEV_UNSEAL_FILE
    from keybroker.ui import security

    conf = tmp_path / "keybroker.toml"
    conf.write_text(provider.config_toml(api=False))
    database = f"sqlite:///{tmp_path / 'kb.db'}"
    first = Services.build(load_settings(conf, {}, data_dir=tmp_path / "one", database=database, dev=True))
    second = Services.build(load_settings(conf, {}, data_dir=tmp_path / "two", database=database))
    try:
        second.barrier.unseal_devfile(tmp_path / "one" / DEV_UNSEAL_FILE)
        base = "https://127.0.0.1:9443"
        with (
            TestClient(create_app(first), base_url=base) as a,
            TestClient(create_app(second), base_url=base) as b,
        ):
            start = a.get("/ui/auth/oidc", follow_redirects=False)
            assert start.status_code == 303 and start.headers["location"].startswith(provider.issuer)
            state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
            login = a.cookies.get(security.LOGIN_COOKIE)
            assert login
            b.cookies.set(security.LOGIN_COOKIE, login, domain="127.0.0.1")  # the same browser
            # the second replica finds the sign-in and goes on to the provider, which refuses the
            # code (none was issued): a refusal by the provider, not "no sign-in under way"
            r = b.get("/ui/auth/callback", params={"code": "not-issued", "state": state})
            assert r.status_code == 401 and "Sign-in failed" in r.text
            assert "the OpenID provider refused the sign-in (token endpoint HTTP 400" in r.text, r.text
            a.cookies.set(security.LOGIN_COOKIE, login, domain="127.0.0.1")
            again = a.get("/ui/auth/callback", params={"code": "not-issued", "state": state})
            assert again.status_code == 401 and "no sign-in of this browser is under way" in again.text
    finally:
        second.db.dispose()
        first.db.dispose()
