"""``keybroker policy snp-measure``: the launch measurement an SEV-SNP guest will have, before it boots.

The calculation is the ``sev-snp-measure`` package's (virtee/sev-snp-measure, pinned in
pyproject.toml): the firmware's pages (OVMF), the kernel/initrd/command-line hashes table that OVMF
measures for direct boot, and one VMSA per vCPU for the given CPU signature and VMM. keybroker only
checks the inputs and turns the digest into a policy's ``snp`` section, so that a key's transfer
policy can be written from the build artifacts rather than copied from a first boot.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Final, Optional

import typer
from sevsnpmeasure import guest  # type: ignore[import-untyped]
from sevsnpmeasure.sev_mode import SevMode  # type: ignore[import-untyped]
from sevsnpmeasure.vcpu_types import CPU_SIGS  # type: ignore[import-untyped]
from sevsnpmeasure.vmm_types import VMMType  # type: ignore[import-untyped]

from keybroker.cli.common import EXIT_USAGE, fail, handle_errors

__all__ = ["VMM_TYPES", "snp_measurement", "snp_measure"]

#: VMMs whose VMSA layouts sev-snp-measure knows.
VMM_TYPES: Final = {"qemu": VMMType.QEMU, "ec2": VMMType.ec2, "gce": VMMType.gce}
_MAX_VCPUS: Final = 512


def snp_measurement(
    *,
    ovmf: Path,
    vcpus: int,
    vcpu_type: str,
    kernel: Path | None = None,
    initrd: Path | None = None,
    append: str | None = None,
    vmm_type: str = "qemu",
    guest_features: int = 0x1,
) -> bytes:
    """The 48-byte launch digest (MEASUREMENT) of an SEV-SNP guest; ``ValueError`` naming a bad input."""
    if vcpu_type not in CPU_SIGS:
        raise ValueError(f"--vcpu-type {vcpu_type!r} is not one of {', '.join(sorted(CPU_SIGS))}")
    if vmm_type not in VMM_TYPES:
        raise ValueError(f"--vmm-type {vmm_type!r} is not one of {', '.join(VMM_TYPES)}")
    if not 1 <= vcpus <= _MAX_VCPUS:
        raise ValueError(f"--vcpus {vcpus} is not 1..{_MAX_VCPUS}")
    if kernel is None and (initrd is not None or append is not None):
        raise ValueError("--initrd and --append are measured with --kernel (direct boot) only")
    for what, file in (("--ovmf", ovmf), ("--kernel", kernel), ("--initrd", initrd)):
        if file is not None and not file.is_file():
            raise ValueError(f"{what} {file} is not a readable file")
    try:
        digest: bytes = guest.calc_launch_digest(
            SevMode.SEV_SNP,
            vcpus,
            CPU_SIGS[vcpu_type],
            str(ovmf),
            None if kernel is None else str(kernel),
            None if initrd is None else str(initrd),
            append,
            guest_features,
            vmm_type=VMM_TYPES[vmm_type],
        )
    except (RuntimeError, ValueError, AssertionError, IndexError, OSError) as exc:
        # sev-snp-measure raises these for firmware without SEV metadata or a hashes table
        raise ValueError(f"sev-snp-measure could not measure {ovmf}: {exc}") from None
    if len(digest) != 48:
        raise ValueError(f"sev-snp-measure gave {len(digest)} bytes, a measurement is 48")
    return digest


@handle_errors
def snp_measure(
    ovmf: Annotated[
        Path, typer.Option("--ovmf", help="The guest firmware (an OVMF build with SEV-SNP support).")
    ],
    vcpus: Annotated[int, typer.Option("--vcpus", help="The guest's vCPU count.")],
    vcpu_type: Annotated[
        str,
        typer.Option(
            "--vcpu-type", help="The vCPU model QEMU is given: EPYC-Milan, EPYC-Genoa, EPYC-v4, ..."
        ),
    ],
    kernel: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--kernel", help="Direct boot: the kernel OVMF measures (its hashes table)."),
    ] = None,
    initrd: Annotated[Optional[Path], typer.Option("--initrd", help="Direct boot: the initrd.")] = None,  # noqa: UP045
    append: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--append", help="Direct boot: the kernel command line."),
    ] = None,
    vmm_type: Annotated[str, typer.Option("--vmm-type", help="qemu, ec2 or gce.")] = "qemu",
    guest_features: Annotated[
        str,
        typer.Option("--guest-features", help="SEV_FEATURES of the VMSAs (hex; default 0x1, SNP active)."),
    ] = "0x1",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print an SNP transfer policy with this measurement.")
    ] = False,
) -> None:
    """Compute the launch MEASUREMENT an SEV-SNP guest will report (sev-snp-measure), from its firmware,
    direct-boot kernel, initrd and command line, vCPU count and type: write the key's policy before the
    guest first boots."""
    try:
        features = int(guest_features, 0)
        digest = snp_measurement(
            ovmf=ovmf,
            vcpus=vcpus,
            vcpu_type=vcpu_type,
            kernel=kernel,
            initrd=initrd,
            append=append,
            vmm_type=vmm_type,
            guest_features=features,
        )
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    if as_json:
        policy = {"attestation_type": ["SNP"], "snp": {"attributes": {"measurement": [digest.hex()]}}}
        typer.echo(json.dumps(policy, indent=2))
    else:
        typer.echo(digest.hex())
