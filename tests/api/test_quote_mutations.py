"""Mutated and adversarial DCAP quotes through the HTTP endpoints that verify them (issue 11).

A byte of a valid simulator quote changed anywhere (header, body, signatures, attestation key, QE
report, QE auth data, lengths, the PEM chain, padding) and posted to ``/kbs/v1/keys/{id}/transfer``,
``/attestation/v1/attest``, ``/kbs/v0/attest`` and ``/attestation/v1/verify`` is a 4xx problem,
never a 5xx; the three endpoints that spend a nonce audit every refused attempt, exactly once, with
the digest of the evidence as sent. Then one test per attack of the review, each from the outside:
a PCK leaf whose issuer no longer decodes (used to be a 500 with no audit record), a QE vendor ID
other than Intel's, collateral of a second trusted root, bytes after the quote, TCB levels in a
reordered (validly signed) TCB Info, and reserved TD attribute bits.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi.testclient import TestClient
from tests.api.test_transfer_v1 import SGX_SIM_POLICY, SPKI, TDX_SIM_POLICY, Setup, _setup
from tests.helpers.api import token_headers
from tests.helpers.quote_layout import one_char_undecodable_leaf, pem_blocks, regions

from keybroker.api.app import create_app
from keybroker.api.services import DEV_PKI_DIR, Services
from keybroker.config import Settings, TrustSettings
from keybroker.keys import wrap
from keybroker.tee import sim
from keybroker.tee.dcap.abi import INTEL_QE_VENDOR_ID, canonical_quote
from keybroker.tee.sim.pki import signature_raw
from keybroker.wire import binding

_TEE_KEY = ec.generate_private_key(ec.SECP256R1())
_JWK = wrap.public_jwk(_TEE_KEY.public_key())
#: A TD attribute bit no TDX module defines.
RESERVED_TD_BIT = 1 << 40

Mutate = Callable[[bytes], bytes]


def _quote(pki: sim.DevPki, tee: str, report_data: bytes, **fields: Any) -> bytes:
    if tee == "tdx":
        return sim.tdx_quote(pki, report_data=report_data, **fields)
    fields.setdefault("isvprodid", 7)
    fields.setdefault("isvsvn", 2)
    return sim.sgx_quote(pki, report_data=report_data, **fields)


def _flip(pos: int) -> Mutate:
    return lambda q: q[:pos] + bytes([q[pos] ^ (1 << (pos % 8))]) + q[pos + 1 :]


def _mutations(pki: sim.DevPki, tee: str) -> list[tuple[str, Mutate]]:
    """First, middle and last byte of every region of the quote, a byte of each PEM block's
    base64, one character that leaves the PCK leaf undecodable, and bytes after the quote.
    Simulator quotes of one platform share their layout, so positions hold for every quote."""
    sample = _quote(pki, tee, bytes(64))
    out: list[tuple[str, Mutate]] = []
    for region in regions(sample):
        for pos in sorted({region.start, (region.start + region.end) // 2, region.end - 1}):
            out.append((f"{region.name}@{pos}", _flip(pos)))
    for start, end in pem_blocks(sample):
        out.append((f"PEM base64@{start + 7}", _flip(start + 7)))
        out.append((f"PEM base64@{end - 9}", _flip(end - 9)))
    undecodable = one_char_undecodable_leaf(sample)
    pos = next(i for i in range(len(sample)) if sample[i] != undecodable[i])
    out.append(("PCK leaf issuer undecodable", lambda q: q[:pos] + undecodable[pos : pos + 1] + q[pos + 1 :]))
    out.append(("bytes after the quote", lambda q: q + b"\x00\x00extra"))
    return out


# --- the four endpoints, each taking a fresh nonce and a quote built for it -----------------------


@dataclass
class Api:
    client: TestClient
    services: Services
    admin: dict[str, str]
    pki: sim.DevPki
    keys: dict[str, Setup]

    def audit_after(self, seq: int) -> list[dict[str, Any]]:
        r = self.client.get(f"/kbs/v1/audit?after={seq}&limit=1000", headers=self.admin)
        assert r.status_code == 200, r.text
        records: list[dict[str, Any]] = r.json()
        return records

    def last_seq(self) -> int:
        seq = 0
        while batch := self.audit_after(seq):
            seq = batch[-1]["seq"]
        return seq

    def transfer(self, tee: str, mutate: Mutate, **fields: Any) -> tuple[Any, bytes]:
        s = self.keys[tee]
        r = self.client.post(f"/kbs/v1/keys/{s.key_id}/transfer")
        assert r.status_code == 200, r.text
        nonce = base64.b64decode(r.json()["nonce"]["val"])
        quote = mutate(_quote(self.pki, tee, binding.v1_report_data(nonce, SPKI), **fields))
        body = {
            "quote": base64.b64encode(quote).decode(),
            "nonce": {"val": base64.b64encode(nonce).decode()},
            "user_data": base64.b64encode(SPKI).decode(),
        }
        headers = {"Attestation-Type": tee.upper()}
        return self.client.post(f"/kbs/v1/keys/{s.key_id}/transfer", json=body, headers=headers), quote

    def attest_v1(self, tee: str, mutate: Mutate, **fields: Any) -> tuple[Any, bytes]:
        n = self.client.post("/attestation/v1/nonce").json()
        nonce = base64.b64decode(n["val"])
        quote = mutate(_quote(self.pki, tee, binding.v1_report_data(nonce, SPKI), **fields))
        body = {
            "tee": tee,
            "evidence": base64.b64encode(quote).decode(),
            "nonce": n["val"],
            "user_data": base64.b64encode(SPKI).decode(),
        }
        return self.client.post("/attestation/v1/attest", json=body), quote

    def attest_v0(self, tee: str, mutate: Mutate, **fields: Any) -> tuple[Any, bytes]:
        r = self.client.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": tee, "extra-params": ""})
        assert r.status_code == 200, r.text
        nonce = r.json()["nonce"]
        quote = mutate(_quote(self.pki, tee, binding.v0_report_data(nonce, _JWK, ""), **fields))
        primary = {"quote": base64.b64encode(quote).decode()}
        body = {
            "runtime-data": {"nonce": nonce, "tee-pubkey": _JWK},
            "tee-evidence": {"primary_evidence": primary, "additional_evidence": ""},
        }
        return self.client.post("/kbs/v0/attest", json=body), quote

    def verify(self, tee: str, mutate: Mutate, **fields: Any) -> tuple[Any, bytes]:
        quote = mutate(_quote(self.pki, tee, bytes(64), **fields))
        headers = token_headers(self.services, "attestation:verify")
        r = self.client.post("/attestation/v1/verify", json={"quote": quote.hex()}, headers=headers)
        return r, quote


#: endpoint -> the audit action of its attempts (None: it audits nothing)
ENDPOINTS: dict[str, str | None] = {
    "transfer": "key.transfer",
    "attest_v1": "attestation.attest",
    "attest_v0": "attestation.attest",
    "verify": None,
}


def _api(client: TestClient, services: Services, admin_headers: dict[str, str]) -> Api:
    keys = {
        "sgx": _setup(client, services, admin_headers, SGX_SIM_POLICY),
        "tdx": _setup(client, services, admin_headers, TDX_SIM_POLICY),
    }
    return Api(client, services, admin_headers, keys["sgx"].pki, keys)


@pytest.fixture
def api(client: TestClient, services: Services, admin_headers: dict[str, str]) -> Api:
    return _api(client, services, admin_headers)


@pytest.fixture
def sweep_api(tmp_path: Path) -> Iterator[Api]:
    """On SQLite only: the sweep is about the verifier's error paths (the attacks below run on
    both databases)."""
    services = Services.build(
        Settings(data_dir=tmp_path / "data", database=f"sqlite:///{tmp_path / 'kb.db'}", dev=True)
    )
    admin = {"Authorization": "Bearer " + services.tokens.mint("test-admin", ["*:*"])}
    with TestClient(create_app(services), base_url="https://testserver") as client:
        yield _api(client, services, admin)
    services.db.dispose()


def _call(api: Api, endpoint: str, tee: str, mutate: Mutate, **fields: Any) -> tuple[Any, bytes]:
    method: Callable[..., tuple[Any, bytes]] = getattr(api, endpoint)
    return method(tee, mutate, **fields)


def _refused_and_audited(api: Api, endpoint: str, r: Any, quote: bytes, seq: int, what: str) -> int:
    """A 4xx problem and, where the endpoint audits, exactly one denial naming this evidence."""
    assert 400 <= r.status_code < 500, (what, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json"), what
    action = ENDPOINTS[endpoint]
    records = api.audit_after(seq)
    if action is None:
        return records[-1]["seq"] if records else seq
    assert [(rec["action"], rec["outcome"]) for rec in records] == [(action, "denied")], (what, records)
    assert records[0]["details"]["evidence_sha256"] == hashlib.sha256(canonical_quote(quote)).hexdigest()
    return int(records[0]["seq"])


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_mutated_quotes_are_4xx_and_every_refused_attempt_is_audited(sweep_api: Api, tee: str) -> None:
    api = sweep_api
    for endpoint in ENDPOINTS:  # the unmutated quote passes each endpoint: the sweep is not vacuous
        r, _ = _call(api, endpoint, tee, lambda q: q)
        assert r.status_code == 200, (endpoint, r.text)
    seq = api.last_seq()
    mutations = _mutations(api.pki, tee)
    assert len(mutations) >= 40
    for what, mutate in mutations:
        for endpoint in ENDPOINTS:
            r, quote = _call(api, endpoint, tee, mutate)
            seq = _refused_and_audited(api, endpoint, r, quote, seq, f"{endpoint} {what}")


# --- the attacks of the review, one by one ---------------------------------------------------------


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_undecodable_pck_leaf_is_a_named_4xx_and_audited(api: Api, endpoint: str) -> None:
    """One base64 character of the PCK leaf changed so that its issuer no longer decodes: it used
    to escape as ValueError (500) after the nonce was spent, with no audit record."""
    sample = _quote(api.pki, "sgx", bytes(64))
    undecodable = one_char_undecodable_leaf(sample)
    pos = next(i for i in range(len(sample)) if sample[i] != undecodable[i])
    seq = api.last_seq()
    r, quote = _call(api, endpoint, "sgx", lambda q: q[:pos] + undecodable[pos : pos + 1] + q[pos + 1 :])
    _refused_and_audited(api, endpoint, r, quote, seq, endpoint)
    assert r.status_code == 400 and r.json()["check"] == "pck_chain"
    assert "undecodable certificate" in r.json()["detail"]


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_qe_vendor_id_other_than_intels_is_refused(api: Api, tee: str) -> None:
    """A quote signed by the (trusted) dev PKI but naming QE vendor zero used to release the key."""
    seq = api.last_seq()
    r, quote = api.transfer(tee, lambda q: q, qe_vendor_id=bytes(16))
    _refused_and_audited(api, "transfer", r, quote, seq, "vendor")
    assert r.status_code == 400 and r.json()["check"] == "qe_vendor_id"
    r, _ = api.transfer(tee, lambda q: q, qe_vendor_id=INTEL_QE_VENDOR_ID)
    assert r.status_code == 200, r.text


def test_only_zero_padding_after_a_quote(api: Api) -> None:
    """Bytes after the quote used to be accepted whatever they were, so one quote had many
    digests in the audit log. Zeros (configfs padding) are accepted and not part of the digest."""
    seq = api.last_seq()
    r, quote = api.transfer("sgx", lambda q: q + b"\x00" * 3 + b"padding")
    _refused_and_audited(api, "transfer", r, quote, seq, "junk after the quote")
    assert r.status_code == 400 and r.json()["field"] == "trailing_bytes"
    r, padded = api.transfer("sgx", lambda q: q + bytes(1024))
    assert r.status_code == 200, r.text
    (record,) = api.audit_after(api.last_seq() - 1)
    assert record["outcome"] == "success"
    assert record["details"]["evidence_sha256"] == hashlib.sha256(padded[:-1024]).hexdigest()


def _resigned_tcb_info(pki: sim.DevPki, tee: str, edit: Callable[[list[Any]], None]) -> dict[str, Any]:
    doc = json.loads(pki.collateral_json(tee))  # type: ignore[arg-type]
    tcb_info = json.loads(doc["tcb_info"])
    edit(tcb_info["tcbLevels"])
    text = json.dumps(tcb_info, separators=(",", ":"))
    doc.update(tcb_info=text, tcb_info_signature=signature_raw(pki.tcb_signing.key, text.encode()).hex())
    return dict(doc)


def test_tcb_levels_matched_in_qvl_order(api: Api) -> None:
    """TCB Info validly signed with its levels lowest first: an up-to-date platform used to match
    the Revoked level (the first in JSON order that it is above)."""
    collateral = _resigned_tcb_info(api.pki, "sgx", lambda levels: levels.reverse())
    quote = _quote(api.pki, "sgx", bytes(64))
    headers = token_headers(api.services, "attestation:verify")
    r = api.client.post(
        "/attestation/v1/verify", json={"quote": quote.hex(), "collateral": collateral}, headers=headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "UpToDate"
    duplicated = _resigned_tcb_info(api.pki, "sgx", lambda levels: levels.append(dict(levels[0])))
    r = api.client.post(
        "/attestation/v1/verify", json={"quote": quote.hex(), "collateral": duplicated}, headers=headers
    )
    assert r.status_code == 400 and "same TCB" in r.json()["detail"]


def test_reserved_td_attribute_bits_are_denied_unless_the_policy_allows_them(api: Api) -> None:
    seq = api.last_seq()
    r, quote = api.transfer("tdx", lambda q: q, extra_td_attributes=RESERVED_TD_BIT)
    assert r.status_code == 403, r.text
    assert any("reserved TD attribute bits" in reason for reason in r.json()["reasons"])
    (record,) = api.audit_after(seq)
    assert record["outcome"] == "denied" and "reserved TD attribute bits" in record["reason"]
    # the attestation service's default policy says so too: the EAR is contraindicated
    r, _ = api.attest_v0("tdx", lambda q: q, extra_td_attributes=RESERVED_TD_BIT)
    assert r.status_code == 200, r.text
    claims = json.loads(base64.urlsafe_b64decode(r.json()["token"].split(".")[1] + "=="))
    assert claims["submods"]["cpu0"]["ear.status"] == "contraindicated"
    # a policy may allow them explicitly
    policy = json.loads(json.dumps(TDX_SIM_POLICY))
    policy["tdx"]["attributes"]["allow_reserved_td_attributes"] = True
    api.keys["tdx"] = _setup(api.client, api.services, api.admin, policy)
    r, _ = api.transfer("tdx", lambda q: q, extra_td_attributes=RESERVED_TD_BIT)
    assert r.status_code == 200, r.text


# --- two trusted roots ------------------------------------------------------------------------------


@pytest.fixture
def two_roots(tmp_path: Path) -> Iterator[tuple[TestClient, Services, sim.DevPki, sim.DevPki]]:
    """A dev service (its dev PKI, root A) that also trusts a second dev root B."""
    other = sim.DevPki.create(tmp_path / "other-pki")
    settings = Settings(
        data_dir=tmp_path / "data",
        database=f"sqlite:///{tmp_path / 'kb.db'}",
        dev=True,
        trust=TrustSettings(dev_roots=[other.root_pem_path]),
    )
    services = Services.build(settings)
    with TestClient(create_app(services), base_url="https://testserver") as client:
        yield client, services, sim.DevPki.load(settings.data_dir / DEV_PKI_DIR), other
    services.db.dispose()


def _root_crl_revoking(pki: sim.DevPki, serial: int) -> str:
    now = pki.root_cert.not_valid_before_utc
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.root_cert.subject)
        .last_update(now)
        .next_update(now + (pki.root_cert.not_valid_after_utc - now) / 100)
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
        .sign(pki.root.key, hashes.SHA256())
    )
    return crl.public_bytes(Encoding.DER).hex()


def test_collateral_of_another_trusted_root_is_refused(
    two_roots: tuple[TestClient, Services, sim.DevPki, sim.DevPki],
) -> None:
    """Root A revokes its PCK Processor CA. A quote chaining to A, sent with A's PCK CRL but root
    B's TCB Info, QE Identity and root CA CRL, used to verify: B's CRL was read, A's never."""
    client, services, a, b = two_roots
    headers = token_headers(services, "attestation:verify")
    quote = _quote(a, "sgx", bytes(64))

    def verify(collateral: dict[str, Any]) -> Any:
        return client.post(
            "/attestation/v1/verify", json={"quote": quote.hex(), "collateral": collateral}, headers=headers
        )

    own = json.loads(a.collateral_json("sgx"))
    assert verify(own).status_code == 200
    own["root_ca_crl"] = _root_crl_revoking(a, a.processor_ca.cert.serial_number)
    r = verify(own)
    assert r.status_code == 400 and r.json()["check"] == "root_ca_crl", r.text

    mixed = json.loads(b.collateral_json("sgx"))
    mixed.update(pck_crl=own["pck_crl"], pck_crl_issuer_chain=own["pck_crl_issuer_chain"])
    r = verify(mixed)
    assert r.status_code == 400, r.text
    assert r.json()["check"] == "collateral_chains" and "different roots" in r.json()["detail"]
    r = verify(json.loads(b.collateral_json("sgx")))
    assert r.status_code == 400 and r.json()["check"] == "collateral_chains", r.text
    # B's own quotes verify with B's collateral: both roots are trusted
    b_quote = _quote(b, "sgx", bytes(64))
    r = client.post(
        "/attestation/v1/verify",
        json={"quote": b_quote.hex(), "collateral": json.loads(b.collateral_json("sgx"))},
        headers=headers,
    )
    assert r.status_code == 200 and r.json()["sim"] is True, r.text
