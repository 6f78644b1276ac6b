"""An Azure SEV-SNP confidential VM through HTTP: its hardware report from the dev PKI's SEV-SNP
simulator (``dev-pki/snp``), its vTPM a real swtpm whose AK the HCL report binds
(``tests/helpers/azure_sim.py``). ``/kbs/v1`` releases with ``Attestation-Type: AZ-SNP-VTPM`` and a
policy combining the ``snp`` and ``tpm`` sections; the ``snp`` part is the SEV-SNP section itself,
with its defaults (a migration agent forbidden); a report from another VMPL, another nonce or
another PCR is refused with its reason."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi.testclient import TestClient
from sqlalchemy import delete, update
from tests.api.test_tpm_api import _key
from tests.helpers.api import token_headers, unwrap_v1
from tests.helpers.azure_sim import azure_snp_evidence
from tests.helpers.swtpm import MISSING, SKIP_REASON, Ak, Swtpm

from keybroker.api.services import Services
from keybroker.client.unwrap import jwe_unwrap
from keybroker.collateral.kds import chain_items, crl_item, vcek_item
from keybroker.collateral.kds_store import KdsStore
from keybroker.collateral.trust import snp_dev_pki_dir
from keybroker.keys import wrap
from keybroker.store.models import SnpCollateralItem, TransferPolicy
from keybroker.tee.sim.snp import DEFAULT_MEASUREMENT, DEFAULT_POLICY, SnpDevPki, snp_report
from keybroker.wire import binding

pytestmark = pytest.mark.skipif(bool(MISSING), reason=SKIP_REASON)

_WORKLOAD = rsa.generate_private_key(public_exponent=65537, key_size=3072)
SPKI = _WORKLOAD.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
)
MIGRATE_MA = 1 << 18


@pytest.fixture(scope="module")
def vtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Swtpm, Ak]]:
    with Swtpm(tmp_path_factory.mktemp("az-vtpm")) as tpm:
        yield tpm, tpm.create_ak()


def _cache(services: Services) -> SnpDevPki:
    """Azure's evidence carries the VCEK alone: its ASK, ARK and the ARK's CRL come from the KDS cache
    (as ``collateral fetch --snp`` stores them), here the dev PKI's."""
    pki = SnpDevPki.load(snp_dev_pki_dir(services.settings))
    made = snp_report(pki)
    dev = (pki.root_cert,)
    chain = chain_items([c.public_bytes(Encoding.DER) for c in made.chain], dev_roots=dev)
    crl = crl_item(pki.crl("vcek"), signing_key="vcek", dev_roots=dev)
    vcek = vcek_item(made.signer.public_bytes(Encoding.DER), chains=chain, dev_roots=dev)
    KdsStore(services.db).import_items([*chain, crl, vcek], source="test")
    return pki


def _policy(pcr16: str, **snp: Any) -> dict[str, Any]:
    return {
        "attestation_type": ["AZ-SNP-VTPM"],
        "az-snp-vtpm": {
            "snp": {"attributes": {"measurement": [DEFAULT_MEASUREMENT.hex()], **snp}},
            "tpm": {"pcrs": {"sha256": {"16": [pcr16]}}},
        },
        "allow_simulated": True,  # the report chains to the dev ARK
    }


def _release(
    client: TestClient, services: Services, vtpm: tuple[Swtpm, Ak], key_id: str, **fields: Any
) -> Any:
    r = client.post(f"/kbs/v1/keys/{key_id}/transfer")
    assert r.status_code == 200 and r.headers["Attestation-Type"] == "AZ-SNP-VTPM", r.text
    nonce = base64.b64decode(r.json()["nonce"]["val"])
    pki = SnpDevPki.load(snp_dev_pki_dir(services.settings))
    extra = fields.pop("extra_data", None) or binding.v1_tpm_extra_data(nonce, SPKI)
    evidence = azure_snp_evidence(pki, *vtpm, extra, **fields)
    return client.post(
        f"/kbs/v1/keys/{key_id}/transfer",
        json={
            "quote": base64.b64encode(evidence).decode(),
            "nonce": {"val": base64.b64encode(nonce).decode()},
            "user_data": base64.b64encode(SPKI).decode(),
        },
        headers={"Attestation-Type": "AZ-SNP-VTPM"},
    )


def _pcr16(vtpm: tuple[Swtpm, Ak]) -> str:
    swtpm, ak = vtpm
    return swtpm.quote(ak, "sha256:16", b"probe").pcrs["sha256"][16].hex()


def test_a_confidential_vm_receives_a_key_through_kbs_v1(
    client: TestClient, admin_headers: dict[str, str], services: Services, vtpm: tuple[Swtpm, Ak]
) -> None:
    key_id, secret = _key(client, admin_headers, _policy(_pcr16(vtpm)))
    r = _release(client, services, vtpm, key_id)  # nothing cached: AMD's shipped ASK did not sign it
    assert r.status_code == 400 and r.json()["check"] == "cert_chain", r.text
    _cache(services)
    r = _release(client, services, vtpm, key_id)
    assert r.status_code == 200, r.text
    assert unwrap_v1(r.json(), _WORKLOAD) == secret

    # another nonce in the quote's extraData
    r = _release(client, services, vtpm, key_id, extra_data=os.urandom(32))
    assert r.status_code == 400 and r.json()["check"] == "report_data", r.text
    # a report a less privileged guest asked for (VMPL 1) could bind an AK of the guest's own
    r = _release(client, services, vtpm, key_id, vmpl=1)
    assert r.status_code == 400 and r.json()["check"] == "vmpl", r.text


def test_the_snp_part_is_the_sev_snp_section_with_its_defaults(
    client: TestClient, admin_headers: dict[str, str], services: Services, vtpm: tuple[Swtpm, Ak]
) -> None:
    """Before, the Azure SNP part had clauses of its own, without the SEV-SNP section's defaults: a VM
    whose guest policy lets a migration agent export its memory was released a key."""
    _cache(services)
    key_id, _ = _key(client, admin_headers, _policy(_pcr16(vtpm)))
    r = _release(client, services, vtpm, key_id, policy=DEFAULT_POLICY | MIGRATE_MA)
    assert r.status_code == 403, r.text
    assert r.json()["reasons"] == ["guest POLICY.MIGRATE_MA is set, which the policy does not allow"]
    # and a policy that names no guest is refused, as an snp section is
    r = client.post(
        "/kbs/v1/key-transfer-policies",
        json={
            "attestation_type": ["AZ-SNP-VTPM"],
            "az-snp-vtpm": {"snp": {"attributes": {}}, "tpm": {}},
        },
        headers=admin_headers,
    )
    assert r.status_code == 400 and "must name the guest" in r.text, r.text


def test_another_pcr_is_denied_with_the_reason(
    client: TestClient, admin_headers: dict[str, str], services: Services, vtpm: tuple[Swtpm, Ak]
) -> None:
    _cache(services)
    before = _pcr16(vtpm)
    key_id, _ = _key(client, admin_headers, _policy(before))
    vtpm[0].run("tpm2_pcrextend", f"16:sha256={'cd' * 32}")
    after = _pcr16(vtpm)
    r = _release(client, services, vtpm, key_id)
    assert r.status_code == 403, r.text
    assert r.json()["reasons"] == [f"tpm.pcrs.sha256.16 {after} is not in the policy's list"]


def test_a_revoked_ask_is_refused_as_for_a_plain_sev_snp_report(
    client: TestClient, admin_headers: dict[str, str], services: Services, vtpm: tuple[Swtpm, Ak]
) -> None:
    """The Azure path takes the chain and CRLs from the same source as the SEV-SNP verifier, and the
    same verifier checks them: once the ARK's CRL revokes the ASK, the VM's evidence is refused."""
    pki = _cache(services)
    key_id, _ = _key(client, admin_headers, _policy(_pcr16(vtpm)))
    assert _release(client, services, vtpm, key_id).status_code == 200
    pki.revoke_intermediate("vcek")
    dev = (pki.root_cert,)
    KdsStore(services.db).import_items(
        [crl_item(pki.crl("vcek"), signing_key="vcek", dev_roots=dev)], source="test"
    )
    r = _release(client, services, vtpm, key_id)
    assert r.status_code == 400 and r.json()["check"] == "crl", r.text


def _rego(measurement: str, pcr16: str) -> str:
    return f"""package keybroker
import rego.v1
default allow := false
allow if {{
    input.tee == "az-snp-vtpm"
    input.sim == true
    input.claims.debug == false
    input.claims.snp.measurement == "{measurement}"
    input.claims.snp.vmpl == 0
    input.claims.tpm.pcrs.sha256["16"] == "{pcr16}"
    input.claims.tpm.clock_history.clock_decreased == false
}}
"""


def _kbs_v0(client: TestClient, services: Services, vtpm: tuple[Swtpm, Ak], priv: Any) -> Any:
    r = client.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "az-snp-vtpm", "extra-params": ""})
    assert r.status_code == 200, r.text
    nonce = r.json()["nonce"]
    jwk = wrap.public_jwk(priv.public_key())
    pki = SnpDevPki.load(snp_dev_pki_dir(services.settings))
    extra = binding.v0_runtime_digest(nonce, jwk, "", "sha384")
    primary = json.loads(azure_snp_evidence(pki, *vtpm, extra))
    body = {
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": {"primary_evidence": primary, "additional_evidence": ""},
    }
    return client.post("/kbs/v0/attest", json=body)


def test_kbs_v0_and_a_rego_policy_on_the_hardware_and_the_vtpm_claims(
    client: TestClient, services: Services, vtpm: tuple[Swtpm, Ak]
) -> None:
    """Trustee's form on /kbs/v0 (the runtime-data hash in the quote's extraData), and a Rego resource
    policy reading both the SEV-SNP report's claims and the vTPM's."""
    _cache(services)
    writer = token_headers(services, "resources:write")
    r = client.post(
        "/kbs/v0/resource/default/azure/secret",
        content=b"azure secret",
        headers={**writer, "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 204, r.text
    pcr16 = _pcr16(vtpm)
    r = client.post(
        "/kbs/v0/resource-policy/default/azure/secret",
        json={"rego": _rego(DEFAULT_MEASUREMENT.hex(), pcr16)},
        headers=writer,
    )
    assert r.status_code == 204, r.text
    priv = ec.generate_private_key(ec.SECP384R1())
    r = _kbs_v0(client, services, vtpm, priv)
    assert r.status_code == 200, r.text
    ear = services.attestation.verify_token(r.json()["token"])
    assert ear.tee == "az-snp-vtpm" and ear.status == "warning"  # AMD: NoVendorStatus; dev root: sim
    r = client.get("/kbs/v0/resource/default/azure/secret")
    assert r.status_code == 200 and jwe_unwrap(r.json(), priv) == b"azure secret", r.text

    vtpm[0].run("tpm2_pcrextend", f"16:sha256={'ef' * 32}")
    assert _kbs_v0(client, services, vtpm, priv).status_code == 200
    r = client.get("/kbs/v0/resource/default/azure/secret")
    assert r.status_code == 403, r.text


def test_attestation_token_and_a_passport_release(
    client: TestClient, admin_headers: dict[str, str], services: Services, vtpm: tuple[Swtpm, Ak]
) -> None:
    _cache(services)
    nonce = base64.b64decode(client.post("/attestation/v1/nonce").json()["val"])
    pki = SnpDevPki.load(snp_dev_pki_dir(services.settings))
    evidence = azure_snp_evidence(pki, *vtpm, binding.v1_tpm_extra_data(nonce, SPKI))
    body = {
        "tee": "az-snp-vtpm",
        "evidence": base64.b64encode(evidence).decode(),
        "nonce": base64.b64encode(nonce).decode(),
        "user_data": base64.b64encode(SPKI).decode(),
    }
    r = client.post("/attestation/v1/attest", json=body)
    assert r.status_code == 200, r.text
    ear = services.attestation.verify_token(r.json()["token"])
    claims = ear.appraisal_input(client_permissions=None)["claims"]
    assert claims["snp"]["measurement"] == DEFAULT_MEASUREMENT.hex() and claims["snp"]["vmpl"] == 0
    assert claims["tpm"]["ak"]["trust"]["mode"] == "hardware" and "16" in claims["tpm"]["pcrs"]["sha256"]
    assert ear.appraisal_input(client_permissions=None)["tcb"]["status"] == "NoVendorStatus"
    key_id, secret = _key(client, admin_headers, _policy(claims["tpm"]["pcrs"]["sha256"]["16"]))
    r = client.post(f"/kbs/v1/keys/{key_id}/transfer", json={"attestation_token": r.json()["token"]})
    assert r.status_code == 200, r.text
    assert unwrap_v1(r.json(), _WORKLOAD) == secret


def test_a_stored_policy_the_tighter_section_refuses_denies_and_is_no_server_error(
    client: TestClient, admin_headers: dict[str, str], services: Services
) -> None:
    """A policy stored before the az-snp-vtpm section became the snp section (its SEV-SNP part named
    no guest) no longer validates: its key is refused with the reason (403), never a 500, and it is
    not evaluated under the looser rules."""
    key_id, _ = _key(client, admin_headers, _policy("00" * 32))
    policy_id = client.get(f"/kbs/v1/keys/{key_id}", headers=admin_headers).json()["transfer_policy_id"]
    old = {
        "attestation_type": ["AZ-SNP-VTPM"],
        "az-snp-vtpm": {"snp": {"attributes": {"enforce_tcb_upto_date": False}}, "tpm": {}},
    }
    with services.db.session() as s:
        s.execute(update(TransferPolicy).where(TransferPolicy.id == policy_id).values(body=old))
    # as written then, by the service: adopted after the upgrade (its integrity tag is that body's)
    adopt = token_headers(services, "sys:integrity")
    r = client.post("/sys/v1/integrity/adopt", json={"include_changed": True}, headers=adopt)
    assert r.status_code == 200, r.text
    r = client.post(f"/kbs/v1/keys/{key_id}/transfer")
    assert r.status_code == 403, r.text
    (reason,) = r.json()["reasons"]
    assert reason.startswith("the transfer policy no longer validates (az-snp-vtpm.snp.attributes")


def test_a_revoked_ask_is_refused_with_the_callers_chain_too(
    client: TestClient, admin_headers: dict[str, str], services: Services, vtpm: tuple[Swtpm, Ak]
) -> None:
    """Regression: with the ASK/ARK given by the caller (``/attestation/v1/verify``'s collateral,
    ``evidence verify --cert``) no CRL was applied at all, so an ASK the ARK revoked passed. The KDS
    cache's CRLs now apply to whatever chain the VCEK is verified with."""
    pki = SnpDevPki.load(snp_dev_pki_dir(services.settings))
    headers = token_headers(services, "attestation:verify")
    evidence = azure_snp_evidence(pki, *vtpm, b"extra")
    chain_pem = "".join(c.public_bytes(Encoding.PEM).decode() for c in pki.chain("vcek"))
    body = {"quote": base64.b64encode(evidence).decode(), "collateral": {"cert_chain": chain_pem}}
    r = client.post("/attestation/v1/verify", json=body, headers=headers)
    assert r.status_code == 200 and r.json()["verified"] is True, r.text  # the dev PKI's current CRL
    serial = pki.revoke_intermediate("vcek")  # the dev ARK's CRL now lists the ASK
    KdsStore(services.db).import_items(
        [crl_item(pki.crl("vcek"), signing_key="vcek", dev_roots=(pki.root_cert,))], source="test"
    )
    r = client.post("/attestation/v1/verify", json=body, headers=headers)
    assert r.status_code == 400 and r.json()["check"] == "crl", r.text
    assert f"(serial 0x{serial:x}) is revoked" in r.json()["detail"]
    # and with no CRL of the ARK held anywhere: refused, naming it
    pki.crl_path("vcek").unlink()
    with services.db.session() as s:
        s.execute(delete(SnpCollateralItem))
    r = client.post("/attestation/v1/verify", json=body, headers=headers)
    assert r.status_code == 404 and r.json()["check"] == "crl", r.text
    assert "no VCEK CRL (of ASKs)" in r.json()["detail"]
