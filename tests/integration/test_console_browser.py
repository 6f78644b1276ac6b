"""The console in a real browser: Debian's headless Chromium driven by Playwright (the system
browser's executable; no browser download), against ``keybroker serve --dev`` over TLS and a real
OpenID provider (oidc-provider on Node.js, tests/helpers/oidc.py).

Alice signs in at the provider, writes a policy, creates a key bound to it; a simulated TD is
denied; the denial's reasons are on the audit page; she fixes the policy and the release succeeds.
Carol (a custom role) writes a resource's Rego policy, tests a policy on a denied attempt's recorded
input and on a simulated SEV-SNP guest's report, filters the attempts by TEE, refreshes the collateral cache from a PCCS and a KDS on loopback, mints and revokes a token
and writes a role. Bob, an auditor, does not see the actions he may not take. Screenshots of each
page go to ``$KEYBROKER_TEST_OUTPUT/console-screenshots`` (default: the pytest run's temporary
directory); two of them are the README's (``docs/img/``).

The browser trusts exactly the two servers' keys (``--ignore-certificate-errors-spki-list``), not
every certificate.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tests.api.test_snp_api import SNP_SIM_POLICY
from tests.api.test_transfer_v1 import TDX_SIM_POLICY
from tests.helpers.oidc import OidcProvider
from tests.helpers.postgres import free_port
from tests.helpers.server import Server, keybroker
from tests.integration.test_collateral_fetch import FakePccs
from tests.integration.test_kds_fetch import FakeKds, _real_files
from tests.vectors.corpus import path, read_text

from keybroker.tee import sim
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.sim.snp import SnpDevPki, snp_report

pytestmark = [pytest.mark.browser, pytest.mark.oidc]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BIN = Path(sys.executable).parent
WRONG_MRTD = "00" * 48
#: Cached at start: June's TDX collateral of this FMSPC (the loopback PCCS serves October's) and
#: AMD's Milan VCEK chain (the loopback KDS serves it and the VLEK chain).
FMSPC = "00806F050000"
JUNE = "intel-dcap/assembled/tdx_00806F050000_2025-06.json"
OCTOBER = "intel-dcap/assembled/tdx_00806F050000_2025-10.json"
MILAN_CHAIN = "amd-sev-snp/virtee-sev/cert_chain_milan"
#: Carol's custom role (tests/helpers/oidc.py maps her group to it).
PLATFORM_ADMIN = [
    "resources:write",
    "key_transfer_policies:search",
    "key_transfer_policies:retrieve",
    "audit:read",
    "collateral:update",
    "tokens:search",
    "tokens:create",
    "tokens:delete",
    "roles:search",
    "roles:create",
    "roles:update",
    "roles:delete",
    "keys:search",
    "keys:retrieve",
]
REGO_SIM_TDX = f"""package keybroker

import rego.v1

default allow := false

allow if {{
    input.tee == "tdx"
    input.claims.mr_td == "{sim.DEFAULT_MRTD.hex()}"
    not input.claims.debug
}}

reasons contains "the TD's MRTD is not the one we build" if input.claims.mr_td != "{sim.DEFAULT_MRTD.hex()}"
"""


def _spki_pin(host: str, port: int) -> str:
    pem = ssl.get_server_certificate((host, port))
    spki = (
        x509.load_pem_x509_certificate(pem.encode())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@dataclass
class Stack:
    idp: OidcProvider
    server: Server
    shots: Path
    #: A port registered with the provider for a second (production-mode) server.
    spare_port: int
    conf: Path
    pccs: FakePccs
    kds: FakeKds


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it when run as root)")
    pytest.importorskip("playwright.sync_api")
    base = tmp_path_factory.mktemp("console")
    port, spare = free_port(), free_port()
    idp = OidcProvider(
        base / "idp", [f"https://127.0.0.1:{p}/ui/auth/callback" for p in (port, spare)]
    ).start()
    pccs = FakePccs(QuoteCollateral.from_json(read_text(OCTOBER)))
    kds = FakeKds(_real_files())
    conf = base / "keybroker.toml"
    conf.write_text(idp.config_toml() + f'[collateral]\npcs_url = "{pccs.url}"\nkds_url = "{kds.url}"\n')
    data = base / "data"
    for args in (
        ["collateral", "import", str(path(JUNE)), str(path(MILAN_CHAIN))],
        ["role", "create", "platform-admin", "--permissions", ",".join(PLATFORM_ADMIN)],
    ):
        done = keybroker(*args, "--data-dir", str(data))
        assert done.returncode == 0, done.stderr
    server = Server(data, extra=["--dev", "--config", str(conf)], port=port)
    try:
        server.start()
        out = Path(os.environ.get("KEYBROKER_TEST_OUTPUT", tmp_path_factory.getbasetemp()))
        shots = out / "console-screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        yield Stack(idp, server, shots, spare, conf, pccs, kds)
    finally:
        server.stop()
        idp.stop()
        pccs.stop()
        kds.stop()


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    pins = ",".join([_spki_pin("127.0.0.1", stack.server.port), _spki_pin("127.0.0.1", stack.idp.port)])
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", f"--ignore-certificate-errors-spki-list={pins}"],
        )
        yield b
        b.close()


def _sign_in(page: Any, stack: Stack, login: str, server: Server | None = None) -> None:
    server = server or stack.server
    page.goto(f"{server.url}/ui/")
    assert page.url.endswith("/ui/login")
    page.get_by_role("link", name="Sign in with OpenID Connect").click()
    page.wait_for_url(f"{stack.idp.issuer}/**")
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", "any")
    page.click("button[type=submit]")
    page.wait_for_selector("button[type=submit]")
    if "consent" in page.content().lower() or "authorize" in page.content().lower():
        page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/ui/**")
    page.wait_for_selector("form.who")


def _client_get_key(stack: Stack, key_id: str, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(BIN / "keybroker-client"),
            "get-key",
            key_id,
            "--server",
            stack.server.url,
            "--ca-file",
            str(stack.server.ca),
            "--tee",
            "sim-tdx",
            "--dev-pki",
            str(stack.server.data_dir / "dev-pki"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_operator_releases_a_key_from_the_console(stack: Stack, browser: Any, tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    csp_errors: list[str] = []
    page.on("console", lambda m: csp_errors.append(m.text) if "Content Security Policy" in m.text else None)
    _sign_in(page, stack, "alice")
    assert "Alice Admin" in page.inner_text("form.who")

    cookie = next(c for c in context.cookies() if c["name"] == "__Host-kb_session")
    assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"], cookie["path"]) == (
        True,
        True,
        "Strict",
        "/",
    )

    # a policy that does not match the simulated TD (another MRTD)
    wrong = copy.deepcopy(TDX_SIM_POLICY)
    wrong["tdx"]["attributes"]["mrtd"] = [WRONG_MRTD]
    page.goto(f"{stack.server.url}/ui/policies/new")
    page.fill("#policy", json.dumps({"attestation_type": ["TDX"], "tdx": {}}))
    page.click("text=Create policy")
    assert "tdx.attributes" in page.inner_text("#policy-errors")
    page.screenshot(path=str(stack.shots / "policy-errors.png"), full_page=True)
    page.fill("#policy", json.dumps(wrong, indent=2))
    page.click("text=Create policy")
    policy_id = page.url.rsplit("/", 1)[1]
    page.screenshot(path=str(stack.shots / "policy.png"), full_page=True)

    page.goto(f"{stack.server.url}/ui/keys/new")
    page.select_option("#k-alg", "RSA")
    page.fill("#k-len", "3072")
    page.fill("#k-label", "web-tls")
    page.select_option("#k-policy", policy_id)
    page.click("text=Create key")
    key_id = page.url.rsplit("/", 1)[1]
    assert "web-tls" in page.inner_text("main")
    page.screenshot(path=str(stack.shots / "key.png"), full_page=True)

    denied = _client_get_key(stack, key_id, tmp_path / "k1.pem")
    assert denied.returncode != 0, denied.stdout

    page.goto(f"{stack.server.url}/ui/audit")
    page.fill("#a-object", key_id)
    page.select_option("#a-outcome", "denied")
    page.click("form.filters button[type=submit]")
    page.wait_for_selector("li.record.denied")
    record = page.inner_text("li.record.denied")
    assert "key.transfer" in record and "mrtd" in record.lower()
    page.screenshot(path=str(stack.shots / "audit-denial.png"), full_page=True)
    page.screenshot(path=str(stack.shots / "readme-audit-denial.png"))  # the viewport: docs/img/

    page.goto(f"{stack.server.url}/ui/policies/{policy_id}")
    page.fill("#policy", json.dumps(TDX_SIM_POLICY, indent=2))
    page.click("text=Save")
    assert page.url.endswith(f"/ui/policies/{policy_id}")

    granted = _client_get_key(stack, key_id, tmp_path / "k2.pem")
    assert granted.returncode == 0, granted.stderr
    assert b"PRIVATE KEY" in (tmp_path / "k2.pem").read_bytes()

    page.goto(f"{stack.server.url}/ui/keys/{key_id}")
    history = page.inner_text("main")
    assert "success" in history and "denied" in history
    page.goto(f"{stack.server.url}/ui/audit?object_id={key_id}&action=key.transfer")
    page.screenshot(path=str(stack.shots / "audit.png"), full_page=True)
    assert "granted" in page.inner_text("#results") or "success" in page.inner_text("#results")

    for name in ("system", "attestation", "keys", "policies"):
        page.goto(f"{stack.server.url}/ui/{name}")
        page.screenshot(path=str(stack.shots / f"{name}.png"), full_page=True)
    # a phone's width: nothing wider than the screen
    page.set_viewport_size({"width": 390, "height": 844})
    for name in ("keys", "audit", "system"):
        page.goto(f"{stack.server.url}/ui/{name}")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, (name, width)
        page.screenshot(path=str(stack.shots / f"{name}-phone.png"), full_page=True)
    assert csp_errors == []

    # who did it: the person, by the provider's sub and e-mail
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"{stack.server.url}/ui/audit?action=policy.update")
    assert "oidc:alice <alice@example.com>" in page.inner_text("#results")
    page.click("text=Sign out")
    page.wait_for_url(f"{stack.server.url}/ui/login")
    page.goto(f"{stack.server.url}/ui/keys")
    assert page.url.endswith("/ui/login")
    context.close()


def _admin(stack: Stack) -> Any:
    """An API client with a token minted on the server's host (as an operator would)."""
    done = keybroker(
        "token", "create", "--permissions", "*:*", "--ttl", "1h", "--data-dir", str(stack.server.data_dir)
    )
    assert done.returncode == 0, done.stderr
    return stack.server.client(done.stdout.strip())


def _get_resource(stack: Stack, resource: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(BIN / "keybroker-client"),
            "get-resource",
            resource,
            "--server",
            stack.server.url,
            "--ca-file",
            str(stack.server.ca),
            "--tee",
            "sim-tdx",
            "--dev-pki",
            str(stack.server.data_dir / "dev-pki"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_platform_admin_works_rego_attempts_collateral_tokens_and_roles(
    stack: Stack, browser: Any, tmp_path: Path
) -> None:
    url = stack.server.url
    with _admin(stack) as admin:
        r = admin.post(
            "/kbs/v0/resource/demo/db/password",
            content=b"correct horse battery staple",
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 204, r.text
        wrong = copy.deepcopy(TDX_SIM_POLICY)
        wrong["tdx"]["attributes"]["mrtd"] = [WRONG_MRTD]
        policy_id = admin.post("/kbs/v1/key-transfer-policies", json=wrong).json()["id"]
        r = admin.post(
            "/kbs/v1/keys",
            json={
                "key_information": {"algorithm": "AES", "key_length": 256},
                "transfer_policy_id": policy_id,
            },
        )
        key_id = r.json()["key_information"]["id"]
    denied = _client_get_key(stack, key_id, tmp_path / "k.pem")
    assert denied.returncode != 0, denied.stdout
    # the default resource policy refuses simulated evidence
    assert _get_resource(stack, "demo/db/password").returncode != 0

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    csp_errors: list[str] = []
    page.on("console", lambda m: csp_errors.append(m.text) if "Content Security Policy" in m.text else None)
    _sign_in(page, stack, "carol")

    # a Rego policy for the resource: the API's compile error, line and column; then one that works
    page.goto(f"{url}/ui/policies")
    page.click("text=demo/db/password")
    page.check("input[name=kind][value=rego]")
    page.fill("#r-rego", "package keybroker\ndefault allow := false\nallow if { input.tee == }\n")
    page.click("text=Save the policy")
    assert "Rego policy line 3, column" in page.inner_text("#policy-errors")
    page.screenshot(path=str(stack.shots / "resource-policy-errors.png"), full_page=True)
    page.fill("#r-rego", REGO_SIM_TDX)
    page.click("text=Save the policy")
    assert "The policy was saved" in page.inner_text("main")
    got = _get_resource(stack, "demo/db/password")
    assert got.returncode == 0 and "correct horse battery staple" in got.stdout, got.stderr

    # the denied transfer's recorded input, tested with the fixed policy (SecL, then Rego)
    page.goto(f"{url}/ui/audit?object_id={key_id}&action=key.transfer")
    page.click("text=Test a policy on this attempt's input")
    page.wait_for_url("**/ui/policy-test?attempt=*")
    page.fill("#t-policy", json.dumps(TDX_SIM_POLICY, indent=2))
    page.click("form.stack button.primary")
    verdict = page.inner_text("#verdict")
    assert "ALLOWED" in verdict and "denied" in verdict and "mrtd" in verdict.lower(), verdict
    page.screenshot(path=str(stack.shots / "policy-test-attempt.png"), full_page=True)
    page.screenshot(
        path=str(stack.shots / "readme-policy-test.png"), clip={"x": 0, "y": 0, "width": 1280, "height": 640}
    )
    page.select_option("#t-language", "rego")
    page.fill("#t-policy", REGO_SIM_TDX)
    page.click("form.stack button.primary")
    assert "ALLOWED" in page.inner_text("#verdict")

    # evidence of another TEE pasted: a simulated SEV-SNP guest's report and certificate table
    snp = snp_report(SnpDevPki.load(stack.server.data_dir / "dev-pki" / "snp"), report_data=bytes(64))
    page.goto(f"{url}/ui/policy-test")
    page.fill("#t-policy", json.dumps(SNP_SIM_POLICY, indent=2))
    page.check("input[name=evidence][value=quote]")
    page.fill("#t-quote", (snp.report + snp.cert_table).hex())
    page.select_option("#t-tee", "snp")
    page.click("form.stack button.primary")
    assert "ALLOWED" in page.inner_text("#verdict")
    assert '"tee": "snp"' in (page.text_content("#input-document") or "")
    page.screenshot(path=str(stack.shots / "policy-test-snp.png"), full_page=True)

    # the attempts by TEE: the TD's denied transfer, its attestations and its released resource
    page.goto(f"{url}/ui/attestation")
    page.select_option("#t-tee", "tdx")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**/ui/attestation?tee=tdx*")
    cells = page.locator("h2:has-text('Recent attempts') ~ div.scroll table tbody tr td:nth-child(4)")
    assert cells.count() >= 2 and set(cells.all_inner_texts()) == {"TDX"}, cells.all_inner_texts()
    actions = set(
        page.locator(
            "h2:has-text('Recent attempts') ~ div.scroll table tbody tr td:nth-child(3)"
        ).all_inner_texts()
    )
    assert {"key.transfer", "resource.release", "attestation.attest"} <= actions, actions
    page.select_option("#t-tee", "snp")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**/ui/attestation?tee=snp*")
    assert "No attempts yet." in page.inner_text("main")

    # the collateral cache: a live countdown, and Refresh now from the loopback PCCS and KDS
    page.goto(f"{url}/ui/attestation")
    page.wait_for_function("document.querySelector('time[data-countdown]').textContent.includes(':')")
    assert re.search(r"\d\d:\d\d:\d\d", page.locator("time[data-countdown]").first.inner_text())
    page.click(f"button[aria-label='Refresh FMSPC {FMSPC} now']")
    notice = page.inner_text("#refresh-notice")
    assert f"FMSPC {FMSPC} refreshed from {stack.pccs.url}: 3 new" in notice, notice
    page.screenshot(path=str(stack.shots / "attestation.png"), full_page=True)
    page.click("button[aria-label='Refresh SEV-SNP Milan now']")
    assert "SEV-SNP Milan refreshed" in page.inner_text("#refresh-notice")
    # without JavaScript it reads the same, with the server's own countdown text
    plain = browser.new_context(java_script_enabled=False, storage_state=context.storage_state())
    p2 = plain.new_page()
    p2.goto(f"{url}/ui/attestation")
    first = p2.locator("time[data-countdown]").first.inner_text()
    assert re.fullmatch(r"in \d+\w \d+\w|\d+\w \d+\w ago", first), first
    assert FMSPC in p2.inner_text("main") and "Milan" in p2.inner_text("main")
    plain.close()

    # a token minted (shown once), used, revoked
    page.goto(f"{url}/ui/tokens")
    page.fill("#t-subject", "ci-reader")
    page.check("input[name=permissions][value='keys:search']")
    page.click("text=Mint the token")
    token = page.input_value("#minted")
    page.screenshot(path=str(stack.shots / "token-minted.png"), full_page=True)
    with stack.server.client(token) as c:
        assert c.get("/kbs/v1/keys").status_code == 200
    page.goto(f"{url}/ui/tokens")
    row = page.locator("#tokens tr", has_text="ci-reader")
    row.locator("input[name=reason]").fill("done with it")
    row.locator("button:has-text('Revoke')").click()
    assert "revoked" in page.inner_text("main")
    page.screenshot(path=str(stack.shots / "tokens.png"), full_page=True)
    with stack.server.client(token) as c:
        assert c.get("/kbs/v1/keys").status_code == 401

    # a role written and deleted
    page.goto(f"{url}/ui/roles")
    page.fill("#r-name", "release-reader")
    page.fill("#r-desc", "reads keys")
    page.check("input[name=permissions][value='keys:search']")
    page.click("text=Create the role")
    page.wait_for_url("**/ui/roles/release-reader")
    assert "keys:search" in page.inner_text("#role-permissions")
    page.screenshot(path=str(stack.shots / "roles.png"), full_page=True)
    page.fill("#r-confirm", "release-reader")
    page.click("text=Delete the role")
    page.wait_for_url("**/ui/roles?deleted=release-reader")

    # the new pages at a phone's width: nothing wider than the screen
    page.set_viewport_size({"width": 390, "height": 844})
    for name in ("attestation", "tokens", "roles", "policy-test", "resources/demo/db/password"):
        page.goto(f"{url}/ui/{name}")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, (name, width)
    page.screenshot(path=str(stack.shots / "attestation-phone.png"), full_page=True)
    assert csp_errors == []
    context.close()


def test_an_auditor_does_not_see_what_he_may_not_do(stack: Stack, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    _sign_in(page, stack, "bob")
    page.goto(f"{stack.server.url}/ui/keys")
    assert page.get_by_role("link", name="New key").count() == 0
    page.goto(f"{stack.server.url}/ui/policies")
    assert page.get_by_role("link", name="New policy").count() == 0
    page.goto(f"{stack.server.url}/ui/system")
    assert page.get_by_role("button", name="Seal now").count() == 0
    page.goto(f"{stack.server.url}/ui/keys/new")
    assert "keys:create" in page.inner_text("main")
    page.goto(f"{stack.server.url}/ui/tokens")
    assert page.get_by_role("button", name="Mint the token").count() == 0
    assert page.get_by_role("button", name="Revoke").count() == 0
    page.goto(f"{stack.server.url}/ui/roles")
    assert page.get_by_role("button", name="Create the role").count() == 0
    page.goto(f"{stack.server.url}/ui/attestation")
    assert FMSPC in page.inner_text("main")
    assert page.get_by_role("button", name=re.compile("^Refresh")).count() == 0
    page.goto(f"{stack.server.url}/ui/policies")
    assert "Resource policies" not in page.inner_text("main")
    context.close()

    # someone whose groups map to no role sees nothing but the system page
    context = browser.new_context()
    page = context.new_page()
    _sign_in(page, stack, "mallory")
    nav = page.inner_text("header nav")
    assert "Keys" not in nav and "Audit" not in nav and "System" in nav
    context.close()


def test_an_operator_unseals_from_the_console(stack: Stack, browser: Any, tmp_path: Path) -> None:
    """A production-mode server (Shamir shares, no --dev): the shares typed into the System page go
    over the same TLS to the same unseal service; a wrong share is refused and audited."""
    server = Server(tmp_path / "data", extra=["--config", str(stack.conf)], port=stack.spare_port).start()
    try:
        init = subprocess.run(
            [
                str(BIN / "keybroker"),
                "operator",
                "init",
                "--shares",
                "3",
                "--threshold",
                "2",
                "--json",
                "--data-dir",
                str(server.data_dir),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert init.returncode == 0, init.stderr
        shares = json.loads(init.stdout)["unseal_shares"]
        pins = ",".join([_spki_pin("127.0.0.1", server.port), _spki_pin("127.0.0.1", stack.idp.port)])
        # the browser of the fixture trusts the first server's key only: another with this one's
        other = browser.browser_type.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", f"--ignore-certificate-errors-spki-list={pins}"],
        )
        try:
            page = other.new_page(viewport={"width": 1280, "height": 800})
            _sign_in(page, stack, "alice", server)
            assert page.url.endswith("/ui/system")
            assert page.inner_text("#seal-state") == "sealed"
            page.fill("#share", "not a share!")
            page.click("text=Give this share")
            assert "share" in page.inner_text("p.error").lower()
            page.fill("#share", shares[0])
            page.click("text=Give this share")
            assert "1/2" in page.inner_text("main")
            page.screenshot(path=str(stack.shots / "system-unseal.png"), full_page=True)
            page.fill("#share", shares[1])
            page.click("text=Give this share")
            assert page.inner_text("#seal-state") == "unsealed"
            page.goto(f"{server.url}/ui/audit?action=sys.unseal")
            results = page.inner_text("#results")
            assert "success" in results and "failed" in results
        finally:
            other.close()
    finally:
        server.stop()
