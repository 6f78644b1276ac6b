"""One real swtpm for the TPM tests that need it (skipped, saying why, when it is not installed)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.helpers.swtpm import (
    MISSING,
    SKIP_REASON,
    Swtpm,
    SyntheticBoot,
    build_event_log,
    synthetic_event,
    uefi_variable,
)


@pytest.fixture(scope="session")
def swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swtpm]:
    if MISSING:
        pytest.skip(SKIP_REASON)
    with Swtpm(tmp_path_factory.mktemp("tpm")) as tpm:
        yield tpm


@pytest.fixture(scope="session")
def synthetic_boot(swtpm: Swtpm) -> SyntheticBoot:
    """swtpm has no firmware and so no event log: play firmware and GRUB once per session (PCR 7:
    SecureBoot, an action, the separator; PCR 8: a GRUB command), write the log, quote PCRs 7-8."""
    banks = ["sha1", "sha256"]
    grub = b"grub_cmd: linux /vmlinuz root=/dev/sda\x00"
    events = [
        synthetic_event(banks, 7, 0x80000001, uefi_variable("SecureBoot", b"\x00")),
        synthetic_event(banks, 7, 0x80000007, b"synthetic action"),
        synthetic_event(banks, 7, 0x00000004, bytes(4)),
        synthetic_event(banks, 8, 0x0000000D, grub, measured=grub[len(b"grub_cmd: ") : -1]),
    ]
    ak = swtpm.create_ak()
    before = swtpm.quote(ak, "sha1:7,8+sha256:7,8", b"x").pcrs
    assert all(v == bytes(len(v)) for bank in before.values() for v in bank.values()), (
        "PCRs 7-8 already extended"
    )
    for pcr, _typ, digests, _data in events:
        swtpm.pcr_extend(pcr, digests)
    nonce = b"synthetic-boot"
    return SyntheticBoot(
        banks,
        events,
        build_event_log(banks, events),
        ak,
        swtpm.quote(ak, "sha1:7,8+sha256:7,8", nonce),
        nonce,
    )
