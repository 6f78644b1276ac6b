"""The TCG crypto-agile event log: the GCE log replays the quoted PCRs 0-9 in every bank, its claims,
the parser's bounds, and a synthetic log extended into a real swtpm and quoted."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tests.helpers import tpm_build
from tests.helpers.swtpm import (
    SyntheticBoot,
    build_event_log,
    event2,
    spec_id_event,
    synthetic_event,
    uefi_variable,
)
from tests.unit.tee.tpm.corpus import CASES, tpm_case
from tests.vectors.corpus import read_bytes

from keybroker.errors import EvidenceParseError, VerificationError
from keybroker.tee.tpm.abi import parse_tpm2b_public
from keybroker.tee.tpm.eventlog import (
    EV_IPL,
    EV_NO_ACTION,
    EV_SEPARATOR,
    parse_event_log,
    replay,
    verify_event_log,
)
from keybroker.tee.tpm.verify import NO_NONCE, VerifiedQuote, verify_quote

GCE_CASES = [c for c in CASES if c["id"].startswith("tpm-gce-gce")]


def gce(case_id: str = "tpm-gce-gce-cos-85-nonce9009-sha256") -> tuple[VerifiedQuote, bytes]:
    c = next(c for c in CASES if c["id"] == case_id)
    t = tpm_case(c)
    quote = verify_quote(t.message, t.signature, t.ak, pcrs=t.pcrs, expected_extra_data=t.nonce)
    return quote, read_bytes(c["message"].rsplit("/", 1)[0] + "/event_log.bin")


@pytest.mark.parametrize("c", GCE_CASES, ids=[c["id"] for c in GCE_CASES])
def test_gce_log_replays_pcrs_0_to_9(c: dict[str, Any]) -> None:
    quote, raw = gce(c["id"])
    verified = verify_event_log(raw, quote)
    assert verified.verified_pcrs == tuple(range(10))
    assert verified.unquoted_pcrs == ()
    assert verified.bank == c["id"].rsplit("-", 1)[1]
    assert len(verified.events) == 44
    assert verified.checks == ("event_log_parse", "event_log_bank", "event_log_replay", "event_data")


def test_gce_log_claims() -> None:
    quote, raw = gce()
    claims = verify_event_log(raw, quote).claims
    sb = claims["secure_boot"]
    assert sb["enabled"] is True
    assert all(len(bytes.fromhex(sb[k])) == 32 for k in ("pk", "kek", "db", "dbx"))
    assert claims["separators"] == {str(i): "ok" for i in range(8)}
    assert claims["crtm_version"] == "GCE Virtual Firmware v1"
    assert len(claims["boot_applications"]) == 3
    assert claims["kernel_cmdline"].startswith("/syslinux/vmlinuz.A init=/usr/lib/systemd/systemd")
    assert "linux /syslinux/vmlinuz.A" in claims["grub_commands"][-1]
    assert claims["ipl_files"][0]["path"] == "/syslinux/vmlinuz.A"
    assert claims["kernel"] == claims["ipl_files"][0]["digest"]
    assert claims["initrd"] is None  # COS boots without one ("noinitrd")


def test_unrecognized_pcr8_event_makes_grub_claims_unknown_not_partial() -> None:
    """Event types are not measured: relabel a GRUB event and the command list would shrink. A list
    claim is therefore complete or None."""
    quote, raw = gce()
    log = parse_event_log(raw)
    first8 = next(e for e in log.events if e.pcr == 8)
    relabelled = raw[: first8.offset + 4] + struct.pack("<I", 0x00000001) + raw[first8.offset + 8 :]
    claims = verify_event_log(relabelled, quote).claims
    assert claims["grub_commands"] is None and claims["kernel_cmdline"] is None and claims["kernel"] is None
    # a PCR 4 boot application relabelled as something else still counts as one
    app = next(e for e in log.events if e.pcr == 4 and e.event_type == 0x80000003)
    hidden = raw[: app.offset + 4] + struct.pack("<I", 0x00000001) + raw[app.offset + 8 :]
    assert (
        verify_event_log(hidden, quote).claims["boot_applications"]
        == verify_event_log(raw, quote).claims["boot_applications"]
    )
    # relabelled as an action or separator, its data no longer hashes to its digest: refused
    as_action = raw[: app.offset + 4] + struct.pack("<I", 0x80000007) + raw[app.offset + 8 :]
    with pytest.raises(VerificationError) as info:
        verify_event_log(as_action, quote)
    assert info.value.check == "event_data"


def _with_type(raw: bytes, offset: int, typ: int) -> bytes:
    return raw[: offset + 4] + struct.pack("<I", typ) + raw[offset + 8 :]


def test_secure_boot_variables_are_read_before_pcr7s_separator_by_their_data() -> None:
    """The SecureBoot, PK, KEK, db and dbx variables are the ones firmware measured into PCR 7 before
    its separator, recognized by their data whatever their (unmeasured) type; the db authorities after
    the separator (also named db) are not the db variable."""
    quote, raw = gce()
    log = parse_event_log(raw)
    want = verify_event_log(raw, quote).claims["secure_boot"]
    sb_event = next(e for e in log.events if e.pcr == 7 and b"S\x00e\x00c\x00u\x00r\x00e" in e.data)
    relabelled = _with_type(raw, sb_event.offset, 0x80000007)  # as an EV_EFI_ACTION: data still hashes
    assert verify_event_log(relabelled, quote).claims["secure_boot"] == want
    separator = next(e for e in log.events if e.pcr == 7 and e.event_type == EV_SEPARATOR)
    # the separator relabelled (its digest is still a separator's): the boundary does not move
    as_action = _with_type(raw, separator.offset, 0x80000007)
    assert verify_event_log(as_action, quote).claims["secure_boot"] == want


def _software_quote(log: bytes, also: dict[int, bytes] | None = None) -> VerifiedQuote:
    """A quote by a software AK of the PCRs ``log`` replays to (sha256) and ``also``, verified."""
    key = ec.generate_private_key(ec.SECP256R1())
    pcrs = {"sha256": {**replay(parse_event_log(log), 0x000B), **(also or {})}}
    message = tpm_build.attest(tpm_build.AttestFields(pcrs=pcrs))
    ak = parse_tpm2b_public(tpm_build.ecc_public_area(key.public_key()))
    signature = tpm_build.sign(key, message, "ecdsa", "sha256")
    return verify_quote(message, signature, ak, pcrs=pcrs, expected_extra_data=NO_NONCE)


def test_no_secure_boot_claim_without_a_pcr7_separator() -> None:
    """Without PCR 7's separator, what firmware measured cannot be told from what the OS extended."""
    on = synthetic_event(["sha256"], 7, 0x80000001, uefi_variable("SecureBoot", b"\x01"))
    separator = synthetic_event(["sha256"], 7, EV_SEPARATOR, bytes(4))
    log = build_event_log(["sha256"], [on])
    assert verify_event_log(log, _software_quote(log)).claims["secure_boot"]["enabled"] is None
    log = build_event_log(["sha256"], [on, separator])
    assert verify_event_log(log, _software_quote(log)).claims["secure_boot"]["enabled"] is True
    # after the separator, a variable is the OS's: not the firmware's configuration
    log = build_event_log(["sha256"], [separator, on])
    assert verify_event_log(log, _software_quote(log)).claims["secure_boot"]["enabled"] is None
    # measured twice before the separator: refused
    log = build_event_log(["sha256"], [on, on, separator])
    with pytest.raises(VerificationError, match="measured twice"):
        verify_event_log(log, _software_quote(log))


def test_crtm_version_is_the_firmwares_before_pcr0s_separator() -> None:
    version = "Real Firmware v2".encode("utf-16-le") + b"\x00\x00"
    forged = "Trusted Firmware v9".encode("utf-16-le") + b"\x00\x00"
    real = synthetic_event(["sha256"], 0, 0x00000008, version)
    separator = synthetic_event(["sha256"], 0, EV_SEPARATOR, bytes(4))
    appended = synthetic_event(["sha256"], 0, 0x00000008, forged)
    log = build_event_log(["sha256"], [real, separator, appended])
    assert verify_event_log(log, _software_quote(log)).claims["crtm_version"] == "Real Firmware v2"
    # the firmware's own relabelled (its type is not measured): nothing is known, not the OS's
    hidden = (real[0], 0x80000007, real[2], real[3])
    log = build_event_log(["sha256"], [hidden, separator, appended])
    assert verify_event_log(log, _software_quote(log)).claims["crtm_version"] is None


def test_list_claims_of_pcrs_the_log_does_not_account_for_are_unknown() -> None:
    """PCR 4 quoted at its initial value with no event: no boot application (an empty list, known).
    Quoted with another value and no event, or not quoted: unknown (None), never an empty list."""
    separator = synthetic_event(["sha256"], 7, EV_SEPARATOR, bytes(4))
    log = build_event_log(["sha256"], [separator])
    verified = verify_event_log(log, _software_quote(log, {4: bytes(32), 9: bytes(32)}))
    assert verified.empty_pcrs == (4, 9) and verified.verified_pcrs == (7,)
    assert verified.claims["boot_applications"] == [] and verified.claims["ipl_files"] == []
    claims = verify_event_log(log, _software_quote(log, {4: b"\x01" * 32})).claims
    assert claims["boot_applications"] is None and claims["ipl_files"] is None
    assert claims["kernel"] is None and claims["grub_commands"] is None


def test_log_parse_structure() -> None:
    log = parse_event_log(gce()[1])
    assert log.banks == ("sha1", "sha256", "sha384")
    assert log.spec_id.spec_version == (2, 0, 0) and log.spec_id.uintn_size == 2
    assert log.events[0].type_name == "EV_S_CRTM_VERSION"


def test_every_truncation_is_a_parse_error() -> None:
    raw = gce()[1]
    for n in list(range(0, 200)) + list(range(200, len(raw), 97)):
        if n == 0:
            continue
        try:
            parse_event_log(raw[:n])
        except EvidenceParseError as exc:
            assert exc.field is not None and exc.field.startswith("event_log")
        else:  # a cut exactly between two events is a shorter, well-formed log
            assert any(e.offset == n for e in parse_event_log(raw).events)


def test_a_log_covering_a_pcr_the_quote_holds_differently_is_refused() -> None:
    quote, raw = gce()
    log = parse_event_log(raw)
    # drop PCR 8's last event (the kernel command line): the replay no longer reaches the quoted PCR 8
    last8 = (
        max(e for e in log.events if e.pcr == 8).offset
        if False
        else [e for e in log.events if e.pcr == 8][-1]
    )
    end = last8.offset + len(_event_bytes(raw, last8.offset))
    shorter = raw[: last8.offset] + raw[end:]
    with pytest.raises(VerificationError) as info:
        verify_event_log(shorter, quote)
    assert info.value.check == "event_log_replay" and "PCR 8" in str(info.value)


def _event_bytes(raw: bytes, offset: int) -> bytes:
    pcr, typ, count = struct.unpack_from("<III", raw, offset)
    o = offset + 12
    for _ in range(count):
        alg = struct.unpack_from("<H", raw, o)[0]
        o += 2 + {4: 20, 11: 32, 12: 48, 13: 64}[alg]
    size = struct.unpack_from("<I", raw, o)[0]
    return raw[offset : o + 4 + size]


def test_bank_must_be_shared() -> None:
    quote, _ = gce()
    only_sha512 = build_event_log(["sha512"], [(0, EV_SEPARATOR, {"sha512": bytes(64)}, bytes(4))])
    with pytest.raises(VerificationError) as info:
        verify_event_log(only_sha512, quote)
    assert info.value.check == "event_log_bank"


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"", "need 4 bytes"),
        (struct.pack("<II", 0, 1) + bytes(24), "not PCR 0 EV_NO_ACTION"),
        (
            spec_id_event(["sha256"])[:32] + b"Spec ID Event02\x00" + spec_id_event(["sha256"])[48:],
            "only crypto-agile",
        ),
        (spec_id_event(["sha256"]) + event2(0, 4, {"sha1": bytes(20)}, b""), "not a listed bank"),
        (spec_id_event(["sha256"]) + struct.pack("<III", 0, 4, 2), "2 digests, the Spec ID event lists 1"),
        (spec_id_event(["sha256"]) + event2(32, 4, {"sha256": bytes(32)}, b""), "PCR 32 does not exist"),
        (
            spec_id_event(["sha256"])
            + struct.pack("<IIIH", 0, 4, 1, 0x000B)
            + bytes(32)
            + struct.pack("<I", 2**21),
            "exceeds 1048576",
        ),
        (spec_id_event(["sha256", "sha256"]), "listed twice"),
        (
            spec_id_event(["sha256"])
            + event2(0, 4, {"sha256": bytes(32)}, bytes(4))
            + event2(0, EV_NO_ACTION, {"sha256": bytes(32)}, b"StartupLocality\x00\x03"),
            "misplaced",
        ),
    ],
)
def test_parse_refusals(raw: bytes, needle: str) -> None:
    with pytest.raises(EvidenceParseError, match=needle):
        parse_event_log(raw)


def test_swtpm_synthetic_log(synthetic_boot: SyntheticBoot) -> None:
    """A log replayed against a real TPM's quote of PCRs 7-8 extended with its events (conftest)."""
    boot = synthetic_boot
    q = boot.quote
    quote = verify_quote(
        q.message,
        q.signature,
        parse_tpm2b_public(boot.ak.public),
        pcrs=q.pcrs,
        expected_extra_data=boot.nonce,
    )
    verified = verify_event_log(boot.log, quote)
    assert verified.verified_pcrs == (7, 8)
    assert verified.bank == "sha256"
    assert verified.claims["secure_boot"]["enabled"] is False
    assert verified.claims["grub_commands"] == ["linux /vmlinuz root=/dev/sda"]
    assert verified.claims["separators"] == {"7": "ok"}
    assert replay(parse_event_log(boot.log), 0x000B)[7] == quote.pcr_values()["sha256"][7]
    # the same log with a different SecureBoot value (digest unchanged) lies about what was measured
    first = boot.events[0]
    lying = build_event_log(
        boot.banks, [(7, first[1], first[2], uefi_variable("SecureBoot", b"\x01")), *boot.events[1:]]
    )
    with pytest.raises(VerificationError) as info:
        verify_event_log(lying, quote)
    assert info.value.check == "event_data"
    # and an event the TPM never saw breaks the replay
    extra = synthetic_event(boot.banks, 8, EV_IPL, b"grub_cmd: echo pwned\x00", b"echo pwned")
    with pytest.raises(VerificationError) as info:
        verify_event_log(build_event_log(boot.banks, [*boot.events, extra]), quote)
    assert info.value.check == "event_log_replay"
