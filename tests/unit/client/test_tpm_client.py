"""The workload client's TPM code against a real swtpm: ``--tpm`` settings, TPM evidence whose
extraData is exactly what was asked, an AK kept at its handle across runs, and the Azure vTPM
provider reading the HCL report (a real Azure one: swtpm's NV indexes are too small for it, so
that one read returns its bytes) and quoting with the AK at 0x81000003 into Trustee's JSON: the
broker verifies its SEV-SNP report and the binding to the runtime data for real, then refuses the
quote, since swtpm's AK is not that VM's HCLAkPub."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers.swtpm import MISSING, SKIP_REASON, Swtpm
from tests.vectors.corpus import read_bytes

from keybroker.appraisal.registry import REGISTRY
from keybroker.cli.client_common import provider, tpm_settings
from keybroker.client.tpm import AZURE_AK_HANDLE, AZURE_HCL_NV, AzureVtpmProvider, TpmProvider, TpmTools
from keybroker.errors import InvalidInput, VerificationError
from keybroker.tee.tpm.evidence import parse_tpm_evidence
from keybroker.tee.trust import EvidenceTrust

pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")


@pytest.fixture(scope="module")
def swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swtpm]:
    if MISSING:
        pytest.skip(SKIP_REASON)
    with Swtpm(tmp_path_factory.mktemp("client-tpm")) as tpm:
        yield tpm


def _tools(swtpm: Swtpm, tmp_path: Path) -> TpmTools:
    return TpmTools(swtpm.env["TPM2TOOLS_TCTI"], work=tmp_path)


def test_tpm_settings_are_checked() -> None:
    assert tpm_settings(["ak-cert=a", "ak-cert=b", "pcrs=sha256:7"]) == {
        "ak-cert": ["a", "b"],
        "pcrs": ["sha256:7"],
    }
    for bad in (["nope=1"], ["pcrs"], ["pcrs=a", "pcrs=b"]):
        with pytest.raises(InvalidInput):
            tpm_settings(bad)
    with pytest.raises(InvalidInput, match="--tpm is for --tee tpm"):
        provider("tdx", None, None, Path("/"), ["pcrs=sha256:7"])
    with pytest.raises(InvalidInput, match="for --tee az-snp-vtpm"):
        provider("tpm", None, None, Path("/"), ["vcek=x"])


def test_tpm_evidence_carries_exactly_the_extra_data(swtpm: Swtpm, tmp_path: Path) -> None:
    tools = _tools(swtpm, tmp_path)
    handle = "0x81010040"
    first = tools.ensure_ak(tools.ek(), handle)
    assert tools.ensure_ak(tools.ek(), handle) == first  # kept, not made again
    p = TpmProvider(tools, ak_handle=handle, selection="sha256:0,16+sha1:16")
    for extra in (b"x", bytes(range(32)), bytes(48)):
        e = p.evidence(extra)
        parsed = parse_tpm_evidence(e.quote)
        assert parsed.attest.extra_data == extra and parsed.ak_public is not None
        assert set(parsed.pcrs) == {"sha256", "sha1"} and set(parsed.pcrs["sha256"]) == {0, 16}
    with pytest.raises(InvalidInput):
        p.evidence(bytes(65))


def test_nv_read_returns_the_index(swtpm: Swtpm, tmp_path: Path) -> None:
    data = bytes(range(256)) * 8  # 2048 bytes: swtpm's largest NV index
    blob = tmp_path / "nv.bin"
    blob.write_bytes(data)
    index = "0x01400010"
    swtpm.run(
        "tpm2_nvdefine",
        index,
        "-C",
        "o",
        "-s",
        str(len(data)),
        "-a",
        "ownerread|ownerwrite|authread|authwrite",
    )
    swtpm.run("tpm2_nvwrite", index, "-C", "o", "-i", str(blob))
    assert _tools(swtpm, tmp_path).nv_read(index) == data


class _AzureNv(TpmTools):
    """swtpm's NV indexes hold at most 2048 bytes and Azure's HCL report index 2600: this one index
    is read from the real report's bytes; every other command goes to the TPM."""

    def __init__(self, tcti: str, work: Path, hcl: bytes) -> None:
        super().__init__(tcti, work=work)
        self.hcl = hcl

    def nv_read(self, index: str) -> bytes:
        return self.hcl if index == AZURE_HCL_NV else super().nv_read(index)


def test_azure_provider_reads_the_hcl_report_and_quotes(swtpm: Swtpm, tmp_path: Path) -> None:
    doc = json.loads(read_bytes("azure-vtpm/coco-trustee/az-snp-vtpm/evidence-v1.json"))
    hcl = base64.urlsafe_b64decode(doc["hcl_report"])
    vcek = base64.urlsafe_b64decode(doc["vcek"])
    tools = _AzureNv(swtpm.env["TPM2TOOLS_TCTI"], tmp_path, hcl)
    tools.ensure_ak(tools.ek(), AZURE_AK_HANDLE)  # stands in for the paravisor's AK
    p = AzureVtpmProvider(tools, "az-snp-vtpm", vcek=vcek)
    e = p.evidence(b"challenge")
    sent = json.loads(e.quote)
    assert sent["version"] == 1 and base64.urlsafe_b64decode(sent["hcl_report"]) == hcl
    assert len(sent["tpm_quote"]["pcrs"]) == 24 and len(bytes.fromhex(sent["tpm_quote"]["signature"])) == 256
    verifier = REGISTRY.verifier(EvidenceTrust(snp_require_crl=False))  # the corpus has no AMD CRL
    assert verifier.detect([e.quote]) == ("az-snp-vtpm", e.quote)
    with pytest.raises(VerificationError) as info:
        verifier.verify("az-snp-vtpm", e.quote, b"challenge")
    # the SEV-SNP report, its VMPL and the runtime data's hash all verified; HCLAkPub did not sign this quote
    assert info.value.check == "signature"
