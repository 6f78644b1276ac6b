"""``attestation.remote_url``: /kbs/v1 background checks verified by a remote attestation service
(a second, real ``keybroker serve --dev`` over HTTPS), the key's policy still evaluated by the broker."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from tests.api.test_transfer_v1 import _WORKLOAD, SGX_SIM_POLICY, SPKI, _setup
from tests.helpers.api import unwrap_v1
from tests.helpers.postgres import free_port
from tests.helpers.server import Server

from keybroker.api.app import create_app
from keybroker.api.services import DEV_PKI_DIR, Services
from keybroker.config import AttestationSettings, Settings, TrustedAttestationService, TrustSettings
from keybroker.errors import InvalidInput
from keybroker.tee import sim
from keybroker.wire import binding


@pytest.fixture(scope="module")
def attester(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("attester") / "data", extra=["--dev"]).start()
    yield server
    server.stop()


def _settings(tmp_path: Path, attester: Server, jwks: Any) -> Settings:
    jwks_file = tmp_path / "attester-jwks.json"
    jwks_file.write_text(json.dumps(jwks))
    return Settings(
        data_dir=tmp_path / "broker",
        dev=True,  # auto-unseal; the broker's own dev PKI is not what the attester trusts
        attestation=AttestationSettings(remote_url=attester.url, remote_ca_file=attester.ca),
        trust=TrustSettings(attestation_services=[TrustedAttestationService(jwks_file=jwks_file)]),
    )


@pytest.fixture
def broker(tmp_path: Path, attester: Server) -> Iterator[tuple[TestClient, Services, dict[str, str]]]:
    with attester.client() as c:
        jwks = c.get("/.well-known/jwks.json").json()
    services = Services.build(_settings(tmp_path, attester, jwks))
    headers = {"Authorization": "Bearer " + services.tokens.mint("admin", ["*:*"])}
    with TestClient(create_app(services), base_url="https://testserver") as client:
        yield client, services, headers
    services.db.dispose()


def _transfer(
    client: TestClient, attester: Server, key_id: str, *, spki: bytes = SPKI, **quote_fields: Any
) -> tuple[httpx.Response, dict[str, Any]]:
    r = client.post(f"/kbs/v1/keys/{key_id}/transfer")
    assert r.status_code == 200, r.text
    nonce = r.json()["nonce"]
    pki = sim.DevPki.load(attester.data_dir / DEV_PKI_DIR)  # evidence the attester's dev root signs
    quote_fields.setdefault("isvprodid", 7)
    quote_fields.setdefault("isvsvn", 2)
    quote = sim.sgx_quote(
        pki, report_data=binding.v1_report_data(base64.b64decode(nonce["val"]), spki), **quote_fields
    )
    body = {
        "quote": base64.b64encode(quote).decode(),
        "nonce": nonce,
        "user_data": base64.b64encode(SPKI).decode(),
    }
    return client.post(
        f"/kbs/v1/keys/{key_id}/transfer", json=body, headers={"Attestation-Type": "SGX"}
    ), body


def _audit(client: TestClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    return [r for r in client.get("/kbs/v1/audit", headers=headers).json() if r["action"] == "key.transfer"]


def test_background_check_verified_remotely(
    broker: tuple[TestClient, Services, dict[str, str]], attester: Server
) -> None:
    client, services, headers = broker
    key = _setup(client, services, headers, SGX_SIM_POLICY)
    key_id, secret = key.key_id, key.secret
    r, body = _transfer(client, attester, key_id)
    assert r.status_code == 200, r.text
    assert unwrap_v1(r.json(), _WORKLOAD) == secret
    (rec,) = _audit(client, headers)
    assert rec["outcome"] == "success"
    assert rec["details"]["verifier"] == attester.url and rec["details"]["ear_status"] == "warning"
    # the broker recorded the remote's nonce too: single use, this key
    r = client.post(f"/kbs/v1/keys/{key_id}/transfer", json=body, headers={"Attestation-Type": "SGX"})
    assert r.status_code == 403 and "already used" in r.json()["detail"]
    other = _setup(client, services, headers, SGX_SIM_POLICY).key_id
    r = client.post(f"/kbs/v1/keys/{other}/transfer", json=body, headers={"Attestation-Type": "SGX"})
    assert r.status_code == 403 and "another key" in r.json()["detail"]


def test_the_brokers_own_policy_decides(
    broker: tuple[TestClient, Services, dict[str, str]], attester: Server
) -> None:
    client, services, headers = broker
    key_id = _setup(client, services, headers, SGX_SIM_POLICY).key_id
    r, _ = _transfer(client, attester, key_id, isvsvn=1)
    assert r.status_code == 403 and any("isvsvn 1" in x for x in r.json()["reasons"])
    rec = _audit(client, headers)[-1]
    assert rec["outcome"] == "denied" and "isvsvn 1" in rec["reason"]


def test_evidence_refused_by_the_remote_is_denied_with_its_check(
    broker: tuple[TestClient, Services, dict[str, str]], attester: Server
) -> None:
    client, services, headers = broker
    key_id = _setup(client, services, headers, SGX_SIM_POLICY).key_id
    other_spki = SPKI[:-1] + bytes([SPKI[-1] ^ 1])
    r, _ = _transfer(client, attester, key_id, spki=other_spki)  # bound to another key
    assert r.status_code == 400, r.text
    assert r.json()["check"] == "report_data" and "remote attestation service" in r.json()["detail"]
    rec = _audit(client, headers)[-1]
    assert rec["outcome"] == "denied" and rec["details"]["failed_check"] == "report_data"


def test_untrusted_remote_tokens_and_configuration_errors(tmp_path: Path, attester: Server) -> None:
    # trusting some other JWKS: the remote's tokens are refused
    stranger = Services.build(Settings(data_dir=tmp_path / "stranger", dev=True))
    jwks = stranger.attestation.jwks()
    stranger.db.dispose()
    services = Services.build(_settings(tmp_path, attester, jwks))
    try:
        headers = {"Authorization": "Bearer " + services.tokens.mint("admin", ["*:*"])}
        with TestClient(create_app(services), base_url="https://testserver") as client:
            key_id = _setup(client, services, headers, SGX_SIM_POLICY).key_id
            r, _ = _transfer(client, attester, key_id)
            assert r.status_code == 401 and "unknown key" in r.json()["detail"]
    finally:
        services.db.dispose()
    # a remote without its JWKS named is refused at start
    with pytest.raises(InvalidInput, match=r"trust\.attestation_services"):
        Services.build(
            Settings(
                data_dir=tmp_path / "b2",
                dev=True,
                attestation=AttestationSettings(remote_url=attester.url, remote_ca_file=attester.ca),
            )
        )
    with pytest.raises(ValueError, match="https"):
        AttestationSettings(remote_url="http://attester.example")


def test_remote_down_is_a_503_naming_it(tmp_path: Path, attester: Server) -> None:
    with attester.client() as c:
        jwks = c.get("/.well-known/jwks.json").json()
    settings = _settings(tmp_path, attester, jwks)
    down = f"https://127.0.0.1:{free_port()}"
    settings = settings.model_copy(
        update={"attestation": AttestationSettings(remote_url=down, remote_ca_file=attester.ca)}
    )
    services = Services.build(settings)
    try:
        headers = {"Authorization": "Bearer " + services.tokens.mint("admin", ["*:*"])}
        with TestClient(create_app(services), base_url="https://testserver") as client:
            key_id = _setup(client, services, headers, SGX_SIM_POLICY).key_id
            r = client.post(f"/kbs/v1/keys/{key_id}/transfer")
            assert r.status_code == 503 and down in r.json()["detail"]
    finally:
        services.db.dispose()
