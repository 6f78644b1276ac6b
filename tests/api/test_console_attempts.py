"""*Test this policy* on a recent attempt: a denied ``/kbs/v1`` transfer's appraisal input is kept
with its audit record, and a fixed policy is evaluated on exactly that input, by the same code as
``keybroker policy test`` (``appraisal.trial``), through the ASGI app. A kept input changed in the
database is refused; reading attempts needs ``audit:read``."""

from __future__ import annotations

import copy
import html
import json
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from tests.api.test_console import LOCAL, _audit, sign_in
from tests.api.test_transfer_v1 import SPKI, TDX_SIM_POLICY, Setup, _nonce, _setup, _transfer

from keybroker.api.app import create_app
from keybroker.api.services import Services
from keybroker.appraisal import trial
from keybroker.audit.inputs import input_sha256
from keybroker.store.models import AppraisalInputRecord
from keybroker.tee import sim
from keybroker.wire import binding

WRONG_MRTD = "01" * 48


@pytest.fixture
def console(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services), base_url="https://127.0.0.1:9443", client=LOCAL) as c:
        yield c


def _denied_transfer(console: TestClient, services: Services) -> tuple[Setup, int]:
    """A TD denied by a policy that wants another MRTD; the audit record's seq."""
    admin = {"Authorization": "Bearer " + services.tokens.mint("admin", ["*:*"])}
    wrong = copy.deepcopy(TDX_SIM_POLICY)
    wrong["tdx"]["attributes"]["mrtd"] = [WRONG_MRTD]
    s = _setup(console, services, admin, wrong)
    nonce, _ = _nonce(s)
    r = _transfer(s, sim.tdx_quote(s.pki, report_data=binding.v1_report_data(nonce, SPKI)), nonce, "TDX")
    assert r.status_code == 403
    (record,) = [x for x in _audit(services) if x["action"] == "key.transfer"]
    assert record["outcome"] == "denied" and "input_sha256" in record["details"]
    return s, int(record["seq"])


def test_a_fixed_policy_is_tested_on_the_denied_attempts_input(
    console: TestClient, services: Services
) -> None:
    _, seq = _denied_transfer(console, services)
    csrf = sign_in(console, "pat", ["policy-admin", "auditor"])
    # the audit page links the attempt to the test page, which offers it
    audit_page = console.get("/ui/audit", params={"action": "key.transfer"}).text
    assert f'href="/ui/policy-test?attempt={seq}"' in audit_page
    page = console.get("/ui/policy-test", params={"attempt": str(seq)})
    assert page.status_code == 200 and f'<option value="{seq}" selected>' in page.text

    fixed = json.dumps(TDX_SIM_POLICY)
    r = console.post(
        "/ui/policy-test",
        data={"csrf": csrf, "language": "secl", "policy": fixed, "evidence": "attempt", "attempt": str(seq)},
    )
    assert r.status_code == 200 and "ALLOWED" in r.text, r.text[-2000:]
    assert "then <strong>denied</strong>" in r.text and "mrtd" in r.text  # what was decided then
    # the same policy that denied it denies it again, with every reason as the audit log has them
    wrong = copy.deepcopy(TDX_SIM_POLICY)
    wrong["tdx"]["attributes"]["mrtd"] = [WRONG_MRTD]
    r = console.post(
        "/ui/policy-test",
        data={
            "csrf": csrf,
            "language": "secl",
            "policy": json.dumps(wrong),
            "evidence": "attempt",
            "attempt": str(seq),
        },
    )
    assert r.status_code == 200 and "DENIED" in r.text
    record = next(x for x in _audit(services) if x["seq"] == seq)
    for reason in record["reason"].split("; "):
        assert reason in html.unescape(r.text)
    # and a Rego policy on the same input: the decision appraisal.trial gives on the kept document
    rego = (
        "package keybroker\ndefault allow := false\n"
        f'allow if {{ input.claims.mr_td == "{sim.DEFAULT_MRTD.hex()}"; input.sim }}\n'
    )
    r = console.post(
        "/ui/policy-test",
        data={"csrf": csrf, "language": "rego", "policy": rego, "evidence": "attempt", "attempt": str(seq)},
    )
    assert r.status_code == 200 and "ALLOWED" in r.text
    shown = re.search(r'<pre id="input-document">(.*?)</pre>', r.text, re.S)
    assert shown is not None
    document = json.loads(html.unescape(shown.group(1)))
    assert input_sha256(document) == record["details"]["input_sha256"]
    assert trial.load_policy(rego, language="rego", policy_id="x").evaluate(document).allowed
    # a dry run stores nothing and releases nothing
    assert [x["outcome"] for x in _audit(services) if x["action"] == "key.transfer"] == ["denied"]


def test_a_kept_input_changed_in_the_database_is_not_used(console: TestClient, services: Services) -> None:
    """The attack: someone who can write the database swaps the kept input of a denied attempt for
    one that a lax policy would allow, to make the policy look right. The signed audit record names
    the original's digest: the console refuses the changed one."""
    _, seq = _denied_transfer(console, services)
    with services.db.session() as s:
        row = s.get(AppraisalInputRecord, seq)
        assert row is not None
        forged = {**row.document, "sim": False}
        s.execute(
            update(AppraisalInputRecord)
            .where(AppraisalInputRecord.audit_seq == seq)
            .values(document=forged, sha256=input_sha256(forged))
        )
    csrf = sign_in(console, "pat", ["policy-admin", "auditor"])
    r = console.post(
        "/ui/policy-test",
        data={
            "csrf": csrf,
            "language": "secl",
            "policy": json.dumps(TDX_SIM_POLICY),
            "evidence": "attempt",
            "attempt": str(seq),
        },
    )
    assert r.status_code == 409 and "changed in the database" in r.text
    assert "ALLOWED" not in r.text and "DENIED" not in r.text


def test_attempts_need_audit_read_and_bad_input_is_a_4xx(console: TestClient, services: Services) -> None:
    _, seq = _denied_transfer(console, services)
    csrf = sign_in(console, "paula", ["policy-admin"])  # no audit:read
    page = console.get("/ui/policy-test")
    assert page.status_code == 200 and 'value="attempt"' not in page.text and "#" + str(seq) not in page.text
    assert console.get("/ui/policy-test", params={"attempt": str(seq)}).status_code == 403
    base = {"csrf": csrf, "language": "secl", "policy": json.dumps(TDX_SIM_POLICY)}
    r = console.post("/ui/policy-test", data={**base, "evidence": "attempt", "attempt": str(seq)})
    assert r.status_code == 403 and "audit:read" in r.text
    with TestClient(create_app(services), base_url="https://127.0.0.1:9443", client=LOCAL) as other:
        csrf = sign_in(other, "pat", ["policy-admin", "auditor"])
        base["csrf"] = csrf
        for data, status, text in [
            ({"evidence": "attempt", "attempt": "x"}, 400, "choose a recent attempt"),
            ({"evidence": "attempt", "attempt": "9" * 30}, 400, "choose a recent attempt"),
            ({"evidence": "attempt"}, 400, "choose a recent attempt"),
            ({"evidence": "attempt", "attempt": "1"}, 404, "no appraisal input is kept"),
            ({"evidence": "carrier-pigeon"}, 400, "evidence: quote or attempt"),
            (
                {"evidence": "quote", "quote": "!!"},
                400,
                "evidence: not SGX, TDX, SNP, TPM, AZ-SNP-VTPM or AZ-TDX-VTPM evidence",
            ),
            ({"evidence": "quote", "quote": ""}, 400, "evidence: paste the evidence"),
            ({"evidence": "quote", "quote": "{}"}, 400, "evidence: not SGX"),
            ({"evidence": "quote", "quote": "00" * 10, "tee": "sev"}, 400, "tee: one of sgx, tdx, snp, tpm"),
            ({"evidence": "quote", "quote": "00", "at": "yesterday"}, 400, "is neither ISO 8601 nor UNIX"),
        ]:
            r = other.post("/ui/policy-test", data={**base, **data})
            assert r.status_code == status and text in r.text, (data, r.status_code, r.text[-800:])
            assert r.headers["content-type"].startswith("text/html")
        assert other.get("/ui/policy-test", params={"attempt": "-1"}).status_code == 400
        r = other.post("/ui/policy-test", data={k: v for k, v in base.items() if k != "csrf"})
        assert r.status_code == 403 and "CSRF" in r.text


def test_only_the_newest_attempts_inputs_are_kept(tmp_path_factory: pytest.TempPathFactory) -> None:
    """``[audit] appraisal_inputs`` bounds the table: older inputs are deleted as attempts come,
    their digests staying in the chain."""
    from sqlalchemy import select

    from keybroker.config import AuditSettings, Settings

    tmp = tmp_path_factory.mktemp("keep")
    svc = Services.build(
        Settings(
            data_dir=tmp / "data",
            database=f"sqlite:///{tmp / 'kb.db'}",
            dev=True,
            audit=AuditSettings(appraisal_inputs=2),
        )
    )
    try:
        with TestClient(create_app(svc), base_url="https://127.0.0.1:9443", client=LOCAL) as c:
            admin = {"Authorization": "Bearer " + svc.tokens.mint("admin", ["*:*"])}
            s = _setup(c, svc, admin, TDX_SIM_POLICY)
            for _ in range(4):
                nonce, _ = _nonce(s)
                quote = sim.tdx_quote(s.pki, report_data=binding.v1_report_data(nonce, SPKI))
                assert _transfer(s, quote, nonce, "TDX").status_code == 200
        seqs = [x["seq"] for x in _audit(svc) if x["action"] == "key.transfer"]
        assert len(seqs) == 4 and all("input_sha256" in x["details"] for x in _audit(svc) if x["seq"] in seqs)
        with svc.db.session() as sess:
            assert sorted(sess.scalars(select(AppraisalInputRecord.audit_seq))) == seqs[-2:]
    finally:
        svc.db.dispose()
