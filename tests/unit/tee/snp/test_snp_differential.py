"""Differential test against an independent verifier: @tinfoilsh/verifier (npm, pure JavaScript).

It is installed with ``npm ci`` from the pinned ``tinfoil/package-lock.json`` into a cache directory
(``$KEYBROKER_TEST_CACHE``, default ``~/.cache/keybroker-tests``), once; ``tinfoil/harness.mjs`` runs its
cryptographic and binding steps (see there). Without node/npm or the registry the tests skip, saying
why; with ``KEYBROKER_REQUIRE_DIFFERENTIAL=1`` they fail instead.

What it supports: Genoa reports signed by a VCEK (it pins only AMD's Genoa ARK/ASK and refuses VLEKs;
it reads version 2 reports as Genoa). Of the corpus, that is the Azure Genoa report; every other real
report is outside it, and the test checks that it refuses those for that reason and no other.
The property: a report keybroker accepts and it rejects is a failure. Among the one-byte mutants
of the Genoa report it accepts 48 that keybroker refuses (the unsigned upper bytes of R and S; see
``test_mutants_of_the_genoa_report``): pinned here, so a change on either side shows.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.unit.tee.snp.conftest import CORPUS_AT, RealReport, real_reports

from keybroker.errors import EvidenceError
from keybroker.tee.snp import verify_report

# AMD's VCEKs and VLEKs have serial number 0: cryptography warns (keybroker silences it outside pytest).
pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number")

HERE = Path(__file__).resolve().parent / "tinfoil"
VERSION = "1.1.0"
REAL = {r.name: r for r in real_reports()}
GENOA = "azure-evidence-genoa-v3"


def _fail_or_skip(reason: str) -> None:
    if os.environ.get("KEYBROKER_REQUIRE_DIFFERENTIAL") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def tinfoil() -> Path:
    """A directory with @tinfoilsh/verifier installed (pinned lockfile), or skip saying why."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _fail_or_skip("node and npm are needed for the @tinfoilsh/verifier differential test")
    cache = Path(os.environ.get("KEYBROKER_TEST_CACHE", Path.home() / ".cache" / "keybroker-tests"))
    target = cache / f"tinfoilsh-verifier-{VERSION}"
    marker = target / "node_modules" / "@tinfoilsh" / "verifier" / "package.json"
    lock = (HERE / "package-lock.json").read_bytes()
    if not marker.exists() or (target / "package-lock.json").read_bytes() != lock:
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(HERE / "package.json", target / "package.json")
        shutil.copy(HERE / "package-lock.json", target / "package-lock.json")
        done = subprocess.run(
            [str(npm), "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=target,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0 or not marker.exists():
            _fail_or_skip(f"npm ci of @tinfoilsh/verifier@{VERSION} failed: {done.stderr.strip()[-600:]}")
    if json.loads(marker.read_text())["version"] != VERSION:
        _fail_or_skip(f"{marker} is not version {VERSION}")
    return target


@dataclass(frozen=True)
class Verdict:
    ok: bool
    error: str | None


def run_tinfoil(tinfoil: Path, reports: dict[str, tuple[bytes, bytes]], at_ms: int) -> dict[str, Verdict]:
    cases = [
        {"id": key, "report": base64.b64encode(report).decode(), "vcek": base64.b64encode(vcek).decode()}
        for key, (report, vcek) in reports.items()
    ]
    done = subprocess.run(
        ["node", str(HERE / "harness.mjs")],
        input=json.dumps({"dir": str(tinfoil), "at": at_ms, "cases": cases}),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["id"] for line in lines] == list(reports)
    return {line["id"]: Verdict(line["ok"], line["error"]) for line in lines}


def _keybroker_accepts(real: RealReport, report: bytes) -> bool:
    try:
        # no AMD CRL of CORPUS_AT is vendored; the other verifier checks none either
        verify_report(report, vcek_or_vlek=real.signer, at=CORPUS_AT, require_crl=False)
    except EvidenceError:
        return False
    return True


AT_MS = int(CORPUS_AT.timestamp() * 1000)


def test_real_reports(tinfoil: Path) -> None:
    verdicts = run_tinfoil(tinfoil, {k: (r.report, r.signer) for k, r in REAL.items()}, AT_MS)
    for name, real in REAL.items():
        assert _keybroker_accepts(real, real.report), name
    # The report both support: both accept.
    assert verdicts[GENOA] == Verdict(True, None)
    # The others are outside what it supports, and it says so (not a signature or chain failure).
    unsupported = (
        'Product name must be "Genoa"',
        "only supports AMD EPYC Genoa",
        "only supports VCEK-signed",
    )
    for name, verdict in verdicts.items():
        if name != GENOA:
            assert not verdict.ok and verdict.error is not None, name
            assert any(u in verdict.error for u in unsupported), (name, verdict.error)


def test_its_clock_is_the_verification_time(tinfoil: Path) -> None:
    """The harness pins its clock: after the Genoa VCEK's notAfter (2032-01-24) both refuse."""
    real = REAL[GENOA]
    late = CORPUS_AT.replace(year=2033)
    verdict = run_tinfoil(tinfoil, {GENOA: (real.report, real.signer)}, int(late.timestamp() * 1000))[GENOA]
    assert not verdict.ok and verdict.error is not None and "VCEK certificate has expired" in verdict.error
    with pytest.raises(EvidenceError):
        verify_report(real.report, vcek_or_vlek=real.signer, at=late, require_crl=False)


def test_mutants_of_the_genoa_report(tinfoil: Path) -> None:
    """Every one-byte change of the Genoa report: keybroker refuses each; the other verifier refuses
    each one except changes to the upper 24 bytes of R and S.

    Those 48 bytes are outside the signed data and AMD's format requires them to be zero (R and S
    are 48-byte P-384 values zero-extended to 72); @tinfoilsh/verifier 1.1.0 reads R and S as 72-byte
    integers and truncates them to 48 bytes without checking (``sev/verify.js`` bigIntToFixedBytes),
    so a report with anything in those bytes still verifies there: 48 unauthenticated bytes and
    2^384 encodings of one report. keybroker rejects them (``abi``: signature.r / signature.s).
    """
    real = REAL[GENOA]
    mutants: dict[str, tuple[bytes, bytes]] = {}
    for offset in range(0x4A0):
        raw = bytearray(real.report)
        raw[offset] ^= 0x01 if offset % 2 else 0x80
        mutants[f"{offset:03x}"] = (bytes(raw), real.signer)
    verdicts = run_tinfoil(tinfoil, mutants, AT_MS)
    ours = {key: _keybroker_accepts(real, report) for key, (report, _) in mutants.items()}
    # The property: nothing keybroker accepts is rejected by the independent verifier.
    assert [key for key, ok in ours.items() if ok and not verdicts[key].ok] == []
    assert not any(ours.values())
    # Where they differ, it is only the unsigned upper halves of R and S, which it does not check.
    lenient = {int(key, 16) for key, v in verdicts.items() if v.ok}
    assert lenient == set(range(0x2D0, 0x2E8)) | set(range(0x318, 0x330))
