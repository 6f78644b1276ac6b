"""tpm2_checkquote against keybroker's whole TPM path, as ``keybroker evidence verify --tee tpm`` runs
it: the files made into keybroker's TPM evidence document (``cli.evidence_tpm``), the ``tpm`` plugin
behind the one ``Verifier`` (AK trust, the certificate chain for the GCE quotes, the event log, the
nonce as the report data). Over the corpus and swtpm quotes and their mutations (quote, signature,
PCR values, nonce, event log, and the AK's public area), keybroker never accepts what
tpm2_checkquote rejects, and both accept the originals."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.unit.tee.tpm.corpus import CASES
from tests.unit.tee.tpm.test_tpm_differential import (
    Input,
    checkquote_accepts,
    corpus_inputs,
    flip,
    mutations,
    swtpm_inputs,  # noqa: F401 - the fixture
)
from tests.vectors.corpus import read_bytes

from keybroker.appraisal.registry import REGISTRY
from keybroker.cli.evidence_tpm import CliInputError, tpm_cli_evidence, tpm_cli_trust
from keybroker.errors import EvidenceError
from keybroker.tee.trust import EvidenceTrust

pytestmark = [
    pytest.mark.skipif(shutil.which("tpm2_checkquote") is None, reason="tpm2-tools not installed"),
    pytest.mark.filterwarnings("ignore:Attribute.s length:UserWarning"),  # GCE CNs exceed 64
]
AT = datetime(2025, 6, 1, tzinfo=UTC)
CERTS = {c["id"]: c for c in CASES if "ak_cert" in c}


def keybroker_accepts(i: Input) -> bool:
    c = CERTS.get(i.name.split("/", 1)[0])
    ak_cert = read_bytes(c["ak_cert"]) if c else None
    ak_ca = [read_bytes(p) for p in c["ak_ca"]] if c else []
    try:
        evidence = tpm_cli_evidence(
            quote=i.message,
            signature=i.signature,
            ak=i.ak_bytes,
            pcrs=_pcr_json(i),
            ak_cert=ak_cert,
            ak_ca=ak_ca,
            event_log=i.event_log,
        )
        verifier = REGISTRY.verifier(tpm_cli_trust(EvidenceTrust(), ak_ca))
        verifier.verify("tpm", evidence, i.nonce, at=AT)
    except (EvidenceError, CliInputError):
        return False
    return True


def _pcr_json(i: Input) -> bytes:
    import json

    return json.dumps(
        {bank: {str(k): v.hex() for k, v in values.items()} for bank, values in i.pcrs.items()}
    ).encode()


def _ak_mutations(i: Input) -> list[Input]:
    """The AK's TPM2B_PUBLIC (or PEM) changed: another key, other attributes, another scheme."""
    out = []
    for at in sorted({2, 4, 6, 8, 10, len(i.ak_bytes) // 2, len(i.ak_bytes) - 1}):
        if not i.ak_bytes.startswith(b"-----BEGIN"):
            out.append(replace(i, name=f"{i.name}/ak[{at}]", ak_bytes=flip(i.ak_bytes, at)))
    return out


def _sweep(i: Input, work: Path, *, every_message_byte: bool) -> None:
    disagreements: list[str] = []
    count = 0
    for m in [*mutations(i, every_message_byte=every_message_byte), *_ak_mutations(i)]:
        count += 1
        if keybroker_accepts(m):
            ak_file = work / "ak"
            ak_file.write_bytes(m.ak_bytes)
            if not checkquote_accepts(replace(m, ak_file=ak_file), work):
                disagreements.append(m.name)
    assert count > 10
    assert disagreements == [], f"keybroker accepted what tpm2_checkquote rejected: {disagreements}"


@pytest.mark.parametrize("i", corpus_inputs(), ids=lambda i: i.name)
def test_corpus_through_the_plugin(i: Input, tmp_path: Path) -> None:
    assert keybroker_accepts(i) and checkquote_accepts(i, tmp_path)
    _sweep(i, tmp_path, every_message_byte=i.name == "tpm-gce-gce-cos-85-nonce9009-sha256")


def test_swtpm_through_the_plugin(swtpm_inputs: list[Input], tmp_path: Path) -> None:  # noqa: F811
    for i in swtpm_inputs:
        assert keybroker_accepts(i), i.name
        assert checkquote_accepts(i, tmp_path), i.name
        _sweep(i, tmp_path, every_message_byte=i.name == "swtpm-synthetic-boot")
