"""Measured-boot claims through ``/kbs/v1`` with a real swtpm, attacked the way the workload's own root
can: extend a PCR after boot and edit the (unsigned) event log's types and paths. Each test has a
swtpm of its own, since PCRs 0-15 cannot be reset."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.api.test_tpm_api import _WORKLOAD, SPKI, Machine, _challenge, _enrol, _key, _settings, _transfer
from tests.conftest import template_for
from tests.helpers.api import token_headers, unwrap_v1
from tests.helpers.swtpm import MISSING, SKIP_REASON, Swtpm, build_event_log, synthetic_event, uefi_variable

from keybroker.api.services import Services
from keybroker.client.tpm import TpmProvider, TpmTools
from keybroker.wire import binding

pytestmark = pytest.mark.skipif(bool(MISSING), reason=SKIP_REASON)

EV_IPL = 0x0000000D
EV_SEPARATOR = 0x00000004
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_ACTION = 0x80000007
BANKS = ["sha256"]


@pytest.fixture
def swtpm(tmp_path: Path) -> Iterator[Swtpm]:
    with Swtpm(tmp_path / "tpm") as tpm:
        yield tpm


@pytest.fixture
def services(
    request: pytest.FixtureRequest, tmp_path: Path, database_url: str, swtpm: Swtpm
) -> Iterator[Services]:
    svc = Services.build(
        template_for(request, database_url).restore(_settings(tmp_path, database_url, swtpm))
    )
    yield svc
    svc.db.dispose()


@pytest.fixture
def machine(swtpm: Swtpm, tmp_path: Path) -> Machine:
    work = tmp_path / "tpm-work"
    work.mkdir()
    return Machine(TpmTools(swtpm.env["TPM2TOOLS_TCTI"], work=work), "0x81010100")


def _relabel(event: tuple[int, int, dict[str, bytes], bytes], typ: int, data: bytes | None = None) -> Any:
    """The same measurement with another (unmeasured) type, and optionally other (unmeasured) data."""
    return event[0], typ, event[2], event[3] if data is None else data


@dataclass
class Rig:
    """The broker, a machine enrolled with it (its own swtpm) and the event log file the machine sends."""

    client: TestClient
    admin: dict[str, str]
    machine: Machine
    swtpm: Swtpm
    log: Path

    def boot(self, events: list[tuple[int, int, dict[str, bytes], bytes]]) -> None:
        """What firmware and GRUB did: extend each event's digest into its PCR."""
        for pcr, _, digests, _ in events:
            self.swtpm.pcr_extend(pcr, digests)

    def key(self, event_log: dict[str, Any]) -> tuple[str, bytes]:
        """A key (id, secret) under a TPM policy on these event-log claims, simulated evidence allowed."""
        policy = {
            "attestation_type": ["TPM"],
            "tpm": {"attributes": {"event_log": event_log}},
            "allow_simulated": True,
        }
        return _key(self.client, self.admin, policy)

    def release(self, key_id: str, selection: str) -> Any:
        """The machine's answer to a fresh challenge: a quote of ``selection`` with the log file."""
        provider = TpmProvider(
            self.machine.tools, ak_handle=self.machine.ak_handle, selection=selection, event_log=self.log
        )
        nonce = _challenge(self.client, key_id)
        return _transfer(
            self.client, key_id, nonce, provider.evidence(binding.v1_tpm_extra_data(nonce, SPKI))
        )

    def assert_nothing_released(self) -> None:
        audit = self.client.get("/kbs/v1/audit", params={"limit": 1000}, headers=self.admin).json()
        assert not [a for a in audit if a["action"] == "key.transfer" and a["outcome"] == "success"]


@pytest.fixture
def rig(
    client: TestClient,
    admin_headers: dict[str, str],
    services: Services,
    machine: Machine,
    swtpm: Swtpm,
    tmp_path: Path,
) -> Rig:
    _enrol(client, token_headers(services, "tpm_aks:create", "tpm_aks:approve"), machine)
    return Rig(client, admin_headers, machine, swtpm, tmp_path / "event.log")


def test_secure_boot_cannot_be_claimed_by_a_variable_extended_after_boot(rig: Rig) -> None:
    """Secure Boot was off. The OS (root) extends PCR 7 with a SecureBoot=1 variable after the
    separator, relabels the firmware's SecureBoot=0 event as an EV_EFI_ACTION (types are not
    measured; its data still hashes to its digest) and logs its own as the variable: every PCR
    replays. Before the fix this released the key; the variable counts only before PCR 7's
    separator, found by its data, whatever its type says."""
    off = synthetic_event(BANKS, 7, EV_EFI_VARIABLE_DRIVER_CONFIG, uefi_variable("SecureBoot", b"\x00"))
    separator = synthetic_event(BANKS, 7, EV_SEPARATOR, b"\x00\x00\x00\x00")
    rig.boot([off, separator])
    key_id, _ = rig.key({"secure_boot": True})
    rig.log.write_bytes(build_event_log(BANKS, [off, separator]))
    r = rig.release(key_id, "sha256:7")
    assert r.status_code == 403, r.text
    assert r.json()["reasons"] == ["Secure Boot was off; the policy requires it on"]

    forged = synthetic_event(BANKS, 7, EV_EFI_VARIABLE_DRIVER_CONFIG, uefi_variable("SecureBoot", b"\x01"))
    rig.boot([forged])
    rig.log.write_bytes(build_event_log(BANKS, [_relabel(off, EV_EFI_ACTION), separator, forged]))
    r = rig.release(key_id, "sha256:7")
    assert r.status_code == 403, r.text
    assert r.json()["reasons"] == ["Secure Boot was off; the policy requires it on"]

    # the firmware's own event with its data edited to say 1: it no longer hashes, and nothing is known
    lying = _relabel(off, EV_EFI_ACTION, uefi_variable("SecureBoot", b"\x01"))
    rig.log.write_bytes(build_event_log(BANKS, [lying, separator, forged]))
    r = rig.release(key_id, "sha256:7")
    assert r.status_code == 400 and r.json()["check"] == "event_data", r.text
    rig.assert_nothing_released()


def test_a_kernel_relabelled_in_pcr9_after_boot_is_not_the_kernel_that_booted(rig: Rig) -> None:
    """GRUB booted /vmlinuz-evil. The OS extends PCR 9 with the approved kernel's digest and labels that
    event with the path the measured command line names (PCR 9 paths are not measured), the real one
    with another path. Before the fix the kernel claim was the approved digest and the key was
    released; now every PCR 9 file must be listed, and the booted one is not."""
    good, evil = hashlib.sha256(b"approved kernel").digest(), hashlib.sha256(b"evil kernel").digest()
    line = b"/vmlinuz-evil root=/dev/vda1 ro"
    cmdline = synthetic_event(BANKS, 8, EV_IPL, b"kernel_cmdline: " + line + b"\x00", measured=line)
    booted = (9, EV_IPL, {"sha256": evil}, b"/vmlinuz-evil\x00")
    rig.boot([cmdline, booted])
    key_id, _ = rig.key({"kernel": [good.hex()]})
    rig.log.write_bytes(build_event_log(BANKS, [cmdline, booted]))
    r = rig.release(key_id, "sha256:8,9")
    assert r.status_code == 403, r.text
    assert r.json()["reasons"][0] == f"kernel {evil.hex()} is not in the policy's list"

    appended = (9, EV_IPL, {"sha256": good}, b"/vmlinuz-evil\x00")
    rig.boot([appended])
    hidden = (9, EV_IPL, {"sha256": evil}, b"/boot/grub/fonts/unicode.pf2\x00")
    rig.log.write_bytes(build_event_log(BANKS, [cmdline, hidden, appended]))
    r = rig.release(key_id, "sha256:8,9")
    assert r.status_code == 403, r.text
    assert r.json()["reasons"] == [f"ipl_files {evil.hex()} is not in the policy's list"]
    rig.assert_nothing_released()


def test_a_measured_kernel_command_line_is_released_and_a_forged_one_refused(rig: Rig) -> None:
    """The machine's event log (GRUB's kernel command line in PCR 8) goes with its quote: a policy on the
    command line releases; a log whose event says another command line than was measured is refused."""
    line = b"kernel_cmdline: /vmlinuz root=/dev/vda1 ro lockdown=integrity\x00"
    measured = line[len(b"kernel_cmdline: ") : -1]
    event = synthetic_event(["sha256"], 8, 0x0000000D, line, measured=measured)
    rig.swtpm.pcr_extend(8, event[2])
    rig.log.write_bytes(build_event_log(["sha256"], [event]))
    key_id, secret = rig.key({"kernel_cmdline": [measured.decode()]})
    r = rig.release(key_id, "sha256:8")
    assert r.status_code == 200, r.text
    assert unwrap_v1(r.json(), _WORKLOAD) == secret

    forged = b"kernel_cmdline: /vmlinuz root=/dev/vda1 ro init=/bin/sh\x00"
    rig.log.write_bytes(
        build_event_log(["sha256"], [(8, 0x0000000D, event[2], forged)])
    )  # same digest, other text
    r = rig.release(key_id, "sha256:8")
    assert r.status_code == 400 and r.json()["check"] == "event_data", r.text


def test_boot_applications_left_out_of_the_log_or_the_quote_are_not_none_booted(rig: Rig) -> None:
    """Firmware measured an unapproved boot loader into PCR 4. The machine sends a log without PCR 4's
    events, or a quote without PCR 4: before, the boot applications read as an empty list and a policy
    listing the approved ones released the key; now they are unknown, and unknown denies."""
    approved = hashlib.sha256(b"approved shim").digest()
    loader = (4, 0x80000003, {"sha256": hashlib.sha256(b"unapproved loader").digest()}, b"\x00" * 32)
    separator = synthetic_event(BANKS, 7, EV_SEPARATOR, b"\x00\x00\x00\x00")
    rig.boot([loader, separator])
    key_id, _ = rig.key({"boot_applications": [approved.hex()]})
    unknown = ["the boot applications are not known from the event log"]

    rig.log.write_bytes(build_event_log(BANKS, [separator]))  # PCR 4's events left out
    r = rig.release(key_id, "sha256:4,7")
    assert r.status_code == 403 and r.json()["reasons"] == unknown, r.text

    rig.log.write_bytes(build_event_log(BANKS, [loader, separator]))  # the whole log, PCR 4 not quoted
    r = rig.release(key_id, "sha256:7")
    assert r.status_code == 403 and r.json()["reasons"] == unknown, r.text

    r = rig.release(key_id, "sha256:4,7")  # all of it: the loader is named
    assert r.status_code == 403, r.text
    assert r.json()["reasons"][0].startswith(f"boot_applications {loader[2]['sha256'].hex()} is not in")
