"""Key-transfer policies: strict validation (hypothesis) and CRUD."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.helpers.api import SGX_POLICY, TDX_POLICY


def test_crud(client: TestClient, admin_headers: dict[str, str]) -> None:
    r = client.post("/kbs/v1/key-transfer-policies", json=SGX_POLICY, headers=admin_headers)
    assert r.status_code == 201
    pid = r.json()["id"]
    assert r.json()["sgx"]["attributes"]["isvsvn"] == 1
    updated = copy.deepcopy(SGX_POLICY)
    updated["sgx"]["attributes"]["isvsvn"] = 7
    r = client.put(f"/kbs/v1/key-transfer-policies/{pid}", json=updated, headers=admin_headers)
    assert r.status_code == 200 and r.json()["sgx"]["attributes"]["isvsvn"] == 7
    assert [p["id"] for p in client.get("/kbs/v1/key-transfer-policies", headers=admin_headers).json()] == [
        pid
    ]
    assert client.delete(f"/kbs/v1/key-transfer-policies/{pid}", headers=admin_headers).status_code == 204
    assert client.get(f"/kbs/v1/key-transfer-policies/{pid}", headers=admin_headers).status_code == 404
    assert (
        client.put(f"/kbs/v1/key-transfer-policies/{pid}", json=updated, headers=admin_headers).status_code
        == 404
    )


def test_delete_in_use_is_409(client: TestClient, admin_headers: dict[str, str]) -> None:
    pid = client.post("/kbs/v1/key-transfer-policies", json=TDX_POLICY, headers=admin_headers).json()["id"]
    kid = client.post(
        "/kbs/v1/keys",
        json={"key_information": {"algorithm": "AES", "key_length": 128}, "transfer_policy_id": pid},
        headers=admin_headers,
    ).json()["key_information"]["id"]
    r = client.delete(f"/kbs/v1/key-transfer-policies/{pid}", headers=admin_headers)
    assert r.status_code == 409 and kid in r.json()["detail"]
    client.delete(f"/kbs/v1/keys/{kid}", headers=admin_headers)
    assert client.delete(f"/kbs/v1/key-transfer-policies/{pid}", headers=admin_headers).status_code == 204


def _mutate(base: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    body = copy.deepcopy(base)
    node = body
    for k in path[:-1]:
        node = node[k]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return body


_DELETE = object()


@pytest.mark.parametrize(
    ("base", "path", "value", "field_fragment", "message_fragment"),
    [
        (SGX_POLICY, ["sgx", "attributes", "mrsigner"], ["abc"], "mrsigner", "64 hex"),
        (SGX_POLICY, ["sgx", "attributes", "mrsigner"], [], "mrsigner", "at least 1"),
        (SGX_POLICY, ["sgx", "attributes", "mrsigner"], _DELETE, "mrsigner", "required"),
        (SGX_POLICY, ["sgx", "attributes", "isvprodid"], _DELETE, "isvprodid", "required"),
        (SGX_POLICY, ["sgx", "attributes", "isvsvn"], "1", "isvsvn", "integer"),
        (SGX_POLICY, ["sgx", "attributes", "isvsvn"], 70000, "isvsvn", "65535"),
        (SGX_POLICY, ["sgx", "attributes", "mrenclave"], ["z" * 64], "mrenclave", "hex"),
        (
            SGX_POLICY,
            ["sgx", "attributes", "enforce_tcb_upto_date"],
            "yes",
            "enforce_tcb_upto_date",
            "boolean",
        ),
        (SGX_POLICY, ["sgx", "attributes", "colour"], "red", "colour", "unknown field"),
        (SGX_POLICY, ["attestation_type"], ["SGX", "TDX"], "body", "no tdx section"),
        (SGX_POLICY, ["attestation_type"], ["SNP"], "body", "no snp section"),
        (SGX_POLICY, ["attestation_type"], ["TPM"], "body", "no tpm section"),
        (SGX_POLICY, ["attestation_type"], ["XYZ"], "attestation_type", "SGX"),
        (SGX_POLICY, ["attestation_type"], [], "attestation_type", "at least 1"),
        (TDX_POLICY, ["tdx", "attributes", "mrseam"], ["a" * 64], "mrseam", "96 hex"),
        (TDX_POLICY, ["tdx", "attributes", "rtmr2"], "b" * 95, "rtmr2", "96 hex"),
        (TDX_POLICY, ["tdx", "attributes", "mrsignerseam"], _DELETE, "mrsignerseam", "required"),
        (TDX_POLICY, ["allow_debug"], 1, "allow_debug", "boolean"),
    ],
)
def test_invalid_policies(
    client: TestClient,
    admin_headers: dict[str, str],
    base: dict[str, Any],
    path: list[str],
    value: Any,
    field_fragment: str,
    message_fragment: str,
) -> None:
    r = client.post("/kbs/v1/key-transfer-policies", json=_mutate(base, path, value), headers=admin_headers)
    assert r.status_code == 400, r.text
    problem = r.json()
    assert field_fragment in problem["field"]
    assert message_fragment.lower() in problem["detail"].lower()
    assert client.get("/kbs/v1/key-transfer-policies", headers=admin_headers).json() == []


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_json)
def test_arbitrary_json_never_500(client: TestClient, admin_headers: dict[str, str], body: Any) -> None:
    for path in ("/kbs/v1/key-transfer-policies", "/kbs/v1/keys"):
        r = client.post(
            path, content=json.dumps(body), headers={**admin_headers, "Content-Type": "application/json"}
        )
        assert r.status_code in (201, 400), (path, body, r.text)
        if r.status_code == 400:
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["detail"]
