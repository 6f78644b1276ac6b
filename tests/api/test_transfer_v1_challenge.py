"""The ``/kbs/v1`` transfer challenge names the key's public half (RSA/EC) before any evidence is sent,
so that a workload can see it already holds the key and spend no release; a secret's is null."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from tests.api.test_transfer_v1 import TDX_SIM_POLICY

from keybroker.api.services import Services


def _key(client: TestClient, admin: dict[str, str], info: dict[str, Any]) -> dict[str, Any]:
    pid = client.post("/kbs/v1/key-transfer-policies", json=TDX_SIM_POLICY, headers=admin).json()["id"]
    r = client.post("/kbs/v1/keys", json={"key_information": info, "transfer_policy_id": pid}, headers=admin)
    assert r.status_code == 201, r.text
    return dict(r.json()["key_information"])


def _der(pem: str) -> bytes:
    return serialization.load_pem_public_key(pem.encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _ec_pem() -> str:
    return (
        ec.generate_private_key(ec.SECP384R1())
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
    )


@pytest.mark.parametrize(
    "info",
    [
        {"algorithm": "RSA", "key_length": 3072},
        {"algorithm": "EC", "curve_type": "secp384r1"},
        "imported EC",
    ],
    ids=["rsa", "ec", "ec-imported"],
)
def test_challenge_names_the_public_key(
    client: TestClient, services: Services, admin_headers: dict[str, str], info: Any
) -> None:
    if info == "imported EC":
        info = {"algorithm": "EC", "curve_type": "secp384r1", "key_string": _ec_pem()}
    key = _key(client, admin_headers, info)
    before = client.get("/kbs/v1/audit?limit=1000", headers=admin_headers).json()
    r = client.post(f"/kbs/v1/keys/{key['id']}/transfer")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"nonce", "public_key"}
    assert base64.b64decode(body["public_key"], validate=True) == _der(key["public_key"])
    # asking costs nothing: no release, no audit record
    after = client.get("/kbs/v1/audit?limit=1000", headers=admin_headers).json()
    assert [a for a in after if a["action"] == "key.transfer"] == [
        b for b in before if b["action"] == "key.transfer"
    ]


def test_challenge_of_a_secret_has_a_null_public_key(
    client: TestClient, services: Services, admin_headers: dict[str, str]
) -> None:
    key = _key(
        client, admin_headers, {"algorithm": "AES", "key_string": base64.b64encode(os.urandom(32)).decode()}
    )
    body = client.post(f"/kbs/v1/keys/{key['id']}/transfer").json()
    assert body["public_key"] is None and "public_key" in body and body["nonce"]["val"]
