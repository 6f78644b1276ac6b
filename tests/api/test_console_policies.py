"""The console's Rego editor for ``/kbs/v0`` resource policies and its *Test this policy* with Rego,
through the ASGI app: the same service and the same errors as ``POST /kbs/v0/resource-policy``,
permissions that hide and refuse, CSRF, bad input as a 4xx page (never a 500), nothing stored on
a refusal."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.api.test_console import LOCAL, _audit, sign_in
from tests.api.test_kbs_v0 import REGO_ALLOW_SIM_TDX, _pki
from tests.helpers.api import token_headers

from keybroker.api.app import create_app
from keybroker.api.services import Services
from keybroker.tee import sim

PATH = "demo/db/password"
#: line 3 has a syntax error (an operator without its right-hand side)
BAD_REGO = "package keybroker\ndefault allow := false\nallow if { input.tee == }\n"


@pytest.fixture
def console(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services), base_url="https://127.0.0.1:9443", client=LOCAL) as c:
        yield c


def _resource(console: TestClient, services: Services, path: str = PATH) -> None:
    r = console.post(
        f"/kbs/v0/resource/{path}",
        content=b"correct horse battery staple",
        headers={**token_headers(services, "resources:write"), "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 204, r.text


def _role(services: Services, name: str, permissions: list[str]) -> None:
    services.roles.create(name, permissions, actor="test")


def _policy_of(services: Services, path: str = PATH) -> dict[str, Any] | None:
    return services.kbs_v0.resource(path).policy


def test_a_rego_policy_is_set_from_the_console_with_the_apis_errors(
    console: TestClient, services: Services
) -> None:
    _resource(console, services)
    _role(services, "resource-admin", ["resources:write", "key_transfer_policies:search"])
    csrf = sign_in(console, "rita", ["resource-admin"])
    listing = console.get("/ui/policies")
    assert listing.status_code == 200 and f'href="/ui/resources/{PATH}"' in listing.text
    page = console.get(f"/ui/resources/{PATH}")
    assert page.status_code == 200 and 'name="rego"' in page.text

    # a syntax error: the API's own words, line and column included; nothing stored
    api = console.post(
        f"/kbs/v0/resource-policy/{PATH}",
        json={"rego": BAD_REGO},
        headers=token_headers(services, "resources:write"),
    )
    assert api.status_code == 400
    detail = api.json()["detail"]
    assert detail.startswith("Rego policy line 3, column ")
    r = console.post(f"/ui/resources/{PATH}", data={"csrf": csrf, "kind": "rego", "rego": BAD_REGO})
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/html")
    assert detail in r.text and BAD_REGO.splitlines()[2] in r.text  # the text stays in the editor
    assert _policy_of(services) is None
    # a forbidden builtin, refused by the same compile step
    sneaky = 'package keybroker\ndefault allow := false\nreasons contains x if { x := opa["runtime"]().env.HOME }\n'
    r = console.post(f"/ui/resources/{PATH}", data={"csrf": csrf, "kind": "rego", "rego": sneaky})
    assert r.status_code == 400 and "opa.runtime" in r.text and _policy_of(services) is None

    r = console.post(
        f"/ui/resources/{PATH}",
        data={"csrf": csrf, "kind": "rego", "rego": REGO_ALLOW_SIM_TDX},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == f"/ui/resources/{PATH}?saved=1"
    assert _policy_of(services) == {"rego": REGO_ALLOW_SIM_TDX}
    assert "The policy was saved" in console.get(r.headers["location"]).text
    # back to the default
    r = console.post(f"/ui/resources/{PATH}", data={"csrf": csrf, "kind": "default"}, follow_redirects=False)
    assert r.status_code == 303 and _policy_of(services) is None

    records = [(x["actor"], x["action"], x["object_id"], x["outcome"]) for x in _audit(services)]
    assert records.count(("dev:rita", "resource.policy", PATH, "failed")) == 2
    assert records.count(("dev:rita", "resource.policy", PATH, "success")) == 2


def test_resource_policy_form_refusals(console: TestClient, services: Services) -> None:
    _resource(console, services)
    _role(services, "resource-admin", ["resources:write"])
    csrf = sign_in(console, "rita", ["resource-admin"])
    cases: list[tuple[str, dict[str, str], int, str]] = [
        (PATH, {"kind": "sometimes"}, 400, "kind: one of default, transfer_policy, rego"),
        (PATH, {"kind": "transfer_policy", "transfer_policy_id": "x"}, 400, "choose a key-transfer policy"),
        (
            PATH,
            {"kind": "transfer_policy", "transfer_policy_id": "00000000-0000-0000-0000-000000000000"},
            400,
            "does not name an existing policy",
        ),
        (PATH, {"kind": "rego", "rego": "package other\nallow := true\n"}, 400, "package keybroker"),
        (PATH, {"kind": "rego", "rego": "package keybroker\n" + "#" * 70_000}, 400, "larger than"),
        (PATH, {"kind": "rego", "admin": "1"}, 400, "unknown form field"),
        ("demo/db/other", {"kind": "default"}, 404, "does not exist"),
        ("demo/db/" + "x" * 129, {"kind": "default"}, 400, "must be 1-128 of"),
        ("demo/%2E%2E/x", {"kind": "default"}, 400, "must be 1-128 of"),
        ("demo/db/pass%20word", {"kind": "default"}, 400, "must be 1-128 of"),
    ]
    for path, data, status, text in cases:
        r = console.post(f"/ui/resources/{path}", data={"csrf": csrf, **data})
        assert r.status_code == status and text in r.text, (path, data, r.status_code, r.text[-600:])
        assert r.headers["content-type"].startswith("text/html"), (path, r.text[:300])
    assert _policy_of(services) is None
    # no CSRF token, or another origin: refused before anything is read
    r = console.post(f"/ui/resources/{PATH}", data={"kind": "rego", "rego": REGO_ALLOW_SIM_TDX})
    assert r.status_code == 403 and "CSRF" in r.text
    r = console.post(
        f"/ui/resources/{PATH}",
        data={"csrf": csrf, "kind": "rego", "rego": REGO_ALLOW_SIM_TDX},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403 and _policy_of(services) is None


def test_without_resources_write_the_editor_is_hidden_and_refused(
    console: TestClient, services: Services
) -> None:
    _resource(console, services)
    csrf = sign_in(console, "paul", ["policy-admin"])
    listing = console.get("/ui/policies").text
    assert "Resource policies" not in listing and "/ui/resources/" not in listing
    assert console.get(f"/ui/resources/{PATH}").status_code == 403
    r = console.post(f"/ui/resources/{PATH}", data={"csrf": csrf, "kind": "rego", "rego": REGO_ALLOW_SIM_TDX})
    assert r.status_code == 403 and "resources:write" in r.text
    assert _policy_of(services) is None
    assert ("dev:paul", "resource.policy", "denied") in [
        (x["actor"], x["action"], x["outcome"]) for x in _audit(services)
    ]
    # someone with resources:write alone sees the Policies page (its resource half)
    _role(services, "resource-writer", ["resources:write"])
    with TestClient(create_app(services), base_url="https://127.0.0.1:9443", client=LOCAL) as other:
        sign_in(other, "wes", ["resource-writer"])
        assert 'href="/ui/policies"' in other.get("/ui/system").text
        page = other.get("/ui/policies")
        assert page.status_code == 200 and PATH in page.text and "New policy" not in page.text


def _tdx_quote(services: Services, **fields: Any) -> str:
    return base64.b64encode(sim.tdx_quote(_pki(services), report_data=b"\0" * 64, **fields)).decode()


def test_test_this_policy_runs_rego_as_policy_test_does(console: TestClient, services: Services) -> None:
    """The console's dry run evaluates Rego with the same code as ``keybroker policy test`` and a
    release: the decision and its reasons are ``appraisal.trial``'s on the verified quote."""
    from keybroker.appraisal import trial
    from keybroker.appraisal.input import appraisal_input
    from keybroker.tee.verifier import NO_REPORT_DATA

    csrf = sign_in(console, "pat", ["policy-admin"])
    assert 'value="rego"' in console.get("/ui/policy-test", params={"language": "rego"}).text
    good = _tdx_quote(services)
    other = _tdx_quote(services, mrtd=b"\xab" * 48)
    r = console.post(
        "/ui/policy-test",
        data={"csrf": csrf, "language": "rego", "policy": REGO_ALLOW_SIM_TDX, "quote": good},
    )
    assert r.status_code == 200 and "ALLOWED" in r.text, r.text[-1500:]
    r = console.post(
        "/ui/policy-test",
        data={"csrf": csrf, "language": "rego", "policy": REGO_ALLOW_SIM_TDX, "quote": other},
    )
    assert r.status_code == 200 and "DENIED" in r.text and "wrong MRTD" in r.text
    expected = trial.load_policy(REGO_ALLOW_SIM_TDX, language="rego", policy_id="x").evaluate(
        appraisal_input(
            services.verifier.verify("tdx", base64.b64decode(other), NO_REPORT_DATA), client_permissions=None
        )
    )
    for reason in expected.reasons:
        assert reason in r.text
    # a Rego syntax error: the line and column, as the API gives them; a SecL policy read as Rego
    r = console.post(
        "/ui/policy-test", data={"csrf": csrf, "language": "rego", "policy": BAD_REGO, "quote": good}
    )
    assert r.status_code == 400 and "Rego policy line 3, column " in r.text
    r = console.post(
        "/ui/policy-test",
        data={
            "csrf": csrf,
            "language": "rego",
            "policy": json.dumps({"attestation_type": ["TDX"]}),
            "quote": good,
        },
    )
    assert r.status_code == 400 and "package keybroker" in r.text
    r = console.post(
        "/ui/policy-test", data={"csrf": csrf, "language": "cobol", "policy": "x", "quote": good}
    )
    assert r.status_code == 400 and "language: secl or rego" in r.text
    # nothing was stored by a dry run
    assert not [x for x in _audit(services) if x["action"] in ("resource.policy", "policy.create")]


def test_a_resources_rego_policy_opens_in_the_test_page(console: TestClient, services: Services) -> None:
    _resource(console, services)
    r = console.post(
        f"/kbs/v0/resource-policy/{PATH}",
        json={"rego": REGO_ALLOW_SIM_TDX},
        headers=token_headers(services, "resources:write"),
    )
    assert r.status_code == 204
    _role(services, "rego-tester", ["resources:write", "key_transfer_policies:retrieve"])
    sign_in(console, "tess", ["rego-tester"])
    assert "Test this Rego policy" in console.get(f"/ui/resources/{PATH}").text
    page = console.get("/ui/policy-test", params={"resource": PATH})
    assert page.status_code == 200 and 'value="rego" selected' in page.text
    assert "wrong MRTD" in page.text  # the module, in the editor
    assert console.get("/ui/policy-test", params={"resource": "a/b"}).status_code == 400
    assert console.get("/ui/policy-test", params={"resource": "a/b/none"}).status_code == 404


def test_a_refused_policy_is_audited_once_and_the_permission_comes_first(
    console: TestClient, services: Services
) -> None:
    """Before, the console read the policy's text before it checked the permission (a person
    without it was told what was wrong with the text, 400, not 403) and audited a refused text
    twice when the service refused it."""
    bad = '{"attestation_type": ["TDX"], "tdx": {}}'
    csrf = sign_in(console, "audrey", ["auditor"])
    r = console.post("/ui/policies", data={"csrf": csrf, "policy": bad})
    assert r.status_code == 403 and "key_transfer_policies:create" in r.text
    with TestClient(create_app(services), base_url="https://127.0.0.1:9443", client=LOCAL) as other:
        csrf = sign_in(other, "pat", ["policy-admin"])
        r = other.post("/ui/policies", data={"csrf": csrf, "policy": bad})
        assert r.status_code == 400 and "tdx.attributes" in r.text
        good = console.post(
            "/kbs/v1/key-transfer-policies",
            json={
                "attestation_type": ["SGX"],
                "sgx": {"attributes": {"mrsigner": ["a" * 64], "isvprodid": [1]}},
            },
            headers=token_headers(services, "key_transfer_policies:create"),
        ).json()["id"]
        r = other.post(f"/ui/policies/{good}", data={"csrf": csrf, "policy": bad})
        assert r.status_code == 400 and "tdx.attributes" in r.text
    records = [(x["actor"], x["action"], x["outcome"]) for x in _audit(services)]
    assert records.count(("dev:audrey", "policy.create", "denied")) == 1
    assert records.count(("dev:pat", "policy.create", "failed")) == 1
    assert records.count(("dev:pat", "policy.update", "failed")) == 1
