"""verify_report: the corpus cases, every real report, the mutation sweep, and each check by a report built to fail it."""

from __future__ import annotations

import datetime as dt
import struct
from typing import Any

import pytest
from tests.unit.tee.snp.conftest import CORPUS_AT, SIM_AT, RealReport, case_chain, case_report, real_reports
from tests.vectors.corpus import load_cases, read_bytes, verify_at

from keybroker.errors import EvidenceError, EvidenceParseError, VerificationError
from keybroker.tee.sim.snp import DEFAULT_TCB, SnpDevPki, snp_report
from keybroker.tee.snp import CHECKS, verify_report
from keybroker.tee.snp.abi import FirmwareVersion, Tcb, parse_report
from keybroker.tee.snp.verify import canonical_report

# AMD's VCEKs and VLEKs have serial number 0: cryptography warns (keybroker silences it outside pytest).
pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number")

SNP_CASES = load_cases("snp")
#: The real AMD-signed reports: the corpus keeps no AMD CRL current at their time, so tests that
#: verify them with ``verify_report`` waive the CRL requirement by name (``require_crl=False``).
REAL = real_reports()
_P384_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973

#: The check each rejecting corpus case must fail, by its expected reason.
_REASON_CHECK = {
    "VLEK cert expired 2025-12-10": "validity_window",
    "VCEK not signed by ASK / wrong chip": "cert_chain",
    "VCEK of another chip": "report_signature",
    "tampered report": "report_signature",
    "bad signature": "report_signature",
}


def test_the_corpus_has_the_twelve_snp_cases() -> None:
    assert len(SNP_CASES) == 12
    assert {c["expect"]["verdict"] for c in SNP_CASES} == {"accept", "reject"}


@pytest.mark.parametrize("case", SNP_CASES, ids=lambda c: c["id"])
def test_corpus_case_verdicts(case: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {
        "vcek_or_vlek": read_bytes(case["vcek"]),
        "chain": case_chain(case),
        "at": verify_at(case),
        "require_crl": False,  # the corpus keeps no AMD CRL of the cases' time
    }
    if case["expect"]["verdict"] == "accept":
        verified = verify_report(case_report(case), **kwargs)
        assert verified.checks[-1] == "tcb_order" and not verified.sim and verified.root == "amd"
        assert verified.product == "Milan"
        assert verified.report_data == parse_report(case_report(case)).report_data
        # The shipped ASK/ASVK do as well as the case's chain file.
        assert verify_report(
            case_report(case), vcek_or_vlek=kwargs["vcek_or_vlek"], at=kwargs["at"], require_crl=False
        ).claims == (verified.claims)
    else:
        with pytest.raises(VerificationError) as exc:
            verify_report(case_report(case), **kwargs)
        assert exc.value.check == _REASON_CHECK[case["expect"]["reason"]]


@pytest.mark.parametrize("real", REAL, ids=lambda r: r.name)
def test_every_real_report_verifies_with_the_pinned_roots(real: RealReport) -> None:
    verified = verify_report(real.report, vcek_or_vlek=real.signer, at=CORPUS_AT, require_crl=False)
    with_chain = verify_report(
        real.report, vcek_or_vlek=real.signer, chain=real.chain, at=CORPUS_AT, require_crl=False
    )
    assert verified.claims.to_dict() == with_chain.claims.to_dict()
    expected = ["parse", "signing_key", "cert_chain", "vcek_extensions", "crl", "validity_window"]
    expected += ["report_signature", "product", "tcb_binding"]
    expected += ["chip_id", "tcb_order"] if verified.signing_key == "vcek" else ["tcb_order"]
    assert list(verified.checks) == expected and set(expected) <= set(CHECKS)
    claims = verified.claims.to_dict()
    assert claims["product"] == ("Genoa" if "genoa" in real.name else "Milan")
    assert claims["tcb"]["reported"]["raw"] == parse_report(real.report).reported_tcb.hex()
    assert claims["report_version"] == int(real.name[-1])


def test_claims_of_the_vlek_report() -> None:
    real = next(r for r in REAL if r.name == "trustee-milan-vlek-v3")
    claims = verify_report(
        real.report, vcek_or_vlek=real.signer, at=CORPUS_AT, require_crl=False
    ).claims.to_dict()
    assert claims["signing_key"] == "vlek" and claims["csp_id"] == "CN=cc-us-east-2.amazonaws.com"
    assert claims["vmpl"] == 1 and claims["chip_id"] == "00" * 64 and claims["debug"] is False
    assert claims["cpuid"] == {"family": "19", "model": "01", "stepping": "01"}
    assert claims["tcb"]["reported"] == {
        "bootloader": 4,
        "tee": 0,
        "snp": 24,
        "microcode": 0xD9,
        "fmc": None,
        "raw": "04000000000018d9",
    }
    assert claims["tcb"]["committed"]["microcode"] == 0xDB and claims["tcb"]["current"]["microcode"] == 0xDC
    assert claims["firmware"] == {
        "current": {"major": 1, "minor": 55, "build": 29},
        "committed": {"major": 1, "minor": 55, "build": 29},
    }
    assert claims["provisional_firmware"] is True  # CURRENT_TCB 0xDC != COMMITTED_TCB 0xDB
    assert claims["launch_mit_vector"] is None
    assert claims["measurement"] == parse_report(real.report).measurement.hex()


def test_debug_is_a_claim_not_an_error() -> None:
    real = next(r for r in REAL if r.name == "gsg-milan-v2")
    verified = verify_report(real.report, vcek_or_vlek=real.signer, at=CORPUS_AT, require_crl=False)
    assert verified.claims.debug and verified.claims.to_dict()["policy"]["debug"] is True


# --- the mutation sweep ----------------------------------------------------------------------------

#: Offsets whose every value is well formed: REPORT_DATA..REPORT_ID_MA, CHIP_ID, R and S (low 48 bytes).
_FREE_BYTES = frozenset(
    [*range(0x050, 0x180), *range(0x1A0, 0x1E0), *range(0x2A0, 0x2A0 + 48), *range(0x2E8, 0x2E8 + 48)]
)


@pytest.mark.parametrize("real", REAL[:4] + REAL[5:6], ids=lambda r: r.name)
def test_every_signed_byte_and_every_signature_byte_is_bound(real: RealReport) -> None:
    """Flip one bit in each byte 0x000..0x49F of a real report: every variant is refused.

    Bytes 0..0x29F are signed (a change fails the signature or, before it, the parse); R and S
    fail the signature; their zero upper halves and 0x330..0x49F are unsigned and must be zero.
    """
    base = verify_report(real.report, vcek_or_vlek=real.signer, at=CORPUS_AT, require_crl=False)
    seen: dict[str, int] = {}
    for offset in range(0x4A0):
        raw = bytearray(real.report)
        raw[offset] ^= 0x01 if offset % 2 else 0x80
        with pytest.raises(EvidenceError) as exc:
            verify_report(bytes(raw), vcek_or_vlek=real.signer, at=CORPUS_AT, require_crl=False)
        check = exc.value.check if isinstance(exc.value, VerificationError) else "parse"
        seen[check] = seen.get(check, 0) + 1
        if offset >= 0x330:
            assert check == "parse", offset
        if offset in _FREE_BYTES:  # no structure to check: only the signature can catch it
            assert check == "report_signature", offset
    assert set(seen) <= {"parse", "signing_key", "report_signature"}
    assert seen["report_signature"] >= len(_FREE_BYTES)
    assert base.checks[-1] == "tcb_order"


def test_ecdsa_malleability_gives_one_evidence_digest() -> None:
    """(R, n - S) verifies too (AMD does not normalise S); both name the same evidence."""
    real = REAL[2]
    report = parse_report(real.report)
    flipped = bytearray(real.report)
    flipped[0x2E8:0x330] = (_P384_N - report.signature_s).to_bytes(72, "little")
    a = verify_report(real.report, vcek_or_vlek=real.signer, at=CORPUS_AT, require_crl=False)
    b = verify_report(bytes(flipped), vcek_or_vlek=real.signer, at=CORPUS_AT, require_crl=False)
    assert a.claims.to_dict() == b.claims.to_dict()
    assert a.evidence_sha256 == b.evidence_sha256
    assert canonical_report(parse_report(bytes(flipped))) == canonical_report(report)


def test_signature_outside_the_group_order_is_refused() -> None:
    real = REAL[2]
    raw = bytearray(real.report)
    raw[0x2E8:0x330] = bytes(72)  # S = 0
    with pytest.raises(VerificationError, match="outside") as exc:
        verify_report(bytes(raw), vcek_or_vlek=real.signer, at=CORPUS_AT, require_crl=False)
    assert exc.value.check == "report_signature"
    raw[0x2E8:0x330] = _P384_N.to_bytes(72, "little")  # S = n: 48 bytes, passes the parse
    with pytest.raises(VerificationError, match="outside"):
        verify_report(bytes(raw), vcek_or_vlek=real.signer, at=CORPUS_AT, require_crl=False)


@pytest.mark.parametrize(("key_info", "what"), [(0b10, "MASK_CHIP_KEY 1"), (7 << 2, "SIGNING_KEY 7")])
def test_unsigned_reports_are_refused(key_info: int, what: str) -> None:
    real = REAL[2]
    raw = bytearray(real.report)
    raw[0x48:0x4C] = struct.pack("<I", key_info)
    with pytest.raises(VerificationError, match=what) as exc:
        verify_report(bytes(raw), vcek_or_vlek=real.signer, at=CORPUS_AT, require_crl=False)
    assert exc.value.check == "signing_key"


def test_the_signer_kind_comes_from_the_report() -> None:
    """A VLEK never stands in for a VCEK and vice versa (TEE-Attestation-Verification#142)."""
    vcek_report = next(r for r in REAL if r.name == "trustee-milan-v2")
    vlek_report = next(r for r in REAL if r.name == "trustee-milan-vlek-v3")
    with pytest.raises(
        VerificationError, match="signed by a VCEK but the certificate's CN is 'SEV-VLEK'"
    ) as exc:
        verify_report(
            vcek_report.report, vcek_or_vlek=vlek_report.signer, chain=vlek_report.chain, at=CORPUS_AT
        )
    assert exc.value.check == "cert_chain"
    with pytest.raises(VerificationError, match="signed by a VLEK but the certificate's CN is 'SEV-VCEK'"):
        verify_report(
            vlek_report.report, vcek_or_vlek=vcek_report.signer, chain=vcek_report.chain, at=CORPUS_AT
        )


def test_time_must_be_aware_and_is_checked() -> None:
    real = REAL[2]
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_report(real.report, vcek_or_vlek=real.signer, at=dt.datetime(2025, 6, 1))  # noqa: DTZ001
    with pytest.raises(VerificationError, match="SEV-VCEK is not valid before 2023-01-24") as exc:
        verify_report(
            real.report,
            vcek_or_vlek=real.signer,
            at=dt.datetime(2023, 1, 1, tzinfo=dt.UTC),
            require_crl=False,
        )
    assert exc.value.check == "validity_window"
    expiry = verify_report(real.report, vcek_or_vlek=real.signer, at=CORPUS_AT, require_crl=False).expiry
    assert expiry == dt.datetime(2030, 1, 24, 17, 58, 26, tzinfo=dt.UTC)  # the VCEK's notAfter
    verify_report(real.report, vcek_or_vlek=real.signer, at=expiry, require_crl=False)  # bounds are inclusive
    with pytest.raises(VerificationError, match="expired"):
        verify_report(
            real.report, vcek_or_vlek=real.signer, at=expiry + dt.timedelta(seconds=1), require_crl=False
        )


# --- the simulator: each check, by a report built to fail it ---------------------------------------


def _verify(pki: SnpDevPki, ev: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("at", SIM_AT)
    kwargs.setdefault("dev_roots", [pki.root_cert])
    kwargs.setdefault("crls", [pki.crl("vcek"), pki.crl("vlek")])  # the dev ARK's, current at SIM_AT
    return verify_report(ev.report, vcek_or_vlek=ev.signer, chain=ev.chain, **kwargs)


def test_simulated_reports_verify_only_with_their_dev_root(
    genoa_pki: SnpDevPki, turin_pki: SnpDevPki
) -> None:
    ev = snp_report(genoa_pki, report_data=b"\x42" * 64, now=SIM_AT)
    verified = _verify(genoa_pki, ev)
    assert verified.sim and verified.root == "dev" and verified.report_data == b"\x42" * 64
    assert verified.product == "Genoa" and verified.claims.to_dict()["report_version"] == 3
    for dev_roots in ([], [turin_pki.root_cert]):
        with pytest.raises(VerificationError, match="not signed by a trusted ARK-Genoa") as exc:
            _verify(genoa_pki, ev, dev_roots=dev_roots)
        assert exc.value.check == "cert_chain"
    # Nor without its chain: the shipped AMD ASK is not its issuer.
    with pytest.raises(VerificationError, match="no ASK 'SEV-Genoa' .* among AMD's shipped certificates"):
        verify_report(ev.report, vcek_or_vlek=ev.signer, at=SIM_AT, dev_roots=[genoa_pki.root_cert])


def test_turin_reports_use_the_turin_layout(turin_pki: SnpDevPki) -> None:
    tcb = Tcb(bootloader=3, tee=2, snp=5, microcode=0x21, fmc=7)
    ev = snp_report(turin_pki, reported_tcb=tcb, launch_mit_vector=0x3, current_mit_vector=0xF, now=SIM_AT)
    verified = _verify(turin_pki, ev)
    claims = verified.claims.to_dict()
    assert claims["report_version"] == 5 and claims["product"] == "Turin"
    assert claims["tcb"]["reported"] == {
        "bootloader": 3,
        "tee": 2,
        "snp": 5,
        "microcode": 0x21,
        "fmc": 7,
        "raw": "0703020500000021",
    }
    assert (
        claims["launch_mit_vector"] == "0000000000000003"
        and claims["current_mit_vector"] == "000000000000000f"
    )
    assert verified.report.chip_id[8:] == bytes(56)


def test_turin_chip_id_beyond_byte_8_must_be_zero(turin_pki: SnpDevPki) -> None:
    chip = turin_pki.chip_id[:8] + b"\x01" + bytes(55)
    ev = snp_report(turin_pki, chip_id=chip, signer_chip_id=turin_pki.chip_id, now=SIM_AT)
    with pytest.raises(VerificationError, match="bytes 8-63 are not zero") as exc:
        _verify(turin_pki, ev)
    assert exc.value.check == "chip_id"


@pytest.mark.parametrize("version", [2, 4, 5])
def test_report_versions(genoa_pki: SnpDevPki, version: int) -> None:
    ev = snp_report(genoa_pki, version=version, now=SIM_AT)
    claims = _verify(genoa_pki, ev).claims.to_dict()
    assert claims["report_version"] == version
    assert (claims["cpuid"] is None) == (version == 2)
    assert (claims["launch_mit_vector"] is None) == (version < 5)
    assert set(claims) == set(_verify(genoa_pki, snp_report(genoa_pki, now=SIM_AT)).claims.to_dict())


def test_cpuid_must_name_the_chain_product(genoa_pki: SnpDevPki) -> None:
    ev = snp_report(genoa_pki, cpuid=(0x19, 0x01, 0x01), now=SIM_AT)  # a Milan CPU, a Genoa VCEK
    with pytest.raises(VerificationError, match="CPUID .* is Milan, its VCEK chain is Genoa") as exc:
        _verify(genoa_pki, ev)
    assert exc.value.check == "product"
    ev = snp_report(genoa_pki, cpuid=(0x1A, 0x50, 0x00), now=SIM_AT)  # Venice
    with pytest.raises(VerificationError, match="is not Milan, Genoa or Turin") as exc:
        _verify(genoa_pki, ev)
    assert exc.value.check == "product"


def test_reported_tcb_must_be_the_vcek_tcb(genoa_pki: SnpDevPki) -> None:
    signer_tcb = DEFAULT_TCB["Genoa"]
    reported = Tcb(
        bootloader=signer_tcb.bootloader, tee=0, snp=signer_tcb.snp + 1, microcode=signer_tcb.microcode
    )
    ev = snp_report(genoa_pki, reported_tcb=reported, current_tcb=reported, signer_tcb=signer_tcb, now=SIM_AT)
    with pytest.raises(
        VerificationError, match=r"REPORTED_TCB 0a00000000001854 .* is not the VCEK's TCB"
    ) as exc:
        _verify(genoa_pki, ev)
    assert exc.value.check == "tcb_binding"


def test_chip_id_must_be_the_vcek_hwid(genoa_pki: SnpDevPki) -> None:
    other_chip = bytes(range(64))
    ev = snp_report(genoa_pki, signer_chip_id=other_chip, now=SIM_AT)
    with pytest.raises(
        VerificationError, match=r"is not the VCEK.s hwID 0001020304050607… \(a VCEK of another chip\)"
    ) as exc:
        _verify(genoa_pki, ev)
    assert exc.value.check == "chip_id"
    # A masked CHIP_ID cannot be bound to a VCEK either.
    masked = snp_report(genoa_pki, mask_chip_id=True, now=SIM_AT)
    with pytest.raises(VerificationError) as exc:
        _verify(genoa_pki, masked)
    assert exc.value.check == "chip_id"


def test_vlek_reports_are_not_chip_bound(genoa_pki: SnpDevPki) -> None:
    ev = snp_report(genoa_pki, signing_key="vlek", mask_chip_id=True, vmpl=2, now=SIM_AT)
    verified = _verify(genoa_pki, ev)
    assert verified.signing_key == "vlek" and verified.csp_id == genoa_pki.csp_id
    assert "chip_id" not in verified.checks and verified.claims.to_dict()["vmpl"] == 2


@pytest.mark.parametrize(
    ("reported", "committed", "current"),
    [
        (Tcb(10, 0, 24, 84), Tcb(10, 0, 23, 84), Tcb(10, 0, 24, 84)),  # reported > committed
        (Tcb(10, 0, 23, 84), Tcb(10, 0, 23, 85), Tcb(10, 0, 23, 84)),  # committed > current
        (Tcb(11, 0, 23, 84), Tcb(10, 0, 23, 90), Tcb(11, 0, 23, 90)),  # one component above
    ],
)
def test_tcbs_must_be_ordered(genoa_pki: SnpDevPki, reported: Tcb, committed: Tcb, current: Tcb) -> None:
    ev = snp_report(
        genoa_pki, reported_tcb=reported, committed_tcb=committed, current_tcb=current, now=SIM_AT
    )
    with pytest.raises(VerificationError, match="TCBs out of order") as exc:
        _verify(genoa_pki, ev)
    assert exc.value.check == "tcb_order"


def test_provisional_firmware_and_higher_current_tcb_are_claims(genoa_pki: SnpDevPki) -> None:
    reported = DEFAULT_TCB["Genoa"]
    current = Tcb(reported.bootloader, reported.tee, reported.snp + 1, reported.microcode + 1)
    ev = snp_report(
        genoa_pki,
        current_tcb=current,
        firmware=FirmwareVersion(1, 55, 41),
        committed_firmware=FirmwareVersion(1, 55, 40),
        now=SIM_AT,
    )
    claims = _verify(genoa_pki, ev).claims.to_dict()
    assert claims["provisional_firmware"] is True
    assert claims["firmware"]["current"] == {"major": 1, "minor": 55, "build": 41}
    assert claims["tcb"]["current"]["snp"] == reported.snp + 1


def test_chosen_fields_come_back_as_claims(genoa_pki: SnpDevPki) -> None:
    ev = snp_report(
        genoa_pki,
        measurement=b"\x11" * 48,
        host_data=b"\x22" * 32,
        family_id=b"\x33" * 16,
        image_id=b"\x44" * 16,
        id_key_digest=b"\x55" * 48,
        author_key_digest=b"\x66" * 48,
        author_key_en=True,
        guest_svn=7,
        policy=0x30000 | 1 << 19 | 1 << 20 | 1 << 25 | 0x0102,
        platform_info=0x1 | 1 << 7 | 1 << 40,
        now=SIM_AT,
    )
    claims = _verify(genoa_pki, ev).claims.to_dict()
    assert claims["measurement"] == "11" * 48 and claims["host_data"] == "22" * 32
    assert claims["family_id"] == "33" * 16 and claims["image_id"] == "44" * 16
    assert claims["id_key_digest"] == "55" * 48 and claims["author_key_digest"] == "66" * 48
    assert claims["author_key_en"] is True and claims["guest_svn"] == 7
    assert (
        claims["policy"]["debug"]
        and claims["policy"]["single_socket"]
        and claims["policy"]["page_swap_disable"]
    )
    assert claims["policy"]["abi_major"] == 1 and claims["policy"]["abi_minor"] == 2
    assert not claims["policy"]["migrate_ma"] and claims["policy"]["smt"]
    assert (
        claims["platform_info"]["sev_tio_enabled"]
        and claims["platform_info"]["reserved"] == f"{1 << 40:016x}"
    )


def test_crls_revoke_intermediates(fresh_genoa_pki: SnpDevPki) -> None:
    pki = fresh_genoa_pki
    ev = snp_report(pki, now=SIM_AT)
    assert "crl" in _verify(pki, ev, crls=[pki.crl("vcek"), pki.crl("vlek")], require_crl=True).checks
    serial = pki.revoke_intermediate("vcek", now=SIM_AT)
    with pytest.raises(VerificationError, match=rf"SEV-Genoa \(serial 0x{serial:x}\) is revoked") as exc:
        _verify(pki, ev, crls=[pki.crl("vcek")])
    assert exc.value.check == "crl"
    # The ASVK is not on the VCEK CRL's list: VLEK reports still verify with both CRLs given.
    vlek = snp_report(pki, signing_key="vlek", now=SIM_AT)
    _verify(pki, vlek, crls=[pki.crl("vlek")], require_crl=True)


def test_require_crl(genoa_pki: SnpDevPki) -> None:
    ev = snp_report(genoa_pki, now=SIM_AT)
    with pytest.raises(VerificationError, match="no CRL issued by ARK-Genoa was given") as exc:
        _verify(genoa_pki, ev, crls=())
    assert exc.value.check == "crl"
    real = REAL[2]
    # A CRL of another ARK does not apply (and does not count).
    with pytest.raises(VerificationError, match="no CRL issued by ARK-Milan"):
        verify_report(
            real.report, vcek_or_vlek=real.signer, at=CORPUS_AT, crls=[genoa_pki.crl()], require_crl=True
        )
    # waived, it is still not applied: only CRLs of the chain's ARK are
    verify_report(
        real.report, vcek_or_vlek=real.signer, at=CORPUS_AT, crls=[genoa_pki.crl()], require_crl=False
    )


def test_a_crl_is_required_unless_waived(genoa_pki: SnpDevPki) -> None:
    """The low-level entry point is secure by default: a caller who gives no CRL of the chain's ARK
    and does not waive the requirement by name is refused at ``crl`` (a revoked ASK/ASVK cannot pass
    by omission)."""
    dev = {"at": SIM_AT, "dev_roots": [genoa_pki.root_cert]}
    for kind in ("vcek", "vlek"):
        ev = snp_report(genoa_pki, signing_key=kind, now=SIM_AT)
        with pytest.raises(VerificationError, match="no CRL issued by ARK-Genoa was given") as exc:
            verify_report(ev.report, vcek_or_vlek=ev.signer, chain=ev.chain, **dev)
        assert exc.value.check == "crl"
        # the same report passes with its ARK's current CRL given, or with the requirement waived
        crls = [genoa_pki.crl(kind)]
        assert (
            "crl" in verify_report(ev.report, vcek_or_vlek=ev.signer, chain=ev.chain, crls=crls, **dev).checks
        )
        verify_report(ev.report, vcek_or_vlek=ev.signer, chain=ev.chain, require_crl=False, **dev)
    real = REAL[2]  # a real AMD-signed report: the same default
    with pytest.raises(VerificationError, match="no CRL issued by ARK-Milan was given") as exc:
        verify_report(real.report, vcek_or_vlek=real.signer, at=CORPUS_AT)
    assert exc.value.check == "crl"


def test_claims_digest_and_signer_identity(genoa_pki: SnpDevPki) -> None:
    ev = snp_report(genoa_pki, now=SIM_AT)
    verified = _verify(genoa_pki, ev)
    d = verified.to_dict()
    assert d["sim"] is True and d["signing_key"] == "vcek" and d["claims"]["tee"] == "snp"
    assert len(d["evidence_sha256"]) == 64 and len(d["signer_sha256"]) == 64
    assert d["claims"]["chip_id"] == genoa_pki.chip_id.hex()


def test_parse_errors_come_before_anything_else(genoa_pki: SnpDevPki) -> None:
    with pytest.raises(EvidenceParseError):
        verify_report(b"\x00" * 10, vcek_or_vlek=b"junk", at=SIM_AT)
