"""The /kbs/v1 keys API, against SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient
from tests.helpers.api import SGX_POLICY, TDX_POLICY

from keybroker.api.services import Services


def _policy(client: TestClient, headers: dict[str, str], body: dict[str, Any] = SGX_POLICY) -> str:
    r = client.post("/kbs/v1/key-transfer-policies", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _create(client: TestClient, headers: dict[str, str], info: dict[str, Any], **extra: Any) -> Any:
    return client.post("/kbs/v1/keys", json={"key_information": info, **extra}, headers=headers)


@pytest.mark.parametrize(
    ("info", "length", "curve"),
    [
        ({"algorithm": "AES", "key_length": 128}, 128, None),
        ({"algorithm": "AES", "key_length": 192}, 192, None),
        ({"algorithm": "AES", "key_length": 256}, 256, None),
        ({"algorithm": "RSA", "key_length": 2048}, 2048, None),
        ({"algorithm": "RSA", "key_length": 3072}, 3072, None),
        ({"algorithm": "EC", "curve_type": "secp256r1"}, 256, "secp256r1"),
        ({"algorithm": "EC", "curve_type": "prime256v1"}, 256, "secp256r1"),
        ({"algorithm": "EC", "curve_type": "secp384r1"}, 384, "secp384r1"),
        ({"algorithm": "EC", "curve_type": "secp521r1"}, 521, "secp521r1"),
    ],
)
def test_generate_each_type(
    client: TestClient, admin_headers: dict[str, str], info: dict[str, Any], length: int, curve: str | None
) -> None:
    pid = _policy(client, admin_headers)
    r = _create(client, admin_headers, info, transfer_policy_id=pid, label="l1", usage="tls")
    assert r.status_code == 201, r.text
    body = r.json()
    ki = body["key_information"]
    assert ki["algorithm"] == info["algorithm"]
    assert ki["key_length"] == length
    assert ki["curve_type"] == curve
    assert body["transfer_policy_id"] == pid
    assert body["transfer_link"].endswith(f"/kbs/v1/keys/{ki['id']}/transfer")
    assert body["label"] == "l1" and body["usage"] == "tls"
    if info["algorithm"] == "AES":
        assert ki["public_key"] is None
    else:
        pub = serialization.load_pem_public_key(ki["public_key"].encode())
        assert isinstance(pub, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    # no private material anywhere in the response
    assert "PRIVATE" not in r.text and "key_string" not in r.text


def test_get_list_filter_delete(client: TestClient, admin_headers: dict[str, str]) -> None:
    pid = _policy(client, admin_headers)
    a = _create(client, admin_headers, {"algorithm": "AES", "key_length": 256}, transfer_policy_id=pid).json()
    b = _create(client, admin_headers, {"algorithm": "EC", "curve_type": "secp384r1"}).json()
    kid_a, kid_b = a["key_information"]["id"], b["key_information"]["id"]

    r = client.get(f"/kbs/v1/keys/{kid_a}", headers=admin_headers)
    assert r.status_code == 200 and r.json()["key_information"]["id"] == kid_a

    ids = {k["key_information"]["id"] for k in client.get("/kbs/v1/keys", headers=admin_headers).json()}
    assert ids == {kid_a, kid_b}
    only_aes = client.get("/kbs/v1/keys", params={"algorithm": "aes"}, headers=admin_headers).json()
    assert [k["key_information"]["id"] for k in only_aes] == [kid_a]
    by_len = client.get("/kbs/v1/keys", params={"keyLength": 384}, headers=admin_headers).json()
    assert [k["key_information"]["id"] for k in by_len] == [kid_b]
    by_curve = client.get("/kbs/v1/keys", params={"curveType": "secp384r1"}, headers=admin_headers).json()
    assert [k["key_information"]["id"] for k in by_curve] == [kid_b]
    by_policy = client.get("/kbs/v1/keys", params={"transferPolicyId": pid}, headers=admin_headers).json()
    assert [k["key_information"]["id"] for k in by_policy] == [kid_a]

    assert client.delete(f"/kbs/v1/keys/{kid_a}", headers=admin_headers).status_code == 204
    r = client.get(f"/kbs/v1/keys/{kid_a}", headers=admin_headers)
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert kid_a in r.json()["detail"]
    assert client.delete(f"/kbs/v1/keys/{kid_a}", headers=admin_headers).status_code == 404


def test_delete_destroys_material(
    client: TestClient, admin_headers: dict[str, str], services: Services
) -> None:
    from keybroker.store.models import KeyMaterial

    kid = _create(client, admin_headers, {"algorithm": "AES", "key_length": 256}).json()["key_information"][
        "id"
    ]
    with services.db.session() as s:
        assert s.get(KeyMaterial, kid) is not None
    client.delete(f"/kbs/v1/keys/{kid}", headers=admin_headers)
    with services.db.session() as s:
        assert s.get(KeyMaterial, kid) is None


def test_import_rsa_and_ec_pem_and_aes(
    client: TestClient, admin_headers: dict[str, str], services: Services
) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    r = _create(client, admin_headers, {"algorithm": "RSA", "key_string": pem})
    assert r.status_code == 201, r.text
    ki = r.json()["key_information"]
    assert ki["key_length"] == 3072
    pub = serialization.load_pem_public_key(ki["public_key"].encode())
    assert isinstance(pub, rsa.RSAPublicKey) and pub.public_numbers() == rsa_key.public_key().public_numbers()
    # the material stored decrypts to the same key (keystore round trip)
    with services.db.session() as s:
        der = services.keystore.fetch(s, ki["id"], None)
    assert serialization.load_der_private_key(der, None).private_numbers() == rsa_key.private_numbers()  # type: ignore[union-attr]

    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    r = _create(client, admin_headers, {"algorithm": "EC", "curve_type": "prime256v1", "key_string": pem})
    assert r.status_code == 201, r.text
    assert r.json()["key_information"]["curve_type"] == "secp256r1"

    raw = os.urandom(32)
    r = _create(
        client,
        admin_headers,
        {"algorithm": "AES", "key_length": 256, "key_string": base64.b64encode(raw).decode()},
    )
    assert r.status_code == 201, r.text
    with services.db.session() as s:
        assert services.keystore.fetch(s, r.json()["key_information"]["id"], None) == raw


@pytest.mark.parametrize(
    ("info", "field", "fragment"),
    [
        ({"algorithm": "DES", "key_length": 56}, "key_information.algorithm", "unknown algorithm"),
        ({"algorithm": "AES", "key_length": 100}, "key_information.key_length", "AES key_length"),
        ({"algorithm": "RSA", "key_length": 1024}, "key_information.key_length", "RSA key_length"),
        ({"algorithm": "EC", "curve_type": "secp224r1"}, "key_information.curve_type", "unknown curve_type"),
        ({"algorithm": "EC"}, "key_information.curve_type", "curve_type"),
        (
            {"algorithm": "AES", "key_length": 256, "key_string": "not base64!"},
            "key_information.key_string",
            "base64",
        ),
        (
            {"algorithm": "AES", "key_length": 128, "key_string": base64.b64encode(b"x" * 32).decode()},
            "key_information.key_string",
            "256-bit",
        ),
        (
            {
                "algorithm": "RSA",
                "key_string": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            },
            "key_information.key_string",
            "PEM",
        ),
        (
            {"algorithm": "AES", "key_length": 256, "kmip_key_id": "1234"},
            "key_information.kmip_key_id",
            "built-in key store",
        ),
        ({"algorithm": "AES", "key_length": "256"}, "key_information.key_length", "integer"),
        ({"algorithm": "AES", "key_length": 256, "extra": 1}, "key_information.extra", "unknown field"),
    ],
)
def test_bad_key_requests(
    client: TestClient,
    admin_headers: dict[str, str],
    services: Services,
    info: dict[str, Any],
    field: str,
    fragment: str,
) -> None:
    r = _create(client, admin_headers, info)
    assert r.status_code == 400, r.text
    problem = r.json()
    assert r.headers["content-type"] == "application/problem+json"
    assert problem["field"] == field
    assert fragment in problem["detail"]
    assert client.get("/kbs/v1/keys", headers=admin_headers).json() == []


def test_import_wrong_type_pem(client: TestClient, admin_headers: dict[str, str]) -> None:
    ec_key = ec.generate_private_key(ec.SECP384R1())
    pem = ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    r = _create(client, admin_headers, {"algorithm": "RSA", "key_string": pem})
    assert r.status_code == 400 and "not an RSA private key" in r.json()["detail"]
    r = _create(client, admin_headers, {"algorithm": "EC", "curve_type": "secp256r1", "key_string": pem})
    assert r.status_code == 400 and "secp384r1" in r.json()["detail"]
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = small.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    r = _create(client, admin_headers, {"algorithm": "RSA", "key_string": pem})
    assert r.status_code == 400 and "1024" in r.json()["detail"]


def test_unknown_policy_rejected_and_nothing_stored(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    r = _create(
        client,
        admin_headers,
        {"algorithm": "AES", "key_length": 256},
        transfer_policy_id="0b7d1d0e-7f6b-4b1e-9d7c-2f5d7f1d2a11",
    )
    assert r.status_code == 400 and r.json()["field"] == "transfer_policy_id"
    assert client.get("/kbs/v1/keys", headers=admin_headers).json() == []


def test_malformed_bodies(client: TestClient, admin_headers: dict[str, str]) -> None:
    h = {**admin_headers, "Content-Type": "application/json"}
    r = client.post("/kbs/v1/keys", content=b"{not json", headers=h)
    assert r.status_code == 400 and r.json()["field"] == "body" and "not valid JSON" in r.json()["detail"]
    r = client.post("/kbs/v1/keys", content=b"[]", headers=h)
    assert r.status_code == 400
    r = client.post(
        "/kbs/v1/keys",
        content=b'{"key_information": {"algorithm": "AES", "key_length": 256}}',
        headers={**admin_headers, "Content-Type": "text/plain"},
    )
    assert r.status_code == 415
    big = b'{"label": "' + b"a" * (1024 * 1024 + 10) + b'"}'
    r = client.post("/kbs/v1/keys", content=big, headers=h)
    assert r.status_code == 413
    assert client.get("/kbs/v1/keys", headers=admin_headers).json() == []


def test_certificate_ca_signed_and_self_signed(
    client: TestClient, admin_headers: dict[str, str], services: Services
) -> None:
    kid = _create(client, admin_headers, {"algorithm": "RSA", "key_length": 3072}).json()["key_information"][
        "id"
    ]
    r = client.get(f"/kbs/v1/keys/{kid}/certificate", headers=admin_headers)
    assert r.status_code == 404 and "no certificate" in r.json()["detail"]
    r = client.post(
        f"/kbs/v1/keys/{kid}/certificate",
        json={"common_name": "nginx.example", "sans": ["nginx.example", "127.0.0.1"], "validity_days": 30},
        headers=admin_headers,
    )
    assert r.status_code == 201, r.text
    chain = x509.load_pem_x509_certificates(r.json()["certificate"].encode())
    leaf, ca = chain
    assert ca == services.issuing_ca.cert
    leaf.verify_directly_issued_by(services.issuing_ca.cert)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["nginx.example"]
    key_pub = client.get(f"/kbs/v1/keys/{kid}", headers=admin_headers).json()["key_information"]["public_key"]
    assert (
        leaf.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
        == key_pub
    )
    got = client.get(f"/kbs/v1/keys/{kid}/certificate", headers=admin_headers).json()
    assert got["serial"] == r.json()["serial"]

    r = client.post(
        f"/kbs/v1/keys/{kid}/certificate",
        json={"common_name": "self", "self_signed": True},
        headers=admin_headers,
    )
    assert r.status_code == 201
    (cert,) = x509.load_pem_x509_certificates(r.json()["certificate"].encode())
    cert.verify_directly_issued_by(cert)

    aes = _create(client, admin_headers, {"algorithm": "AES", "key_length": 256}).json()["key_information"][
        "id"
    ]
    r = client.post(f"/kbs/v1/keys/{aes}/certificate", json={"common_name": "x"}, headers=admin_headers)
    assert r.status_code == 400 and "RSA or EC" in r.json()["detail"]
    r = client.post(
        f"/kbs/v1/keys/{kid}/certificate",
        json={"common_name": "x", "sans": ["bad name"]},
        headers=admin_headers,
    )
    assert r.status_code == 400 and r.json()["field"] == "sans"


def test_tdx_policy_round_trip(client: TestClient, admin_headers: dict[str, str]) -> None:
    pid = _policy(client, admin_headers, TDX_POLICY)
    body = client.get(f"/kbs/v1/key-transfer-policies/{pid}", headers=admin_headers).json()
    assert body["tdx"]["attributes"]["mrtd"] == ["a" * 96]
    assert body["allow_debug"] is False and body["allow_simulated"] is False


def test_version_and_openapi(client: TestClient) -> None:
    assert client.get("/kbs/v1/version").json()["name"] == "keybroker"
    spec = client.get("/openapi.json").json()
    assert "/kbs/v1/keys" in spec["paths"] and "/kbs/v1/key-transfer-policies/{policy_id}" in spec["paths"]
    assert "post" in spec["paths"]["/kbs/v1/keys/{key_id}/certificate"]


def test_create_is_atomic_when_the_keystore_fails(
    client: TestClient, admin_headers: dict[str, str], services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metadata, material and audit record land together or not at all."""
    from sqlalchemy import func, select

    from keybroker.errors import BackendUnavailable
    from keybroker.store.models import AuditRecord, Key

    with services.db.session() as s:
        audits_before = s.scalar(select(func.count()).select_from(AuditRecord))

    def broken_put(*_: Any) -> None:
        raise BackendUnavailable("key store went away mid-write")

    monkeypatch.setattr(services.keystore, "put", broken_put)
    r = _create(client, admin_headers, {"algorithm": "AES", "key_length": 256})
    assert r.status_code == 503 and "mid-write" in r.json()["detail"]
    with services.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Key)) == 0
        # only the failure record was appended, no successful key.create
        rows = s.execute(select(AuditRecord.action, AuditRecord.outcome).order_by(AuditRecord.seq))
        actions = [tuple(r) for r in rows][audits_before:]
    assert actions == [("key.create", "failed")]
