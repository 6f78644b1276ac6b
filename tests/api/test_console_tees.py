"""The console with the TEEs beyond Intel DCAP (SEV-SNP, TPM 2.0, the Azure vTPMs), through the ASGI
app with real evidence and real verification:

- the Attestation page names each attempt's TEE (a ``/kbs/v1`` transfer's audit record now says
  which) and filters by it;
- *Test this policy* takes what ``keybroker policy test`` takes: an SEV-SNP report with its
  certificate table, or without it and its VCEK and chain pasted as PEM (``--cert``); keybroker's
  TPM evidence document (an AK certified by a configured root store, or else trusted only as given,
  which the ``tpm`` section denies unless the policy lists it); Trustee's Azure vTPM JSON at a
  chosen time (``--at``) with the TD quote's collateral (``--collateral``);
- a recorded attempt of these TEEs is tested on its kept input;
- the KDS cache is listed per product: VCEKs, ASK/ASVK chains, CRLs, each with its expiry.

A real TPM's attempt (swtpm, an enrolled AK) is in ``test_console_tpm.py``."""

from __future__ import annotations

import base64
import copy
import html
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi.testclient import TestClient
from tests.api.test_console import LOCAL, _audit, sign_in
from tests.api.test_snp_api import SNP_SIM_POLICY, _setup
from tests.api.test_transfer_v1 import SPKI
from tests.conftest import template_for
from tests.vectors.corpus import case, path, read_bytes, read_text, verify_at

from keybroker.api.app import create_app
from keybroker.api.services import Services
from keybroker.appraisal.input import appraisal_input
from keybroker.audit.inputs import input_sha256
from keybroker.cli.evidence_tpm import tpm_cli_evidence
from keybroker.collateral.trust import snp_dev_pki_dir
from keybroker.config import Settings, SnpSettings, TpmSettings
from keybroker.store.models import TpmAkClock
from keybroker.tee import sim
from keybroker.tee.sim.snp import DEFAULT_MEASUREMENT, SnpDevPki, snp_report
from keybroker.tee.verifier import NO_REPORT_DATA
from keybroker.wire import binding

pytestmark = pytest.mark.filterwarnings(
    "ignore:Parsed a serial number", "ignore::cryptography.utils.CryptographyDeprecationWarning"
)

OTHER_MEASUREMENT = "05" * 48
TD_CASE = case("dcap-tdx-azure-td")
#: When the Azure corpus evidence (and its TD quote's collateral) was current.
AZURE_AT = verify_at(TD_CASE)
AZ_SNP = "azure-vtpm/coco-trustee/az-snp-vtpm/evidence-v2.json"
AZ_TDX = "azure-vtpm/coco-trustee/az-tdx-vtpm/evidence-v1.json"
GCE = "tpm2-gce/go-tpm-tools"
GCE_QUOTE = f"{GCE}/extracted/gce-cos-85-nonce9009"
GCE_CAS = [f"{GCE}/ca/tpm_ek_intermediate_2.crt", f"{GCE}/ca/tpm_ek_root_1.cer"]


@pytest.fixture
def console(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services), base_url="https://127.0.0.1:9443", client=LOCAL) as c:
        yield c


@pytest.fixture
def nocrl_services(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> Iterator[Services]:
    """A dev service with ``snp.require_crl = false`` (the documented escape hatch): the vendored
    Azure SEV-SNP evidence comes with no AMD CRL current at its time."""
    settings = Settings(
        data_dir=tmp_path / "data", database=database_url, dev=True, snp=SnpSettings(require_crl=False)
    )
    svc = Services.build(template_for(request, database_url).restore(settings))
    yield svc
    svc.db.dispose()


@pytest.fixture
def nocrl_console(nocrl_services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(nocrl_services), base_url="https://127.0.0.1:9443", client=LOCAL) as c:
        yield c


def _test(console: TestClient, csrf: str, policy: dict[str, Any] | str, **fields: str) -> Any:
    language = "rego" if isinstance(policy, str) else "secl"
    text = policy if isinstance(policy, str) else json.dumps(policy)
    return console.post(
        "/ui/policy-test",
        data={"csrf": csrf, "language": language, "policy": text, "evidence": "quote", **fields},
    )


def _verdict(r: Any) -> str:
    """ALLOWED, DENIED, or "Evidence rejected: <why>", as the page shows it."""
    assert r.status_code == 200, (r.status_code, r.text[-1500:])
    m = re.search(
        r'<section class="verdict[^"]*"[^>]*id="verdict">\s*<h2>([^<]+)</h2>(.*?)</section>', r.text, re.S
    )
    assert m is not None, r.text[-1500:]
    title = m.group(1).strip()
    if title == "Evidence rejected":
        return f"{title}: {html.unescape(re.sub(r'<[^>]+>', '', m.group(2))).strip()}"
    return title


def _reasons(r: Any) -> list[str]:
    block = re.search(r'<ul class="reasons">(.*?)</ul>', r.text, re.S)
    return [] if block is None else [html.unescape(x) for x in re.findall(r"<li>(.*?)</li>", block.group(1))]


def _document(r: Any) -> dict[str, Any]:
    shown = re.search(r'<pre id="input-document">(.*?)</pre>', r.text, re.S)
    assert shown is not None, r.text[-1500:]
    doc: dict[str, Any] = json.loads(html.unescape(shown.group(1)))
    return doc


def _errors(r: Any) -> str:
    block = re.search(r'id="test-errors">(.*?)</div>', r.text, re.S)
    assert block is not None, r.text[-1500:]
    return html.unescape(re.sub(r"<[^>]+>", " ", block.group(1)))


def _pem(*certs: Any) -> str:
    return "".join(c.public_bytes(Encoding.PEM).decode() for c in certs)


# --- the Attestation page's attempts --------------------------------------------------------------


def _azure_policy(measurement: str) -> dict[str, Any]:
    return {
        "attestation_type": ["AZ-SNP-VTPM"],
        "az-snp-vtpm": {"snp": {"attributes": {"measurement": [measurement]}}},
    }


def _attempt_rows(page: str) -> list[tuple[str, str, str]]:
    """(seq, TEE cell, outcome) of the recent attempts table."""
    table = page.split("<h2>Recent attempts</h2>", 1)[1].split('<h2 id="collateral">', 1)[0]
    return re.findall(
        r'<tr class="[a-z]+"><td><a href="[^"]*">(\d+)</a></td><td>[^<]*</td><td>[^<]*</td><td>([^<]*)</td><td>([a-z]+)</td>',
        table,
    )


def test_attempts_name_their_tee_filter_by_it_and_an_snp_attempt_is_tested_on_its_input(
    nocrl_console: TestClient, nocrl_services: Services
) -> None:
    console, services = nocrl_console, nocrl_services  # the Azure corpus: no AMD CRL of its time
    admin = {"Authorization": "Bearer " + services.tokens.mint("admin", ["*:*"])}
    wrong = copy.deepcopy(SNP_SIM_POLICY)
    wrong["snp"]["attributes"]["measurement"] = [OTHER_MEASUREMENT]
    snp = _setup(console, services, admin, wrong)
    nonce = snp.nonce()
    assert snp.transfer(snp.evidence(binding.v1_report_data(nonce, SPKI)), nonce).status_code == 403
    # an Azure SEV-SNP vTPM's evidence sent for another challenge: verified up to its binding, refused
    azure = _setup(console, services, admin, _azure_policy("00" * 48))
    r = console.post(f"/kbs/v1/keys/{azure.key_id}/transfer")
    assert r.status_code == 200 and r.headers["Attestation-Type"] == "AZ-SNP-VTPM", r.text
    r = console.post(
        f"/kbs/v1/keys/{azure.key_id}/transfer",
        json={
            "quote": base64.b64encode(read_bytes(AZ_SNP)).decode(),
            "nonce": r.json()["nonce"],
            "user_data": base64.b64encode(SPKI).decode(),
        },
        headers={"Attestation-Type": "AZ-SNP-VTPM"},
    )
    assert r.status_code == 400, r.text
    records = {x["seq"]: x for x in _audit(services) if x["action"] == "key.transfer"}
    assert sorted((x["details"]["tee"], x["outcome"]) for x in records.values()) == [
        ("az-snp-vtpm", "denied"),
        ("snp", "denied"),
    ]
    snp_seq = next(seq for seq, x in records.items() if x["details"]["tee"] == "snp")

    csrf = sign_in(console, "pat", ["policy-admin", "auditor"])
    page = console.get("/ui/attestation")
    assert page.status_code == 200
    assert sorted((tee, outcome) for _, tee, outcome in _attempt_rows(page.text)) == [
        ("AZ-SNP-VTPM", "denied"),
        ("SNP", "denied"),
    ]
    assert "AZ-SNP-VTPM denied: 1" in page.text and "SNP denied: 1" in page.text
    for name in ("sgx", "tdx", "snp", "tpm", "az-snp-vtpm", "az-tdx-vtpm", "kbs/v1", "kbs/v0"):
        assert f'<option value="{name}">' in page.text
    assert f'href="/ui/policy-test?attempt={snp_seq}"' in page.text
    for wanted, shown in [("snp", "SNP"), ("AZ-SNP-VTPM", "AZ-SNP-VTPM"), ("tpm", None)]:
        page = console.get("/ui/attestation", params={"tee": wanted})
        assert page.status_code == 200 and f'<option value="{wanted.lower()}" selected>' in page.text
        assert [tee for _, tee, _ in _attempt_rows(page.text)] == ([shown] if shown else [])
    page = console.get("/ui/attestation", params={"tee": "sev"})
    assert page.status_code == 400 and "tee: one of SGX, TDX, SNP, TPM, AZ-SNP-VTPM, AZ-TDX-VTPM" in page.text

    # the SNP attempt's kept input: the fixed policy allows it, the one that denied it still does
    r = console.post(
        "/ui/policy-test",
        data={
            "csrf": csrf,
            "language": "secl",
            "policy": json.dumps(SNP_SIM_POLICY),
            "evidence": "attempt",
            "attempt": str(snp_seq),
        },
    )
    assert _verdict(r) == "ALLOWED" and "then <strong>denied</strong>" in r.text
    document = _document(r)
    assert document["tee"] == "snp" and document["claims"]["measurement"] == DEFAULT_MEASUREMENT.hex()
    assert input_sha256(document) == records[snp_seq]["details"]["input_sha256"]
    r = console.post(
        "/ui/policy-test",
        data={
            "csrf": csrf,
            "language": "secl",
            "policy": json.dumps(wrong),
            "evidence": "attempt",
            "attempt": str(snp_seq),
        },
    )
    assert _verdict(r) == "DENIED"
    assert _reasons(r)[0].startswith(f"measurement {DEFAULT_MEASUREMENT.hex()} is not in the policy's list")


# --- Test this policy on SEV-SNP reports ----------------------------------------------------------


def test_snp_reports_with_their_certificates_or_given_as_pem(console: TestClient, services: Services) -> None:
    csrf = sign_in(console, "pat", ["policy-admin"])
    pki = SnpDevPki.load(snp_dev_pki_dir(services.settings))
    made = snp_report(pki, report_data=bytes(64))
    with_table = (made.report + made.cert_table).hex()
    assert _verdict(_test(console, csrf, SNP_SIM_POLICY, quote=with_table)) == "ALLOWED"
    other = snp_report(pki, report_data=bytes(64), measurement=bytes.fromhex(OTHER_MEASUREMENT))
    r = _test(console, csrf, SNP_SIM_POLICY, quote=base64.b64encode(other.report + other.cert_table).decode())
    assert _verdict(r) == "DENIED"
    assert _reasons(r)[0].startswith(f"measurement {OTHER_MEASUREMENT} is not in the policy's list")
    assert _document(r)["tee"] == "snp"

    # a bare report: this server's KDS cache holds nothing for it, so it is refused saying so ...
    bare = made.report.hex()
    verdict = _verdict(_test(console, csrf, SNP_SIM_POLICY, quote=bare))
    assert (
        verdict.startswith("Evidence rejected: SNP evidence rejected") and "collateral fetch --snp" in verdict
    )
    # ... and verified with the VCEK and its chain given as PEM, in any order (policy test --cert)
    pem = _pem(made.chain[1], made.signer, made.chain[0])
    r = _test(console, csrf, SNP_SIM_POLICY, quote=bare, endorsements=pem, tee="snp")
    assert _verdict(r) == "ALLOWED"
    # certificates of another chip's VCEK do not endorse it
    stranger = snp_report(pki, report_data=bytes(64), chip_id=bytes([7]) * 64)
    r = _test(console, csrf, SNP_SIM_POLICY, quote=bare, endorsements=_pem(stranger.signer, *stranger.chain))
    assert _verdict(r).startswith("Evidence rejected: SNP evidence rejected")

    tdx_quote = sim.tdx_quote(sim.DevPki.load(services.settings.data_dir / "dev-pki"), report_data=bytes(64))
    for fields, message in [
        ({"quote": bare, "tee": "tdx"}, "tee tdx: the evidence is SNP evidence, not TDX"),
        ({"quote": tdx_quote.hex(), "endorsements": pem}, "PEM certificates are for SEV-SNP reports"),
        (
            {"quote": bare, "endorsements": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"},
            "a PEM PRIVATE KEY block is neither a certificate nor a CRL",
        ),
        ({"quote": bare, "endorsements": pem + "trailing"}, "not a sequence of PEM blocks"),
        ({"quote": bare, "endorsements": '{"certificates": 1}'}, "endorsements: "),
        ({"quote": tdx_quote.hex(), "endorsements": "{}"}, "endorsements: "),
    ]:
        r = _test(console, csrf, SNP_SIM_POLICY, **fields)
        assert r.status_code == 400 and message in _errors(r), (fields.keys(), r.text[-1500:])
        assert 'id="verdict"' not in r.text


# --- Test this policy on the Azure vTPMs' evidence ------------------------------------------------


def test_azure_vtpm_evidence_at_a_chosen_time_with_the_td_quotes_collateral(
    nocrl_console: TestClient,
) -> None:
    console = nocrl_console  # the Azure corpus: no AMD CRL of its time
    csrf = sign_in(console, "pat", ["policy-admin"])
    at = AZURE_AT.isoformat().replace("+00:00", "Z")
    r = _test(console, csrf, _azure_policy("00" * 48), quote=read_text(AZ_SNP), at=at)
    assert _verdict(r) == "DENIED"
    measurement = _document(r)["claims"]["snp"]["measurement"]
    assert _reasons(r)[0].startswith(f"measurement {measurement} is not in the policy's list")
    r = _test(
        console, csrf, _azure_policy(measurement), quote=read_text(AZ_SNP), at=str(int(AZURE_AT.timestamp()))
    )
    assert _verdict(r) == "ALLOWED" and _document(r)["tee"] == "az-snp-vtpm"

    # the TD quote's collateral: this server caches none for its FMSPC; given, it verifies
    seam = {"mrseam": ["00" * 48], "mrsignerseam": ["00" * 48]}
    tdx_policy = {"attestation_type": ["AZ-TDX-VTPM"], "az-tdx-vtpm": {"tdx": {"attributes": seam}}}
    verdict = _verdict(_test(console, csrf, tdx_policy, quote=read_text(AZ_TDX), at=at))
    assert verdict.startswith("Evidence rejected: AZ-TDX-VTPM evidence rejected"), verdict
    r = _test(
        console,
        csrf,
        tdx_policy,
        quote=read_text(AZ_TDX),
        at=at,
        endorsements=read_text(TD_CASE["collateral"]),
    )
    assert _verdict(r) == "DENIED" and _document(r)["tee"] == "az-tdx-vtpm"
    assert _document(r)["tcb"]["status"] == "OutOfDate"
    mrseam = _document(r)["claims"]["tdx"]["mr_seam"]
    assert any(x.startswith(f"mrseam {mrseam} is not in the policy's list") for x in _reasons(r)), _reasons(r)


def test_an_azure_attempts_kept_input_is_tested(nocrl_console: TestClient, nocrl_services: Services) -> None:
    """An Azure vTPM's evidence cannot be made here for a fresh challenge, so its attempt's record
    is written by the writer every attempt goes through (``AppraisalInputs.append``) with the input
    of the corpus evidence verified for real; the console then tests policies on it as kept."""
    console, services = nocrl_console, nocrl_services  # the Azure corpus: no AMD CRL of its time
    verified = services.dry_run.verify("az-snp-vtpm", read_bytes(AZ_SNP), NO_REPORT_DATA, at=AZURE_AT)
    doc = appraisal_input(verified, client_permissions=["reader"])
    with services.db.session() as s:
        record = services.inputs.append(
            s,
            doc,
            actor="token:azure-vm#1",
            action="attestation.attest",
            outcome="success",
            details={"protocol": "attestation/v1", "tee": "az-snp-vtpm"},
        )
        seq = record.seq
    csrf = sign_in(console, "pat", ["policy-admin", "auditor"])
    page = console.get("/ui/attestation", params={"tee": "az-snp-vtpm"}).text
    assert [(int(s), tee) for s, tee, _ in _attempt_rows(page)] == [(seq, "AZ-SNP-VTPM")]
    assert f'href="/ui/policy-test?attempt={seq}"' in page
    assert (
        f">#{seq} " in console.get("/ui/policy-test").text
        and "AZ-SNP-VTPM success" in console.get("/ui/policy-test").text
    )
    measurement = verified.claims["snp"]["measurement"]
    base = {"csrf": csrf, "language": "secl", "evidence": "attempt", "attempt": str(seq)}
    allowed = _azure_policy(measurement)
    allowed["az-snp-vtpm"]["snp"]["attributes"]["client_permissions"] = ["reader"]
    r = console.post("/ui/policy-test", data={**base, "policy": json.dumps(allowed)})
    assert _verdict(r) == "ALLOWED" and _document(r) == json.loads(json.dumps(doc))
    r = console.post("/ui/policy-test", data={**base, "policy": json.dumps(_azure_policy("11" * 48))})
    assert _verdict(r) == "DENIED" and _reasons(r)[0].startswith(f"measurement {measurement}")


# --- Test this policy on TPM evidence documents ---------------------------------------------------


def _gce_evidence(*, certified: bool) -> str:
    """The GCE Shielded VM's quote as keybroker's TPM evidence document (``evidence verify
    --write-evidence``), with its event log; ``certified``: with the AK certificate and its CAs."""
    return tpm_cli_evidence(
        quote=read_bytes(f"{GCE_QUOTE}/quote_sha256.msg"),
        signature=read_bytes(f"{GCE_QUOTE}/quote_sha256.sig"),
        ak=read_bytes(f"{GCE_QUOTE}/ak.tpm2b_public"),
        pcrs=read_bytes(f"{GCE_QUOTE}/pcrs_sha256.json"),
        ak_cert=read_bytes(f"{GCE_QUOTE}/ak_cert.der") if certified else None,
        ak_ca=[read_bytes(c) for c in GCE_CAS] if certified else [],
        event_log=read_bytes(f"{GCE_QUOTE}/event_log.bin"),
    ).decode()


@contextmanager
def gce_service(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> Iterator[Services]:
    """A dev service whose ``[tpm] ak_roots`` trust Google's vTPM AK CA as ``gce`` (docs/tpm.md)."""
    settings = Settings(
        data_dir=tmp_path / "data",
        database=database_url,
        dev=True,
        tpm=TpmSettings(ak_roots={"gce": [path(c) for c in GCE_CAS]}),
    )
    svc = Services.build(template_for(request, database_url).restore(settings))
    try:
        yield svc
    finally:
        svc.db.dispose()


@pytest.fixture
def gce_services(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> Iterator[Services]:
    with gce_service(request, tmp_path, database_url) as svc:
        yield svc


def test_a_tpm_quote_with_its_event_log_and_an_ak_certified_by_a_configured_root(
    gce_services: Services,
) -> None:
    """The measured-boot policy of docs/tpm.md, tested from the console: Secure Boot on, these
    db/dbx, these boot applications, the AK certified by the ``gce`` root store; then an older dbx."""
    with TestClient(create_app(gce_services), base_url="https://127.0.0.1:9443", client=LOCAL) as console:
        csrf = sign_in(console, "pat", ["policy-admin"])
        evidence = _gce_evidence(certified=True)
        claims = gce_services.dry_run.verify("tpm", evidence.encode(), NO_REPORT_DATA).claims
        log = claims["event_log"]
        policy: dict[str, Any] = {
            "attestation_type": ["TPM"],
            "tpm": {
                "attributes": {
                    "ak_trust": ["certificate"],
                    "ak_vendors": ["gce"],
                    "event_log": {
                        "secure_boot": True,
                        "db": [log["secure_boot"]["db"]],
                        "dbx": [log["secure_boot"]["dbx"]],
                        "boot_applications": log["boot_applications"],
                    },
                }
            },
        }
        r = _test(console, csrf, policy, quote=evidence)
        assert _verdict(r) == "ALLOWED", _reasons(r)
        assert _document(r)["claims"]["ak"]["trust"] == {
            "mode": "certificate",
            "vendor": "gce",
            "enrolment": None,
        }
        policy["tpm"]["attributes"]["event_log"]["dbx"] = ["00" * 32]
        r = _test(console, csrf, policy, quote=evidence, tee="tpm")
        assert _verdict(r) == "DENIED"
        assert _reasons(r)[0].startswith(f"dbx {log['secure_boot']['dbx']} is not in the policy's list")
        # TPM evidence takes no endorsements
        r = _test(console, csrf, policy, quote=evidence, endorsements="{}")
        assert r.status_code == 400 and "TPM evidence takes no collateral" in _errors(r)


def test_a_tpm_ak_neither_certified_nor_enrolled_is_trusted_only_as_given(
    console: TestClient, services: Services
) -> None:
    """As ``keybroker policy test``: an AK this server neither enrols nor has a root store for is
    taken as given, the claims say so, and the tpm section denies it unless the policy lists
    "given". The dry run records no clock for it."""
    csrf = sign_in(console, "pat", ["policy-admin"])
    evidence = _gce_evidence(certified=False)
    policy: dict[str, Any] = {"attestation_type": ["TPM"], "tpm": {"attributes": {}}}
    r = _test(console, csrf, policy, quote=evidence)
    assert _verdict(r) == "DENIED"
    assert _document(r)["claims"]["ak"]["trust"]["mode"] == "given"
    assert any("ak_trust [certificate, enrolled] does not list" in x for x in _reasons(r)), _reasons(r)
    policy["tpm"]["attributes"]["ak_trust"] = ["given"]
    assert _verdict(_test(console, csrf, policy, quote=evidence)) == "ALLOWED"
    with services.db.session() as s:
        assert s.query(TpmAkClock).count() == 0
    # a certified AK without a root store for it is refused, naming the setting
    verdict = _verdict(_test(console, csrf, policy, quote=_gce_evidence(certified=True)))
    assert (
        verdict.startswith("Evidence rejected: TPM evidence rejected (ak_certificate)")
        and "tpm.ak_roots" in verdict
    )


# --- the KDS cache on the Attestation page --------------------------------------------------------


def test_the_kds_cache_lists_vceks_chains_and_crls_per_product_with_their_expiry(
    console: TestClient, services: Services
) -> None:
    """What the SEV-SNP verifier finds in the KDS cache (``collateral.kds_store``): per product the
    VCEKs (per chip and TCB), the ASK and ASVK chains and the ARK's CRLs, each with when it
    expires; the product's card is current until its first piece expires (here the CRL)."""
    from keybroker.collateral.kds import chain_items, crl_item, vcek_item
    from keybroker.collateral.kds_store import KdsStore

    pki = SnpDevPki.load(snp_dev_pki_dir(services.settings))
    made = snp_report(pki, report_data=bytes(64))
    dev = (pki.root_cert,)
    chain = chain_items([c.public_bytes(Encoding.DER) for c in made.chain], dev_roots=dev)
    asvk = chain_items([c.public_bytes(Encoding.DER) for c in pki.chain("vlek")], dev_roots=dev)
    crl = crl_item(pki.crl("vcek"), signing_key="vcek", dev_roots=dev)
    vcek = vcek_item(made.signer.public_bytes(Encoding.DER), chains=chain, dev_roots=dev)
    KdsStore(services.db).import_items([*chain, *asvk, crl, vcek], source="bundle:test")
    items = {
        i.kind: i for i in KdsStore(services.db).list_items(product=pki.product) if i.kind != "snp_cert_chain"
    }

    sign_in(console, "olga", ["operator", "auditor"])
    page = console.get("/ui/attestation")
    assert page.status_code == 200
    card = page.text.split(f'<h4 id="product-{pki.product}">', 1)[1].split("</section>", 1)[0]
    rows = re.findall(r"<tr[^>]*><td>([^<]+)</td><td>([^<]+)</td><td>([^<(]+)\(", card)
    shown = {html.unescape(label): expires.strip() for label, _, expires in rows}
    assert set(shown) == {
        f"ASK+ARK {pki.product}",
        f"ASVK+ARK {pki.product}",
        f"VCEK CRL {pki.product}",
        items["snp_vcek"].label,
    }, shown
    assert items["snp_vcek"].label.startswith(f"VCEK {pki.product} ") and "TCB" in items["snp_vcek"].label
    crl_until = items["snp_crl"].valid_until.strftime("%Y-%m-%d %H:%M:%SZ")
    assert shown[f"VCEK CRL {pki.product}"] == crl_until
    assert shown[items["snp_vcek"].label] == items["snp_vcek"].valid_until.strftime("%Y-%m-%d %H:%M:%SZ")
    assert f"Current until {crl_until}" in card and "data-countdown" in card
    assert f'aria-label="Refresh SEV-SNP {pki.product} now"' in card  # the operator may refresh it
