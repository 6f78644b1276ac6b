"""Simulated evidence through keybroker's own DCAP verifier with the dev root in ``dev_roots``."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import random
import struct
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from keybroker.errors import EvidenceError, VerificationError
from keybroker.tee.sim import (
    DEFAULT_MRENCLAVE,
    DEFAULT_MRSEAM,
    DEFAULT_MRSIGNER,
    DEFAULT_MRTD,
    DEFAULT_RTMRS,
    DEFAULT_SEAMSVN,
    PLATFORM_SGX,
    PLATFORM_TDX,
    ROOT_CA_CN,
    SGX_TCB,
    TCB_CHOICES,
    TDX_TCB,
    DevPki,
    TcbChoice,
    sgx_quote,
    tdx_quote,
)
from keybroker.tee.sim import quote as layout

pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")

verify_mod = pytest.importorskip("keybroker.tee.dcap.verify")
collateral_mod = pytest.importorskip("keybroker.tee.dcap.endorsements")

Tee = Literal["sgx", "tdx"]
REPORT_DATA = hashlib.sha512(b"keybroker verifier round trip").digest()


def _collateral(pki: DevPki, tee: Tee) -> Any:
    return collateral_mod.QuoteCollateral.from_json(pki.collateral_json(tee))


def _verify(pki: DevPki, quote: bytes, tee: Tee, at: dt.datetime, *, trust: bool = True) -> Any:
    roots = [pki.root_cert] if trust else []
    return verify_mod.verify_quote(quote, _collateral(pki, tee), at=at, dev_roots=roots)


def _quote(pki: DevPki, tee: Tee, **kw: Any) -> bytes:
    if tee == "sgx":
        return sgx_quote(pki, report_data=REPORT_DATA, **kw)
    return tdx_quote(pki, report_data=REPORT_DATA, **kw)


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
@pytest.mark.parametrize("tcb", [c for c in TCB_CHOICES if c != "revoked"])
def test_each_tcb_level_round_trips(pki: DevPki, tee: Tee, tcb: TcbChoice, at: dt.datetime) -> None:
    verified = _verify(pki, _quote(pki, tee, tcb=tcb), tee, at)
    level = (SGX_TCB if tee == "sgx" else TDX_TCB)[tcb]
    assert verified.status == level.status
    assert verified.advisory_ids == level.advisory_ids
    assert verified.sim is True and verified.root == "dev"
    assert verified.tee == tee
    platform = pki.platforms[PLATFORM_SGX if tee == "sgx" else PLATFORM_TDX]
    assert verified.fmspc == platform.fmspc.hex().upper()
    assert verified.pck_ca == platform.ca
    assert verified.report_data == REPORT_DATA
    assert verified.collateral_expiry == at - dt.timedelta(hours=1) + dt.timedelta(days=30)
    expected_checks = [c for c in verify_mod.CHECKS if tee == "tdx" or c != "tdx_module"]
    assert list(verified.checks) == expected_checks


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_revoked_tcb_level_is_rejected(pki: DevPki, tee: Tee, at: dt.datetime) -> None:
    with pytest.raises(VerificationError, match="TCB status is Revoked") as exc:
        _verify(pki, _quote(pki, tee, tcb="revoked"), tee, at)
    assert exc.value.check == "tcb_status"


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
@pytest.mark.parametrize("debug", [False, True])
def test_debug_is_a_claim_not_a_rejection(pki: DevPki, tee: Tee, debug: bool, at: dt.datetime) -> None:
    """Unlike dcap-qvl, keybroker's verifier leaves debug to policy: it is decoded as a claim."""
    verified = _verify(pki, _quote(pki, tee, debug=debug), tee, at)
    attributes = verified.claims.attributes if tee == "sgx" else verified.claims.td_attributes
    assert attributes.debug is debug
    assert verified.status == "UpToDate"


@pytest.mark.parametrize("sept_ve_disable", [False, True])
def test_sept_ve_disable_is_a_claim(pki: DevPki, sept_ve_disable: bool, at: dt.datetime) -> None:
    quote = tdx_quote(pki, report_data=REPORT_DATA, sept_ve_disable=sept_ve_disable)
    verified = _verify(pki, quote, "tdx", at)
    assert verified.claims.td_attributes.sept_ve_disable is sept_ve_disable
    assert verified.claims.td_attributes.debug is False


def test_sgx_chosen_fields_are_claims(pki: DevPki, at: dt.datetime) -> None:
    mrenclave, mrsigner = hashlib.sha256(b"enclave").digest(), hashlib.sha256(b"signer").digest()
    quote = sgx_quote(
        pki, report_data=REPORT_DATA, mrenclave=mrenclave, mrsigner=mrsigner, isvprodid=0xBEEF, isvsvn=42
    )
    claims = _verify(pki, quote, "sgx", at).claims
    assert (claims.mr_enclave, claims.mr_signer) == (mrenclave, mrsigner)
    assert (claims.isv_prod_id, claims.isv_svn) == (0xBEEF, 42)
    assert claims.report_data == REPORT_DATA
    assert claims.cpu_svn == SGX_TCB["uptodate"].cpusvn
    assert claims.attributes.flags == layout.SGX_ATTRIBUTES_INIT | layout.SGX_ATTRIBUTES_MODE64BIT
    defaults = _verify(pki, sgx_quote(pki, report_data=REPORT_DATA), "sgx", at).claims
    assert (defaults.mr_enclave, defaults.mr_signer) == (DEFAULT_MRENCLAVE, DEFAULT_MRSIGNER)
    assert (defaults.isv_prod_id, defaults.isv_svn) == (0, 0)


def test_tdx_chosen_fields_are_claims(pki: DevPki, at: dt.datetime) -> None:
    v = {
        n: hashlib.sha384(n.encode()).digest() for n in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrseam")
    }
    quote = tdx_quote(
        pki,
        report_data=REPORT_DATA,
        mrtd=v["mrtd"],
        rtmr0=v["rtmr0"],
        rtmr1=v["rtmr1"],
        rtmr2=v["rtmr2"],
        rtmr3=v["rtmr3"],
        mrseam=v["mrseam"],
        seamsvn=0x0109,
        tcb="swhardening",
    )
    verified = _verify(pki, quote, "tdx", at)
    claims = verified.claims
    assert verified.status == "SWHardeningNeeded"
    assert claims.mr_td == v["mrtd"]
    assert claims.rtmr == (v["rtmr0"], v["rtmr1"], v["rtmr2"], v["rtmr3"])
    assert claims.mr_seam == v["mrseam"]
    assert claims.mr_signer_seam == bytes(48)
    assert claims.seam_svn == 0x0109
    components = TDX_TCB["swhardening"].tdx_components
    assert components is not None
    assert claims.tee_tcb_svn == b"\x09\x01" + components[2:]
    assert claims.report_data == REPORT_DATA
    assert claims.td_attributes.value == layout.TD_ATTRIBUTES_SEPT_VE_DISABLE
    assert claims.td_report_version == "1.0"
    assert claims.mr_service_td is None
    defaults = _verify(pki, tdx_quote(pki, report_data=REPORT_DATA), "tdx", at).claims
    assert (defaults.mr_td, defaults.rtmr, defaults.mr_seam) == (DEFAULT_MRTD, DEFAULT_RTMRS, DEFAULT_MRSEAM)
    assert defaults.seam_svn == DEFAULT_SEAMSVN


def test_tdx_module_identity_must_match(pki: DevPki, at: dt.datetime) -> None:
    with pytest.raises(VerificationError) as exc:
        _verify(pki, tdx_quote(pki, report_data=REPORT_DATA, mrsignerseam=b"\x01" * 48), "tdx", at)
    assert exc.value.check == "tdx_module"


def test_revoked_pck_is_rejected(fresh_pki: DevPki, at: dt.datetime) -> None:
    sgx = sgx_quote(fresh_pki, report_data=REPORT_DATA)
    tdx = tdx_quote(fresh_pki, report_data=REPORT_DATA)
    assert _verify(fresh_pki, sgx, "sgx", at).status == "UpToDate"
    fresh_pki.revoke_pck(PLATFORM_SGX, now=at - dt.timedelta(minutes=30))
    with pytest.raises(VerificationError, match="is revoked by the PCK CRL") as exc:
        _verify(fresh_pki, sgx, "sgx", at)
    assert exc.value.check == "pck_crl"
    assert _verify(fresh_pki, tdx, "tdx", at).status == "UpToDate"


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_without_dev_trust_the_error_names_the_dev_root(pki: DevPki, tee: Tee, at: dt.datetime) -> None:
    with pytest.raises(VerificationError) as exc:
        _verify(pki, _quote(pki, tee), tee, at, trust=False)
    assert exc.value.check == "pck_chain"
    assert ROOT_CA_CN in str(exc.value) and pki.root_fingerprint in str(exc.value)


def test_another_dev_root_is_not_enough(pki: DevPki, fresh_pki: DevPki, at: dt.datetime) -> None:
    with pytest.raises(VerificationError) as exc:
        verify_mod.verify_quote(
            _quote(pki, "sgx"), _collateral(pki, "sgx"), at=at, dev_roots=[fresh_pki.root_cert]
        )
    assert exc.value.check == "pck_chain"


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_collateral_window(pki: DevPki, tee: Tee, issued: dt.datetime) -> None:
    quote = _quote(pki, tee)
    next_update = issued + dt.timedelta(days=30)
    for ok in (issued, next_update):  # keybroker's bounds are inclusive
        assert _verify(pki, quote, tee, ok).status == "UpToDate"
    for bad in (issued - dt.timedelta(seconds=1), next_update + dt.timedelta(seconds=1)):
        with pytest.raises(VerificationError) as exc:
            _verify(pki, quote, tee, bad)
        assert exc.value.check == "validity_window"


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_collateral_of_the_other_tee_is_rejected(pki: DevPki, tee: Tee, at: dt.datetime) -> None:
    other: Tee = "tdx" if tee == "sgx" else "sgx"
    with pytest.raises(VerificationError):
        verify_mod.verify_quote(_quote(pki, tee), _collateral(pki, other), at=at, dev_roots=[pki.root_cert])


def _pck_chain_start(tee: Tee, quote: bytes) -> int:
    """Offset of the PEM chain inside the type-5 certification data."""
    body_end = layout.HEADER_SIZE + (layout.SGX_REPORT_BODY_SIZE if tee == "sgx" else layout.TD_REPORT10_SIZE)
    auth = body_end + 4 + 64 + 64 + (0 if tee == "sgx" else 6) + layout.SGX_REPORT_BODY_SIZE + 64
    (auth_len,) = struct.unpack_from("<H", quote, auth)
    cert_header = auth + 2 + auth_len
    cert_type, cert_len = struct.unpack_from("<HI", quote, cert_header)
    assert cert_type == layout.CERT_TYPE_PCK_CHAIN and cert_header + 6 + cert_len == len(quote)
    return int(cert_header + 6)


@dataclass
class Sweep:
    quote: bytes
    accepted: list[tuple[int, bytes]] = field(default_factory=list)
    unclean: list[str] = field(default_factory=list)
    count: int = 0


def _sweep(pki: DevPki, tee: Tee, at: dt.datetime, region: Literal["signed", "pck_chain"]) -> Sweep:
    """Change each byte of ``region`` by a seeded non-zero XOR and verify every result."""
    quote = _quote(pki, tee)
    coll = _collateral(pki, tee)
    roots = [pki.root_cert]
    assert verify_mod.verify_quote(quote, coll, at=at, dev_roots=roots).status == "UpToDate"
    chain_start = _pck_chain_start(tee, quote)
    positions = range(chain_start) if region == "signed" else range(chain_start, len(quote))
    rng = random.Random(f"kb-sweep-{tee}-{region}")
    result = Sweep(quote)
    for i in positions:
        tampered = bytearray(quote)
        tampered[i] ^= rng.randrange(1, 256)
        result.count += 1
        try:
            verify_mod.verify_quote(bytes(tampered), coll, at=at, dev_roots=roots)
        except EvidenceError:
            continue
        except (
            UnsupportedAlgorithm,
            x509.DuplicateExtension,
            ValueError,
            TypeError,
            LookupError,
            ArithmeticError,
        ) as e:
            # a crash, not a verdict: the verifier should have raised EvidenceError
            result.unclean.append(f"offset {i}: {type(e).__name__}: {e}")
            continue
        result.accepted.append((i, bytes(tampered)))
    return result


@pytest.fixture(scope="module")
def chain_sweeps(pki: DevPki, at: dt.datetime) -> dict[Tee, Sweep]:
    return {tee: _sweep(pki, tee, at, "pck_chain") for tee in ("sgx", "tdx")}


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_every_single_byte_change_to_a_signed_region_is_rejected_cleanly(
    pki: DevPki, tee: Tee, at: dt.datetime
) -> None:
    """Full sweep over everything before the PCK chain: header, body, signature data length,
    quote signature, AK, (TDX: type-6 header), QE report, QE report signature, QE auth data
    and the type-5 header. Each change is rejected with an EvidenceError."""
    sweep = _sweep(pki, tee, at, "signed")
    assert sweep.count == _pck_chain_start(tee, sweep.quote) > 1000
    assert [i for i, _ in sweep.accepted] == []
    assert sweep.unclean == []


def _same_certificates(pem: bytes, tampered: bytes) -> bool:
    """Whether a changed PEM still decodes to the same DER certificates (e.g. newline -> other
    whitespace): then nothing signed changed and accepting it is correct."""
    try:
        return x509.load_pem_x509_certificates(tampered) == x509.load_pem_x509_certificates(pem)
    except ValueError:
        return False


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_no_single_byte_change_to_the_pck_certificates_is_accepted(
    chain_sweeps: dict[Tee, Sweep], tee: Tee
) -> None:
    """Full sweep over the PEM chain: a change is accepted only if the DER certificates are
    unchanged (whitespace substitutions in the PEM text)."""
    sweep = chain_sweeps[tee]
    start = _pck_chain_start(tee, sweep.quote)
    assert sweep.count > 3000
    changed = [i for i, t in sweep.accepted if not _same_certificates(sweep.quote[start:], t[start:])]
    assert changed == []
    assert len(sweep.accepted) < 10


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_every_single_byte_change_to_the_pck_chain_is_rejected_cleanly(
    chain_sweeps: dict[Tee, Sweep], tee: Tee
) -> None:
    """No crash leaks out of certificate decoding (UnsupportedAlgorithm, DuplicateExtension,
    ValueError were seen before the verifier decoded certificates eagerly)."""
    assert chain_sweeps[tee].unclean == []


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_pcs_form_files_assemble_to_the_same_collateral(pki: DevPki, tee: Tee, at: dt.datetime) -> None:
    """The PCS-form files (bodies + issuer-chain header values) are the same collateral."""
    d = pki.directory
    ca = pki.platforms[PLATFORM_SGX if tee == "sgx" else PLATFORM_TDX].ca
    from_pcs = collateral_mod.QuoteCollateral.from_pcs(
        tcb_info_body=(d / f"tcbinfo-{tee}.json").read_text(),
        tcb_info_issuer_chain=(d / "tcb-signing-chain.pem").read_text(),
        qe_identity_body=(d / ("qe-identity.json" if tee == "sgx" else "td-qe-identity.json")).read_text(),
        qe_identity_issuer_chain=(d / "tcb-signing-chain.pem").read_text(),
        pck_crl=(d / f"pck-{ca}-crl.der").read_bytes(),
        pck_crl_issuer_chain=(d / f"pck-{ca}-crl-chain.pem").read_text(),
        root_ca_crl=(d / "root-crl.der").read_bytes(),
    )
    assert from_pcs == _collateral(pki, tee)
    verified = verify_mod.verify_quote(_quote(pki, tee), from_pcs, at=at, dev_roots=[pki.root_cert])
    assert verified.status == "UpToDate"


def _with_mangled_leaf(tee: Tee, quote: bytes, old: bytes, new: bytes) -> bytes:
    """The quote with ``old`` replaced by ``new`` (same length) inside the PCK leaf's DER."""
    start = _pck_chain_start(tee, quote)
    pem = quote[start:]
    first_end = pem.index(b"-----END CERTIFICATE-----\n") + len(b"-----END CERTIFICATE-----\n")
    der = x509.load_pem_x509_certificate(pem[:first_end]).public_bytes(serialization.Encoding.DER)
    assert der.count(old) == 1 and len(old) == len(new)
    body = base64.encodebytes(der.replace(old, new))
    b64 = b"".join(body.split())
    lines = b"\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    leaf_pem = b"-----BEGIN CERTIFICATE-----\n" + lines + b"\n-----END CERTIFICATE-----\n"
    assert len(leaf_pem) == first_end
    return quote[:start] + leaf_pem + pem[first_end:]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param(
            b"\x06\x03\x55\x1d\x0e",
            b"\x06\x03\x55\x1d\x0f",
            id="SKI-OID-to-KU-OID",
        ),
        pytest.param(
            bytes.fromhex("06082a8648ce3d030107"),
            bytes.fromhex("06082a8648ce3d03010b"),
            id="P256-curve-OID-changed",
        ),
    ],
)
@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_mangled_pck_leaf_is_rejected_cleanly(
    pki: DevPki, tee: Tee, old: bytes, new: bytes, at: dt.datetime
) -> None:
    """Regression vectors from the PCK chain sweep: an error, but an EvidenceError."""
    quote = _with_mangled_leaf(tee, _quote(pki, tee), old, new)
    with pytest.raises(EvidenceError):
        _verify(pki, quote, tee, at)
