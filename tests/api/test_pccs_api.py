"""The PCCS-compatible endpoints and POST /attestation/v1/verify, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import urllib.parse
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from tests.helpers.api import token_headers
from tests.vectors.corpus import case, path, read_bytes, read_text

from keybroker.api.services import Services
from keybroker.collateral.importers import read_file
from keybroker.collateral.items import Item, TrustedRoots
from keybroker.collateral.store import CollateralStore
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.verify import verify_quote
from keybroker.tee.sim import DevPki, tdx_quote

SGX = "intel-dcap/phala-dcap-qvl/sgx_quote_collateral.json"
TDX_JUNE = "intel-dcap/assembled/tdx_00806F050000_2025-06.json"
TDX_OCT = "intel-dcap/assembled/tdx_00806F050000_2025-10.json"
_ITEMS: dict[str, list[Item]] = {}


def _items(rel: str) -> list[Item]:
    if rel not in _ITEMS:
        _ITEMS[rel] = read_file(path(rel), TrustedRoots())
    return _ITEMS[rel]


@pytest.fixture
def store(services: Services) -> CollateralStore:
    store = CollateralStore(services.db)
    store.import_sources([(rel, _items(rel)) for rel in (SGX, TDX_OCT, TDX_JUNE)])
    return store


def _pcs(client: TestClient, tee: str, fmspc: str, ca: str) -> QuoteCollateral:
    tcb = client.get(f"/{tee}/certification/v4/tcb", params={"fmspc": fmspc})
    qe = client.get(f"/{tee}/certification/v4/qe/identity")
    crl = client.get("/sgx/certification/v4/pckcrl", params={"ca": ca, "encoding": "der"})
    root = client.get("/sgx/certification/v4/rootcacrl")
    for r in (tcb, qe, crl, root):
        assert r.status_code == 200, r.text
    assert (
        tcb.headers["content-type"] == "application/json"
        and crl.headers["content-type"] == "application/pkix-crl"
    )
    assert "%0A" in tcb.headers["TCB-Info-Issuer-Chain"]  # URL-encoded PEM
    return QuoteCollateral.from_pcs(
        tcb_info_body=tcb.content,
        tcb_info_issuer_chain=tcb.headers["TCB-Info-Issuer-Chain"],
        qe_identity_body=qe.content,
        qe_identity_issuer_chain=qe.headers["SGX-Enclave-Identity-Issuer-Chain"],
        pck_crl=crl.content,
        pck_crl_issuer_chain=crl.headers["SGX-PCK-CRL-Issuer-Chain"],
        root_ca_crl=root.content,
    )


@pytest.mark.parametrize(("rel", "ca"), [(SGX, "processor"), (TDX_OCT, "platform")])
def test_pccs_bodies_are_byte_compatible(
    rel: str, ca: str, client: TestClient, store: CollateralStore
) -> None:
    coll = QuoteCollateral.from_json(read_text(rel))
    served = _pcs(client, coll.tee, coll.fmspc.lower(), ca)
    assert served.digest == store.collateral_for(tee=coll.tee, fmspc=coll.fmspc, pck_ca=ca).digest
    assert served == coll  # the newest of each piece is this file's (TDX: October over June)
    tcb = client.get(f"/{coll.tee}/certification/v4/tcb", params={"fmspc": coll.fmspc, "update": "standard"})
    assert tcb.content == coll.to_pcs()["tcb_info_body"].encode()  # signed bytes untouched


def test_crl_encodings(client: TestClient, store: CollateralStore) -> None:
    coll = QuoteCollateral.from_json(read_text(SGX))
    hexed = client.get("/sgx/certification/v4/pckcrl", params={"ca": "PROCESSOR"})
    assert hexed.status_code == 200 and bytes.fromhex(hexed.text) == coll.pck_crl  # as Intel PCCS / QCNL 3.0
    chain = urllib.parse.unquote(hexed.headers["SGX-PCK-CRL-Issuer-Chain"])
    assert chain == coll.pck_crl_issuer_chain
    newest_root = store.newest("root_ca_crl")
    assert newest_root is not None
    root_der = client.get("/sgx/certification/v4/rootcacrl", params={"encoding": "der"}).content
    assert root_der == newest_root.crl_der
    uri = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
    assert client.get("/sgx/certification/v4/crl", params={"uri": uri}).content == root_der
    r = client.get("/sgx/certification/v4/crl", params={"uri": "https://example.com/other.crl"})
    assert r.status_code == 404 and "not 'https://example.com/other.crl'" in r.json()["detail"]


def test_404_explains_what_was_asked_and_what_is_cached(client: TestClient, store: CollateralStore) -> None:
    r = client.get("/sgx/certification/v4/tcb", params={"fmspc": "00806f050000"})
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    doc = r.json()
    assert doc["asked"] == {"tee": "sgx", "fmspc": "00806F050000"}
    assert doc["detail"].startswith(
        "no SGX TCB Info for FMSPC 00806F050000 cached (it is cached as TDX TCB Info"
    )
    assert (
        "cached TCB Info: SGX 00A067110000 until 2025-07-19, TDX 00806F050000 until 2025-11-18"
        in doc["detail"]
    )
    r = client.get("/sgx/certification/v4/qve/identity")
    assert r.status_code == 404
    assert r.json()["detail"].startswith(
        "no QVE identity cached; cached identities: QE identity until 2025-07-19"
    )


def test_empty_cache_404s(client: TestClient) -> None:
    for url in ("/sgx/certification/v4/rootcacrl", "/tdx/certification/v4/qe/identity"):
        r = client.get(url)
        assert r.status_code == 404 and "cached" in r.json()["detail"] and ": none." in r.json()["detail"]
    r = client.get("/sgx/certification/v4/pckcrl", params={"ca": "platform"})
    assert r.json()["detail"].startswith("no PCK CRL of the platform CA cached; cached PCK CRLs: none")


@pytest.mark.parametrize(
    ("url", "params", "field"),
    [
        ("/sgx/certification/v4/tcb", {}, "fmspc"),
        ("/sgx/certification/v4/tcb", {"fmspc": "00806F05000"}, "fmspc"),
        ("/tdx/certification/v4/tcb", {"fmspc": "00806F05000G"}, "fmspc"),
        ("/tdx/certification/v4/tcb", {"fmspc": "00806F050000", "update": "late"}, "update"),
        ("/sgx/certification/v4/qe/identity", {"update": "x"}, "update"),
        ("/sgx/certification/v4/pckcrl", {}, "ca"),
        ("/sgx/certification/v4/pckcrl", {"ca": "root"}, "ca"),
        ("/sgx/certification/v4/pckcrl", {"ca": "platform", "encoding": "pem"}, "encoding"),
        ("/sgx/certification/v4/rootcacrl", {"encoding": "base64"}, "encoding"),
    ],
)
def test_bad_parameters_are_400(url: str, params: dict[str, str], field: str, client: TestClient) -> None:
    r = client.get(url, params=params)
    assert r.status_code == 400 and r.json()["field"] == field


# --- POST /attestation/v1/verify ------------------------------------------------------------------


def _verify(
    client: TestClient, services: Services, body: dict[str, object], *perms: str
) -> tuple[int, dict[str, object]]:
    headers = token_headers(services, *(perms or ("attestation:verify",)))
    r = client.post("/attestation/v1/verify", json=body, headers=headers)
    doc: dict[str, object] = r.json()
    return r.status_code, doc


def test_verify_with_stored_collateral(
    client: TestClient, services: Services, store: CollateralStore
) -> None:
    c = case("dcap-tdx-gcp-cos113-2025-06")
    quote = base64.b64encode(read_bytes(c["quote"])).decode()
    code, doc = _verify(client, services, {"quote": quote, "at": c["verify_at"]})
    assert code == 200, doc
    assert doc["verified"] is True and doc["status"] == "UpToDate" and doc["fmspc"] == "00806F050000"
    assert doc["checks"][-1] == "tcb_status" and doc["sim"] is False and "mr_td" in doc["claims"]  # type: ignore[index,operator]
    # the June collateral was chosen (valid then), not the newer October one
    june = verify_quote(
        read_bytes(c["quote"]),
        QuoteCollateral.from_json(read_text(TDX_JUNE)),
        at=datetime.fromtimestamp(c["verify_at"], UTC),
    )
    # RFC 3339 with Z, as every timestamp the API sends
    assert doc["collateral_expiry"] == june.collateral_expiry.isoformat().replace("+00:00", "Z")
    # ISO 8601 and hex work too
    at = datetime.fromtimestamp(c["verify_at"], UTC).isoformat().replace("+00:00", "Z")
    code, doc = _verify(client, services, {"quote": read_bytes(c["quote"]).hex(), "at": at})
    assert code == 200 and doc["at"] == at


def test_verify_with_body_collateral_and_rejections(client: TestClient, services: Services) -> None:
    c = case("dcap-sgx-phala")
    coll = json.loads(read_text(c["collateral"]))
    quote = base64.b64encode(read_bytes(c["quote"])).decode()
    code, doc = _verify(client, services, {"quote": quote, "collateral": coll, "at": c["verify_at"]})
    assert code == 200 and doc["status"] == "ConfigurationAndSWHardeningNeeded"
    assert doc["advisory_ids"] == ["INTEL-SA-00289", "INTEL-SA-00615"]
    flipped = base64.b64encode(read_bytes("tampered/sgx_quote.isv_sig_flip")).decode()
    code, doc = _verify(client, services, {"quote": flipped, "collateral": coll, "at": c["verify_at"]})
    assert (
        code == 400 and doc["check"] == "quote_signature" and doc["title"] == "Evidence verification failed"
    )
    code, doc = _verify(client, services, {"quote": quote, "collateral": coll})  # now: expired long ago
    assert code == 400 and doc["check"] == "validity_window" and "expired" in str(doc["detail"])
    truncated = base64.b64encode(read_bytes("tampered/tdx_quote.truncated")).decode()
    code, doc = _verify(client, services, {"quote": truncated, "collateral": coll})
    assert code == 400 and doc["check"] == "parse"


def test_verify_without_cached_collateral_is_404_naming_the_fmspc(
    client: TestClient, services: Services
) -> None:
    c = case("dcap-sgx-phala")
    quote = base64.b64encode(read_bytes(c["quote"])).decode()
    code, doc = _verify(client, services, {"quote": quote, "at": c["verify_at"]})
    assert code == 404 and "no SGX TCB Info for FMSPC 00A067110000 cached" in str(doc["detail"])


def test_verify_sim_quote_and_report_data(client: TestClient, services: Services) -> None:
    """--dev: the dev PKI's in-memory collateral comes first in the chain."""
    rd = bytes(range(64))
    pki = DevPki.load(services.settings.data_dir / "dev-pki")
    raw = tdx_quote(pki, report_data=rd)
    code, doc = _verify(
        client, services, {"quote": base64.urlsafe_b64encode(raw).decode(), "report_data": rd.hex()}
    )
    assert code == 200 and doc["sim"] is True and doc["report_data"] == rd.hex()
    code, doc = _verify(client, services, {"quote": raw.hex(), "report_data": "00" * 64})
    assert code == 400 and doc["check"] == "report_data"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"quote": "not a quote at all"}, "quote"),
        ({"quote": base64.b64encode(b"\x03\x00\x02\x00" + bytes(60)).decode(), "at": "yesterday"}, "at"),
        (
            {
                "quote": base64.b64encode(b"\x03\x00\x02\x00" + bytes(60)).decode(),
                "at": "2025-01-01T00:00:00",
            },
            "at",
        ),
        (
            {
                "quote": base64.b64encode(b"\x03\x00\x02\x00" + bytes(60)).decode(),
                "collateral": {"tcb_info": 1},
            },
            "collateral",
        ),
        ({"quote": "AAAAAAAA", "extra": 1}, "extra"),
        ({"quote": "03000200" * 4, "report_data": "zz"}, "report_data"),
    ],
)
def test_verify_bad_input_is_400(
    body: dict[str, object], field: str, client: TestClient, services: Services
) -> None:
    code, doc = _verify(client, services, body)
    assert code == 400 and doc["field"] == field, doc


def test_verify_needs_the_permission(client: TestClient, services: Services) -> None:
    assert client.post("/attestation/v1/verify", json={"quote": "AAAA"}).status_code == 401
    code, doc = _verify(client, services, {"quote": "AAAA"}, "keys:search")
    assert code == 403 and doc["permission"] == "attestation:verify"
    # the PCCS endpoints need no token (collateral is public and signed)
    assert client.get("/sgx/certification/v4/tcb", params={"fmspc": "00A067110000"}).status_code == 404
