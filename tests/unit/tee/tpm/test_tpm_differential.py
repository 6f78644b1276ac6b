"""tpm2_checkquote (tpm2-tools) as an independent verifier: over the corpus quotes (GCE, keylime and
the Azure vTPM quotes, whose extraData is taken as the nonce here) and swtpm's, with
byte mutations of the message, the signature, the PCR values and the nonce, keybroker never accepts
what tpm2_checkquote rejects. The unmutated good quotes are accepted by both (so the comparison says
something). keybroker refusing more (SHA-1, PCR selection, AK attributes) is allowed.

RSASSA-PSS quotes are left out: tpm2_checkquote 5.4 rejects every PSS quote libtpms makes (it expects
another salt length than the TPM uses; TPMs use the hash length or the maximum, Part 1 Annex B.7),
so it is no oracle there; swtpm's PSS quotes are checked in test_tpm_swtpm.py."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from tests.helpers.swtpm import Swtpm, SyntheticBoot, tools_pcrs_file
from tests.unit.tee.tpm.corpus import CASES, tpm_case
from tests.vectors.corpus import load_cases, path, read_bytes

from keybroker.errors import EvidenceError
from keybroker.tee.azure.evidence import parse_trustee_evidence
from keybroker.tee.azure.hcl import parse_hcl_report
from keybroker.tee.tpm.abi import TpmSignature, parse_attest
from keybroker.tee.tpm.eventlog import verify_event_log
from keybroker.tee.tpm.verify import verify_quote

pytestmark = pytest.mark.skipif(shutil.which("tpm2_checkquote") is None, reason="tpm2-tools not installed")


@dataclass(frozen=True)
class Input:
    name: str
    message: bytes
    signature: bytes
    ak_file: Path  # PEM or TPM2B_PUBLIC: both tools read both
    ak_bytes: bytes
    nonce: bytes
    pcrs: dict[str, dict[int, bytes]]
    hash_alg: str = "sha256"
    event_log: bytes | None = None


def keybroker_accepts(i: Input) -> bool:
    from tests.unit.tee.tpm.corpus import load_ak

    try:
        q = verify_quote(
            i.message, i.signature, load_ak(i.ak_bytes), pcrs=i.pcrs, expected_extra_data=i.nonce
        )
        if i.event_log is not None:
            verify_event_log(i.event_log, q)
    except EvidenceError:
        return False
    return True


def checkquote_accepts(i: Input, work: Path) -> bool:
    (work / "m").write_bytes(i.message)
    (work / "s").write_bytes(i.signature)
    (work / "p").write_bytes(tools_pcrs_file(i.pcrs))
    args = [
        "tpm2_checkquote",
        "-u",
        str(i.ak_file),
        "-m",
        str(work / "m"),
        "-s",
        str(work / "s"),
        "-g",
        i.hash_alg,
        "-f",
        str(work / "p"),
    ]
    if i.nonce:
        args += ["-q", i.nonce.hex()]
    if i.event_log is not None:
        (work / "e").write_bytes(i.event_log)
        args += ["-e", str(work / "e")]
    return subprocess.run(args, capture_output=True, timeout=30).returncode == 0


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def mutations(i: Input, *, every_message_byte: bool) -> Iterator[Input]:
    positions = range(len(i.message)) if every_message_byte else sorted({0, 4, 6, 10, 40, len(i.message) - 1})
    for at in positions:
        yield replace(i, name=f"{i.name}/message[{at}]", message=flip(i.message, at))
    for at in sorted({0, 2, 5, 6, len(i.signature) // 2, len(i.signature) - 1}):
        yield replace(i, name=f"{i.name}/signature[{at}]", signature=flip(i.signature, at))
    for bank, values in i.pcrs.items():
        for index in sorted(values)[:: max(1, len(values) // 4)]:
            changed = {b: dict(v) for b, v in i.pcrs.items()}
            changed[bank][index] = flip(values[index], 0)
            yield replace(i, name=f"{i.name}/pcrs.{bank}.{index}", pcrs=changed)
    yield replace(i, name=f"{i.name}/nonce", nonce=i.nonce + b"\x00")
    if i.event_log is not None:
        for at in range(0, len(i.event_log), 7):
            yield replace(i, name=f"{i.name}/event_log[{at}]", event_log=flip(i.event_log, at))


def corpus_inputs() -> list[Input]:
    out = []
    for c in CASES:
        if c["expect"]["verdict"] != "accept":
            continue
        t = tpm_case(c)
        out.append(Input(c["id"], t.message, t.signature, path(c["ak_pub"]), t.ak_bytes, t.nonce, t.pcrs))
    return out


def azure_inputs(tmp: Path) -> list[Input]:
    """The Azure vTPM quotes of the corpus: HCLAkPub as PEM, the bare signature as a TPMT_SIGNATURE."""
    out = []
    for c in load_cases("az-vtpm"):
        e = parse_trustee_evidence(read_bytes(c["evidence"]), "snp" if c["hw"].startswith("snp") else "tdx")
        hcl = parse_hcl_report(e.hcl_report)
        pem = hcl.ak_public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        (tmp / f"{c['id']}.pem").write_bytes(pem)
        attest = parse_attest(e.quote)
        signature = TpmSignature.raw_rsassa(e.signature).marshal()
        pcrs = {"sha256": dict(enumerate(e.pcrs))}
        out.append(Input(c["id"], e.quote, signature, tmp / f"{c['id']}.pem", pem, attest.extra_data, pcrs))
    return out


def test_azure_quotes_differential(tmp_path: Path) -> None:
    for i in azure_inputs(tmp_path):
        assert keybroker_accepts(i) and checkquote_accepts(i, tmp_path), i.name
        _sweep(i, tmp_path, every_message_byte=i.name.endswith("evidence-v1"))


EVERY_BYTE = {"tpm-keylime-emulator", "tpm-gce-gce-cos-85-nonce9009-sha1"}


@pytest.mark.parametrize("i", corpus_inputs(), ids=lambda i: i.name)
def test_corpus_differential(i: Input, tmp_path: Path) -> None:
    assert keybroker_accepts(i) and checkquote_accepts(i, tmp_path)
    _sweep(i, tmp_path, every_message_byte=i.name in EVERY_BYTE)


@pytest.fixture(scope="module")
def swtpm_inputs(swtpm: Swtpm, synthetic_boot: SyntheticBoot) -> list[Input]:
    out = []
    for alg, scheme, hash_alg in (
        ("rsa", "rsassa", "sha256"),
        ("rsa", "rsassa", "sha384"),
        ("ecc", "ecdsa", "sha256"),
    ):
        ak = swtpm.create_ak(alg=alg, scheme=scheme, hash_alg=hash_alg)
        nonce = f"{alg}-{scheme}".encode()
        q = swtpm.quote(ak, "sha1:0,16+sha256:0,1,16,23+sha384:16", nonce, hash_alg=hash_alg)
        out.append(
            Input(
                f"swtpm-{alg}-{scheme}-{hash_alg}",
                q.message,
                q.signature,
                ak.pub_path,
                ak.public,
                nonce,
                q.pcrs,
                hash_alg,
            )
        )
    b = synthetic_boot
    out.append(
        Input(
            "swtpm-synthetic-boot",
            b.quote.message,
            b.quote.signature,
            b.ak.pub_path,
            b.ak.public,
            b.nonce,
            b.quote.pcrs,
            event_log=b.log,
        )
    )
    return out


def test_swtpm_differential(swtpm_inputs: list[Input], tmp_path: Path) -> None:
    for i in swtpm_inputs:
        assert keybroker_accepts(i), i.name
        assert checkquote_accepts(i, tmp_path), i.name
        _sweep(i, tmp_path, every_message_byte=True)


def _sweep(i: Input, work: Path, *, every_message_byte: bool) -> None:
    disagreements: list[str] = []
    count = 0
    for m in mutations(i, every_message_byte=every_message_byte):
        count += 1
        if keybroker_accepts(m) and not checkquote_accepts(m, work):
            disagreements.append(m.name)
    assert count > 10
    assert disagreements == [], f"keybroker accepted what tpm2_checkquote rejected: {disagreements}"
