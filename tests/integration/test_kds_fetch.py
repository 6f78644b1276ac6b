"""``collateral fetch --snp``: from a loopback KDS serving the corpus's real AMD files (and a
simulator's) in AMD's layout, with 429 Retry-After, retries and refusals; and one keybroker
fetching from another's KDS API."""

from __future__ import annotations

import base64
import email.utils
import json
import shutil
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from tests.helpers.loopback_http import Answer, LoopbackHttp
from tests.helpers.postgres import free_port
from tests.helpers.server import Server, keybroker
from tests.helpers.snp_kds import (
    CHAIN_FILES,
    SIM_AT,
    SIM_ISSUED,
    SimKds,
    real_case,
    sim_kds,
)
from tests.vectors.corpus import path, read_bytes
from typer.testing import CliRunner

from keybroker.cli.collateral import app
from keybroker.collateral import kds
from keybroker.collateral.kds_fetch import KdsClient, KdsUnavailable, SnpFetchPlan, fetch_snp_collateral
from keybroker.collateral.kds_store import KdsStore
from keybroker.errors import CollateralError, CollateralNotFound
from keybroker.store.db import Database
from keybroker.tee.sim.snp import RSA_PSS_SHA384
from keybroker.tee.snp.abi import parse_report
from keybroker.tee.snp.certs import amd_roots
from keybroker.tee.snp.verify import verify_report

pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number")

TRUSTEE = "snp-trustee-milan"
CHAIN = "/vcek/v1/Milan/cert_chain"


def _key(path_and_query: str) -> tuple[str, frozenset[tuple[str, str]]]:
    parts = urllib.parse.urlsplit(path_and_query)
    return parts.path, frozenset(urllib.parse.parse_qsl(parts.query))


class FakeKds(LoopbackHttp):
    """A KDS on loopback (plain HTTP): path (with query, any order) -> body; ``fail`` injects statuses."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.routes = {_key(k): v for k, v in files.items()}
        self.hits: Counter[str] = Counter()
        #: path -> statuses to answer first, in order (then the real answer)
        self.fail: dict[str, list[int]] = {}
        self.headers: dict[str, str] = {}
        super().__init__(self._answer)

    def _answer(self, path_and_query: str) -> Answer:
        path, query = _key(path_and_query)
        self.hits[path] += 1
        failures = self.fail.get(path)
        if failures:
            return failures.pop(0), b"Too many requests", self.headers
        body = self.routes.get((path, query))
        if body is None:
            return 404, b"Not Found", {}
        return 200, body, {}

    def serve(self, path: str, body: bytes) -> None:
        self.routes[_key(path)] = body


def _pem(der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = b"\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return b"-----BEGIN CERTIFICATE-----\n" + lines + b"\n-----END CERTIFICATE-----\n"


def _real_files() -> dict[str, bytes]:
    """The corpus's AMD files where AMD's KDS serves them (no CRL: the corpus has none of AMD's)."""
    c = real_case(TRUSTEE)
    ref = kds.report_ref(c.report, product="Milan", where=TRUSTEE)
    assert ref.hwid is not None
    query = urllib.parse.urlencode(kds.vcek_params("Milan", ref.tcb))
    return {
        CHAIN: read_bytes("amd-sev-snp/virtee-sev/cert_chain_milan"),  # ASK, ARK
        "/vlek/v1/Milan/cert_chain": read_bytes("amd-sev-snp/google-go-sev-guest/asvk_ark_milan.pem"),
        f"/vcek/v1/Milan/{ref.hwid.hex()}?{query}": c.signer,
    }


@pytest.fixture
def amd_kds() -> Iterator[FakeKds]:
    fake = FakeKds(_real_files())
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimKds:
    return sim_kds(tmp_path_factory.mktemp("kds-fetch-sim") / "genoa")


def _client(url: str, sleeps: list[float], **kw: Any) -> KdsClient:
    return KdsClient(url, sleep=sleeps.append, timeout=5, **kw)


def _plan(*report_cases: str, products: tuple[Any, ...] = ()) -> SnpFetchPlan:
    refs = tuple(kds.report_ref(real_case(c).report, product="Milan", where=c) for c in report_cases)
    return SnpFetchPlan(products=products, reports=refs)


def _run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.output


def _stored(data: Path) -> list[dict[str, Any]]:
    if not (data / "keybroker.db").exists():
        return []
    code, out = _run("list", "--data-dir", str(data), "--snp", "--json")
    assert code == 0, out
    items: list[dict[str, Any]] = json.loads(out)
    return items


def _lookup(data: Path, case_id: str, *, require_crl: bool = False) -> kds.SnpCollateral:
    db = Database(f"sqlite:///{data / 'keybroker.db'}")
    try:
        c = real_case(case_id)
        return KdsStore(db).collateral_for(
            product=None,
            chip_id=c.chip_id,
            reported_tcb=c.reported_tcb,
            signing_key="vcek",
            at=c.at,
            require_crl=require_crl,
        )
    finally:
        db.dispose()


# --- the client and the fetch, against a loopback KDS -------------------------------------------------


def test_fetch_the_real_vcek_and_chains_a_report_needs(amd_kds: FakeKds) -> None:
    with _client(amd_kds.url, []) as client:
        items, notes = fetch_snp_collateral(client, _plan(TRUSTEE))
    assert [i.label for i in items] == [
        "ASK+ARK Milan",
        "VCEK Milan c38427a30d4c7af9…, TCB bl 3, tee 0, snp 8, ucode 115",
    ]
    assert notes == [f"no VCEK CRL Milan: {amd_kds.url}/vcek/v1/Milan/crl: 404 Not Found"]
    assert amd_kds.hits["/vcek/v1/Milan/crl"] == 1  # a 404 is an answer: not retried
    c = real_case(TRUSTEE)
    assert items[1].content == c.signer and items[1].hwid == c.chip_id


def test_429_retry_after_is_honoured(amd_kds: FakeKds) -> None:
    """AMD's KDS rate-limits: a 429 waits for its Retry-After (seconds or an HTTP date), then retries."""
    amd_kds.fail[CHAIN] = [429, 429]
    amd_kds.headers = {"Retry-After": "3"}
    sleeps: list[float] = []
    with _client(amd_kds.url, sleeps, retries=3, backoff=0.5) as client:
        assert kds.chain_items(client.get(CHAIN))[0].label == "ASK+ARK Milan"
    assert amd_kds.hits[CHAIN] == 3 and sleeps == [3.0, 3.0]
    now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    amd_kds.fail[CHAIN] = [429]
    amd_kds.headers = {"Retry-After": email.utils.format_datetime(now + timedelta(seconds=42), usegmt=True)}
    sleeps.clear()
    with _client(amd_kds.url, sleeps, clock=lambda: now) as client:
        client.get(CHAIN)
    assert sleeps == [42.0]
    # a longer wait than the fetch is willing to sit through is said, with the number, not slept
    amd_kds.fail[CHAIN] = [429]
    amd_kds.headers = {"Retry-After": "600"}
    sleeps.clear()
    with _client(amd_kds.url, sleeps, max_retry_after=120) as client:
        with pytest.raises(
            KdsUnavailable, match="429, Retry-After 600 s, longer than the 120 s this fetch waits"
        ):
            client.get(CHAIN)
    assert sleeps == []
    # rate limited through every retry
    amd_kds.fail[CHAIN] = [429] * 4
    amd_kds.headers = {}
    with _client(amd_kds.url, sleeps, retries=3, backoff=0.25) as client:
        with pytest.raises(KdsUnavailable, match="429 rate limited \\(after 4 attempts\\)"):
            client.get(CHAIN)
    assert sleeps == [0.25, 0.5, 1.0]


def test_5xx_are_retried_and_4xx_are_answers(amd_kds: FakeKds) -> None:
    amd_kds.fail[CHAIN] = [503, 502]
    sleeps: list[float] = []
    with _client(amd_kds.url, sleeps, retries=3, backoff=0.5) as client:
        client.get(CHAIN)
    assert sleeps == [0.5, 1.0]
    amd_kds.fail[CHAIN] = [400]
    with (
        _client(amd_kds.url, sleeps) as client,
        pytest.raises(CollateralError, match="400 Too many requests"),
    ):
        client.get(CHAIN)
    assert amd_kds.hits[CHAIN] == 4
    with _client(amd_kds.url, sleeps) as client, pytest.raises(CollateralNotFound, match="404"):
        client.get("/vcek/v1/Genoa/cert_chain")


def test_unverifiable_or_wrong_answers_are_refused_and_nothing_is_stored(
    amd_kds: FakeKds, sim: SimKds, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    c = real_case(TRUSTEE)
    fetch = ["fetch", "--snp", "--from", amd_kds.url, "--report", str(c.report_path), "--product", "Milan"]
    # A CRL that names AMD's ARK-Milan but is signed by another key
    forged = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(amd_roots()["Milan"].ark.subject)
        .last_update(SIM_ISSUED)
        .next_update(SIM_ISSUED + timedelta(days=7))
        .sign(sim.pki.ark.key, hashes.SHA384(), rsa_padding=RSA_PSS_SHA384)
        .public_bytes(Encoding.DER)
    )
    amd_kds.serve("/vcek/v1/Milan/crl", forged)
    code, out = _run(*fetch, "--data-dir", str(data))
    assert code == 1 and "names ARK-Milan as its issuer but is not signed by its key" in " ".join(out.split())
    assert not (data / "keybroker.db").exists()  # a failed fetch leaves no database behind
    # A chain whose ASK has one changed byte
    del amd_kds.routes[_key("/vcek/v1/Milan/crl")]
    ask, ark = (
        amd_roots()["Milan"].ask.public_bytes(Encoding.DER),
        amd_roots()["Milan"].ark.public_bytes(Encoding.DER),
    )
    tampered = bytearray(ask)
    tampered[-10] ^= 1  # in the signature
    amd_kds.serve(CHAIN, _pem(bytes(tampered)) + _pem(ark))
    code, out = _run(*fetch, "--data-dir", str(data))
    assert code == 1 and f"{amd_kds.url}{CHAIN}:" in " ".join(out.split()) and _stored(data) == []
    # The VLEK chain where the VCEK chain was asked for
    amd_kds.serve(CHAIN, read_bytes("amd-sev-snp/google-go-sev-guest/asvk_ark_milan.pem"))
    code, out = _run(*fetch, "--data-dir", str(data))
    assert code == 1 and "asked for the ASK+ARK Milan chain, got ASVK+ARK Milan" in " ".join(out.split())
    # Another chip's VCEK at this chip's URL
    amd_kds.serve(CHAIN, read_bytes(CHAIN_FILES["Milan"]))  # AMD's combined file: ASK, ARK and ASVK
    code, out = _run(*fetch, "--data-dir", str(data))
    assert code == 1 and "asked for the ASK+ARK Milan chain, got ASK+ARK Milan, ASVK+ARK Milan" in " ".join(
        out.split()
    )
    amd_kds.serve(CHAIN, _real_files()[CHAIN])
    vcek_url = next(k for k in _real_files() if "?" in k)
    amd_kds.serve(vcek_url, real_case("snp-gsg-milan").signer)
    code, out = _run(*fetch, "--data-dir", str(data))
    flat = " ".join(out.split())
    assert (
        code == 1
        and "asked for the VCEK Milan c38427a30d4c7af9…" in flat
        and "got the VCEK Milan 3ac3fe21" in flat
    )
    assert _stored(data) == []


def test_simulator_kds_with_and_without_its_ark_trusted(sim: SimKds, tmp_path: Path) -> None:
    fake = FakeKds(sim.files)
    try:
        data = tmp_path / "data"
        report = tmp_path / "sim-report.bin"
        report.write_bytes(sim.report)
        ark = tmp_path / "ark.pem"
        shutil.copy(sim.ark_pem, ark)
        fetch = ["fetch", "--snp", "--from", fake.url, "--report", str(report), "--data-dir", str(data)]
        code, out = _run(*fetch)
        flat = " ".join(out.split())
        assert code == 1 and "comes with ARK-Genoa" in flat and "add --trust-root with its PEM file" in flat
        assert _stored(data) == []
        code, out = _run(*fetch, "--trust-root", str(ark), "--json")
        assert code == 0, out
        added = json.loads(out)["added"]
        assert sorted(i["label"] for i in added) == sorted(
            ["ASK+ARK Genoa", "VCEK CRL Genoa"] + [next(i["label"] for i in added if i["kind"] == "snp_vcek")]
        )
        assert {i["root"] for i in added} == {"dev"}
        # The lookup is complete (CRL included) and verifies the simulator's report as a dev root's
        db = Database(f"sqlite:///{data / 'keybroker.db'}")
        try:
            unverified = parse_report(sim.report)
            got = KdsStore(db).collateral_for(
                product="Genoa",
                chip_id=unverified.chip_id,
                reported_tcb=unverified.reported_tcb,
                signing_key="vcek",
                at=SIM_AT,
            )
        finally:
            db.dispose()
        ok = verify_report(
            sim.report,
            vcek_or_vlek=got.vcek or b"",
            chain=got.chain,
            crls=got.crls,
            at=SIM_AT,
            dev_roots=[sim.pki.root_cert],
            require_crl=True,
        )
        assert ok.sim and len(got.crls) == 1
        # Again with the product: both sides' chains and CRLs; the cached VCEK is not asked for again
        vcek_path = next(urllib.parse.urlsplit(k).path for k in sim.files if "?" in k)
        before = fake.hits[vcek_path]
        code, out = _run(*fetch, "--trust-root", str(ark), "--product", "Genoa", "--json")
        assert code == 0, out
        doc = json.loads(out)
        assert sorted(i["label"] for i in doc["added"]) == ["ASVK+ARK Genoa", "VLEK CRL Genoa"]
        assert any(n.endswith("already cached, not fetched again") for n in doc["notes"])
        assert fake.hits[vcek_path] == before
    finally:
        fake.stop()


def test_cli_fetch_usage_and_exit_codes(amd_kds: FakeKds, tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    c = real_case(TRUSTEE)
    code, out = _run(
        "fetch", "--snp", "--from", amd_kds.url, "--report", str(c.report_path), "--data-dir", data
    )
    assert code == 2 and "a version 2 report does not name its product: give --product" in " ".join(
        out.split()
    )
    for args, message in (
        (["--snp", "--fmspc", "00806F050000"], "--fmspc and --tee are for Intel collateral"),
        (["--product", "Milan"], "--product and --report go with --snp"),
        (["--snp", "--product", "Rome"], "--product 'Rome': expected Milan, Genoa or Turin"),
        (["--snp", "--from", "http://kds.example"], "plain http is for loopback only"),
        (["--fmspc", "00806F050000"], "--from is required"),
    ):
        code, out = _run("fetch", *args, "--data-dir", data)
        assert code == 2 and message in " ".join(out.split()), (args, out)
    amd_kds.fail[CHAIN] = [503]
    code, out = _run(
        "fetch", "--snp", "--from", amd_kds.url, "--product", "Milan", "--retries", "0", "--data-dir", data
    )
    assert code == 3 and "503" in out
    code, out = _run(
        "fetch",
        "--snp",
        "--from",
        f"http://127.0.0.1:{free_port()}",
        "--product",
        "Milan",
        "--retries",
        "0",
        "--data-dir",
        data,
    )
    assert code == 3 and "cannot reach" in out
    # Nothing of Genoa anywhere: a fetch that finds nothing fails
    code, out = _run("fetch", "--snp", "--from", amd_kds.url, "--product", "Genoa", "--data-dir", data)
    assert code == 1 and "has none of it" in out
    # The report's VCEK is what was asked for: its 404 fails the fetch (and stores nothing)
    amd_kds.routes = {k: v for k, v in amd_kds.routes.items() if not k[1]}
    code, out = _run(
        "fetch",
        "--snp",
        "--from",
        amd_kds.url,
        "--report",
        str(c.report_path),
        "--product",
        "Milan",
        "--data-dir",
        data,
    )
    assert code == 1 and "404" in out and _stored(Path(data)) == []


def test_fetched_real_collateral_verifies_the_report(amd_kds: FakeKds, tmp_path: Path) -> None:
    data = tmp_path / "data"
    c = real_case(TRUSTEE)
    code, out = _run(
        "fetch",
        "--snp",
        "--from",
        amd_kds.url,
        "--report",
        str(c.report_path),
        "--product",
        "Milan",
        "--data-dir",
        str(data),
    )
    assert code == 0, out
    flat = " ".join(out.split())
    assert "3 added, 0 already stored" in flat and "note: no VCEK CRL Milan" in flat
    got = _lookup(data, TRUSTEE)
    # a real report: the corpus keeps no AMD CRL of its time (the lookup above waived it too)
    verify_report(
        c.report, vcek_or_vlek=got.vcek or b"", chain=got.chain, crls=got.crls, at=c.at, require_crl=False
    )
    with pytest.raises(CollateralNotFound, match="no VCEK CRL Milan"):
        _lookup(data, TRUSTEE, require_crl=True)


# --- two real keybroker instances ----------------------------------------------------------------


@pytest.fixture
def first(tmp_path: Path, sim: SimKds) -> Iterator[Server]:
    """A keybroker whose KDS cache holds AMD's Milan chains and the real reports' VCEKs, and a
    simulator's Genoa set (imported with its ARK trusted)."""
    server = Server(tmp_path / "first" / "data")
    vceks = [str(path(real_case(c).signer_path)) for c in ("snp-trustee-milan", "snp-gsg-milan")]
    r = keybroker(
        "collateral", "import", str(path(CHAIN_FILES["Milan"])), *vceks, "--data-dir", str(server.data_dir)
    )
    assert r.returncode == 0, r.stderr
    sim_dir = tmp_path / "sim"
    sim_dir.mkdir()
    for name, body in sim.files.items():
        (sim_dir / (name.strip("/").replace("/", "_").split("?")[0])).write_bytes(body)
    r = keybroker(
        "collateral",
        "import",
        *[str(p) for p in sorted(sim_dir.iterdir()) if not p.name.endswith("crl")],
        "--trust-root",
        str(sim.ark_pem),
        "--data-dir",
        str(server.data_dir),
    )
    assert r.returncode == 0, r.stderr
    for side in ("vcek", "vlek"):
        r = keybroker(
            "collateral", "import", str(sim_dir / f"{side}_v1_Genoa_crl"), "--crl-for", side,
            "--trust-root", str(sim.ark_pem), "--data-dir", str(server.data_dir),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_second_instance_fetches_from_the_first_and_serves_it_too(
    first: Server, sim: SimKds, tmp_path: Path
) -> None:
    c = real_case(TRUSTEE)
    second = Server(tmp_path / "second" / "data")
    # the KDS URL from the configuration (collateral.kds_url), not --from
    env = {"KEYBROKER_COLLATERAL_KDS_URL": first.url}
    fetch = [
        "collateral",
        "fetch",
        "--snp",
        "--report",
        str(c.report_path),
        "--product",
        "Milan",
        "--data-dir",
        str(second.data_dir),
    ]
    no_trust = keybroker(*fetch, "--retries", "0", env=env)
    assert no_trust.returncode == 4 and f"TLS verification failed for {first.url}" in " ".join(
        no_trust.stderr.split()
    )
    done = keybroker(*fetch, "--ca-file", str(first.ca), "--json", env=env)
    assert done.returncode == 0, done.stderr
    fetched = json.loads(done.stdout)
    assert sorted(i["label"] for i in fetched["added"]) == [
        "ASK+ARK Milan",
        "ASVK+ARK Milan",
        "VCEK Milan c38427a30d4c7af9…, TCB bl 3, tee 0, snp 8, ucode 115",
    ]
    # the first has no AMD CRL (the corpus has none): the 404 explains itself, and is a note
    assert any(
        "no VCEK CRL Milan cached; cached CRLs: VCEK CRL Genoa (dev root)" in n for n in fetched["notes"]
    )
    got = _lookup(second.data_dir, TRUSTEE)
    verified = verify_report(  # no AMD CRL in the corpus, as the note says
        c.report, vcek_or_vlek=got.vcek or b"", chain=got.chain, at=c.at, require_crl=False
    )
    assert verified.root == "amd"
    # the simulator's set: only with its ARK trusted, and then complete with both CRLs
    sim_fetch = [
        "collateral",
        "fetch",
        "--snp",
        "--from",
        first.url,
        "--ca-file",
        str(first.ca),
        "--product",
        "Genoa",
    ]
    refused = keybroker(*sim_fetch, "--data-dir", str(second.data_dir))
    assert refused.returncode == 1 and "--trust-root" in refused.stderr
    ok = keybroker(*sim_fetch, "--trust-root", str(sim.ark_pem), "--data-dir", str(second.data_dir), "--json")
    assert ok.returncode == 0, ok.stderr
    assert sorted(i["label"] for i in json.loads(ok.stdout)["added"]) == [
        "ASK+ARK Genoa",
        "ASVK+ARK Genoa",
        "VCEK CRL Genoa",
        "VLEK CRL Genoa",
    ]
    # and the second serves what it fetched, byte for byte (a mirror of a mirror)
    second.start()
    try:
        with second.client() as http:
            ref = kds.report_ref(c.report, product="Milan", where=TRUSTEE)
            assert ref.hwid is not None
            vcek = http.get(kds.vcek_path("Milan", ref.hwid), params=kds.vcek_params("Milan", ref.tcb))
            assert vcek.status_code == 200 and vcek.content == c.signer
            assert http.get("/vlek/v1/Genoa/crl").content == sim.pki.crl("vlek")
    finally:
        second.stop()
