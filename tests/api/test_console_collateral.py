"""The Attestation page's collateral cache through the ASGI app: per FMSPC and per SEV-SNP product,
what is cached and when it expires (readable without JavaScript; the countdown a static file), and
*Refresh now* from the configured source through the code of ``keybroker collateral fetch``, against
a PCCS and a KDS on loopback: permissioned, audited, CSRF-protected, a clear error when the source is
unreachable, nothing stored from a source whose answer does not verify."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from tests.api.test_console import LOCAL, _audit, sign_in
from tests.helpers.postgres import free_port
from tests.integration.test_collateral_fetch import TCB, FakePccs
from tests.integration.test_kds_fetch import FakeKds, _real_files
from tests.vectors.corpus import path, read_bytes, read_text

from keybroker.api.app import create_app
from keybroker.api.services import Services
from keybroker.collateral.importers import read_file
from keybroker.collateral.kds import chain_items
from keybroker.collateral.kds_store import KdsStore
from keybroker.collateral.store import CollateralStore
from keybroker.collateral.trust import collateral_roots
from keybroker.config import CollateralSettings
from keybroker.tee.dcap.endorsements import QuoteCollateral

OLD = "intel-dcap/assembled/tdx_00806F050000_2025-06.json"
NEW = "intel-dcap/assembled/tdx_00806F050000_2025-10.json"
FMSPC = "00806F050000"
OPS = ["operator", "auditor"]


@pytest.fixture
def pccs() -> Iterator[FakePccs]:
    fake = FakePccs(QuoteCollateral.from_json(read_text(NEW)))
    yield fake
    fake.stop()


@pytest.fixture
def amd_kds() -> Iterator[FakeKds]:
    fake = FakeKds(_real_files())
    yield fake
    fake.stop()


@pytest.fixture
def console(services: Services, pccs: FakePccs, amd_kds: FakeKds) -> Iterator[TestClient]:
    """The cache holds June's TDX collateral for the FMSPC and AMD's Milan VCEK chain; the sources
    are the loopback PCCS (October's) and KDS."""
    CollateralStore(services.db).import_items(
        read_file(path(OLD), collateral_roots(services.settings)), source="file:june"
    )
    milan = chain_items(read_bytes("amd-sev-snp/virtee-sev/cert_chain_milan"))
    KdsStore(services.db).import_items(milan, source="file:cert_chain_milan")
    _configure(services, pcs_url=pccs.url, kds_url=amd_kds.url)
    with TestClient(create_app(services), base_url="https://127.0.0.1:9443", client=LOCAL) as c:
        yield c


def _configure(services: Services, **collateral: str | None) -> None:
    services.settings = services.settings.model_copy(
        update={"collateral": CollateralSettings(**{k: v for k, v in collateral.items() if v is not None})}
    )


def _refreshes(services: Services) -> list[dict[str, object]]:
    return [x for x in _audit(services) if x["action"] == "collateral.refresh"]


def _tcb_infos(services: Services) -> int:
    return len(CollateralStore(services.db).list_items(kind="tcb_info", fmspc=FMSPC))


def test_the_cache_per_fmspc_and_product_reads_without_javascript(console: TestClient) -> None:
    sign_in(console, "otto", OPS)
    page = console.get("/ui/attestation")
    assert page.status_code == 200
    text = html.unescape(page.text)
    assert f"FMSPC {FMSPC}" in re.sub(r"<[^>]+>", "", text) and f"TCB Info TDX {FMSPC}" in text
    assert "Milan" in text and "ASK+ARK Milan" in text
    # every expiry is a date and a server-written countdown; the live one is a static file
    times = re.findall(
        r'<time class="countdown[^"]*" datetime="([^"]+)" data-countdown="([^"]+)">([^<]+)</time>', text
    )
    assert times and all(t[2].startswith("in ") or t[2].endswith(" ago") for t in times)
    scripts = re.findall(r"<script[^>]*>", page.text)
    assert scripts == [
        '<script src="/ui/static/htmx.min.js" defer>',
        '<script src="/ui/static/console.js" defer>',
    ]
    assert "<script>" not in page.text and "onclick" not in page.text
    js = console.get("/ui/static/console.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "data-countdown" in js.text and "eval(" not in js.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.text.count('<button type="submit" aria-label="Refresh') == 2  # one FMSPC, one product


def test_refresh_now_fetches_verifies_stores_and_audits(
    console: TestClient, services: Services, pccs: FakePccs, amd_kds: FakeKds
) -> None:
    csrf = sign_in(console, "otto", OPS)
    assert _tcb_infos(services) == 1
    r = console.post("/ui/collateral/refresh", data={"csrf": csrf, "fmspc": FMSPC})
    assert r.status_code == 200, r.text[-1500:]
    assert f"FMSPC {FMSPC} refreshed from {pccs.url}: 3 new, 1 already cached" in html.unescape(r.text)
    assert pccs.hits[TCB] == 1 and _tcb_infos(services) == 2  # October's beside June's
    (done,) = _refreshes(services)
    assert (done["actor"], done["object_id"], done["outcome"]) == ("dev:otto", f"fmspc:{FMSPC}", "success")
    details = done["details"]
    assert isinstance(details, dict) and details["source"] == pccs.url and len(details["added"]) == 3
    # again: nothing new
    r = console.post("/ui/collateral/refresh", data={"csrf": csrf, "fmspc": FMSPC.lower()})
    assert r.status_code == 200 and "0 new, 4 already cached" in r.text

    r = console.post("/ui/collateral/refresh", data={"csrf": csrf, "product": "Milan"})
    assert r.status_code == 200 and f"SEV-SNP Milan refreshed from {amd_kds.url}" in r.text
    assert "no VCEK CRL" in html.unescape(r.text)  # the KDS's 404s are notes, as the CLI prints them
    assert amd_kds.hits["/vcek/v1/Milan/cert_chain"] == 1
    assert {i.signing_key for i in KdsStore(services.db).list_items(product="Milan")} == {"vcek", "vlek"}
    assert [x["object_id"] for x in _refreshes(services)] == [f"fmspc:{FMSPC}"] * 2 + ["snp:Milan"]


def test_an_unreachable_or_unverifiable_source_stores_nothing(
    console: TestClient, services: Services, pccs: FakePccs
) -> None:
    csrf = sign_in(console, "otto", OPS)
    down = f"http://127.0.0.1:{free_port()}"
    _configure(services, pcs_url=down, kds_url=f"http://127.0.0.1:{free_port()}")
    r = console.post("/ui/collateral/refresh", data={"csrf": csrf, "fmspc": FMSPC})
    assert r.status_code == 503 and r.headers["content-type"].startswith("text/html")
    assert f"the collateral source {down} cannot be reached" in r.text
    r = console.post("/ui/collateral/refresh", data={"csrf": csrf, "product": "Milan"})
    assert r.status_code == 503 and "cannot be reached" in r.text
    # a source whose TCB Info does not verify: refused, nothing of it stored
    _configure(services, pcs_url=pccs.url)
    route = next(k for k in pccs.routes if k.startswith(TCB))
    body, headers = pccs.routes[route]
    pccs.routes[route] = (body.replace(b'"tcbType":0', b'"tcbType":1'), headers)
    r = console.post("/ui/collateral/refresh", data={"csrf": csrf, "fmspc": FMSPC})
    assert r.status_code == 400 and "Collateral problem" in r.text, r.text[-800:]
    assert _tcb_infos(services) == 1
    # a 5xx through the retries
    pccs.routes[route] = (body, headers)
    pccs.fail[TCB] = [503, 503]
    r = console.post("/ui/collateral/refresh", data={"csrf": csrf, "fmspc": FMSPC})
    assert r.status_code == 503 and "503" in r.text and _tcb_infos(services) == 1
    outcomes = [(x["object_id"], x["outcome"]) for x in _refreshes(services)]
    assert (
        outcomes
        == [(f"fmspc:{FMSPC}", "failed"), ("snp:Milan", "failed")] + [(f"fmspc:{FMSPC}", "failed")] * 2
    )


def test_refresh_needs_the_permission_a_source_and_a_form_from_this_site(
    console: TestClient, services: Services, pccs: FakePccs
) -> None:
    csrf = sign_in(console, "audrey", ["auditor"])  # reads the page, may not refresh
    page = console.get("/ui/attestation").text
    assert "Refresh now" not in page and "/ui/collateral/refresh" not in page
    r = console.post("/ui/collateral/refresh", data={"csrf": csrf, "fmspc": FMSPC})
    assert r.status_code == 403 and "collateral:update" in r.text
    assert [(x["actor"], x["outcome"]) for x in _refreshes(services)] == [("dev:audrey", "denied")]
    with TestClient(create_app(services), base_url="https://127.0.0.1:9443", client=LOCAL) as other:
        csrf = sign_in(other, "otto", OPS)
        for data, status, text in [
            ({"fmspc": "xyz"}, 400, "12 hex digits"),
            ({"fmspc": FMSPC, "product": "Milan"}, 400, "give one FMSPC or one SEV-SNP product"),
            ({}, 400, "give one FMSPC or one SEV-SNP product"),
            ({"product": "Rome"}, 400, "product: one of Milan, Genoa, Turin"),
            ({"product": "Genoa"}, 404, "nothing is cached for SEV-SNP Genoa"),
            ({"fmspc": "00906ED50000"}, 404, "no TCB Info is cached for FMSPC 00906ED50000"),
            ({"fmspc": FMSPC, "url": "http://evil.example"}, 400, "unknown form field"),
        ]:
            r = other.post("/ui/collateral/refresh", data={"csrf": csrf, **data})
            assert r.status_code == status and text in r.text, (data, r.status_code, r.text[-800:])
            assert r.headers["content-type"].startswith("text/html")
        r = other.post("/ui/collateral/refresh", data={"fmspc": FMSPC})
        assert r.status_code == 403 and "CSRF" in r.text
        r = other.post(
            "/ui/collateral/refresh",
            data={"csrf": csrf, "fmspc": FMSPC},
            headers={"Sec-Fetch-Site": "cross-site"},
        )
        assert r.status_code == 403
        # no PCS configured: no button for DCAP, and a refusal that says what to set
        _configure(services, pcs_url=None)
        page = other.get("/ui/attestation").text
        assert "set <code>[collateral] pcs_url</code>" in page
        assert page.count('aria-label="Refresh') == 1 and 'aria-label="Refresh SEV-SNP Milan now"' in page
        r = other.post("/ui/collateral/refresh", data={"csrf": csrf, "fmspc": FMSPC})
        assert r.status_code == 400 and "set [collateral] pcs_url" in r.text
        # sealed: refused before anything is fetched (its audit record could not be written)
        _configure(services, pcs_url=pccs.url)
        services.barrier.seal()
        r = other.post("/ui/collateral/refresh", data={"csrf": csrf, "fmspc": FMSPC})
        assert r.status_code == 503 and "sealed" in r.text
    assert sum(pccs.hits.values()) == 0 and _tcb_infos(services) == 1
