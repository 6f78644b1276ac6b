"""TPM attestation keys through HTTP, with a real TPM (swtpm) and the workload client's tpm2-tools code:
enrolment through the EK (MakeCredential here, ActivateCredential in the TPM), approval and
revocation, and ``/kbs/v1`` transfers with ``Attestation-Type: TPM``: a key released to the enrolled
AK's quote, a changed PCR denied with its reason, an unknown, pending or revoked AK refused naming
what is missing, an older quote of the same AK (its clock went back) denied."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from sqlalchemy import update
from tests.conftest import template_for
from tests.helpers.api import token_headers, unwrap_v1
from tests.helpers.swtpm import MISSING, SKIP_REASON, Swtpm

from keybroker.api.app import create_app
from keybroker.api.services import Services
from keybroker.client.errors import Denied
from keybroker.client.evidence import Evidence
from keybroker.client.http import Transport
from keybroker.client.protocol_v0 import fetch_resource
from keybroker.client.tpm import TpmProvider, TpmTools, enrol
from keybroker.config import Settings, TpmSettings
from keybroker.store.models import TpmAk, TpmAkClock
from keybroker.tee.tpm.abi import (
    HIERARCHY_OWNER,
    hierarchy_qualified_name,
    parse_tpm2b_public,
    qualified_name,
)
from keybroker.tee.tpm.plugin import ek_qualified_name
from keybroker.tpmaks.service import ak_clock_key
from keybroker.wire import binding

pytestmark = pytest.mark.skipif(bool(MISSING), reason=SKIP_REASON)

_WORKLOAD = rsa.generate_private_key(public_exponent=65537, key_size=3072)
SPKI = _WORKLOAD.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
)
SELECTION = "sha256:0,7,16"


@pytest.fixture(scope="module")
def swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swtpm]:
    with Swtpm(tmp_path_factory.mktemp("api-tpm")) as tpm:
        yield tpm


@dataclass
class Machine:
    """The TPM machine: its tpm2-tools, and the AK handle this test gave it."""

    tools: TpmTools
    ak_handle: str

    def provider(self) -> TpmProvider:
        return TpmProvider(self.tools, ak_handle=self.ak_handle, selection=SELECTION)


_HANDLES = iter(range(0x81010100, 0x81010200))


@pytest.fixture
def machine(swtpm: Swtpm, tmp_path: Path) -> Machine:
    """A fresh persistent AK handle per test (one swtpm for the module)."""
    work = tmp_path / "tpm-work"
    work.mkdir()
    return Machine(TpmTools(swtpm.env["TPM2TOOLS_TCTI"], work=work), hex(next(_HANDLES)))


def _settings(tmp_path: Path, database_url: str, swtpm: Swtpm, *, dev_ek_roots: bool = True) -> Settings:
    ca = swtpm.ca_dir
    roots = [ca / "issuercert.pem", ca / "swtpm-localca-rootca-cert.pem"] if dev_ek_roots else []
    return Settings(
        data_dir=tmp_path / "data", database=database_url, dev=True, tpm=TpmSettings(dev_ek_roots=roots)
    )


@pytest.fixture
def services(
    request: pytest.FixtureRequest, tmp_path: Path, database_url: str, swtpm: Swtpm
) -> Iterator[Services]:
    settings = _settings(tmp_path, database_url, swtpm)
    svc = Services.build(template_for(request, database_url).restore(settings))
    yield svc
    svc.db.dispose()


def _poster(client: TestClient, headers: dict[str, str]) -> Any:
    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = client.post(path, json=body, headers=headers)
        assert r.status_code == 201, r.text
        out: dict[str, Any] = r.json()
        return out

    return post


def _enrol(client: TestClient, headers: dict[str, str], m: Machine, label: str = "host-1") -> dict[str, Any]:
    return enrol(m.tools, _poster(client, headers), ak_handle=m.ak_handle, label=label)


def _key(client: TestClient, admin: dict[str, str], policy: dict[str, Any]) -> tuple[str, bytes]:
    r = client.post("/kbs/v1/key-transfer-policies", json=policy, headers=admin)
    assert r.status_code == 201, r.text
    secret = os.urandom(32)
    r = client.post(
        "/kbs/v1/keys",
        json={
            "key_information": {"algorithm": "AES", "key_string": base64.b64encode(secret).decode()},
            "transfer_policy_id": r.json()["id"],
        },
        headers=admin,
    )
    assert r.status_code == 201, r.text
    return r.json()["key_information"]["id"], secret


def _challenge(client: TestClient, key_id: str) -> bytes:
    r = client.post(f"/kbs/v1/keys/{key_id}/transfer")
    assert r.status_code == 200 and r.headers["Attestation-Type"] == "TPM", r.text
    return base64.b64decode(r.json()["nonce"]["val"])


def _quote(m: Machine, nonce: bytes) -> Evidence:
    return m.provider().evidence(binding.v1_tpm_extra_data(nonce, SPKI))


def _transfer(client: TestClient, key_id: str, nonce: bytes, evidence: Evidence) -> Any:
    return client.post(
        f"/kbs/v1/keys/{key_id}/transfer",
        json={
            "quote": base64.b64encode(evidence.quote).decode(),
            "nonce": {"val": base64.b64encode(nonce).decode()},
            "user_data": base64.b64encode(SPKI).decode(),
        },
        headers={"Attestation-Type": "TPM"},
    )


def _pcr16(m: Machine) -> str:
    _, _, pcrs = m.tools.quote(m.ak_handle, b"probe", "sha256:16")
    return pcrs["sha256"][16].hex()


def _policy(pcr16: str) -> dict[str, Any]:
    return {
        "attestation_type": ["TPM"],
        "tpm": {
            "attributes": {"pcrs": {"sha256": {"16": [pcr16], "7": ["00" * 32]}}, "ak_trust": ["enrolled"]}
        },
        "allow_simulated": True,  # swtpm's EK certificate chains to its local CA, a dev root
    }


def _audit(client: TestClient, admin: dict[str, str], action: str) -> list[dict[str, Any]]:
    records = client.get("/kbs/v1/audit", params={"limit": 1000}, headers=admin).json()
    return [r for r in records if r["action"] == action]


def test_enrol_approve_and_release_a_key_to_the_tpm(
    client: TestClient, admin_headers: dict[str, str], services: Services, machine: Machine
) -> None:
    enroller = token_headers(services, "tpm_aks:create")
    record = _enrol(client, enroller, machine)
    name = record["name"]
    assert record["status"] == "pending" and record["ek_root"] == "dev" and record["label"] == "host-1"
    assert record["enrolled_by"].startswith("token:tester#") and record["approved_by"] is None
    assert "restricted" in record["attributes"] and "sign" in record["attributes"]

    key_id, secret = _key(client, admin_headers, _policy(_pcr16(machine)))
    nonce = _challenge(client, key_id)
    r = _transfer(client, key_id, nonce, _quote(machine, nonce))
    assert r.status_code == 400, r.text  # pending: not trusted yet, and the reason says what to do
    assert r.json()["check"] == "ak_trust"
    assert (
        "not approved yet" in r.json()["detail"] and f"keybroker tpm ak approve {name}" in r.json()["detail"]
    )

    approver = token_headers(services, "tpm_aks:approve", "tpm_aks:search", "tpm_aks:retrieve")
    assert client.post(f"/kbs/v1/tpm/aks/{name}/approval", headers=enroller).status_code == 403
    r = client.post(f"/kbs/v1/tpm/aks/{name}/approval", headers=approver)
    assert r.status_code == 200 and r.json()["status"] == "approved", r.text
    assert [a["name"] for a in client.get("/kbs/v1/tpm/aks?status=approved", headers=approver).json()] == [
        name
    ]
    assert client.get(f"/kbs/v1/tpm/aks/{name}", headers=approver).json()["approved_by"].startswith("token:")

    nonce = _challenge(client, key_id)
    r = _transfer(client, key_id, nonce, _quote(machine, nonce))
    assert r.status_code == 200, r.text
    assert unwrap_v1(r.json(), _WORKLOAD) == secret
    released = [a for a in _audit(client, admin_headers, "key.transfer") if a["outcome"] == "success"]
    assert len(released) == 1
    actions = {
        a["action"]: a["outcome"]
        for a in client.get("/kbs/v1/audit", params={"limit": 1000}, headers=admin_headers).json()
    }
    assert actions["tpm.ak.enrol"] == actions["tpm.ak.activate"] == actions["tpm.ak.approve"] == "success"


def test_an_ak_approved_in_the_database_is_not_trusted(
    client: TestClient, admin_headers: dict[str, str], services: Services, machine: Machine
) -> None:
    """A database writer approves a pending AK (theirs: a software TPM quotes whatever PCRs they
    like), or moves an approved one under another EK root: neither is trusted, since an approval is
    tagged under the root key (``keybroker.seal.integrity``)."""
    name = _enrol(client, token_headers(services, "tpm_aks:create"), machine)["name"]
    key_id, secret = _key(client, admin_headers, _policy(_pcr16(machine)))
    with services.db.session() as s:
        s.execute(update(TpmAk).where(TpmAk.name == name).values(status="approved", approved_by="dba"))
    nonce = _challenge(client, key_id)
    r = _transfer(client, key_id, nonce, _quote(machine, nonce))
    assert r.status_code == 403, r.text
    assert f"the approved TPM AK {name} has no integrity tag" in r.json()["detail"]
    assert "key_information" not in r.text
    denied = _audit(client, admin_headers, "key.transfer")[-1]
    assert denied["outcome"] == "denied" and "integrity tag" in denied["reason"]

    # approved by an administrator: trusted
    r = client.post(f"/kbs/v1/tpm/aks/{name}/approval", headers=token_headers(services, "tpm_aks:approve"))
    assert r.status_code == 200, r.text
    nonce = _challenge(client, key_id)
    r = _transfer(client, key_id, nonce, _quote(machine, nonce))
    assert r.status_code == 200 and unwrap_v1(r.json(), _WORKLOAD) == secret

    # its row moved under another EK root in the database: no longer trusted
    with services.db.session() as s:
        s.execute(update(TpmAk).where(TpmAk.name == name).values(ek_root="manufacturer"))
    nonce = _challenge(client, key_id)
    r = _transfer(client, key_id, nonce, _quote(machine, nonce))
    assert r.status_code == 403, r.text
    assert f"the approved TPM AK {name} was changed outside keybroker" in r.json()["detail"]


def test_a_changed_pcr_is_denied_with_the_reason(
    client: TestClient, admin_headers: dict[str, str], services: Services, machine: Machine, swtpm: Swtpm
) -> None:
    _enrol(client, token_headers(services, "tpm_aks:create", "tpm_aks:approve"), machine)
    before = _pcr16(machine)
    key_id, _ = _key(client, admin_headers, _policy(before))
    swtpm.run("tpm2_pcrextend", f"16:sha256={'ab' * 32}")
    after = _pcr16(machine)
    assert after != before
    nonce = _challenge(client, key_id)
    r = _transfer(client, key_id, nonce, _quote(machine, nonce))
    assert r.status_code == 403, r.text
    assert r.json()["reasons"] == [f"pcrs.sha256.16 {after} is not in the policy's list"]
    denied = [a for a in _audit(client, admin_headers, "key.transfer") if a["outcome"] == "denied"]
    assert before in denied[-1]["reason"] or before in str(denied[-1]["details"])  # the full reason, audited


def test_an_unknown_ak_is_refused_naming_what_is_missing(
    client: TestClient, admin_headers: dict[str, str], machine: Machine
) -> None:
    machine.tools.ensure_ak(machine.tools.ek(), machine.ak_handle)  # made, never enrolled
    key_id, _ = _key(client, admin_headers, _policy(_pcr16(machine)))
    nonce = _challenge(client, key_id)
    r = _transfer(client, key_id, nonce, _quote(machine, nonce))
    assert r.status_code == 400 and r.json()["check"] == "ak_trust", r.text
    detail = r.json()["detail"]
    assert (
        "is not enrolled" in detail
        and "no AK certificate" in detail
        and "keybroker-client tpm enrol" in detail
    )


def test_a_revoked_ak_is_refused(
    client: TestClient, admin_headers: dict[str, str], services: Services, machine: Machine
) -> None:
    name = _enrol(client, token_headers(services, "tpm_aks:create", "tpm_aks:approve"), machine)["name"]
    key_id, _ = _key(client, admin_headers, _policy(_pcr16(machine)))
    revoker = token_headers(services, "tpm_aks:revoke", "tpm_aks:approve")
    r = client.post(f"/kbs/v1/tpm/aks/{name}/revocation", json={"reason": "host stolen"}, headers=revoker)
    assert (
        r.status_code == 200
        and r.json()["status"] == "revoked"
        and r.json()["revoke_reason"] == "host stolen"
    )
    nonce = _challenge(client, key_id)
    r = _transfer(client, key_id, nonce, _quote(machine, nonce))
    assert r.status_code == 400 and r.json()["check"] == "ak_trust" and "revoked" in r.json()["detail"], (
        r.text
    )
    assert (
        client.post(f"/kbs/v1/tpm/aks/{name}/approval", headers=revoker).status_code == 409
    )  # stays revoked
    # and it cannot come back by enrolling again
    again = token_headers(services, "tpm_aks:create")
    r = client.post(
        "/kbs/v1/tpm/enrolments",
        json={
            "ek_public": base64.b64encode(machine.tools.read_public(machine.tools.ek())).decode(),
            "ek_certificate": base64.b64encode(machine.tools.ek_certificate()).decode(),
            "ak_public": base64.b64encode(machine.tools.read_public(machine.ak_handle)).decode(),
        },
        headers=again,
    )
    assert r.status_code == 409 and "revoked" in r.json()["detail"], r.text


def test_an_older_quote_of_the_same_ak_is_denied(
    client: TestClient, admin_headers: dict[str, str], services: Services, machine: Machine
) -> None:
    """Two challenges; the TPM quotes the first, then the second; the second is sent first, then the
    first (its nonce still unspent): the TPM's clock went back, so that quote is older than one seen."""
    _enrol(client, token_headers(services, "tpm_aks:create", "tpm_aks:approve"), machine)
    key_id, secret = _key(client, admin_headers, _policy(_pcr16(machine)))
    first, second = _challenge(client, key_id), _challenge(client, key_id)
    older = _quote(machine, first)
    newer = _quote(machine, second)
    assert _transfer(client, key_id, second, newer).status_code == 200
    r = _transfer(client, key_id, first, older)
    assert r.status_code == 403, r.text
    (reason,) = r.json()["reasons"]
    assert "clock went back since the AK's latest quote" in reason and "allow_clock_regression" in reason


def test_activation_with_a_wrong_secret_ends_the_enrolment(
    client: TestClient, admin_headers: dict[str, str], services: Services, machine: Machine
) -> None:
    headers = token_headers(services, "tpm_aks:create")
    tools = machine.tools
    ek = tools.ek()
    body = {
        "ek_public": base64.b64encode(tools.read_public(ek)).decode(),
        "ek_certificate": base64.b64encode(tools.ek_certificate()).decode(),
        "ak_public": base64.b64encode(tools.ensure_ak(ek, machine.ak_handle)).decode(),
    }
    started = client.post("/kbs/v1/tpm/enrolments", json=body, headers=headers).json()
    path = f"/kbs/v1/tpm/enrolments/{started['id']}/activation"
    # another caller cannot finish it
    other = token_headers(services, "tpm_aks:create")
    assert (
        client.post(path, json={"secret": base64.b64encode(b"x" * 32).decode()}, headers=other).status_code
        == 404
    )
    r = client.post(path, json={"secret": base64.b64encode(os.urandom(32)).decode()}, headers=headers)
    assert r.status_code == 400 and r.json()["check"] == "activate_credential", r.text
    # one attempt: the right secret now finds nothing
    secret = tools.activate_credential(
        machine.ak_handle,
        ek,
        base64.b64decode(started["credential_blob"]),
        base64.b64decode(started["encrypted_secret"]),
    )
    assert (
        client.post(path, json={"secret": base64.b64encode(secret).decode()}, headers=headers).status_code
        == 404
    )
    assert client.get("/kbs/v1/tpm/aks", headers=admin_headers).json() == []
    failed = [a for a in _audit(client, admin_headers, "tpm.ak.activate") if a["outcome"] == "failed"]
    assert len(failed) == 3


def test_an_ek_without_a_trusted_root_is_refused(
    request: pytest.FixtureRequest, tmp_path: Path, database_url: str, swtpm: Swtpm, machine: Machine
) -> None:
    settings = _settings(tmp_path, database_url, swtpm, dev_ek_roots=False)
    svc = Services.build(template_for(request, database_url).restore(settings))
    try:
        with TestClient(create_app(svc), base_url="https://testserver") as c:
            tools = machine.tools
            ek = tools.ek()
            body = {
                "ek_public": base64.b64encode(tools.read_public(ek)).decode(),
                "ek_certificate": base64.b64encode(tools.ek_certificate()).decode(),
                "ak_public": base64.b64encode(tools.ensure_ak(ek, machine.ak_handle)).decode(),
            }
            r = c.post("/kbs/v1/tpm/enrolments", json=body, headers=token_headers(svc, "tpm_aks:create"))
            assert r.status_code == 400 and r.json()["check"] == "ek_certificate", r.text
            assert "tpm.ek_roots" in r.json()["detail"]
    finally:
        svc.db.dispose()


def test_an_ak_named_with_sha1_is_not_enrolled(
    client: TestClient, admin_headers: dict[str, str], services: Services, swtpm: Swtpm
) -> None:
    """An AK's Name is its identity (the registry's key, MakeCredential's binding, policies'
    ak_names): a SHA-1 Name is refused at enrolment, as at every quote. Before, a credential was
    issued for it and the AK could be registered."""
    ctx, pub = swtpm.path("sha1-ak.ctx"), swtpm.path("sha1-ak.pub")
    attributes = "restricted|sign|fixedtpm|fixedparent|sensitivedataorigin|userwithauth"
    swtpm.run(
        "tpm2_createprimary",
        "-C",
        "o",
        "-g",
        "sha1",
        "-G",
        "rsa2048:rsassa-sha256:null",
        "-a",
        attributes,
        "-c",
        str(ctx),
    )
    swtpm.run("tpm2_readpublic", "-c", str(ctx), "-o", str(pub), "-f", "tss")
    swtpm.run("tpm2_flushcontext", "-t")
    ak_public = pub.read_bytes()
    assert ak_public[4:6] == b"\x00\x04"  # TPMT_PUBLIC.nameAlg TPM_ALG_SHA1, a restricted signing key
    body = {
        "ek_public": base64.b64encode(swtpm.ek_public()).decode(),
        "ek_certificate": base64.b64encode(swtpm.ek_certificate()).decode(),
        "ak_public": base64.b64encode(ak_public).decode(),
    }
    r = client.post("/kbs/v1/tpm/enrolments", json=body, headers=token_headers(services, "tpm_aks:create"))
    assert r.status_code == 400 and r.json()["check"] == "ak_public", r.text
    assert "SHA-1" in r.json()["detail"]
    failed = [a for a in _audit(client, admin_headers, "tpm.ak.enrol") if a["outcome"] != "success"]
    assert len(failed) == 1


def _transport(client: TestClient, token: str | None = None) -> Transport:
    """The workload client's transport, through the ASGI app instead of the network."""
    return Transport("https://testserver", token=token, http_transport=client._transport)


def test_kbs_v0_releases_a_key_to_the_tpm_and_denies_a_changed_pcr(
    client: TestClient, admin_headers: dict[str, str], services: Services, machine: Machine, swtpm: Swtpm
) -> None:
    """The workload client's /kbs/v0 code with ``--tee tpm``: the quote's extraData is the runtime-data
    hash; the resource serves a key under the key's own TPM policy."""
    _enrol(client, token_headers(services, "tpm_aks:create", "tpm_aks:approve"), machine)
    key_id, secret = _key(client, admin_headers, _policy(_pcr16(machine)))
    policy_id = client.get(f"/kbs/v1/keys/{key_id}", headers=admin_headers).json()["transfer_policy_id"]
    writer = token_headers(services, "resources:write", "keys:transfer")
    r = client.post("/kbs/v0/resource/default/key/tpm", json={"key_id": key_id}, headers=writer)
    assert r.status_code == 204, r.text
    r = client.post(
        "/kbs/v0/resource-policy/default/key/tpm", json={"transfer_policy_id": policy_id}, headers=writer
    )
    assert r.status_code == 204, r.text

    released = fetch_resource(_transport(client), "default/key/tpm", machine.provider())
    assert released.material == secret

    swtpm.run("tpm2_pcrextend", f"16:sha256={'cd' * 32}")
    with pytest.raises(Denied) as denied:
        fetch_resource(_transport(client), "default/key/tpm", machine.provider())
    assert any("pcrs.sha256.16" in r and "is not in the policy's list" in r for r in denied.value.reasons)
    attests = _audit(client, admin_headers, "attestation.attest")
    assert attests and all(a["details"]["tee"] == "tpm" for a in attests)


def test_attestation_token_for_tpm_evidence_and_a_passport_release(
    client: TestClient, admin_headers: dict[str, str], services: Services, machine: Machine
) -> None:
    _enrol(client, token_headers(services, "tpm_aks:create", "tpm_aks:approve"), machine)
    nonce = base64.b64decode(client.post("/attestation/v1/nonce").json()["val"])
    evidence = _quote(machine, nonce)
    body = {
        "tee": "tpm",
        "evidence": base64.b64encode(evidence.quote).decode(),
        "nonce": base64.b64encode(nonce).decode(),
        "user_data": base64.b64encode(SPKI).decode(),
    }
    r = client.post("/attestation/v1/attest", json=body)
    assert r.status_code == 200, r.text
    # TPM: no vendor TCB status, and swtpm's EK chains to a dev root: a warning, never affirming
    assert r.json()["status"] == "warning"
    ear = services.attestation.verify_token(r.json()["token"])
    claims = ear.appraisal_input(client_permissions=None)["claims"]
    assert ear.tee == "tpm" and claims["ak"]["trust"]["mode"] == "enrolled"
    assert claims["pcrs"]["sha256"]["16"] == _pcr16(machine) and claims["debug"] is False
    assert ear.trust_vector["runtime-opaque"] == 0  # a TPM hides no memory

    key_id, secret = _key(client, admin_headers, _policy(_pcr16(machine)))
    r = client.post(f"/kbs/v1/keys/{key_id}/transfer", json={"attestation_token": r.json()["token"]})
    assert r.status_code == 200, r.text
    assert unwrap_v1(r.json(), _WORKLOAD) == secret


def _clock_rows(services: Services, *machines: Machine) -> list[bool]:
    """Whether the broker holds a clock history for each machine's AK."""
    keys = [ak_clock_key(parse_tpm2b_public(m.tools.read_public(m.ak_handle))) for m in machines]
    with services.db.session() as s:
        return [s.get(TpmAkClock, key) is not None for key in keys]


def test_revoking_an_ak_forgets_its_clock_history_and_only_its(
    client: TestClient, admin_headers: dict[str, str], services: Services, swtpm: Swtpm, tmp_path: Path
) -> None:
    """A revoked AK's clock row went with it (before, every revoked AK's row stayed for good); the
    clock history of an AK still trusted is its rollback protection and stays."""
    enroller = token_headers(services, "tpm_aks:create", "tpm_aks:approve")
    machines = []
    for label in ("host-1", "host-2"):
        work = tmp_path / f"work-{label}"
        work.mkdir()
        m = Machine(TpmTools(swtpm.env["TPM2TOOLS_TCTI"], work=work), hex(next(_HANDLES)))
        machines.append((m, _enrol(client, enroller, m, label=label)["name"]))
    (revoked, revoked_name), (kept, _) = machines
    key_id, _ = _key(client, admin_headers, _policy(_pcr16(revoked)))
    for m, _name in machines:
        nonce = _challenge(client, key_id)
        assert _transfer(client, key_id, nonce, _quote(m, nonce)).status_code == 200
    assert _clock_rows(services, revoked, kept) == [True, True]

    r = client.post(
        f"/kbs/v1/tpm/aks/{revoked_name}/revocation",
        json={"reason": "host retired"},
        headers=token_headers(services, "tpm_aks:revoke"),
    )
    assert r.status_code == 200 and r.json()["status"] == "revoked", r.text
    assert _clock_rows(services, revoked, kept) == [False, True]
    (record,) = [a for a in _audit(client, admin_headers, "tpm.ak.revoke") if a["object_id"] == revoked_name]
    assert record["details"] == {"clock_history_forgotten": True}
    nonce = _challenge(client, key_id)
    r = _transfer(client, key_id, nonce, _quote(revoked, nonce))
    assert r.status_code == 400 and r.json()["check"] == "ak_trust", r.text
    assert _clock_rows(services, revoked, kept) == [False, True]  # a refused quote records no clock


def test_an_enrolled_ak_not_made_under_its_ek_is_refused_by_its_qualified_signer(
    client: TestClient, admin_headers: dict[str, str], services: Services, swtpm: Swtpm, tmp_path: Path
) -> None:
    """An AK in the same TPM as the EK (ActivateCredential works) but a primary key of the owner
    hierarchy, not the EK's child: before, its quotes were released to; now the TPM's own
    qualifiedSigner (signed, so genuine) shows another parent than the EK it was enrolled through."""
    work = tmp_path / "owner-ak"
    work.mkdir()
    m = Machine(TpmTools(swtpm.env["TPM2TOOLS_TCTI"], work=work), hex(next(_HANDLES)))
    ctx = work / "ak.ctx"
    swtpm.run(
        "tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "rsa2048:rsassa-sha256:null", "-c", str(ctx),
        "-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign",
    )  # fmt: skip
    swtpm.run("tpm2_evictcontrol", "-C", "o", "-c", str(ctx), m.ak_handle)
    record = _enrol(client, token_headers(services, "tpm_aks:create", "tpm_aks:approve"), m)
    assert record["status"] == "approved"
    key_id, _ = _key(client, admin_headers, _policy(_pcr16(m)))
    nonce = _challenge(client, key_id)
    r = _transfer(client, key_id, nonce, _quote(m, nonce))
    assert r.status_code == 400, r.text
    ak = parse_tpm2b_public(m.tools.read_public(m.ak_handle))
    genuine = qualified_name(hierarchy_qualified_name(HIERARCHY_OWNER), ak)  # what the TPM signed
    under_ek = qualified_name(
        ek_qualified_name(parse_tpm2b_public(m.tools.read_public(m.tools.ek())).raw), ak
    )
    assert r.json()["check"] == "qualified_signer"
    assert r.json()["detail"] == (
        f"qualifiedSigner {genuine.hex()} is not the AK's Qualified Name {under_ek.hex()} as a child of the EK "
        "it was enrolled through (an enrolled AK is made under that EK, e.g. by tpm2_createak -C <EK>)"
    )
    assert [a for a in _audit(client, admin_headers, "key.transfer") if a["outcome"] == "success"] == []
