"""``keybroker policy snp-measure``: the launch measurement from the firmware, checked against the
sev-snp-measure package's own command line, turned into a policy that admits exactly that guest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers.sim_evidence import SimSnpEvidence
from typer.testing import CliRunner

from keybroker.appraisal import secl
from keybroker.appraisal.policy import TransferPolicyBody
from keybroker.cli.main import app

#: Debian's OVMF (package ovmf; scripts/install-system-deps.sh installs it).
OVMF = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
pytestmark = pytest.mark.skipif(not OVMF.is_file(), reason="Debian's ovmf package is not installed")
runner = CliRunner()
_SEV_SNP_MEASURE = Path(sys.executable).with_name("sev-snp-measure")


def _ours(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["policy", "snp-measure", *args])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("vcpus", "vcpu_type", "vmm"),
    [
        ("1", "EPYC-v4", "qemu"),
        ("4", "EPYC-Milan", "qemu"),
        ("2", "EPYC-Genoa", "ec2"),
        ("8", "EPYC-Turin", "gce"),
    ],
)
def test_the_measurement_is_sev_snp_measures(vcpus: str, vcpu_type: str, vmm: str) -> None:
    code, out = _ours("--ovmf", str(OVMF), "--vcpus", vcpus, "--vcpu-type", vcpu_type, "--vmm-type", vmm)
    assert code == 0, out
    theirs = subprocess.run(
        [str(_SEV_SNP_MEASURE), "--mode", "snp", "--ovmf", str(OVMF), "--vcpus", vcpus]
        + ["--vcpu-type", vcpu_type, "--vmm-type", {"qemu": "QEMU"}.get(vmm, vmm), "--output-format", "hex"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.strip() == theirs.stdout.strip() and len(bytes.fromhex(out.strip())) == 48


def test_the_measurement_changes_with_each_input() -> None:
    seen = set()
    for args in (
        ["--vcpus", "1", "--vcpu-type", "EPYC-Milan"],
        ["--vcpus", "2", "--vcpu-type", "EPYC-Milan"],
        ["--vcpus", "1", "--vcpu-type", "EPYC-Genoa"],
        ["--vcpus", "1", "--vcpu-type", "EPYC-Milan", "--guest-features", "0x21"],
    ):
        code, out = _ours("--ovmf", str(OVMF), *args)
        assert code == 0, out
        seen.add(out.strip())
    assert len(seen) == 4


def test_the_policy_it_prints_admits_exactly_that_guest(tmp_path: Path) -> None:
    code, out = _ours("--ovmf", str(OVMF), "--vcpus", "2", "--vcpu-type", "EPYC-Genoa", "--json")
    assert code == 0, out
    doc = json.loads(out)
    measurement = bytes.fromhex(doc["snp"]["attributes"]["measurement"][0])
    policy = TransferPolicyBody.model_validate({**doc, "allow_simulated": True})
    sim = SimSnpEvidence(tmp_path)
    booted = sim.verify(measurement=measurement)
    assert secl.evaluate(policy, booted, client_permissions=None, policy_id="p").allowed
    other = sim.verify()
    assert not secl.evaluate(policy, other, client_permissions=None, policy_id="p").allowed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--vcpus", "1", "--vcpu-type", "EPYC-Nova"], "--vcpu-type 'EPYC-Nova' is not one of"),
        (["--vcpus", "0", "--vcpu-type", "EPYC-v4"], "--vcpus 0 is not 1..512"),
        (["--vcpus", "1", "--vcpu-type", "EPYC-v4", "--vmm-type", "xen"], "--vmm-type 'xen'"),
        (["--vcpus", "1", "--vcpu-type", "EPYC-v4", "--append", "quiet"], "with --kernel (direct boot) only"),
        (["--vcpus", "1", "--vcpu-type", "EPYC-v4", "--guest-features", "one"], "invalid literal"),
        # Debian's OVMF has no hashes table: direct boot needs an AmdSev build, and says so
        (["--vcpus", "1", "--vcpu-type", "EPYC-v4", "--kernel", str(OVMF)], "SNP_KERNEL_HASHES"),
    ],
)
def test_usage_errors(args: list[str], message: str) -> None:
    code, out = _ours("--ovmf", str(OVMF), *args)
    assert code == 2 and message in out, out


def test_firmware_that_is_not_ovmf(tmp_path: Path) -> None:
    junk = tmp_path / "not-ovmf.fd"
    junk.write_bytes(b"\x00" * 4096)
    code, out = _ours("--ovmf", str(junk), "--vcpus", "1", "--vcpu-type", "EPYC-v4")
    assert code == 2 and "sev-snp-measure could not measure" in out, out
