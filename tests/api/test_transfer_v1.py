"""/kbs/v1 attested key transfer end to end through HTTP, with simulator evidence."""

from __future__ import annotations

import base64
import copy
import os
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient
from tests.helpers.api import token_headers, unwrap_v1

from keybroker.api.services import DEV_PKI_DIR, Services
from keybroker.tee import sim
from keybroker.wire import binding

_WORKLOAD = rsa.generate_private_key(public_exponent=65537, key_size=3072)
SPKI = _WORKLOAD.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
)

#: the SGX policy leaves enforce_tcb_upto_date out (false), as it always has here
SGX_SIM_POLICY: dict[str, Any] = sim.sim_policy("sgx", enforce_tcb_upto_date=None)
TDX_SIM_POLICY: dict[str, Any] = sim.sim_policy("tdx")


@dataclass
class Setup:
    client: TestClient
    services: Services
    admin: dict[str, str]
    pki: sim.DevPki
    key_id: str
    secret: bytes


def _setup(client: TestClient, services: Services, admin: dict[str, str], policy: dict[str, Any]) -> Setup:
    pid = client.post("/kbs/v1/key-transfer-policies", json=policy, headers=admin).json()["id"]
    secret = os.urandom(32)
    r = client.post(
        "/kbs/v1/keys",
        json={
            "key_information": {"algorithm": "AES", "key_string": base64.b64encode(secret).decode()},
            "transfer_policy_id": pid,
        },
        headers=admin,
    )
    assert r.status_code == 201, r.text
    pki = sim.DevPki.load(services.settings.data_dir / DEV_PKI_DIR)
    return Setup(client, services, admin, pki, r.json()["key_information"]["id"], secret)


def _nonce(s: Setup, key_id: str | None = None) -> tuple[bytes, str]:
    r = s.client.post(f"/kbs/v1/keys/{key_id or s.key_id}/transfer")
    assert r.status_code == 200, r.text
    return base64.b64decode(r.json()["nonce"]["val"]), r.headers["Attestation-Type"]


def _transfer(
    s: Setup,
    quote: bytes,
    nonce: bytes,
    att: str = "SGX",
    headers: dict[str, str] | None = None,
    spki: bytes = SPKI,
) -> Any:
    body = {
        "quote": base64.b64encode(quote).decode(),
        "nonce": {"val": base64.b64encode(nonce).decode()},
        "user_data": base64.b64encode(spki).decode(),
    }
    return s.client.post(
        f"/kbs/v1/keys/{s.key_id}/transfer", json=body, headers={"Attestation-Type": att, **(headers or {})}
    )


def _sgx(s: Setup, nonce: bytes, **fields: Any) -> bytes:
    fields.setdefault("isvprodid", 7)
    fields.setdefault("isvsvn", 2)
    return sim.sgx_quote(s.pki, report_data=binding.v1_report_data(nonce, SPKI), **fields)


@pytest.fixture
def sgx(client: TestClient, services: Services, admin_headers: dict[str, str]) -> Setup:
    return _setup(client, services, admin_headers, SGX_SIM_POLICY)


def _audit(s: Setup) -> list[dict[str, Any]]:
    return [
        r
        for r in s.client.get("/kbs/v1/audit?limit=1000", headers=s.admin).json()
        if r["action"] == "key.transfer"
    ]


def test_sgx_release_round_trip(sgx: Setup) -> None:
    nonce, att = _nonce(sgx)
    assert att == "SGX" and len(nonce) == 32
    r = _transfer(sgx, _sgx(sgx, nonce), nonce)
    assert r.status_code == 200, r.text
    assert unwrap_v1(r.json(), _WORKLOAD) == sgx.secret
    rec = _audit(sgx)[-1]
    assert rec["outcome"] == "success" and rec["object_id"] == sgx.key_id
    assert len(rec["details"]["evidence_sha256"]) == 64 and len(rec["details"]["claims_sha256"]) == 64
    # replay of the same nonce and quote
    r = _transfer(sgx, _sgx(sgx, nonce), nonce)
    assert r.status_code == 403 and "already used" in r.json()["detail"]


def test_tdx_release_round_trip(
    client: TestClient, services: Services, admin_headers: dict[str, str]
) -> None:
    s = _setup(client, services, admin_headers, TDX_SIM_POLICY)
    nonce, att = _nonce(s)
    assert att == "TDX"
    quote = sim.tdx_quote(s.pki, report_data=binding.v1_report_data(nonce, SPKI))
    r = _transfer(s, quote, nonce, "TDX")
    assert r.status_code == 200, r.text
    assert unwrap_v1(r.json(), _WORKLOAD) == s.secret
    # wrong MRTD: denied with the reason naming the field
    nonce, _ = _nonce(s)
    quote = sim.tdx_quote(s.pki, report_data=binding.v1_report_data(nonce, SPKI), mrtd=b"\x01" * 48)
    r = _transfer(s, quote, nonce, "TDX")
    assert r.status_code == 403
    assert any("mrtd" in reason.lower() for reason in r.json()["reasons"])
    # TCB out of date with enforce_tcb_upto_date
    nonce, _ = _nonce(s)
    quote = sim.tdx_quote(s.pki, report_data=binding.v1_report_data(nonce, SPKI), tcb="outofdate")
    r = _transfer(s, quote, nonce, "TDX")
    assert r.status_code == 403 and any("OutOfDate" in reason for reason in r.json()["reasons"])


def test_a_changed_policy_decides_the_next_release(sgx: Setup) -> None:
    """Stored policies are parsed once per content (``appraisal.policy.stored_policy``): an update
    takes effect on the very next transfer, in either direction, and going back to an earlier body
    gets that body's decision again."""
    pid = sgx.client.get(f"/kbs/v1/keys/{sgx.key_id}", headers=sgx.admin).json()["transfer_policy_id"]

    def put(policy: dict[str, Any]) -> None:
        r = sgx.client.put(f"/kbs/v1/key-transfer-policies/{pid}", json=policy, headers=sgx.admin)
        assert r.status_code == 200, r.text

    def release() -> Any:
        nonce, _ = _nonce(sgx)
        return _transfer(sgx, _sgx(sgx, nonce), nonce)

    assert release().status_code == 200
    stricter = copy.deepcopy(SGX_SIM_POLICY)
    stricter["sgx"]["attributes"]["isvsvn"] = 3
    put(stricter)
    r = release()
    assert r.status_code == 403 and any("isvsvn 2" in reason for reason in r.json()["reasons"]), r.text
    put(SGX_SIM_POLICY)
    assert release().status_code == 200
    other_enclave = copy.deepcopy(SGX_SIM_POLICY)
    other_enclave["sgx"]["attributes"]["mrenclave"] = ["02" * 32]
    put(other_enclave)
    r = release()
    assert r.status_code == 403 and any("mrenclave" in reason.lower() for reason in r.json()["reasons"])
    # the old body again: allowed, the decision of its own content
    put(SGX_SIM_POLICY)
    assert release().status_code == 200
    assert [rec["outcome"] for rec in _audit(sgx)] == ["success", "denied", "success", "denied", "success"]


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"isvsvn": 1}, "isvsvn 1"),
        ({"isvprodid": 8}, "isvprodid"),
        ({"mrenclave": b"\x02" * 32}, "mrenclave"),
        ({"mrsigner": b"\x03" * 32}, "mrsigner"),
        ({"debug": True}, "debug"),
    ],
)
def test_single_clause_mismatch_denied_and_audited(sgx: Setup, fields: dict[str, Any], fragment: str) -> None:
    nonce, _ = _nonce(sgx)
    r = _transfer(sgx, _sgx(sgx, nonce, **fields), nonce)
    assert r.status_code == 403, r.text
    problem = r.json()
    assert any(fragment in reason.lower() for reason in problem["reasons"]), problem
    assert sgx.secret.hex() not in r.text
    rec = _audit(sgx)[-1]
    assert rec["outcome"] == "denied" and fragment in rec["reason"].lower()


def test_simulated_evidence_needs_allow_simulated(
    client: TestClient, services: Services, admin_headers: dict[str, str]
) -> None:
    policy = copy.deepcopy(SGX_SIM_POLICY)
    del policy["allow_simulated"]
    s = _setup(client, services, admin_headers, policy)
    nonce, _ = _nonce(s)
    r = _transfer(s, _sgx(s, nonce), nonce)
    assert r.status_code == 403 and any("simulat" in reason for reason in r.json()["reasons"])


def test_wrong_binding_and_nonce_misuse(
    sgx: Setup, client: TestClient, services: Services, admin_headers: dict[str, str]
) -> None:
    nonce, _ = _nonce(sgx)
    other = (
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    # quote binds SPKI, request claims another RSA key: report data mismatch
    other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=3072).public_key()
    other_spki = other_rsa.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    r = _transfer(sgx, _sgx(sgx, nonce), nonce, spki=other_spki)
    assert r.status_code == 400 and r.json()["check"] == "report_data"
    # the failed attempt burnt the nonce
    r = _transfer(sgx, _sgx(sgx, nonce), nonce)
    assert r.status_code == 403 and "already used" in r.json()["detail"]
    # unknown nonce
    forged = os.urandom(32)
    r = _transfer(sgx, _sgx(sgx, forged), forged)
    assert r.status_code == 403 and "unknown nonce" in r.json()["detail"]
    # a nonce issued for another key
    other_key = _setup(client, services, admin_headers, SGX_SIM_POLICY).key_id
    foreign, _ = _nonce(sgx, other_key)
    r = _transfer(sgx, _sgx(sgx, foreign), foreign)
    assert r.status_code == 403 and "another key" in r.json()["detail"]
    # EC workload keys cannot receive an RSA-OAEP-wrapped SWK on /kbs/v1
    nonce, _ = _nonce(sgx)
    r = _transfer(
        sgx,
        sim.sgx_quote(sgx.pki, report_data=binding.v1_report_data(nonce, other), isvprodid=7, isvsvn=2),
        nonce,
        spki=other,
    )
    assert r.status_code == 400 and r.json()["field"] == "user_data"
    # Attestation-Type the policy does not allow
    nonce, _ = _nonce(sgx)
    r = _transfer(sgx, _sgx(sgx, nonce), nonce, att="TDX")
    assert r.status_code == 403 and "Attestation-Type" in r.json()["detail"]


def test_client_permissions(client: TestClient, services: Services, admin_headers: dict[str, str]) -> None:
    policy = copy.deepcopy(SGX_SIM_POLICY)
    policy["sgx"]["attributes"]["client_permissions"] = ["nginx", "USA"]
    s = _setup(client, services, admin_headers, policy)
    nonce, _ = _nonce(s)
    r = _transfer(s, _sgx(s, nonce), nonce)
    assert r.status_code == 403
    nonce, _ = _nonce(s)
    r = _transfer(s, _sgx(s, nonce), nonce, headers=token_headers(services, client_permissions=("nginx",)))
    # a workload token without keys:transfer is told what its token holds, not what it lacks
    assert r.status_code == 403 and r.json()["reasons"] == [
        "the caller's token (client permissions [nginx]) lacks one the policy requires"
    ]
    nonce, _ = _nonce(s)
    explained = token_headers(services, "keys:transfer", client_permissions=("nginx",))
    r = _transfer(s, _sgx(s, nonce), nonce, headers=explained)
    assert r.status_code == 403 and r.json()["reasons"] == [
        "client permission USA is not in the caller's token"
    ]
    nonce, _ = _nonce(s)
    r = _transfer(
        s, _sgx(s, nonce), nonce, headers=token_headers(services, client_permissions=("nginx", "USA"))
    )
    assert r.status_code == 200, r.text


def test_bad_requests(sgx: Setup) -> None:
    url = f"/kbs/v1/keys/{sgx.key_id}/transfer"
    assert sgx.client.post(url, json={"quote": "x"}, headers={"Attestation-Type": "SGX"}).json()["field"] in (
        "nonce",
        "quote",
    )
    r = sgx.client.post(
        url,
        json={"quote": "!!", "nonce": {"val": "AAAA"}, "user_data": "AA=="},
        headers={"Attestation-Type": "SGX"},
    )
    assert r.status_code == 400
    r = sgx.client.post(url, json={"bogus": 1}, headers={"Attestation-Type": "SGX"})
    assert r.status_code == 400 and "bogus" in r.json()["detail"]
    r = sgx.client.post(
        url,
        json={"quote": "AA==", "nonce": {"val": base64.b64encode(bytes(32)).decode()}, "user_data": "AA=="},
        headers={"Attestation-Type": "SEV"},
    )
    assert r.status_code == 400 and r.json()["field"] == "Attestation-Type"
    assert sgx.client.post("/kbs/v1/keys/0b7d1d0e-7f6b-4b1e-9d7c-2f5d7f1d2a11/transfer").status_code == 404
    # garbage quote with a fresh nonce: a clean 400 naming the problem
    nonce, _ = _nonce(sgx)
    r = _transfer(sgx, b"\x03\x00" + bytes(100), nonce)
    assert r.status_code == 400 and r.json()["detail"]


def test_key_without_policy_never_released(client: TestClient, admin_headers: dict[str, str]) -> None:
    kid = client.post(
        "/kbs/v1/keys",
        json={"key_information": {"algorithm": "AES", "key_length": 256}},
        headers=admin_headers,
    ).json()["key_information"]["id"]
    r = client.post(f"/kbs/v1/keys/{kid}/transfer")
    assert r.status_code == 403 and "no transfer policy" in r.json()["detail"]


NONE_POLICY: dict[str, Any] = {
    "attestation_type": ["NONE"],
    "none": {"attributes": {"client_permissions": ["nginx", "USA"]}},
}


def test_good_tier_without_attestation_is_explicit_warned_and_audited(
    client: TestClient, services: Services, admin_headers: dict[str, str]
) -> None:
    s = _setup(client, services, admin_headers, NONE_POLICY)
    created = [
        r
        for r in client.get("/kbs/v1/audit?limit=1000", headers=admin_headers).json()
        if r["action"] == "policy.create"
    ][-1]
    assert created["details"]["tier"] == "good" and "WITHOUT attestation" in created["details"]["warning"]
    url = f"/kbs/v1/keys/{s.key_id}/transfer"
    body = {"user_data": base64.b64encode(SPKI).decode()}
    assert client.post(url).headers["Attestation-Type"] == "NONE"
    r = client.post(url, json=body, headers={"Attestation-Type": "NONE"})
    assert r.status_code == 403 and "bearer token" in r.json()["reasons"][0]
    r = client.post(
        url,
        json=body,
        headers={"Attestation-Type": "NONE", **token_headers(services, client_permissions=("nginx",))},
    )
    assert r.status_code == 403 and r.json()["reasons"] == [
        "the token (client permissions [nginx]) lacks some the key's policy requires"
    ]
    r = client.post(
        url,
        json=body,
        headers={
            "Attestation-Type": "NONE",
            **token_headers(services, "keys:transfer", client_permissions=("nginx",)),
        },
    )
    assert r.status_code == 403 and r.json()["reasons"] == ["the token lacks client permission(s) USA"]
    r = client.post(
        url,
        json=body,
        headers={"Attestation-Type": "NONE", **token_headers(services, client_permissions=("nginx", "USA"))},
    )
    assert r.status_code == 200, r.text
    assert unwrap_v1(r.json(), _WORKLOAD) == s.secret
    rec = _audit(s)[-1]
    assert (
        rec["outcome"] == "success"
        and rec["details"]["tier"] == "good"
        and "without attestation" in rec["reason"]
    )


def test_attested_policy_refuses_no_attestation_and_vice_versa(
    sgx: Setup, client: TestClient, services: Services, admin_headers: dict[str, str]
) -> None:
    body = {"user_data": base64.b64encode(SPKI).decode()}
    h = {"Attestation-Type": "NONE", **token_headers(services, client_permissions=("nginx", "USA"))}
    r = client.post(f"/kbs/v1/keys/{sgx.key_id}/transfer", json=body, headers=h)
    assert r.status_code == 403 and "requires attestation" in r.json()["reasons"][0]
    none = _setup(client, services, admin_headers, NONE_POLICY)
    nonce, _ = _nonce(none)
    r = _transfer(none, _sgx(none, nonce), nonce)
    assert r.status_code == 403 and "without attestation" in r.json()["reasons"][0]


@pytest.mark.parametrize(
    "policy",
    [
        {"attestation_type": ["NONE"]},
        {"attestation_type": ["NONE"], "none": {"attributes": {"client_permissions": []}}},
        {
            "attestation_type": ["NONE", "SGX"],
            "none": {"attributes": {"client_permissions": ["a"]}},
            "sgx": SGX_SIM_POLICY["sgx"],
        },
        {
            "attestation_type": ["SGX"],
            "none": {"attributes": {"client_permissions": ["a"]}},
            "sgx": SGX_SIM_POLICY["sgx"],
        },
    ],
)
def test_none_policy_validation(
    client: TestClient, admin_headers: dict[str, str], policy: dict[str, Any]
) -> None:
    r = client.post("/kbs/v1/key-transfer-policies", json=policy, headers=admin_headers)
    assert r.status_code == 400, r.text


# --- what a denial tells whom (issue 11: anonymous reasons revealed the expected values) ----------


def test_anonymous_denial_names_the_check_not_the_expected_values(
    client: TestClient, services: Services, admin_headers: dict[str, str]
) -> None:
    policy = copy.deepcopy(TDX_SIM_POLICY)
    policy["tdx"]["attributes"]["client_permissions"] = ["nginx", "USA"]
    s = _setup(client, services, admin_headers, policy)
    expected = {
        "mrtd": sim.DEFAULT_MRTD.hex(),
        "rtmr0": sim.DEFAULT_RTMRS[0].hex(),
        "seamsvn": str(sim.DEFAULT_SEAMSVN),
    }
    presented_mrtd, presented_rtmr0 = "01" * 48, "02" * 48

    def deny(headers: dict[str, str]) -> Any:
        nonce, _ = _nonce(s)
        quote = sim.tdx_quote(
            s.pki,
            report_data=binding.v1_report_data(nonce, SPKI),
            mrtd=bytes.fromhex(presented_mrtd),
            rtmr0=bytes.fromhex(presented_rtmr0),
            seamsvn=sim.DEFAULT_SEAMSVN - 1,
        )
        r = _transfer(s, quote, nonce, "TDX", headers=headers)
        assert r.status_code == 403, r.text
        return r

    anonymous = deny({})
    assert anonymous.json()["reasons"] == [
        f"seamsvn {sim.DEFAULT_SEAMSVN - 1} is below the policy minimum",
        f"mrtd {presented_mrtd} is not in the policy's list",
        f"rtmr0 {presented_rtmr0} differs from the policy's value",
        "the policy requires client permissions but the request presented no token",
    ]
    told = anonymous.text.replace(s.key_id, "")  # a random key id may hold "259" (the SEAMSVN)
    for value in (*expected.values(), "nginx", "USA"):
        assert value not in told
    # the audit log keeps the full explanation of the same denial
    rec = _audit(s)[-1]
    assert rec["outcome"] == "denied"
    for value in (*expected.values(), "nginx, USA"):
        assert value in rec["reason"]
    # a token without keys:transfer is not enough to be told
    other = deny(token_headers(services, "keys:search", "key_transfer_policies:search"))
    assert expected["mrtd"] not in other.text and expected["rtmr0"] not in other.text
    # a caller whose token holds keys:transfer (or *:*) is told in full
    for headers in (token_headers(services, "keys:transfer"), admin_headers):
        told = deny(headers)
        assert told.json()["reasons"] == [
            f"seamsvn {sim.DEFAULT_SEAMSVN - 1} is below the policy minimum {expected['seamsvn']}",
            f"mrtd {presented_mrtd} is not in the policy's list (1 value: {expected['mrtd']})",
            f"rtmr0 {presented_rtmr0} differs from the policy's {expected['rtmr0']}",
            "client permission nginx is not in the caller's token",
            "client permission USA is not in the caller's token",
        ]


def test_attestation_type_denial_does_not_list_the_policys_types(sgx: Setup) -> None:
    nonce, _ = _nonce(sgx)
    r = _transfer(sgx, _sgx(sgx, nonce), nonce, att="TDX")
    assert r.status_code == 403
    assert r.json()["detail"] == "Attestation-Type TDX is not allowed by the key's policy"
    assert r.json()["reasons"] == ["Attestation-Type TDX is not allowed by the key's policy"]
    assert _audit(sgx)[-1]["reason"] == "Attestation-Type TDX is not allowed by the key's policy (SGX)"


# --- workload keys bounded before appraisal; failures after an allow audited -------------------


def _rsa_public(bits: int, e: int = 65537) -> rsa.RSAPublicKey:
    """An RSA public key of exactly ``bits`` bits (a random odd modulus: generating a real 16k key
    takes minutes, and only the size matters to the bound)."""
    n = int.from_bytes(os.urandom(bits // 8 + 1), "big") % (1 << bits) | (1 << (bits - 1)) | 1
    return rsa.RSAPublicNumbers(e, n).public_key()


@pytest.mark.parametrize(
    ("bits", "e", "message"),
    [
        (16392, 65537, "user_data: RSA key of 16392 bits; keybroker accepts 3072 to 8192 bits"),
        (8200, 65537, "user_data: RSA key of 8200 bits; keybroker accepts 3072 to 8192 bits"),
        (4096, 2**64 + 1, "user_data: RSA public exponent of 65 bits is not accepted"),
    ],
)
def test_workload_key_out_of_bounds_is_a_400_before_appraisal(
    sgx: Setup, bits: int, e: int, message: str
) -> None:
    """Before: the policy allowed the release, then wrapping failed (OpenSSL refuses such keys):
    a 500 and no audit record. Now: a 400 naming the field and the bound, and audited."""
    spki = _rsa_public(bits, e).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    nonce, _ = _nonce(sgx)
    quote = sim.sgx_quote(sgx.pki, report_data=binding.v1_report_data(nonce, spki), isvprodid=7, isvsvn=2)
    r = _transfer(sgx, quote, nonce, spki=spki)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "user_data" and r.json()["detail"].startswith(message)
    rec = _audit(sgx)[-1]
    assert rec["outcome"] == "failed" and rec["reason"].startswith(message)
    assert "notes" not in rec["details"]  # refused before the policy was evaluated


def test_release_failing_after_the_policy_allowed_is_audited(
    sgx: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the key's sealed material corrupted in the database: the key store's integrity check fails
    from sqlalchemy import update

    from keybroker.store.models import KeyMaterial

    with sgx.services.db.session() as s:
        s.execute(update(KeyMaterial).where(KeyMaterial.key_id == sgx.key_id).values(ciphertext=b"\0" * 60))
    nonce, _ = _nonce(sgx)
    r = _transfer(sgx, _sgx(sgx, nonce), nonce)
    assert r.status_code == 500 and "failed authentication" in r.json()["detail"]
    rec = _audit(sgx)[-1]
    assert rec["outcome"] == "failed" and "failed authentication" in rec["reason"]
    assert rec["details"]["notes"] == ["simulated evidence allowed (allow_simulated is true)"]  # allowed

    # any other failure of the wrapping (here OpenSSL's, as an out-of-bounds key caused): audited too
    def encryption_failed(*_args: Any) -> Any:
        raise ValueError("Encryption failed")

    monkeypatch.setattr(sgx.services.keystore, "wrap_for_transfer", encryption_failed)
    nonce, _ = _nonce(sgx)
    r = _transfer(sgx, _sgx(sgx, nonce), nonce)
    assert r.status_code == 500
    assert (
        r.json()["detail"] == "the key was allowed but could not be wrapped to the workload key (ValueError)"
    )
    rec = _audit(sgx)[-1]
    assert rec["outcome"] == "failed" and rec["reason"] == r.json()["detail"]
