"""``collateral fetch``: retries and backoff against a local PCCS, and one keybroker fetching from another."""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.helpers.loopback_http import Answer, LoopbackHttp
from tests.helpers.postgres import free_port
from tests.helpers.server import Server, keybroker
from tests.vectors.corpus import case, path, read_bytes, read_text
from typer.testing import CliRunner

from keybroker.cli.collateral import app
from keybroker.collateral.fetch import PcsClient, UpstreamUnavailable, fetch_collateral
from keybroker.collateral.items import TrustedRoots
from keybroker.collateral.store import CollateralStore
from keybroker.errors import CollateralError, CollateralNotFound, InvalidInput
from keybroker.store.db import Database
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.sim import DevPki

TDX = "intel-dcap/assembled/tdx_00806F050000_2025-10.json"
FMSPC = "00806F050000"
TCB = "/tdx/certification/v4/tcb"


class FakePccs(LoopbackHttp):
    """A PCCS on loopback (plain HTTP) serving one collateral; ``fail`` injects statuses per path."""

    def __init__(self, collateral: QuoteCollateral) -> None:
        pcs = collateral.to_pcs()
        tee, ca = collateral.tee, collateral.pck_ca
        self.routes: dict[str, tuple[bytes, dict[str, str]]] = {
            f"/{tee}/certification/v4/tcb?fmspc={collateral.fmspc}": (
                pcs["tcb_info_body"].encode(),
                {"TCB-Info-Issuer-Chain": pcs["tcb_info_issuer_chain"]},
            ),
            f"/{tee}/certification/v4/qe/identity": (
                pcs["qe_identity_body"].encode(),
                {"SGX-Enclave-Identity-Issuer-Chain": pcs["qe_identity_issuer_chain"]},
            ),
            f"/sgx/certification/v4/pckcrl?ca={ca}&encoding=der": (
                pcs["pck_crl"],
                {"SGX-PCK-CRL-Issuer-Chain": pcs["pck_crl_issuer_chain"]},
            ),
            "/sgx/certification/v4/rootcacrl": (pcs["root_ca_crl"].hex().encode(), {}),
        }
        self.hits: Counter[str] = Counter()
        #: path -> statuses to answer first, in order (then the real answer)
        self.fail: dict[str, list[int]] = {}
        self.headers: dict[str, str] = {}
        super().__init__(self._answer)

    def _answer(self, path_and_query: str) -> Answer:
        route = urllib.parse.urlsplit(path_and_query)
        self.hits[route.path] += 1
        failures = self.fail.get(route.path)
        if failures:
            return failures.pop(0), b'{"detail": "injected"}', self.headers
        found = self.routes.get(path_and_query)
        if found is None:
            return 404, json.dumps({"detail": f"nothing at {path_and_query}"}).encode(), {}
        return 200, *found


@pytest.fixture
def pccs() -> Iterator[FakePccs]:
    fake = FakePccs(QuoteCollateral.from_json(read_text(TDX)))
    yield fake
    fake.stop()


def _client(url: str, sleeps: list[float], **kw: Any) -> PcsClient:
    return PcsClient(url, sleep=sleeps.append, timeout=5, **kw)


def test_retries_503_twice_then_succeeds(pccs: FakePccs) -> None:
    pccs.fail[TCB] = [503, 503]
    sleeps: list[float] = []
    with _client(pccs.url, sleeps, retries=3, backoff=0.5) as client:
        items, notes = fetch_collateral(client, fmspc=FMSPC.lower(), tees=["tdx"], roots=TrustedRoots())
    assert pccs.hits[TCB] == 3 and sleeps == [0.5, 1.0]  # exponential backoff
    assert [i.label for i in items] == [
        "TCB Info TDX 00806F050000",
        "TD_QE identity",
        "PCK CRL platform",
        "root CA CRL",
    ]
    assert notes == [
        f"no PCK CRL for the processor CA: {pccs.url}/sgx/certification/v4/pckcrl?ca=processor&encoding=der: 404 nothing at /sgx/certification/v4/pckcrl?ca=processor&encoding=der"
    ]
    assert pccs.hits["/sgx/certification/v4/pckcrl"] == 2  # the processor CA's 404 was not retried


def test_404_is_not_retried(pccs: FakePccs) -> None:
    sleeps: list[float] = []
    with (
        _client(pccs.url, sleeps) as client,
        pytest.raises(CollateralNotFound, match="404 nothing at") as exc,
    ):
        fetch_collateral(client, fmspc="00906ED50000", tees=["tdx"], roots=TrustedRoots())
    assert pccs.hits[TCB] == 1 and sleeps == []
    assert "fmspc=00906ED50000" in exc.value.detail


def test_5xx_through_every_retry_honours_retry_after(pccs: FakePccs) -> None:
    pccs.fail[TCB] = [500, 502, 503, 504]
    pccs.headers = {"Retry-After": "3"}
    sleeps: list[float] = []
    with _client(pccs.url, sleeps, retries=3, backoff=0.5, max_backoff=5) as client:
        with pytest.raises(UpstreamUnavailable, match="504 injected \\(after 4 attempts\\)"):
            client.get(TCB, {"fmspc": FMSPC})
    assert pccs.hits[TCB] == 4 and sleeps == [3.0, 3.0, 3.0]


def test_network_errors_are_retried_then_raised() -> None:
    sleeps: list[float] = []
    with _client(f"http://127.0.0.1:{free_port()}", sleeps, retries=2, backoff=0.25) as client:
        with pytest.raises(httpx.TransportError):
            client.get(TCB, {"fmspc": FMSPC})
        assert client.requests == 3 and sleeps == [0.25, 0.5]


def test_a_wrong_answer_is_refused(pccs: FakePccs) -> None:
    sgx = QuoteCollateral.from_json(read_text("intel-dcap/phala-dcap-qvl/sgx_quote_collateral.json")).to_pcs()
    pccs.routes[f"{TCB}?fmspc={FMSPC}"] = (
        sgx["tcb_info_body"].encode(),
        {"TCB-Info-Issuer-Chain": sgx["tcb_info_issuer_chain"]},
    )
    with (
        _client(pccs.url, []) as client,
        pytest.raises(CollateralError, match="got TCB Info SGX 00A067110000"),
    ):
        fetch_collateral(client, fmspc=FMSPC, tees=["tdx"], roots=TrustedRoots())


def test_a_tee_without_its_qe_identity_is_not_stored(pccs: FakePccs) -> None:
    del pccs.routes["/tdx/certification/v4/qe/identity"]
    with (
        _client(pccs.url, []) as client,
        pytest.raises(CollateralNotFound, match="no complete collateral for FMSPC 00806F050000") as exc,
    ):
        fetch_collateral(client, fmspc=FMSPC, tees=["sgx", "tdx"], roots=TrustedRoots())
    assert "TCB Info TDX 00806F050000 not stored: no TD_QE identity of the same root" in exc.value.detail
    assert "no SGX TCB Info: " in exc.value.detail


def test_urls() -> None:
    assert (
        PcsClient("https://pccs.example:8081/sgx/certification/v4/").base_url == "https://pccs.example:8081"
    )
    with pytest.raises(InvalidInput, match="plain http is for loopback only"):
        PcsClient("http://pccs.example:8081")
    with pytest.raises(InvalidInput, match="expected an https:// URL"):
        PcsClient("ftp://pccs.example")


def test_cli_fetch_exit_codes(pccs: FakePccs, tmp_path: Path) -> None:
    runner = CliRunner()
    data = str(tmp_path / "data")
    r = runner.invoke(
        app, ["fetch", "--from", pccs.url, "--fmspc", FMSPC, "--tee", "tdx", "--data-dir", data, "--json"]
    )
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)["added"]) == 4
    r = runner.invoke(
        app, ["fetch", "--from", pccs.url, "--fmspc", "00906ED50000", "--tee", "tdx", "--data-dir", data]
    )
    assert r.exit_code == 1 and "404" in r.output
    pccs.fail[TCB] = [503]
    r = runner.invoke(
        app, ["fetch", "--from", pccs.url, "--fmspc", FMSPC, "--retries", "0", "--data-dir", data]
    )
    assert r.exit_code == 3 and "503" in r.output
    r = runner.invoke(
        app,
        [
            "fetch",
            "--from",
            f"http://127.0.0.1:{free_port()}",
            "--fmspc",
            FMSPC,
            "--retries",
            "0",
            "--data-dir",
            data,
        ],
    )
    assert r.exit_code == 3 and "cannot reach" in r.output
    r = runner.invoke(app, ["fetch", "--from", "http://pccs.example", "--fmspc", FMSPC, "--data-dir", data])
    assert r.exit_code == 2


# --- two real keybroker instances ----------------------------------------------------------------


@pytest.fixture
def two_servers(tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    first = Server(tmp_path / "first" / "data")
    files = [str(path(TDX)), str(path("intel-dcap/assembled/tdx_00806F050000_2025-06.json"))]
    r = keybroker("collateral", "import", *files, "--data-dir", str(first.data_dir))
    assert r.returncode == 0, r.stderr
    first.start()
    (tmp_path / "second").mkdir()
    second = Server(tmp_path / "second" / "data")
    try:
        second.start()
        yield first, second
    finally:
        second.stop()
        first.stop()


def test_second_instance_fetches_from_the_first_and_verifies(two_servers: tuple[Server, Server]) -> None:
    first, second = two_servers
    c = case("dcap-tdx-gcp-cos113-2025-10")
    body = {"quote": base64.b64encode(read_bytes(c["quote"])).decode(), "at": c["verify_at"]}
    minted = keybroker(
        "token", "create", "--data-dir", str(second.data_dir), "--permissions", "attestation:verify"
    )
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    with second.client(token) as http:
        before = http.post("/attestation/v1/verify", json=body)
    assert (
        before.status_code == 404
        and "no TDX TCB Info for FMSPC 00806F050000 cached" in before.json()["detail"]
    )

    fetch = [
        "fetch",
        "--from",
        first.url,
        "--fmspc",
        FMSPC,
        "--tee",
        "tdx",
        "--data-dir",
        str(second.data_dir),
    ]
    runner = CliRunner()
    no_trust = runner.invoke(app, [*fetch, "--retries", "0"])  # the first's CA is not in the system store
    # a certificate problem, not "unreachable": exit 4, naming the URL and what to give
    assert no_trust.exit_code == 4, no_trust.output
    said = " ".join(no_trust.output.split())
    assert f"TLS verification failed for {first.url}: " in said and "--ca-file" in said, said
    unknown = runner.invoke(app, [*fetch[:4], "00906ED50000", *fetch[5:], "--ca-file", str(first.ca)])
    assert unknown.exit_code == 1
    assert "no TDX TCB Info for FMSPC 00906ED50000 cached; cached TCB Info: TDX 00806F050000" in " ".join(
        unknown.output.split()
    )
    # the real thing: the second instance's operator runs `keybroker collateral fetch` against the first
    done = keybroker("collateral", *fetch, "--ca-file", str(first.ca), "--json")
    assert done.returncode == 0, done.stderr
    fetched = json.loads(done.stdout)
    assert [i["label"] for i in fetched["added"]] == [
        "TCB Info TDX 00806F050000",
        "TD_QE identity",
        "PCK CRL platform",
        "root CA CRL",
    ]
    # the first serves its newest pieces (October over June); the second stored exactly those
    first_db = Database(f"sqlite:///{first.data_dir / 'keybroker.db'}")
    newest = CollateralStore(first_db).export_items(fmspc=FMSPC)
    first_db.dispose()
    assert {i["digest"] for i in fetched["added"]} == {e[0].digest for e in newest}

    with second.client(token) as http:
        after = http.post("/attestation/v1/verify", json=body)
    assert after.status_code == 200, after.text
    doc = after.json()
    assert (
        doc["verified"] is True
        and doc["status"] == "UpToDate"
        and doc["fmspc"] == FMSPC
        and doc["sim"] is False
    )


def test_root_ca_crl_from_its_distribution_point(pccs: FakePccs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Intel PCS has no /rootcacrl: the CRL comes from the TCB Signing certificate's distribution
    point (and is verified like everything else)."""
    root_crl = QuoteCollateral.from_json(read_text(TDX)).root_ca_crl
    del pccs.routes["/sgx/certification/v4/rootcacrl"]
    asked: list[str] = []

    def external(self: PcsClient, url: str) -> httpx.Response:
        asked.append(url)
        return httpx.Response(200, content=root_crl)

    monkeypatch.setattr(PcsClient, "get_external", external)
    with _client(pccs.url, []) as client:
        items, notes = fetch_collateral(client, fmspc=FMSPC, tees=["tdx"], roots=TrustedRoots())
    assert asked == ["https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"]
    assert items[-1].kind == "root_ca_crl" and items[-1].crl_der == root_crl
    assert notes[-1] == f"root CA CRL from its distribution point {asked[0]}"


# --- a keybroker holding collateral of two roots ---------------------------------------------------


@pytest.fixture(scope="module")
def mixed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, DevPki]]:
    """A keybroker whose store holds Intel's TDX collateral (platform CA CRL only) and, imported with
    --trust-root, a dev PKI's SGX collateral (processor CA CRL): its PCCS endpoints serve Intel's
    pieces first, and the dev processor CA CRL because it has no Intel one."""
    base = tmp_path_factory.mktemp("mixed")
    pki = DevPki.create(base / "pki")
    server = Server(base / "data")
    for args in (
        [str(path(TDX))],
        [str(pki.collateral_path("sgx")), "--trust-root", str(pki.root_pem_path)],
    ):
        r = keybroker("collateral", "import", *args, "--data-dir", str(server.data_dir))
        assert r.returncode == 0, r.stderr
    server.start()
    try:
        yield server, pki
    finally:
        server.stop()


def _fetch(server: Server, data: Path, *args: str) -> tuple[int, str]:
    r = CliRunner().invoke(
        app,
        [
            "fetch",
            "--from",
            server.url,
            "--ca-file",
            str(server.ca),
            "--data-dir",
            str(data),
            "--retries",
            "0",
            *args,
        ],
    )
    return r.exit_code, r.output


def _stored(data: Path) -> list[dict[str, Any]]:
    if not (data / "keybroker.db").exists():
        return []
    r = CliRunner().invoke(app, ["list", "--data-dir", str(data), "--json"])
    assert r.exit_code == 0, r.output
    items: list[dict[str, Any]] = json.loads(r.output)
    return items


def test_fetch_from_a_mixed_keybroker_skips_the_other_roots_pieces(
    mixed_server: tuple[Server, DevPki], tmp_path: Path
) -> None:
    """Before: the dev PCK CRL failed the whole fetch ("PCK CRL issuer chain ends at keybroker DEV
    SGX Root CA ... not the Intel SGX Root CA"). Now it is skipped with a note."""
    server, _ = mixed_server
    data = tmp_path / "data"
    code, out = _fetch(server, data, "--fmspc", FMSPC, "--tee", "tdx", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert [i["label"] for i in report["added"]] == [
        "TCB Info TDX 00806F050000",
        "TD_QE identity",
        "PCK CRL platform",
        "root CA CRL",
    ]
    assert {i["root"] for i in report["added"]} == {"intel"}
    assert [n for n in report["notes"] if n.startswith("PCK CRL processor skipped: ")] == [
        next(n for n in report["notes"] if "ends at 'keybroker DEV SGX Root CA" in n)
    ]
    assert {i["root"] for i in _stored(data)} == {"intel"}


def test_fetch_with_the_dev_root_trusted_stores_one_root_only(
    mixed_server: tuple[Server, DevPki], tmp_path: Path
) -> None:
    """Before: with --trust-root, the dev PCK CRL was stored beside Intel's TDX collateral."""
    server, pki = mixed_server
    data = tmp_path / "data"
    code, out = _fetch(
        server, data, "--fmspc", FMSPC, "--tee", "tdx", "--trust-root", str(pki.root_pem_path), "--json"
    )
    assert code == 0, out
    notes = json.loads(out)["notes"]
    assert any(
        n.startswith("PCK CRL processor skipped: it chains to the dev root ")
        and n.endswith(
            "the TCB Info to the Intel SGX Root CA (collateral of two roots is never stored together)"
        )
        for n in notes
    ), notes
    stored = _stored(data)
    assert len(stored) == 4 and {i["root"] for i in stored} == {"intel"}


def test_dev_collateral_is_not_completed_with_intels(
    mixed_server: tuple[Server, DevPki], tmp_path: Path
) -> None:
    """Before: the dev TCB Info was stored with Intel's platform CA CRL and root CA CRL (both served
    Intel-first). Now the dev set is incomplete (no dev root CA CRL is served): nothing is stored."""
    server, pki = mixed_server
    data = tmp_path / "data"
    dev_fmspc = pki.platform("sgx").fmspc.hex().upper()
    code, out = _fetch(
        server, data, "--fmspc", dev_fmspc, "--tee", "sgx", "--trust-root", str(pki.root_pem_path)
    )
    flat = " ".join(out.split())
    assert code == 1, out
    assert "has no root CA CRL of the root of the TCB Info" in flat
    assert (
        "PCK CRL platform skipped: it chains to the Intel SGX Root CA, the TCB Info to the dev root" in flat
    )
    assert "root CA CRL skipped: it chains to the Intel SGX Root CA" in flat
    assert _stored(data) == []
    # without --trust-root, the dev TCB Info is refused and the flag suggested
    code, out = _fetch(server, data, "--fmspc", dev_fmspc, "--tee", "sgx")
    flat = " ".join(out.split())
    assert code == 1 and "not the Intel SGX Root CA" in flat and "add --trust-root with its PEM file" in flat
    assert _stored(data) == []
