"""AMD SEV-SNP through every HTTP path, with simulated reports of the dev service's SNP dev PKI
(``dev-pki/snp``) and the real vendored reports: ``/kbs/v1`` transfer (background check and
passport), ``/attestation/v1/attest`` and ``/verify``, ``/kbs/v0`` in Trustee's evidence form; the
release and its denials with reasons (debug guests by default, other measurements, report data of
another nonce), tampered reports (400, never 500, audited once), nonces used once; and the mutation
sweep of a report's every region through the endpoints that spend a nonce."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi.testclient import TestClient
from tests.api.test_transfer_v1 import _WORKLOAD, SPKI
from tests.helpers.api import token_headers, unwrap_v1
from tests.vectors.corpus import case, path, read_bytes

from keybroker.api.app import create_app
from keybroker.api.services import Services
from keybroker.client.protocol_v0 import snp_primary_evidence
from keybroker.client.unwrap import jwe_unwrap
from keybroker.collateral.kds import crl_item
from keybroker.collateral.kds_store import KdsStore
from keybroker.collateral.trust import snp_dev_pki_dir
from keybroker.config import Settings, SnpSettings
from keybroker.errors import EvidenceParseError
from keybroker.keys import wrap
from keybroker.tee.sim.snp import DEFAULT_MEASUREMENT, DEFAULT_POLICY, SimSnpEvidence, SnpDevPki, snp_report
from keybroker.tee.snp.certs import RSA_PSS_SHA384
from keybroker.tee.snp.certtable import (
    GUID_ARK,
    GUID_ASK,
    GUID_CRL,
    GUID_VCEK,
    build_cert_table,
    parse_cert_table,
)
from keybroker.wire import binding

pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number")

SNP_SIM_POLICY: dict[str, Any] = {
    "attestation_type": ["SNP"],
    "snp": {"attributes": {"measurement": [DEFAULT_MEASUREMENT.hex()]}},
    "allow_simulated": True,
}
_DEBUG = 1 << 19
#: A /kbs/v0 resource policy for simulated SNP guests of the simulator's default measurement.
REGO_ALLOW_SIM_SNP = f"""package keybroker
import rego.v1
default allow := false
allow if {{
    input.tee == "snp"
    input.sim == true
    input.claims.debug == false
    input.claims.measurement == "{DEFAULT_MEASUREMENT.hex()}"
}}
"""


@dataclass
class Snp:
    client: TestClient
    services: Services
    admin: dict[str, str]
    pki: SnpDevPki
    key_id: str
    secret: bytes

    def nonce(self) -> bytes:
        r = self.client.post(f"/kbs/v1/keys/{self.key_id}/transfer")
        assert r.status_code == 200 and r.headers["Attestation-Type"] == "SNP", r.text
        return base64.b64decode(r.json()["nonce"]["val"])

    def evidence(self, report_data: bytes, *, with_certs: bool = True, **fields: Any) -> bytes:
        made = snp_report(self.pki, report_data=report_data, **fields)
        return made.report + made.cert_table if with_certs else made.report

    def transfer(self, evidence: bytes, nonce: bytes, **headers: str) -> Any:
        body = {
            "quote": base64.b64encode(evidence).decode(),
            "nonce": {"val": base64.b64encode(nonce).decode()},
            "user_data": base64.b64encode(SPKI).decode(),
        }
        return self.client.post(
            f"/kbs/v1/keys/{self.key_id}/transfer", json=body, headers={"Attestation-Type": "SNP", **headers}
        )

    def audit(self, action: str) -> list[dict[str, Any]]:
        records = self.client.get("/kbs/v1/audit?limit=1000", headers=self.admin).json()
        return [r for r in records if r["action"] == action]


def _setup(client: TestClient, services: Services, admin: dict[str, str], policy: dict[str, Any]) -> Snp:
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
    pki = SnpDevPki.load(snp_dev_pki_dir(services.settings))
    return Snp(client, services, admin, pki, r.json()["key_information"]["id"], secret)


@pytest.fixture
def snp(client: TestClient, services: Services, admin_headers: dict[str, str]) -> Snp:
    return _setup(client, services, admin_headers, SNP_SIM_POLICY)


def test_release_to_a_simulated_guest_and_the_nonce_is_single_use(snp: Snp) -> None:
    nonce = snp.nonce()
    evidence = snp.evidence(binding.v1_report_data(nonce, SPKI))
    r = snp.transfer(evidence, nonce)
    assert r.status_code == 200, r.text
    assert unwrap_v1(r.json(), _WORKLOAD) == snp.secret
    rec = snp.audit("key.transfer")[-1]
    assert rec["outcome"] == "success" and rec["object_id"] == snp.key_id
    # the audit names the report by its digest, without the (unsigned) certificate table
    assert rec["details"]["evidence_sha256"] == snp.services.verifier.evidence_sha256("snp", evidence[:1184])
    r = snp.transfer(evidence, nonce)
    assert r.status_code == 403 and "already used" in r.json()["detail"]


def test_denials_say_why(snp: Snp) -> None:
    nonce = snp.nonce()
    other = snp.evidence(binding.v1_report_data(nonce, SPKI), measurement=b"\x05" * 48)
    r = snp.transfer(other, nonce)
    assert r.status_code == 403
    assert r.json()["reasons"] == [f"measurement {'05' * 48} is not in the policy's list"]
    # a debug guest is denied by default
    nonce = snp.nonce()
    debug = snp.evidence(binding.v1_report_data(nonce, SPKI), policy=DEFAULT_POLICY | _DEBUG)
    r = snp.transfer(debug, nonce)
    assert r.status_code == 403
    assert r.json()["reasons"] == [
        "debug guest (POLICY.DEBUG is set) and the policy does not set allow_debug"
    ]
    denied = [x for x in snp.audit("key.transfer") if x["outcome"] == "denied"]
    assert len(denied) == 2 and "policy's list (1 value:" in denied[0]["reason"]  # the audit has it all


def test_report_data_of_another_nonce_or_key_is_refused(snp: Snp) -> None:
    nonce = snp.nonce()
    stale = snp.evidence(binding.v1_report_data(os.urandom(32), SPKI))
    r = snp.transfer(stale, nonce)
    assert r.status_code == 400 and r.json()["check"] == "report_data"
    r = snp.transfer(snp.evidence(binding.v1_report_data(nonce, SPKI)), nonce)
    assert r.status_code == 403 and "already used" in r.json()["detail"]  # spent by the failure
    refused = [x for x in snp.audit("key.transfer") if x["outcome"] == "denied"]
    assert [x["details"].get("failed_check") for x in refused][0] == "report_data", refused


def test_tampered_and_unendorsed_reports(snp: Snp) -> None:
    nonce = snp.nonce()
    evidence = bytearray(snp.evidence(binding.v1_report_data(nonce, SPKI)))
    evidence[0x90] ^= 1  # the measurement
    r = snp.transfer(bytes(evidence), nonce)
    assert r.status_code == 400 and r.json()["check"] == "report_signature", r.text
    # no certificate table and nothing in the KDS cache: refused, saying what to fetch
    nonce = snp.nonce()
    r = snp.transfer(snp.evidence(binding.v1_report_data(nonce, SPKI), with_certs=False), nonce)
    assert r.status_code == 404 and "collateral fetch --snp" in r.json()["detail"], r.text
    # a real AMD-signed report (its VCEK in the table): no CRL of AMD's ARK-Milan is cached, so it
    # is refused before anything else, naming the missing CRL and how to fetch it
    nonce = snp.nonce()
    real = read_bytes("amd-sev-snp/coco-trustee/test-report.bin")
    r = snp.transfer(real + _table(read_bytes("amd-sev-snp/coco-trustee/test-vcek.der")), nonce)
    assert r.status_code == 404 and r.json()["check"] == "crl", r.text
    assert "no VCEK CRL (of ASKs) Milan of AMD's ARK" in r.json()["detail"]
    assert "collateral fetch --snp --product Milan" in r.json()["detail"]
    # every refusal audited: two failed checks, and the missing endorsements as failures
    assert [x["outcome"] for x in snp.audit("key.transfer")] == ["denied", "failed", "failed"]


def _table(vcek: bytes) -> bytes:
    from keybroker.tee.snp.certtable import GUID_VCEK, build_cert_table

    return build_cert_table([(GUID_VCEK, vcek)])


def test_simulated_evidence_needs_allow_simulated(
    client: TestClient, services: Services, admin_headers: dict[str, str]
) -> None:
    strict = _setup(client, services, admin_headers, {**SNP_SIM_POLICY, "allow_simulated": False})
    nonce = strict.nonce()
    r = strict.transfer(strict.evidence(binding.v1_report_data(nonce, SPKI)), nonce)
    assert r.status_code == 403
    assert r.json()["reasons"] == [
        "the evidence is simulated (it chains to the dev PKI, not to AMD) and the policy does not set allow_simulated"
    ]


def test_attest_ear_and_passport_transfer(snp: Snp) -> None:
    n = snp.client.post("/attestation/v1/nonce").json()
    nonce = base64.b64decode(n["val"])
    evidence = snp.evidence(binding.v1_report_data(nonce, SPKI), host_data=b"\x42" * 32)
    body = {
        "tee": "snp",
        "evidence": base64.b64encode(evidence).decode(),
        "nonce": n["val"],
        "user_data": base64.b64encode(SPKI).decode(),
    }
    r = snp.client.post("/attestation/v1/attest", json=body)
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    assert r.json()["status"] == "warning"  # simulated, and AMD gives no TCB status
    claims = snp.services.attestation.verify_token(token)
    doc = claims.appraisal_input(client_permissions=None)
    assert doc["tee"] == "snp" and doc["claims"]["host_data"] == "42" * 32 and claims.sim
    assert claims.raw["attester_type"] == "SNP" and claims.raw["snp_host_data"] == "42" * 32
    assert claims.raw["attester_tcb_status"] == "NoVendorStatus" and claims.raw["keybroker_sim"] is True
    # the nonce is single use
    assert snp.client.post("/attestation/v1/attest", json=body).status_code in (400, 403)
    # passport: the EAR releases the key under the same policy
    r = snp.client.post(f"/kbs/v1/keys/{snp.key_id}/transfer", json={"attestation_token": token})
    assert r.status_code == 200, r.text


@pytest.fixture
def unsafe_no_crl(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[TestClient, Services]]:
    """A dev service with ``snp.require_crl = false`` (the documented escape hatch, logged at start):
    the vendored real reports come with no AMD CRL current at their ``verify_at``."""
    settings = Settings(
        data_dir=tmp_path / "nocrl",
        database=f"sqlite:///{tmp_path / 'nocrl.db'}",
        dev=True,
        snp=SnpSettings(require_crl=False),
    )
    svc = Services.build(request.getfixturevalue("sqlite_template").restore(settings))
    with TestClient(create_app(svc), base_url="https://testserver") as c:
        yield c, svc
    svc.db.dispose()


def test_verify_real_reports_with_their_certificates(
    snp: Snp, unsafe_no_crl: tuple[TestClient, Services]
) -> None:
    c = case("snp-trustee-milan")
    collateral = {
        "certificates": [
            path(c["ca_chain"]).read_text(),
            base64.b64encode(read_bytes(c["vcek"])).decode(),
        ]
    }
    body = {
        "quote": base64.b64encode(read_bytes(c["report"])).decode(),
        "collateral": collateral,
        "at": c["verify_at"],
    }
    # by default: refused, as no CRL of AMD's ARK-Milan is cached
    r = snp.client.post(
        "/attestation/v1/verify", json=body, headers=token_headers(snp.services, "attestation:verify")
    )
    assert r.status_code == 404 and r.json()["check"] == "crl", r.text
    client, services = unsafe_no_crl
    snp = replace(snp, client=client, services=services)
    verifier_headers = token_headers(snp.services, "attestation:verify")
    r = snp.client.post("/attestation/v1/verify", json=body, headers=verifier_headers)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["verified"] is True and doc["tee"] == "snp" and doc["root"] == "amd" and doc["sim"] is False
    assert doc["claims"]["product"] == "Milan" and doc["expiry"].endswith("Z")
    # the VCEK of another chip: refused with the check that failed
    other = case("snp-mismatch-vcek")
    body["quote"] = base64.b64encode(read_bytes(other["report"])).decode()
    r = snp.client.post("/attestation/v1/verify", json=body, headers=verifier_headers)
    assert r.status_code == 400 and r.json()["check"] == "report_signature"
    body["collateral"] = {"certificates": ["not a certificate"]}
    r = snp.client.post("/attestation/v1/verify", json=body, headers=verifier_headers)
    assert r.status_code == 400 and r.json()["field"] == "collateral"


def _kbs_v0(client: TestClient, services: Services, priv: Any, **fields: Any) -> Any:
    r = client.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "snp", "extra-params": ""})
    assert r.status_code == 200, r.text
    nonce = r.json()["nonce"]
    jwk = wrap.public_jwk(priv.public_key())
    pki = SnpDevPki.load(snp_dev_pki_dir(services.settings))
    made = snp_report(pki, report_data=binding.v0_report_data(nonce, jwk, "", "sha384"), **fields)
    primary = snp_primary_evidence(made.report, made.cert_table)
    body = {
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": {"primary_evidence": primary, "additional_evidence": ""},
    }
    return client.post("/kbs/v0/attest", json=body)


def test_kbs_v0_in_trustees_form(client: TestClient, services: Services) -> None:
    writer = token_headers(services, "resources:write")
    r = client.post(
        "/kbs/v0/resource/default/snp/secret",
        content=b"snp secret",
        headers={**writer, "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 204, r.text
    priv = ec.generate_private_key(ec.SECP384R1())
    assert _kbs_v0(client, services, priv).status_code == 200
    # the default resource policy wants an affirming appraisal of real hardware
    r = client.get("/kbs/v0/resource/default/snp/secret")
    assert r.status_code == 403 and any("NoVendorStatus" in x for x in r.json()["reasons"]), r.text
    r = client.post(
        "/kbs/v0/resource-policy/default/snp/secret", json={"rego": REGO_ALLOW_SIM_SNP}, headers=writer
    )
    assert r.status_code == 204, r.text
    r = client.get("/kbs/v0/resource/default/snp/secret")
    assert r.status_code == 200 and jwe_unwrap(r.json(), priv) == b"snp secret"
    # a debug guest: its EAR is contraindicated (the default attestation policy denies debug) and
    # the resource is refused
    r = _kbs_v0(client, services, priv, policy=DEFAULT_POLICY | _DEBUG)
    assert r.status_code == 200, r.text
    ear = services.attestation.verify_token(r.json()["token"])
    assert ear.status == "contraindicated" and ear.tee == "snp"
    assert client.get("/kbs/v0/resource/default/snp/secret").status_code == 403


def test_kbs_v0_refuses_malformed_snp_evidence(client: TestClient, services: Services) -> None:
    priv = ec.generate_private_key(ec.SECP256R1())
    r = client.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "snp"})
    nonce = r.json()["nonce"]
    jwk = wrap.public_jwk(priv.public_key())
    for primary, field in (
        ({"quote": "AAAA"}, "tee-evidence.primary_evidence"),
        ({"attestation_report": {"version": 3}, "cert_chain": None}, "attestation_report"),
        ({"attestation_report": "AAAA", "cert_chain": None}, "attestation_report"),
    ):
        r = client.post(
            "/kbs/v0/attest",
            json={
                "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
                "tee-evidence": {"primary_evidence": primary, "additional_evidence": ""},
            },
        )
        assert r.status_code == 400 and r.json()["field"].endswith(field), r.text


# --- the mutation sweep through the endpoints ------------------------------------------------------

#: Offsets to flip: the first, middle and last byte of every field of the report (ABI table), the
#: signature's R and S and their zero upper halves, the unsigned tail, and the certificate table.
_REGIONS = {
    "version": (0x000, 0x004),
    "guest_svn": (0x004, 0x008),
    "policy": (0x008, 0x010),
    "family_id": (0x010, 0x020),
    "image_id": (0x020, 0x030),
    "vmpl": (0x030, 0x034),
    "signature_algo": (0x034, 0x038),
    "current_tcb": (0x038, 0x040),
    "platform_info": (0x040, 0x048),
    "key_info": (0x048, 0x04C),
    "reserved_04c": (0x04C, 0x050),
    "report_data": (0x050, 0x090),
    "measurement": (0x090, 0x0C0),
    "host_data": (0x0C0, 0x0E0),
    "id_key_digest": (0x0E0, 0x110),
    "author_key_digest": (0x110, 0x140),
    "report_id": (0x140, 0x160),
    "report_id_ma": (0x160, 0x180),
    "reported_tcb": (0x180, 0x188),
    "cpuid": (0x188, 0x18B),
    "reserved_18b": (0x18B, 0x1A0),
    "chip_id": (0x1A0, 0x1E0),
    "committed_tcb": (0x1E0, 0x1E8),
    "versions": (0x1E8, 0x1F0),
    "launch_tcb": (0x1F0, 0x1F8),
    "reserved_1f8": (0x1F8, 0x2A0),
    "signature.r": (0x2A0, 0x2D0),
    "signature.r_zero": (0x2D0, 0x2E8),
    "signature.s": (0x2E8, 0x318),
    "signature.s_zero": (0x318, 0x330),
    "unsigned_tail": (0x330, 0x4A0),
}


def _offsets(table_size: int) -> list[tuple[str, int]]:
    out = []
    for name, (start, end) in _REGIONS.items():
        for pos in sorted({start, (start + end) // 2, end - 1}):
            out.append((f"{name}@{pos:#x}", pos))
    # GUID, offset, length, the terminator after the four entries (VCEK, ASK, ARK, CRL), data. (A
    # flipped GUID of the CRL entry makes it an unknown entry, ignored: the server's own CRL applies.)
    for pos in (0, 16, 20, 24 * 4, table_size // 2, table_size - 1):
        out.append((f"cert_table@{pos}", 0x4A0 + pos))
    return out


def test_every_region_mutated_through_the_endpoints(snp: Snp) -> None:
    """A bit flipped in any region of a valid report (or its certificate table), posted to the
    three endpoints that spend a nonce: a 4xx problem, never a 5xx and never a release; each
    refused attempt audited exactly once."""
    sample = snp.evidence(bytes(64))
    offsets = _offsets(len(sample) - 0x4A0)
    assert len(offsets) > 90
    before = {a: len(snp.audit(a)) for a in ("key.transfer", "attestation.attest")}
    sent = {"key.transfer": 0, "attestation.attest": 0}
    for i, (name, pos) in enumerate(offsets):
        endpoint = ("transfer", "attest", "kbs_v0")[i % 3]
        if endpoint == "transfer":
            nonce = snp.nonce()
            evidence = bytearray(snp.evidence(binding.v1_report_data(nonce, SPKI)))
            evidence[pos] ^= 1 << (pos % 8)
            r = snp.transfer(bytes(evidence), nonce)
            sent["key.transfer"] += 1
        elif endpoint == "attest":
            n = snp.client.post("/attestation/v1/nonce").json()
            evidence = bytearray(snp.evidence(binding.v1_report_data(base64.b64decode(n["val"]), SPKI)))
            evidence[pos] ^= 1 << (pos % 8)
            body = {
                "tee": "snp",
                "evidence": base64.b64encode(bytes(evidence)).decode(),
                "nonce": n["val"],
                "user_data": base64.b64encode(SPKI).decode(),
            }
            r = snp.client.post("/attestation/v1/attest", json=body)
            sent["attestation.attest"] += 1
        else:
            priv = ec.generate_private_key(ec.SECP256R1())
            auth = snp.client.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "snp"}).json()
            jwk = wrap.public_jwk(priv.public_key())
            evidence = bytearray(snp.evidence(binding.v0_report_data(auth["nonce"], jwk, "", "sha384")))
            evidence[pos] ^= 1 << (pos % 8)
            report, table = bytes(evidence[:0x4A0]), bytes(evidence[0x4A0:])
            primary = {
                "attestation_report": base64.b64encode(report).decode(),
                "cert_chain": None,
            }
            if table:
                # the table is sent as Trustee's entries when it still parses, else as one raw entry
                try:
                    primary = snp_primary_evidence(report, table)
                except EvidenceParseError:  # a mutated table may not parse on the client side
                    primary["cert_chain"] = [{"cert_type": "VCEK", "data": base64.b64encode(table).decode()}]
            r = snp.client.post(
                "/kbs/v0/attest",
                json={
                    "runtime-data": {"nonce": auth["nonce"], "tee-pubkey": jwk},
                    "tee-evidence": {"primary_evidence": primary, "additional_evidence": ""},
                },
            )
            sent["attestation.attest"] += 1
        assert 400 <= r.status_code < 500, (name, endpoint, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/problem+json"), (name, r.text)
        assert "wrapped_key" not in r.text and "token" not in r.json(), name
    after = {a: len(snp.audit(a)) for a in before}
    assert after["key.transfer"] - before["key.transfer"] == sent["key.transfer"]
    assert after["attestation.attest"] - before["attestation.attest"] == sent["attestation.attest"]


def test_the_corpus_report_mutated_is_never_accepted(
    snp: Snp, unsafe_no_crl: tuple[TestClient, Services]
) -> None:
    """The real Milan report with its VCEK, a bit flipped in each signed field: /attestation/v1/verify
    refuses every one (4xx with the failed check); on a server without the CRL requirement, so that
    the checks after ``crl`` run (the corpus has no AMD CRL of its time)."""
    client, services = unsafe_no_crl
    snp = replace(snp, client=client, services=services)
    c = case("snp-trustee-milan")
    headers = token_headers(snp.services, "attestation:verify")
    report = read_bytes(c["report"])
    collateral = {"certificates": [base64.b64encode(read_bytes(c["vcek"])).decode()]}
    for name, (start, end) in _REGIONS.items():
        if name == "unsigned_tail":
            continue
        mutated = bytearray(report)
        mutated[(start + end) // 2] ^= 0x01
        body = {
            "quote": base64.b64encode(bytes(mutated)).decode(),
            "collateral": collateral,
            "at": c["verify_at"],
        }
        r = snp.client.post("/attestation/v1/verify", json=body, headers=headers)
        assert r.status_code == 400, (name, r.text)
        problem = r.json()
        # not recognized as a report any more (its header changed), or refused by a check
        assert problem.get("field") == "quote" or problem["check"] in (
            "parse",
            "signing_key",
            "report_signature",
            "product",
            "tcb_binding",
        ), (name, problem)


def test_a_report_without_certificates_verifies_with_the_kds_cache(snp: Snp) -> None:
    """The KDS cache is the server's endorsement source: once the VCEK, its chain and the ARK's CRL
    are cached (as ``collateral fetch --snp`` stores them), a report that carries no certificates is
    verified with them; before, it was refused naming what is missing."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from keybroker.collateral.kds import chain_items, crl_item, vcek_item
    from keybroker.collateral.kds_store import KdsStore

    nonce = snp.nonce()
    made = snp_report(snp.pki, report_data=binding.v1_report_data(nonce, SPKI))
    r = snp.transfer(made.report, nonce)
    assert r.status_code == 404 and "no endorsement source" not in r.json()["detail"], r.text
    assert "collateral fetch --snp" in r.json()["detail"], r.text

    dev = (snp.pki.root_cert,)
    chain = chain_items([c.public_bytes(Encoding.DER) for c in made.chain], dev_roots=dev)
    crl = crl_item(snp.pki.crl("vcek"), signing_key="vcek", dev_roots=dev)
    vcek = vcek_item(made.signer.public_bytes(Encoding.DER), chains=chain, dev_roots=dev)
    KdsStore(snp.services.db).import_items([*chain, crl, vcek], source="test")

    nonce = snp.nonce()
    made = snp_report(snp.pki, report_data=binding.v1_report_data(nonce, SPKI))
    r = snp.transfer(made.report, nonce)
    assert r.status_code == 200, r.text


def _ark_crl(pki: SnpDevPki, *, revoked: tuple[int, ...], number: int) -> bytes:
    """An ARK CRL of ASKs signed by the simulator's dev ARK (RSASSA-PSS SHA-384 salt 48, as AMD's),
    current now and listing ``revoked``."""
    now = datetime.now(UTC).replace(microsecond=0)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.ark.cert.subject)
        .last_update(now - timedelta(minutes=5))
        .next_update(now + timedelta(days=1))
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - timedelta(minutes=5))
            .build()
        )
    return builder.sign(pki.ark.key, hashes.SHA384(), rsa_padding=RSA_PSS_SHA384).public_bytes(Encoding.DER)


def _attacker_table(made: SimSnpEvidence, crl: bytes | None) -> bytes:
    """The certificate table a guest (or whoever forwards its evidence) chooses to send: the VCEK,
    ASK and ARK, and a CRL of its choosing or none."""
    items = [
        (GUID_VCEK, made.signer.public_bytes(Encoding.DER)),
        (GUID_ASK, made.chain[0].public_bytes(Encoding.DER)),
        (GUID_ARK, made.chain[1].public_bytes(Encoding.DER)),
    ]
    return build_cert_table(items if crl is None else [*items, (GUID_CRL, crl)])


def test_an_ask_revoked_in_the_cached_crl_is_refused_whatever_the_table_carries(snp: Snp) -> None:
    """Regression: with the VCEK, ASK and ARK in the evidence's certificate table, only the table's
    own CRL (usually none) was applied, so an ASK that AMD's ARK revoked passed whenever the sender
    left the CRL out or sent an older one. The KDS cache's CRLs now apply to every chain."""
    ask_serial = snp.pki.ask.cert.serial_number
    revoking = _ark_crl(snp.pki, revoked=(ask_serial,), number=1000)
    dev = (snp.pki.root_cert,)
    KdsStore(snp.services.db).import_items(
        [crl_item(revoking, signing_key="vcek", dev_roots=dev)], source="test"
    )
    stale = _ark_crl(snp.pki, revoked=(), number=999)  # genuine, current, and not listing the ASK
    for table_crl in (None, stale):
        nonce = snp.nonce()
        made = snp_report(snp.pki, report_data=binding.v1_report_data(nonce, SPKI))
        r = snp.transfer(made.report + _attacker_table(made, table_crl), nonce)
        assert r.status_code == 400 and r.json()["check"] == "crl", r.text
        assert f"(serial 0x{ask_serial:x}) is revoked by ARK-" in r.json()["detail"]
        assert "wrapped_key" not in r.text
    # and through /attestation/v1/attest: no token
    n = snp.client.post("/attestation/v1/nonce").json()
    made = snp_report(snp.pki, report_data=binding.v1_report_data(base64.b64decode(n["val"]), SPKI))
    body = {
        "tee": "snp",
        "evidence": base64.b64encode(made.report + _attacker_table(made, None)).decode(),
        "nonce": n["val"],
        "user_data": base64.b64encode(SPKI).decode(),
    }
    r = snp.client.post("/attestation/v1/attest", json=body)
    assert r.status_code == 400 and r.json()["check"] == "crl" and "token" not in r.json(), r.text
    denied = [x for x in snp.audit("key.transfer") if x["outcome"] != "success"]
    assert [x["details"].get("failed_check") for x in denied] == ["crl", "crl"]


def test_without_a_crl_held_by_the_broker_the_report_is_refused_naming_it(snp: Snp) -> None:
    """Regression: with no CRL anywhere the report passed. Now the broker must hold a current CRL of
    the chain's ARK (the KDS cache; in dev mode also the dev PKI's): none held -> 404 naming the
    missing CRL and how to fetch it, even when the evidence carries a genuine one."""
    snp.pki.crl_path("vcek").unlink()  # the dev PKI's own CRL gone, nothing in the KDS cache
    nonce = snp.nonce()
    made = snp_report(snp.pki, report_data=binding.v1_report_data(nonce, SPKI))
    r = snp.transfer(made.report + _attacker_table(made, None), nonce)
    assert r.status_code == 404 and r.json()["check"] == "crl", r.text
    detail = r.json()["detail"]
    assert "no VCEK CRL (of ASKs) Genoa of the simulator's dev ARK" in detail, detail
    assert "keybroker collateral fetch --snp --product Genoa" in detail and "Refresh now" in detail
    # a current CRL of that ARK in the table does not stand in for the broker's own
    nonce = snp.nonce()
    made = snp_report(snp.pki, report_data=binding.v1_report_data(nonce, SPKI))
    table = _attacker_table(made, _ark_crl(snp.pki, revoked=(), number=7))
    r = snp.transfer(made.report + table, nonce)
    assert r.status_code == 404 and r.json()["check"] == "crl", r.text
    # once the ARK's CRL is in the KDS cache (what collateral fetch --snp stores), it verifies
    dev = (snp.pki.root_cert,)
    fresh = _ark_crl(snp.pki, revoked=(), number=8)
    KdsStore(snp.services.db).import_items(
        [crl_item(fresh, signing_key="vcek", dev_roots=dev)], source="test"
    )
    nonce = snp.nonce()
    made = snp_report(snp.pki, report_data=binding.v1_report_data(nonce, SPKI))
    r = snp.transfer(made.report + _attacker_table(made, None), nonce)
    assert r.status_code == 200, r.text
    assert unwrap_v1(r.json(), _WORKLOAD) == snp.secret


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_a_dev_server_past_its_dev_crls_next_update_renews_them(snp: Snp) -> None:
    """Regression: the dev server issued its dev CRLs (valid 30 days) at start only, so one running
    longer refused every SEV-SNP report at ``crl`` until restarted. Now it re-issues them when they
    run out, at the next verification. Here the CRLs it holds were issued 40 days before the
    verification time: their nextUpdate passed 10 days ago."""
    now = datetime.now(UTC)
    snp.pki.reissue_crls(now=now - timedelta(days=40))
    first = {kind: x509.load_der_x509_crl(snp.pki.crl(kind)) for kind in ("vcek", "vlek")}
    assert all(crl.next_update_utc is not None and crl.next_update_utc < now for crl in first.values())
    nonce = snp.nonce()
    made = snp_report(snp.pki, report_data=binding.v1_report_data(nonce, SPKI))
    r = snp.transfer(made.report + made.cert_table, nonce)
    assert r.status_code == 200, r.text
    assert unwrap_v1(r.json(), _WORKLOAD) == snp.secret
    assert parse_cert_table(made.cert_table).crl is None  # the simulated host had no current CRL either
    for kind, old in first.items():  # both renewed, from the verification time for 30 days
        renewed = x509.load_der_x509_crl(snp.pki.crl(kind))
        assert renewed.next_update_utc is not None
        assert now - timedelta(seconds=1) <= renewed.last_update_utc <= datetime.now(UTC)
        assert renewed.next_update_utc - renewed.last_update_utc == timedelta(days=30)
        assert _crl_number(renewed) == _crl_number(old) + 1
    # the next verification finds them current and leaves them as they are
    held = snp.pki.crl("vcek")
    n = snp.client.post("/attestation/v1/nonce").json()
    made = snp_report(snp.pki, report_data=binding.v1_report_data(base64.b64decode(n["val"]), SPKI))
    body = {
        "tee": "snp",
        "evidence": base64.b64encode(made.report + made.cert_table).decode(),
        "nonce": n["val"],
        "user_data": base64.b64encode(SPKI).decode(),
    }
    assert snp.client.post("/attestation/v1/attest", json=body).status_code == 200
    assert snp.pki.crl("vcek") == held


def test_a_renewed_dev_crl_keeps_its_revocations(snp: Snp) -> None:
    """The renewal never un-revokes: an ASK revoked in the dev PKI (by another process, after the
    server loaded it) is on the CRLs the server re-issues, and its reports stay refused at ``crl``;
    the ASVK's (not revoked) pass."""
    now = datetime.now(UTC)
    other = SnpDevPki.load(snp.pki.directory)  # e.g. a test or a tool beside the server
    serial = other.revoke_intermediate("vcek", now=now - timedelta(days=40))  # and its CRLs run out
    other.reissue_crls(now=now - timedelta(days=40))
    nonce = snp.nonce()
    r = snp.transfer(snp.evidence(binding.v1_report_data(nonce, SPKI)), nonce)
    assert r.status_code == 400 and r.json()["check"] == "crl", r.text
    assert f"(serial 0x{serial:x}) is revoked by ARK-Genoa" in r.json()["detail"]
    renewed = x509.load_der_x509_crl(snp.pki.crl("vcek"))
    assert renewed.next_update_utc is not None and renewed.next_update_utc > now + timedelta(days=29)
    assert renewed.get_revoked_certificate_by_serial_number(serial) is not None
    nonce = snp.nonce()
    r = snp.transfer(
        snp.evidence(binding.v1_report_data(nonce, SPKI), signing_key="vlek", mask_chip_id=True), nonce
    )
    assert r.status_code == 200, r.text
