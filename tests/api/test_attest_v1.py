"""/attestation/v1 (nonce, attest, JWKS) and /kbs/v1 passport mode."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.api.test_transfer_v1 import _WORKLOAD, SGX_SIM_POLICY, SPKI, _setup
from tests.helpers.api import unwrap_v1

from keybroker.api.app import create_app
from keybroker.api.services import DEV_PKI_DIR, Services
from keybroker.attestation.ear import verify_ear
from keybroker.config import Settings, TrustedAttestationService, TrustSettings
from keybroker.errors import InvalidInput, Unauthenticated
from keybroker.tee import sim
from keybroker.wire import binding


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
    r = client.post("/attestation/v1/attest", json={**body, "tee": "cca"})
    assert r.status_code == 400


def test_passport_mode_transfer(
    client: TestClient, services: Services, admin_headers: dict[str, str]
) -> None:
    key = _setup(client, services, admin_headers, SGX_SIM_POLICY)
    kid, secret = key.key_id, key.secret
    code, body = _attest(client, services)
    assert code == 200
    r = client.post(f"/kbs/v1/keys/{kid}/transfer", json={"attestation_token": body["token"]})
    assert r.status_code == 200, r.text
    assert unwrap_v1(r.json(), _WORKLOAD) == secret
    # a token for an enclave with a lower ISVSVN is denied by the key's policy
    code, body = _attest(client, services, isvsvn=1)
    r = client.post(f"/kbs/v1/keys/{kid}/transfer", json={"attestation_token": body["token"]})
    assert r.status_code == 403 and r.json()["reasons"] == ["isvsvn 1 is below the policy minimum"]
    explained = {"Authorization": "Bearer " + services.tokens.mint("ops", ["keys:transfer"])}
    r = client.post(
        f"/kbs/v1/keys/{kid}/transfer", json={"attestation_token": body["token"]}, headers=explained
    )
    assert r.status_code == 403 and r.json()["reasons"] == ["isvsvn 1 is below the policy minimum 2"]
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


def _broker_trusting(tmp_path: Path, jwks: object, issuer: str = "keybroker") -> Services:
    """A second keybroker whose passport mode trusts the first one's attestation service."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    jwks_file = tmp_path / "remote-jwks.json"
    jwks_file.write_text(json.dumps(jwks))
    settings = Settings(
        data_dir=tmp_path / "broker",
        database=f"sqlite:///{tmp_path / 'broker.db'}",
        dev=True,
        trust=TrustSettings(
            attestation_services=[TrustedAttestationService(issuer=issuer, jwks_file=jwks_file)]
        ),
    )
    return Services.build(settings)


def test_passport_tokens_of_a_trusted_remote_attestation_service(
    client: TestClient, services: Services, tmp_path: Path
) -> None:
    # "client" is the attestation service; the broker holds the key and trusts its JWKS only
    code, body = _attest(client, services)
    assert code == 200
    token = str(body["token"])
    broker = _broker_trusting(tmp_path, client.get("/.well-known/jwks.json").json())
    try:
        with TestClient(create_app(broker), base_url="https://testserver") as b:
            headers = {"Authorization": "Bearer " + broker.tokens.mint("admin", ["*:*"])}
            key = _setup(b, broker, headers, SGX_SIM_POLICY)
            kid, secret = key.key_id, key.secret
            r = b.post(f"/kbs/v1/keys/{kid}/transfer", json={"attestation_token": token})
            assert r.status_code == 200, r.text
            assert unwrap_v1(r.json(), _WORKLOAD) == secret
            (rec,) = [x for x in _audit(b, headers) if x["action"] == "key.transfer"]
            assert rec["outcome"] == "success" and rec["details"]["mode"] == "passport"
            # the remote token is checked in full every time: a tampered one is refused
            bad = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
            r = b.post(f"/kbs/v1/keys/{kid}/transfer", json={"attestation_token": bad})
            assert r.status_code == 401 and "signature" in r.json()["detail"]
            # the remote's policy decision does not bind the broker: its own key policy still applies
            code, low = _attest(client, services, isvsvn=1)
            r = b.post(f"/kbs/v1/keys/{kid}/transfer", json={"attestation_token": low["token"]})
            assert r.status_code == 403 and any("isvsvn 1" in x for x in r.json()["reasons"])
    finally:
        broker.db.dispose()


def test_remote_tokens_need_the_remote_configured(
    client: TestClient, services: Services, tmp_path: Path
) -> None:
    code, body = _attest(client, services)
    assert code == 200
    # a broker trusting another service's keys (its own keyring's JWKS stands in for a stranger's)
    stranger = Services.build(Settings(data_dir=tmp_path / "stranger", dev=True))
    try:
        broker = _broker_trusting(tmp_path, stranger.attestation.jwks())
    finally:
        stranger.db.dispose()
    try:
        with pytest.raises(Unauthenticated, match="unknown key"):
            broker.attestation.verify_token(str(body["token"]))
    finally:
        broker.db.dispose()
    # the right keys under the wrong issuer
    broker = _broker_trusting(tmp_path / "x", client.get("/.well-known/jwks.json").json(), issuer="other")
    try:
        with pytest.raises(Unauthenticated, match="iss"):
            broker.attestation.verify_token(str(body["token"]))
    finally:
        broker.db.dispose()


@pytest.mark.parametrize(
    "content", ["not json", "[]", '{"keys": []}', '{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}']
)
def test_a_bad_remote_jwks_file_is_refused_at_start(tmp_path: Path, content: str) -> None:
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(content)
    settings = Settings(
        data_dir=tmp_path / "d",
        dev=True,
        trust=TrustSettings(attestation_services=[TrustedAttestationService(jwks_file=jwks_file)]),
    )
    with pytest.raises(InvalidInput, match=r"trust\.attestation_services\[0\]\.jwks_file"):
        Services.build(settings)


def _audit(client: TestClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    return list(client.get("/kbs/v1/audit", headers=headers).json())


def test_a_dev_server_verifies_azure_snp_vtpm_evidence(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """``trust.dev_roots`` (with --dev: the SGX/TDX simulator's root and the SNP simulator's ARK)
    reach the Azure vTPM verifier, whose SEV-SNP report is checked by ``tee.snp`` and that refuses a
    dev root that is not an ARK: a dev server refused every Azure SEV-SNP vTPM's evidence at
    ``cert_chain`` ("dev root [0] CN 'keybroker DEV SGX Root CA ...' is not ARK-..."). Its SNP
    report is now given the ARKs among them, as the ``snp`` verifier is. (The corpus has no AMD CRL
    of its time: this server runs with ``snp.require_crl = false``, by default it is refused at crl.)"""
    from tests.conftest import template_for
    from tests.vectors.corpus import case, read_bytes, verify_at

    from keybroker.config import SnpSettings

    url = f"sqlite:///{tmp_path / 'nocrl.db'}"
    settings = Settings(
        data_dir=tmp_path / "nocrl", database=url, dev=True, snp=SnpSettings(require_crl=False)
    )
    services = Services.build(template_for(request, url).restore(settings))
    request.addfinalizer(services.db.dispose)
    client = TestClient(create_app(services), base_url="https://testserver")
    headers = {"Authorization": "Bearer " + services.tokens.mint("verifier", ["attestation:verify"])}
    assert services.settings.dev
    body = {
        "quote": base64.b64encode(
            read_bytes("azure-vtpm/coco-trustee/az-snp-vtpm/evidence-v2.json")
        ).decode(),
        "at": verify_at(case("dcap-tdx-azure-td")).isoformat(),
    }
    r = client.post("/attestation/v1/verify", json=body, headers=headers)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["verified"] is True and doc["tee"] == "az-snp-vtpm" and doc["sim"] is False
    assert "vmpl" in doc["checks"] and "cert_chain" in doc["checks"]


def test_a_verification_key_added_in_the_database_verifies_nothing(
    client: TestClient, services: Services, admin_headers: dict[str, str]
) -> None:
    """Whoever can write the database (not the root key) adds a retired EAR signing key row with a
    public key of theirs, then forges an EAR with it: the claims of an enclave the key's policy
    denies (ISVSVN 1), raised to ISVSVN 2. Before, the keyring's previous keys were read from the
    retired rows, so the forged EAR released the key; now they come from the sealed blob only."""
    from joserfc import jwt
    from joserfc.jwk import ECKey

    from keybroker.store.models import SigningKey

    key = _setup(client, services, admin_headers, SGX_SIM_POLICY)
    code, body = _attest(client, services, isvsvn=1)
    assert code == 200
    r = client.post(f"/kbs/v1/keys/{key.key_id}/transfer", json={"attestation_token": body["token"]})
    assert r.status_code == 403  # the genuine EAR of that enclave is denied

    attacker = ECKey.generate_key("P-384", private=True)
    now = datetime.now(UTC)
    with services.db.session() as s:
        s.add(
            SigningKey(
                kid=attacker.thumbprint(),
                alg="ES384",
                public_jwk=dict(attacker.as_dict(private=False)),
                sealed_private=b"",
                created_at=now,
                retired_at=now,
            )
        )
    claims = json.loads(base64.urlsafe_b64decode(str(body["token"]).split(".")[1] + "=="))
    raised = json.dumps(claims).replace('"isv_svn": 1', '"isv_svn": 2')
    assert raised != json.dumps(claims)
    forged = jwt.encode(
        {"alg": "ES384", "typ": "JWT", "kid": attacker.thumbprint()},
        json.loads(raised),
        attacker,
        algorithms=["ES384"],
    )
    r = client.post(f"/kbs/v1/keys/{key.key_id}/transfer", json={"attestation_token": forged})
    assert r.status_code == 401, r.text
    jwks = client.get("/.well-known/jwks.json").json()
    assert attacker.thumbprint() not in {k["kid"] for k in jwks["keys"]}
    # the keys it rotated itself still verify (sealed with the new current key)
    _, good = _attest(client, services)
    services.attestation.keyring.rotate()
    services.attestation.verify_token(str(good["token"]))
