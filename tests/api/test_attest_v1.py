"""/attestation/v1 (nonce, attest, JWKS) and /kbs/v1 passport mode."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime

from fastapi.testclient import TestClient
from tests.api.test_transfer_v1 import _WORKLOAD, SGX_SIM_POLICY, SPKI
from tests.helpers.api import unwrap_v1

from keybroker.api.services import DEV_PKI_DIR, Services
from keybroker.keys import binding
from keybroker.tee import sim
from keybroker.tokens.ear import verify_ear


def _attest(client: TestClient, services: Services, **quote_fields: object) -> tuple[int, dict[str, object]]:
    pki = sim.DevPki.load(services.settings.data_dir / DEV_PKI_DIR)
    n = client.post("/attestation/v1/nonce").json()
    nonce = base64.b64decode(n["val"])
    quote_fields.setdefault("isvprodid", 7)
    quote_fields.setdefault("isvsvn", 2)
    quote = sim.sgx_quote(pki, report_data=binding.v1_report_data(nonce, SPKI), **quote_fields)  # type: ignore[arg-type]
    r = client.post(
        "/attestation/v1/attest",
        json={
            "tee": "sgx",
            "evidence": base64.b64encode(quote).decode(),
            "nonce": n["val"],
            "user_data": base64.b64encode(SPKI).decode(),
        },
    )
    return r.status_code, r.json()


def test_attest_issues_verifiable_ear(client: TestClient, services: Services) -> None:
    code, body = _attest(client, services)
    assert code == 200, body
    jwks = client.get("/.well-known/jwks.json").json()
    assert jwks["keys"][0]["alg"] == "ES384" and "d" not in jwks["keys"][0]
    claims = verify_ear(jwks, str(body["token"]), now=datetime.now(UTC), issuer="keybroker")
    assert claims.tee == "sgx" and claims.sim is True
    assert claims.held_data == SPKI
    assert body["status"] == "warning"  # simulated evidence is never "affirming"


def test_attest_nonce_single_use_and_binding(client: TestClient, services: Services) -> None:
    pki = sim.DevPki.load(services.settings.data_dir / DEV_PKI_DIR)
    n = client.post("/attestation/v1/nonce").json()
    nonce = base64.b64decode(n["val"])
    quote = sim.sgx_quote(pki, report_data=binding.v1_report_data(nonce, SPKI))
    body = {
        "tee": "sgx",
        "evidence": base64.b64encode(quote).decode(),
        "nonce": n["val"],
        "user_data": base64.b64encode(b"other").decode(),
    }
    r = client.post("/attestation/v1/attest", json=body)
    assert r.status_code == 400 and r.json()["check"] == "report_data"
    body["user_data"] = base64.b64encode(SPKI).decode()
    r = client.post("/attestation/v1/attest", json=body)
    assert r.status_code == 403 and "already used" in r.json()["detail"]
    r = client.post("/attestation/v1/attest", json={**body, "tee": "snp"})
    assert r.status_code == 400


def test_passport_mode_transfer(
    client: TestClient, services: Services, admin_headers: dict[str, str]
) -> None:
    pid = client.post("/kbs/v1/key-transfer-policies", json=SGX_SIM_POLICY, headers=admin_headers).json()[
        "id"
    ]
    secret = os.urandom(16)
    kid = client.post(
        "/kbs/v1/keys",
        json={
            "key_information": {"algorithm": "AES", "key_string": base64.b64encode(secret).decode()},
            "transfer_policy_id": pid,
        },
        headers=admin_headers,
    ).json()["key_information"]["id"]
    code, body = _attest(client, services)
    assert code == 200
    r = client.post(f"/kbs/v1/keys/{kid}/transfer", json={"attestation_token": body["token"]})
    assert r.status_code == 200, r.text
    assert unwrap_v1(r.json(), _WORKLOAD) == secret
    # a token for an enclave with a lower ISVSVN is denied by the key's policy
    code, body = _attest(client, services, isvsvn=1)
    r = client.post(f"/kbs/v1/keys/{kid}/transfer", json={"attestation_token": body["token"]})
    assert r.status_code == 403 and any("isvsvn 1" in x for x in r.json()["reasons"])
    # tampered token
    token = str(body["token"])
    bad = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    r = client.post(f"/kbs/v1/keys/{kid}/transfer", json={"attestation_token": bad})
    assert r.status_code == 401


def test_signing_key_persists_across_restart(client: TestClient, services: Services) -> None:
    code, body = _attest(client, services)
    assert code == 200
    kid = client.get("/.well-known/jwks.json").json()["keys"][0]["kid"]
    from keybroker.api.services import Services as S

    again = S.build(services.settings)
    assert again.attestation.jwks()["keys"][0]["kid"] == kid
    again.attestation.verify_token(str(body["token"]))
    rotated = again.attestation.keyring.rotate()
    assert rotated.kid != kid
    again.attestation.verify_token(str(body["token"]))  # old tokens still verify after rotation
    again.db.dispose()
