"""The Confidential Containers KBS protocol (/kbs/v0) end to end, as the CoCo attestation agent speaks it."""

from __future__ import annotations

import base64
import json
import os
import threading
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient
from tests.api.test_transfer_v1 import SGX_SIM_POLICY, TDX_SIM_POLICY, _rsa_public
from tests.helpers.api import token_headers

from keybroker.api.app import create_app
from keybroker.api.services import DEV_PKI_DIR, Services
from keybroker.client.unwrap import jwe_unwrap
from keybroker.keys import wrap
from keybroker.tee import sim
from keybroker.wire import binding

REGO_ALLOW_SIM_TDX = f"""package keybroker
default allow := false
allow if {{
    input.tee == "tdx"
    input.claims.mr_td == "{sim.DEFAULT_MRTD.hex()}"
    not input.claims.debug
}}
reasons contains "wrong MRTD" if {{ input.claims.mr_td != "{sim.DEFAULT_MRTD.hex()}" }}
"""


def _pki(services: Services) -> sim.DevPki:
    return sim.DevPki.load(services.settings.data_dir / DEV_PKI_DIR)


def _quote(services: Services, tee: str, report_data: bytes, **fields: Any) -> bytes:
    if tee == "tdx":
        return sim.tdx_quote(_pki(services), report_data=report_data, **fields)
    fields.setdefault("isvprodid", 7)
    fields.setdefault("isvsvn", 2)
    return sim.sgx_quote(_pki(services), report_data=report_data, **fields)


def _attest(
    client: TestClient,
    services: Services,
    tee: str,
    priv: Any,
    *,
    hashes: list[str] | None = None,
    jwk: dict[str, Any] | None = None,
    **fields: Any,
) -> Any:
    """Auth and attest; the tee-pubkey is ``priv``'s public key, or ``jwk`` as given."""
    extra: Any = {"supported-hash-algorithms": hashes} if hashes else ""
    r = client.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": tee, "extra-params": extra})
    assert r.status_code == 200, r.text
    assert "kbs-session-id" in r.cookies
    nonce = r.json()["nonce"]
    alg = r.json()["extra-params"]["selected-hash-algorithm"] if hashes else "sha384"
    jwk = jwk if jwk is not None else wrap.public_jwk(priv.public_key())
    rd = binding.v0_report_data(nonce, jwk, "", alg)
    quote = _quote(services, tee, rd, **fields)
    primary = {"quote": base64.b64encode(quote).decode()} | ({"cc_eventlog": None} if tee == "tdx" else {})
    body = {
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": {"primary_evidence": primary, "additional_evidence": ""},
    }
    return client.post("/kbs/v0/attest", json=body)


def _put(client: TestClient, services: Services, path: str, data: bytes) -> None:
    h = token_headers(services, "resources:write")
    r = client.post(
        f"/kbs/v0/resource/{path}", content=data, headers={**h, "Content-Type": "application/octet-stream"}
    )
    assert r.status_code == 204, r.text


def _policy(client: TestClient, services: Services, path: str, body: dict[str, Any]) -> Any:
    return client.post(
        f"/kbs/v0/resource-policy/{path}", json=body, headers=token_headers(services, "resources:write")
    )


@pytest.mark.parametrize("tee", ["tdx", "sgx"])
@pytest.mark.parametrize("keytype", ["rsa", "ec"])
def test_release_over_cookie_session(
    client: TestClient, services: Services, admin_headers: dict[str, str], tee: str, keytype: str
) -> None:
    secret = os.urandom(48)
    _put(client, services, "default/key/one", secret)
    pid = client.post(
        "/kbs/v1/key-transfer-policies",
        json=TDX_SIM_POLICY if tee == "tdx" else SGX_SIM_POLICY,
        headers=admin_headers,
    ).json()["id"]
    assert _policy(client, services, "default/key/one", {"transfer_policy_id": pid}).status_code == 204
    priv: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=3072)
        if keytype == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    r = _attest(client, services, tee, priv)
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    r = client.get("/kbs/v0/resource/default/key/one")
    assert r.status_code == 200, r.text
    jwe = r.json()
    assert set(jwe) == {"protected", "encrypted_key", "iv", "ciphertext", "tag"}
    header = json.loads(base64.urlsafe_b64decode(jwe["protected"] + "=="))
    assert header == {"alg": "RSA-OAEP-256" if keytype == "rsa" else "ECDH-ES+A256KW", "enc": "A256GCM"} | (
        {"epk": header["epk"]} if keytype == "ec" else {}
    )
    assert jwe_unwrap(jwe, priv) == secret
    # the same token works as a bearer without the cookie
    client.cookies.clear()
    r = client.get("/kbs/v0/resource/default/key/one", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and jwe_unwrap(r.json(), priv) == secret


def test_default_policy_denies_simulated_and_rego_can_allow(client: TestClient, services: Services) -> None:
    _put(client, services, "repo/secret/db", b"hunter2")
    priv = ec.generate_private_key(ec.SECP384R1())
    assert _attest(client, services, "tdx", priv, hashes=["sha512", "sha256"]).status_code == 200
    r = client.get("/kbs/v0/resource/repo/secret/db")
    assert r.status_code == 403
    assert any("simulat" in x or "affirming" in x for x in r.json()["reasons"])
    assert _policy(client, services, "repo/secret/db", {"rego": REGO_ALLOW_SIM_TDX}).status_code == 204
    r = client.get("/kbs/v0/resource/repo/secret/db")
    assert r.status_code == 200 and jwe_unwrap(r.json(), priv) == b"hunter2"
    # a TD with another MRTD is denied by the same Rego policy, with its reason
    assert _attest(client, services, "tdx", priv, mrtd=b"\x07" * 48).status_code == 200
    r = client.get("/kbs/v0/resource/repo/secret/db")
    assert r.status_code == 403 and "wrong MRTD" in r.json()["reasons"]
    audit = [
        x
        for x in client.get("/kbs/v1/audit?limit=1000", headers=token_headers(services, "audit:read")).json()
        if x["action"] == "resource.release"
    ]
    assert [x["outcome"] for x in audit] == ["denied", "success", "denied"]


def test_protocol_errors(client: TestClient, services: Services) -> None:
    priv = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    assert client.post("/kbs/v0/auth", json={"version": "9.9.9", "tee": "tdx"}).status_code == 400
    assert (
        "not supported"
        in client.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "cca"}).json()["detail"]
    )
    assert client.post("/kbs/v0/attest", json={}).status_code in (400, 401)
    client.cookies.clear()
    r = client.post(
        "/kbs/v0/attest",
        json={
            "runtime-data": {"nonce": "x", "tee-pubkey": wrap.public_jwk(priv.public_key())},
            "tee-evidence": {"primary_evidence": {"quote": "AA=="}},
        },
    )
    assert r.status_code == 401 and "auth" in r.json()["detail"]
    assert client.get("/kbs/v0/resource/a/b/c").status_code == 401
    assert (
        client.get("/kbs/v0/resource/a/b/c", headers={"Authorization": "Bearer nonsense"}).status_code == 401
    )
    # a session attests once: its nonce is spent
    r = _attest(client, services, "tdx", priv)
    assert r.status_code == 200
    nonce_reuse = client.post(
        "/kbs/v0/attest",
        json={
            "runtime-data": {"nonce": "x", "tee-pubkey": wrap.public_jwk(priv.public_key())},
            "tee-evidence": {"primary_evidence": {"quote": "AA=="}},
        },
    )
    assert nonce_reuse.status_code == 403 and "already attested" in nonce_reuse.json()["detail"]
    assert client.get("/kbs/v0/resource/no/such/thing").status_code == 404
    # small RSA and private JWKs are refused
    small = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert _attest(client, services, "tdx", small).status_code == 400
    # wrong binding: evidence over another key
    client.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "tdx"})
    nonce = client.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "tdx"}).json()["nonce"]
    jwk = wrap.public_jwk(priv.public_key())
    other = wrap.public_jwk(ec.generate_private_key(ec.SECP256R1()).public_key())
    quote = _quote(services, "tdx", binding.v0_report_data(nonce, other, "", "sha384"))
    r = client.post(
        "/kbs/v0/attest",
        json={
            "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
            "tee-evidence": {
                "primary_evidence": {"quote": base64.b64encode(quote).decode()},
                "additional_evidence": "",
            },
        },
    )
    assert r.status_code == 400 and r.json()["check"] == "report_data"


def test_admin_needs_permission_and_validates(client: TestClient, services: Services) -> None:
    assert (
        client.post(
            "/kbs/v0/resource/a/b/c", content=b"x", headers={"Content-Type": "application/octet-stream"}
        ).status_code
        == 401
    )
    r = client.post(
        "/kbs/v0/resource/a/b/c",
        content=b"x",
        headers={**token_headers(services, "keys:create"), "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 403
    h = {**token_headers(services, "resources:write"), "Content-Type": "application/octet-stream"}
    assert client.post("/kbs/v0/resource/a/b/c", content=b"x" * (64 * 1024 + 1), headers=h).status_code == 400
    assert client.post("/kbs/v0/resource/a/../c", content=b"x", headers=h).status_code in (400, 404)
    assert client.post("/kbs/v0/resource/a/b/c", content=b"x", headers=h).status_code == 204
    w = token_headers(services, "resources:write")
    assert (
        client.post(
            "/kbs/v0/resource-policy/a/b/c", json={"rego": "package other\nallow := true"}, headers=w
        ).status_code
        == 400
    )
    assert (
        client.post(
            "/kbs/v0/resource-policy/a/b/c", json={"rego": "x", "default": True}, headers=w
        ).status_code
        == 400
    )
    assert client.post("/kbs/v0/resource-policy/a/b/z", json={"default": True}, headers=w).status_code == 404


def _audit(client: TestClient, services: Services, action: str) -> list[dict[str, Any]]:
    records = client.get("/kbs/v1/audit?limit=1000", headers=token_headers(services, "audit:read")).json()
    return [x for x in records if x["action"] == action]


def _count_transactions(services: Services, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    count = [0]
    opened = services.db.session

    def counted(**kwargs: Any) -> Any:
        # the requests' transactions, not the background threads' (checkpointer, replica sync)
        if threading.current_thread().name not in ("audit-checkpointer", "replica-sync"):
            count[0] += 1
        return opened(**kwargs)

    monkeypatch.setattr(services.db, "session", counted)
    return count


def test_transfer_transactions_and_audit_records(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    _put(client, services, "repo/secret/tx", b"s3cret")
    assert _policy(client, services, "repo/secret/tx", {"rego": REGO_ALLOW_SIM_TDX}).status_code == 204
    priv = ec.generate_private_key(ec.SECP384R1())
    services.attestation.jwks()  # the signing key made and loaded
    count = _count_transactions(services, monkeypatch)
    assert _attest(client, services, "tdx", priv).status_code == 200
    # auth; attest: the nonce spent, then the decision audited with the token kept
    assert count[0] == 3
    count[0] = 0
    r = client.get("/kbs/v0/resource/repo/secret/tx")
    assert r.status_code == 200 and jwe_unwrap(r.json(), priv) == b"s3cret"
    assert count[0] == 1  # our own token, known verified: session, decision and audit in one
    monkeypatch.undo()

    session_id = client.cookies["kbs-session-id"]
    (attested,) = _audit(client, services, "attestation.attest")
    assert attested["actor"] == f"kbs-session:{session_id}" and attested["outcome"] == "success"
    assert set(attested["details"]) == {
        "protocol",
        "tee",
        "evidence_sha256",
        "claims_sha256",
        "ear_status",
        "tcb_status",
        "input_sha256",
    }
    (released,) = _audit(client, services, "resource.release")
    assert released["actor"] == f"kbs-session:{session_id}" and released["object_id"] == "repo/secret/tx"
    assert released["outcome"] == "success" and released["details"]["tee"] == "tdx"
    assert set(released["details"]) == {
        "protocol",
        "tee",
        "ear_status",
        "token_kid",
        "policy_id",
        "notes",
        "input_sha256",
    }
    # the appraisal input each decision was made on is kept, as its record names it
    from keybroker.audit.inputs import AppraisalInputs

    with services.db.session() as s:
        for record in (attested, released):
            kept = AppraisalInputs.recorded(s, record["seq"])
            assert kept.tee == "tdx" and kept.document["claims"]["mr_td"] == sim.DEFAULT_MRTD.hex()
    assert released["details"]["token_kid"] == client.get("/.well-known/jwks.json").json()["keys"][0]["kid"]


def test_session_token_verified_in_full_after_restart(client: TestClient, services: Services) -> None:
    _put(client, services, "repo/secret/restart", b"kept")
    assert _policy(client, services, "repo/secret/restart", {"rego": REGO_ALLOW_SIM_TDX}).status_code == 204
    priv = ec.generate_private_key(ec.SECP256R1())
    assert _attest(client, services, "tdx", priv).status_code == 200
    session_id = client.cookies["kbs-session-id"]
    again = Services.build(services.settings)  # another process: nothing known verified
    try:
        with TestClient(create_app(again), base_url="https://testserver") as other:
            other.cookies.set("kbs-session-id", session_id, path="/kbs/v0")
            r = other.get("/kbs/v0/resource/repo/secret/restart")
            assert r.status_code == 200 and jwe_unwrap(r.json(), priv) == b"kept"
    finally:
        again.db.dispose()
    assert [x["outcome"] for x in _audit(client, services, "resource.release")] == ["success"]


def test_tampered_bearer_refused_after_the_genuine_token_was_used(
    client: TestClient, services: Services
) -> None:
    _put(client, services, "repo/secret/bearer", b"b")
    assert _policy(client, services, "repo/secret/bearer", {"rego": REGO_ALLOW_SIM_TDX}).status_code == 204
    priv = ec.generate_private_key(ec.SECP256R1())
    r = _attest(client, services, "tdx", priv)
    token = r.json()["token"]
    client.cookies.clear()
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.get("/kbs/v0/resource/repo/secret/bearer", headers=bearer).status_code == 200
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["exp"] += 3600
    longer = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    for bad in (
        f"{header}.{longer}.{signature}",
        token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"),
    ):
        r = client.get("/kbs/v0/resource/repo/secret/bearer", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401, r.text
    # refused before any decision: only the genuine release is in the audit log
    assert [x["outcome"] for x in _audit(client, services, "resource.release")] == ["success"]


def test_nonce_spent_when_the_evidence_fails(client: TestClient, services: Services) -> None:
    priv = ec.generate_private_key(ec.SECP256R1())
    nonce = client.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "tdx"}).json()["nonce"]
    jwk = wrap.public_jwk(priv.public_key())
    wrong = _quote(services, "tdx", binding.v0_report_data(nonce, jwk, "", "sha512"))  # another hash
    right = _quote(services, "tdx", binding.v0_report_data(nonce, jwk, "", "sha384"))
    for quote, status in ((wrong, 400), (right, 403)):
        r = client.post(
            "/kbs/v0/attest",
            json={
                "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
                "tee-evidence": {"primary_evidence": {"quote": base64.b64encode(quote).decode()}},
            },
        )
        assert r.status_code == status, r.text
    assert "already attested" in r.json()["detail"]
    (denied,) = _audit(client, services, "attestation.attest")
    assert denied["outcome"] == "denied" and denied["details"]["failed_check"] == "report_data"
    assert client.get("/kbs/v0/resource/a/b/c").status_code == 401  # no token kept


def test_housekeeping_drops_sessions_when_they_expire(client: TestClient, services: Services) -> None:
    import time
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import func, select, update

    from keybroker.store.models import KbsSession

    auth = {"version": "0.4.0", "tee": "tdx", "extra-params": ""}
    expired, live = (client.post("/kbs/v0/auth", json=auth).cookies["kbs-session-id"] for _ in range(2))
    with services.db.session() as s:
        past = datetime.now(UTC) - timedelta(seconds=1)
        s.execute(update(KbsSession).where(KbsSession.id == expired).values(expires_at=past))
    # an expired session gets its own reason until it is dropped
    client.cookies.clear()
    client.cookies.set("kbs-session-id", expired)
    r = client.get("/kbs/v0/resource/repo/secret/x")
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    time.sleep(1.1)  # expired sessions are dropped when the outstanding ones are counted, once a second
    client.post("/kbs/v0/auth", json=auth)
    with services.db.session() as s:
        left = set(s.scalars(select(KbsSession.id)))
        assert expired not in left and live in left
        assert s.scalar(select(func.count()).select_from(KbsSession)) == 2
    client.cookies.clear()
    client.cookies.set("kbs-session-id", expired)
    r = client.get("/kbs/v0/resource/repo/secret/x")
    assert r.status_code == 401 and "unknown session" in r.json()["detail"]


# --- a resource that serves a key (issue 11: resources:write escalated to any key) ----------------

ALLOW_ALL = "package keybroker\ndefault allow := true\n"


def _map_key(client: TestClient, services: Services, path: str, key_id: str, *permissions: str) -> Any:
    return client.post(
        f"/kbs/v0/resource/{path}", json={"key_id": key_id}, headers=token_headers(services, *permissions)
    )


def _key(client: TestClient, admin: dict[str, str], policy: dict[str, Any] | None) -> tuple[str, bytes]:
    """A 256-bit AES key (and its bytes) under ``policy``, or with no transfer policy at all."""
    secret = os.urandom(32)
    info: dict[str, Any] = {
        "key_information": {"algorithm": "AES", "key_string": base64.b64encode(secret).decode()}
    }
    if policy is not None:
        info["transfer_policy_id"] = client.post(
            "/kbs/v1/key-transfer-policies", json=policy, headers=admin
        ).json()["id"]
    r = client.post("/kbs/v1/keys", json=info, headers=admin)
    assert r.status_code == 201, r.text
    return r.json()["key_information"]["id"], secret


def test_resources_write_alone_cannot_serve_a_key(
    client: TestClient, services: Services, admin_headers: dict[str, str]
) -> None:
    """The attack: with only resources:write, map any key into a resource, allow everything, and
    have a debug TD fetch it. Refused at the mapping, so there is nothing to fetch."""
    key_id, secret = _key(client, admin_headers, None)  # not even releasable over /kbs/v1
    r = _map_key(client, services, "evil/key/x", key_id, "resources:write")
    assert r.status_code == 403, r.text
    assert r.json()["permission"] == "keys:transfer" and "keys:transfer" in r.json()["detail"]
    assert _policy(client, services, "evil/key/x", {"rego": ALLOW_ALL}).status_code == 404
    priv = ec.generate_private_key(ec.SECP256R1())
    assert _attest(client, services, "tdx", priv, debug=True).status_code == 200
    assert client.get("/kbs/v0/resource/evil/key/x").status_code == 404
    assert _audit(client, services, "resource.write") == []
    # keys:transfer alone is not resources:write; raw secrets still need only resources:write
    assert _map_key(client, services, "evil/key/x", key_id, "keys:transfer").status_code == 403
    _put(client, services, "evil/secret/y", b"not a key")


def test_key_resource_released_only_if_the_keys_own_policy_allows(
    client: TestClient, services: Services, admin_headers: dict[str, str]
) -> None:
    key_id, secret = _key(client, admin_headers, TDX_SIM_POLICY)
    r = _map_key(client, services, "app/key/k", key_id, "resources:write", "keys:transfer")
    assert r.status_code == 204, r.text
    (written,) = _audit(client, services, "resource.write")
    assert written["details"] == {"kind": "key", "key_id": key_id}
    assert _policy(client, services, "app/key/k", {"rego": ALLOW_ALL}).status_code == 204
    priv = ec.generate_private_key(ec.SECP384R1())
    expected_mrtd = sim.DEFAULT_MRTD.hex()

    # a debug TD: the resource policy allows anything, the key's policy does not
    assert _attest(client, services, "tdx", priv, debug=True).status_code == 200
    r = client.get("/kbs/v0/resource/app/key/k")
    assert r.status_code == 403, r.text
    assert r.json()["detail"] == (
        "the attestation result does not satisfy the transfer policy of the key behind the resource"
    )
    assert r.json()["reasons"] == [
        "key policy: debug TD (TD_ATTRIBUTES.DEBUG is set) and the policy does not set allow_debug"
    ]

    # a TD with another MRTD: the caller learns the check and its own MRTD, not the expected one
    assert _attest(client, services, "tdx", priv, mrtd=b"\x07" * 48).status_code == 200
    r = client.get("/kbs/v0/resource/app/key/k")
    assert r.status_code == 403
    assert r.json()["reasons"] == [f"key policy: mrtd {'07' * 48} is not in the policy's list"]
    assert expected_mrtd not in r.text

    # the right TD: both allow
    assert _attest(client, services, "tdx", priv).status_code == 200
    r = client.get("/kbs/v0/resource/app/key/k")
    assert r.status_code == 200, r.text
    assert jwe_unwrap(r.json(), priv) == secret

    debug, mrtd, released = _audit(client, services, "resource.release")
    assert [debug["outcome"], mrtd["outcome"], released["outcome"]] == ["denied", "denied", "success"]
    assert (
        mrtd["reason"]
        == f"key policy: mrtd {'07' * 48} is not in the policy's list (1 value: {expected_mrtd})"
    )
    for rec in (debug, mrtd, released):
        assert rec["details"]["key_id"] == key_id
        assert (
            rec["details"]["key_policy_id"]
            == client.get(f"/kbs/v1/keys/{key_id}", headers=admin_headers).json()["transfer_policy_id"]
        )
        assert rec["details"]["policy_id"].startswith("rego:")


def test_key_resource_needs_both_policies(
    client: TestClient, services: Services, admin_headers: dict[str, str]
) -> None:
    """The resource's own policy still applies (here the default, which refuses simulated
    evidence); a key with no transfer policy is never released; each reason names its policy."""
    key_id, _ = _key(client, admin_headers, TDX_SIM_POLICY)
    bare_id, _ = _key(client, admin_headers, None)
    perms = ("resources:write", "keys:transfer")
    assert _map_key(client, services, "app/key/default", key_id, *perms).status_code == 204
    assert _map_key(client, services, "app/key/bare", bare_id, *perms).status_code == 204
    assert _policy(client, services, "app/key/bare", {"rego": ALLOW_ALL}).status_code == 204
    priv = ec.generate_private_key(ec.SECP256R1())
    assert _attest(client, services, "tdx", priv).status_code == 200

    r = client.get("/kbs/v0/resource/app/key/default")
    assert r.status_code == 403
    assert r.json()["detail"] == "the attestation result does not satisfy the resource's policy"
    assert r.json()["reasons"] == [
        "resource policy: the evidence is simulated (it chains to the dev PKI, not to Intel)",
        "resource policy: ear.status is warning, not affirming",
    ]
    r = client.get("/kbs/v0/resource/app/key/bare")
    assert r.status_code == 403
    assert r.json()["reasons"] == ["key policy: the key has no transfer policy and is never released"]
    # /kbs/v1 agrees: the bare key is never released there either
    assert client.post(f"/kbs/v1/keys/{bare_id}/transfer").status_code == 403

    assert _attest(client, services, "tdx", priv, debug=True).status_code == 200
    r = client.get("/kbs/v0/resource/app/key/default")
    assert r.json()["detail"] == (
        "the attestation result satisfies neither the resource's policy nor the key's transfer policy"
    )
    assert r.json()["reasons"][-1] == (
        "key policy: debug TD (TD_ATTRIBUTES.DEBUG is set) and the policy does not set allow_debug"
    )
    audited = _audit(client, services, "resource.release")
    assert [x["outcome"] for x in audited] == ["denied"] * 3
    assert audited[1]["details"]["key_policy_id"] is None


# --- the TEE's key bounded before appraisal; failures after an allow audited ----------------------


def test_tee_pubkey_out_of_bounds_refused_at_attest(client: TestClient, services: Services) -> None:
    """Before: attest issued a token for a 16392-bit RSA key and the release, once allowed, failed
    with a 500 and no audit record. Now the attest refuses the key, naming the field and bound."""
    _put(client, services, "repo/secret/big", b"s")
    assert _policy(client, services, "repo/secret/big", {"rego": ALLOW_ALL}).status_code == 204
    big = wrap.public_jwk(_rsa_public(16392))
    r = _attest(client, services, "tdx", None, jwk=big)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "runtime-data.tee-pubkey"
    assert r.json()["detail"].startswith(
        "runtime-data.tee-pubkey: RSA key of 16392 bits; keybroker accepts 3072 to 8192 bits"
    )
    assert client.get("/kbs/v0/resource/repo/secret/big").status_code == 401  # no token was issued
    # P-521 is within bounds, end to end
    p521 = ec.generate_private_key(ec.SECP521R1())
    assert _attest(client, services, "tdx", p521).status_code == 200
    r = client.get("/kbs/v0/resource/repo/secret/big")
    assert r.status_code == 200 and jwe_unwrap(r.json(), p521) == b"s"


def test_bearer_token_with_out_of_bounds_tee_pubkey_is_a_400_and_audited(
    client: TestClient, services: Services
) -> None:
    """A trusted attestation service's token carries whatever tee-pubkey its client sent: the
    release checks it before appraising anything, and audits the refusal."""
    from datetime import UTC, datetime, timedelta

    from keybroker.appraisal.defaults import default_attestation_policy
    from keybroker.appraisal.input import appraisal_input
    from keybroker.attestation.ear import issue_ear
    from keybroker.tee.verifier import NO_REPORT_DATA

    _put(client, services, "repo/secret/bearer-big", b"s")
    assert _policy(client, services, "repo/secret/bearer-big", {"rego": ALLOW_ALL}).status_code == 204
    verified = services.verifier.verify("tdx", _quote(services, "tdx", bytes(64)), NO_REPORT_DATA)
    token = issue_ear(
        services.attestation.keyring.keyring(),
        verified,
        default_attestation_policy(appraisal_input(verified, client_permissions=None)),
        nonce="n",
        user_data=None,
        runtime_data={"nonce": "n", "tee-pubkey": wrap.public_jwk(_rsa_public(4096, 2**64 + 1))},
        issuer="keybroker",
        ttl=timedelta(minutes=5),
        now=datetime.now(UTC),
    )
    client.cookies.clear()
    r = client.get("/kbs/v0/resource/repo/secret/bearer-big", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "runtime-data.tee-pubkey"
    assert "RSA public exponent of 65 bits is not accepted" in r.json()["detail"]
    (rec,) = _audit(client, services, "resource.release")
    assert rec["outcome"] == "failed" and "RSA public exponent of 65 bits" in rec["reason"]
    assert "policy_id" not in rec["details"]  # refused before any policy was evaluated


def test_release_failing_after_the_policies_allowed_is_audited(
    client: TestClient, services: Services, admin_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key_id, _ = _key(client, admin_headers, TDX_SIM_POLICY)
    assert (
        _map_key(client, services, "app/key/f", key_id, "resources:write", "keys:transfer").status_code == 204
    )
    assert _policy(client, services, "app/key/f", {"rego": ALLOW_ALL}).status_code == 204

    def backend_failed(*_args: Any) -> bytes:
        raise ConnectionResetError("the key store went away")

    monkeypatch.setattr(services.keystore, "fetch", backend_failed)
    assert _attest(client, services, "tdx", ec.generate_private_key(ec.SECP256R1())).status_code == 200
    r = client.get("/kbs/v0/resource/app/key/f")
    assert r.status_code == 500
    assert r.json()["detail"] == "the resource was allowed but could not be released (ConnectionResetError)"
    assert "went away" not in r.text  # the exception's own text is never echoed
    (rec,) = _audit(client, services, "resource.release")
    assert rec["outcome"] == "failed" and rec["reason"] == r.json()["detail"]
    assert rec["details"]["key_id"] == key_id


def test_key_resource_under_its_keys_own_policy(
    client: TestClient, services: Services, admin_headers: dict[str, str]
) -> None:
    """The usual set-up (the resource's policy is the key's transfer policy): evaluated once, its
    reasons told once."""
    key_id, secret = _key(client, admin_headers, TDX_SIM_POLICY)
    pid = client.get(f"/kbs/v1/keys/{key_id}", headers=admin_headers).json()["transfer_policy_id"]
    assert (
        _map_key(client, services, "app/key/own", key_id, "resources:write", "keys:transfer").status_code
        == 204
    )
    assert _policy(client, services, "app/key/own", {"transfer_policy_id": pid}).status_code == 204
    priv = ec.generate_private_key(ec.SECP256R1())
    assert _attest(client, services, "tdx", priv, mrtd=b"\x07" * 48).status_code == 200
    r = client.get("/kbs/v0/resource/app/key/own")
    assert r.status_code == 403
    assert r.json()["reasons"] == [f"key and resource policy: mrtd {'07' * 48} is not in the policy's list"]
    assert _attest(client, services, "tdx", priv).status_code == 200
    r = client.get("/kbs/v0/resource/app/key/own")
    assert r.status_code == 200 and jwe_unwrap(r.json(), priv) == secret
    denied, released = _audit(client, services, "resource.release")
    assert sim.DEFAULT_MRTD.hex() in denied["reason"]
    assert released["details"]["policy_id"] == released["details"]["key_policy_id"] == pid
    assert released["details"]["notes"] == [
        "key and resource policy: simulated evidence allowed (allow_simulated is true)"
    ]
