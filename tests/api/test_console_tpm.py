"""The console with a real TPM (swtpm, through the workload client's tpm2-tools code): an enrolled
AK's ``/kbs/v1`` transfer denied for a changed PCR is listed as a TPM attempt, and a fixed policy is
tested on its kept input; a fresh quote pasted into *Test this policy* is verified with the AK as
enrolled, without recording its clock (a dry run changes nothing the next release is checked
against)."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from tests.api.test_console import LOCAL, _audit, sign_in
from tests.api.test_console_tees import _attempt_rows, _document, _reasons, _test, _verdict
from tests.api.test_tpm_api import (  # noqa: F401 - the swtpm, its machine and a service enrolling through swtpm's CA
    Machine,
    _challenge,
    _enrol,
    _key,
    _pcr16,
    _policy,
    _quote,
    _transfer,
    machine,
    services,
    swtpm,
)
from tests.helpers.api import token_headers
from tests.helpers.swtpm import MISSING, SKIP_REASON, Swtpm

from keybroker.api.app import create_app
from keybroker.api.services import Services
from keybroker.store.models import TpmAkClock

pytestmark = pytest.mark.skipif(bool(MISSING), reason=SKIP_REASON)


@pytest.fixture
def console(services: Services) -> Iterator[TestClient]:  # noqa: F811
    with TestClient(create_app(services), base_url="https://127.0.0.1:9443", client=LOCAL) as c:
        yield c


def _clocks(services: Services) -> list[tuple[str, int, int, int]]:  # noqa: F811
    with services.db.session() as s:
        return [(r.ak, r.clock, r.reset_count, r.restart_count) for r in s.query(TpmAkClock).all()]


def test_a_tpm_attempt_is_listed_and_tested_and_a_dry_run_records_no_clock(
    console: TestClient,
    services: Services,  # noqa: F811
    machine: Machine,  # noqa: F811
    swtpm: Swtpm,  # noqa: F811
) -> None:
    admin = {"Authorization": "Bearer " + services.tokens.mint("admin", ["*:*"])}
    _enrol(console, token_headers(services, "tpm_aks:create", "tpm_aks:approve"), machine)
    before = _pcr16(machine)
    key_id, _ = _key(console, admin, _policy(before))
    swtpm.run("tpm2_pcrextend", f"16:sha256={'cd' * 32}")
    after = _pcr16(machine)
    nonce = _challenge(console, key_id)
    assert _transfer(console, key_id, nonce, _quote(machine, nonce)).status_code == 403
    (record,) = [x for x in _audit(services) if x["action"] == "key.transfer"]
    assert record["details"]["tee"] == "tpm" and "input_sha256" in record["details"]
    seq = record["seq"]

    csrf = sign_in(console, "pat", ["policy-admin", "auditor"])
    page = console.get("/ui/attestation", params={"tee": "tpm"}).text
    assert [(int(s), tee, outcome) for s, tee, outcome in _attempt_rows(page)] == [(seq, "TPM", "denied")]
    assert "TPM denied: 1" in page and f'href="/ui/policy-test?attempt={seq}"' in page

    base = {"csrf": csrf, "language": "secl", "evidence": "attempt", "attempt": str(seq)}
    r = console.post("/ui/policy-test", data={**base, "policy": json.dumps(_policy(after))})
    assert _verdict(r) == "ALLOWED" and "then <strong>denied</strong>" in r.text
    kept = _document(r)
    assert kept["tee"] == "tpm" and kept["claims"]["pcrs"]["sha256"]["16"] == after
    assert kept["claims"]["ak"]["trust"]["mode"] == "enrolled"
    r = console.post("/ui/policy-test", data={**base, "policy": json.dumps(_policy(before))})
    assert _verdict(r) == "DENIED"
    assert _reasons(r) == [f"pcrs.sha256.16 {after} is not in the policy's list (1 value: {before})"]

    # a fresh quote, pasted as the TPM evidence document the client sends: the AK as enrolled ...
    clocks = _clocks(services)
    assert len(clocks) == 1
    evidence = _quote(machine, b"dry run").quote.decode()
    r = _test(console, csrf, _policy(after), quote=evidence)
    assert _verdict(r) == "ALLOWED"
    fresh = _document(r)
    assert fresh["claims"]["ak"]["trust"]["mode"] == "enrolled"
    assert fresh["claims"]["quote"]["clock"] > kept["claims"]["quote"]["clock"]
    # ... and its clock is not recorded: the release's record of the AK is as it was
    assert _clocks(services) == clocks
    # nothing was released or audited as an attempt by the dry runs
    assert [x["seq"] for x in _audit(services) if x["action"] == "key.transfer"] == [seq]
    shown = re.search(r'<pre id="input-document">(.*?)</pre>', r.text, re.S)
    assert shown is not None and "signature" not in json.loads(html.unescape(shown.group(1)))
