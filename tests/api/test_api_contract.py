"""The API's contract, on SQLite and PostgreSQL: RFC 3339 timestamps with Z, integer parameters
within the database's range, no unknown query parameters, and an OpenAPI document that says what
the server sends (adversarial review, issue 11)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.helpers.api import SGX_POLICY

_RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")


def _is_now(text: str) -> None:
    assert _RFC3339_Z.fullmatch(text), text
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert abs(datetime.now(UTC) - when) < timedelta(minutes=5), text


def test_timestamps_are_rfc3339_utc_with_z(client: TestClient, admin_headers: dict[str, str]) -> None:
    """SQLite hands back naive datetimes: the API sent "2026-05-01T12:00:00.123456", no zone."""
    policy = client.post("/kbs/v1/key-transfer-policies", json=SGX_POLICY, headers=admin_headers)
    assert policy.status_code == 201, policy.text
    pid = policy.json()["id"]
    key = client.post(
        "/kbs/v1/keys",
        json={"key_information": {"algorithm": "EC", "curve_type": "secp256r1"}, "transfer_policy_id": pid},
        headers=admin_headers,
    )
    assert key.status_code == 201, key.text
    kid = key.json()["key_information"]["id"]
    cert = client.post(
        f"/kbs/v1/keys/{kid}/certificate", json={"common_name": "a.example.com"}, headers=admin_headers
    )
    assert cert.status_code == 201, cert.text

    for doc in (
        policy.json(),
        client.get(f"/kbs/v1/key-transfer-policies/{pid}", headers=admin_headers).json(),
        client.get("/kbs/v1/key-transfer-policies", headers=admin_headers).json()[0],
    ):
        _is_now(doc["created_at"])
        _is_now(doc["updated_at"])
    for doc in (
        key.json(),
        client.get(f"/kbs/v1/keys/{kid}", headers=admin_headers).json(),
        client.get("/kbs/v1/keys", headers=admin_headers).json()[0],
    ):
        _is_now(doc["created_at"])
    for doc in (cert.json(), client.get(f"/kbs/v1/keys/{kid}/certificate", headers=admin_headers).json()):
        not_after = doc["not_after"]
        assert _RFC3339_Z.fullmatch(not_after), not_after
        left = datetime.fromisoformat(not_after.replace("Z", "+00:00")) - datetime.now(UTC)
        assert timedelta(days=364) < left <= timedelta(days=365)
    for record in client.get("/kbs/v1/audit", headers=admin_headers).json():
        _is_now(record["time"])


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("after=9223372036854775808", "after"),  # was an OverflowError in the database driver: 500
        ("after=99999999999999999999999999", "after"),
        ("after=-1", "after"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("after=1e3", "after"),
    ],
)
def test_audit_parameters_out_of_range_are_a_400(
    client: TestClient, admin_headers: dict[str, str], query: str, field: str
) -> None:
    r = client.get(f"/kbs/v1/audit?{query}", headers=admin_headers)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["field"] == field


def test_audit_after_at_the_top_of_the_range_is_an_empty_page(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    r = client.get("/kbs/v1/audit?after=9223372036854775807&limit=1000", headers=admin_headers)
    assert r.status_code == 200 and r.json() == []


def test_unknown_query_parameters_are_refused(client: TestClient, admin_headers: dict[str, str]) -> None:
    """A misspelt filter (keylength for keyLength) listed every key as if it had matched."""
    r = client.get("/kbs/v1/keys?keylength=2048", headers=admin_headers)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "keylength"
    assert "unknown query parameter 'keylength'" in r.json()["detail"]
    assert "keyLength" in r.json()["detail"]
    r = client.get("/healthz?x=1")
    assert r.status_code == 400 and "it takes none" in r.json()["detail"]
    assert client.get("/kbs/v1/keys?keyLength=2048", headers=admin_headers).status_code == 200


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in doc["paths"].items() for method, op in item.items()]


def test_openapi_documents_problems_not_422(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "a keybroker token (ES384 JWT; see 'keybroker token create'), or a JWT of the "
        "configured OpenID Connect provider",
    }
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for method, path, op in _operations(doc):
        answers = op["responses"]
        assert "422" not in answers, (method, path)
        for code, answer in answers.items():
            if int(code) >= 400:
                assert answer["content"] == problem, (method, path, code)
        if "application/json" in op.get("requestBody", {}).get("content", {}):
            assert {"400", "413", "415"} <= set(answers), (method, path)
        if op.get("parameters"):
            assert "400" in answers, (method, path)
        if {"bearer": []} in op.get("security", []):
            assert {"401", "403"} <= set(answers), (method, path)


def test_openapi_states_the_checks_the_server_makes(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    audit = doc["paths"]["/kbs/v1/audit"]["get"]["parameters"]
    after = next(p for p in audit if p["name"] == "after")["schema"]
    assert after["maximum"] == 2**63 - 1 and after["minimum"] == 0
    transfer = doc["paths"]["/kbs/v1/keys/{key_id}/transfer"]["post"]
    assert transfer["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TransferIn"
    }
    assert schemas["NonceIn"]["properties"]["val"]["pattern"] == "^[A-Za-z0-9+/]{43}=$"
    header = next(p for p in transfer["parameters"] if p["name"] == "Attestation-Type")
    assert header["schema"]["anyOf"][0]["enum"] == [
        "SGX",
        "TDX",
        "SNP",
        "TPM",
        "AZ-SNP-VTPM",
        "AZ-TDX-VTPM",
        "NONE",
    ]
    assert set(transfer["responses"]) >= {"200", "400", "401", "403", "404", "413", "415", "503"}
    key_in = schemas["KeyInformationIn"]["properties"]
    assert key_in["key_length"]["anyOf"][0]["enum"] == [128, 192, 256, 2048, 3072, 4096]
    put = doc["paths"]["/kbs/v0/resource/{repository}/{rtype}/{tag}"]["post"]
    assert set(put["requestBody"]["content"]) == {"application/octet-stream", "application/json"}
    assert schemas["KeyOut"]["properties"]["created_at"]["format"] == "date-time"


@pytest.mark.parametrize("query", ["algorithm=%00", "curveType=p-256%00", "transferPolicyId=%00"])
def test_nul_in_a_query_parameter_is_a_400(
    client: TestClient, admin_headers: dict[str, str], query: str
) -> None:
    """PostgreSQL's driver refuses NUL in text: GET /kbs/v1/keys?algorithm=%00 was a 500 there."""
    r = client.get(f"/kbs/v1/keys?{query}", headers=admin_headers)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == query.split("=")[0]
