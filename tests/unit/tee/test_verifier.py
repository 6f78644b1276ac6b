"""The TEE-independent verifier: report-data binding, TEE match, collateral lookup."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keybroker.errors import CollateralNotFound, InvalidInput, VerificationError
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.plugin import dcap_verifiers
from keybroker.tee.dcap.sources import StaticCollateral
from keybroker.tee.sim import DevPki, sgx_quote, tdx_quote
from keybroker.tee.verifier import NO_REPORT_DATA, Verifier


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return DevPki.create(Path(tmp_path_factory.mktemp("pki")))


def _source(pki: DevPki) -> StaticCollateral:
    return StaticCollateral(QuoteCollateral.from_json(pki.collateral_json(t)) for t in ("sgx", "tdx"))


def _verifier(pki: DevPki, *, dev: bool = True) -> Verifier:
    return Verifier(dcap_verifiers(_source(pki), [pki.root_cert] if dev else []))


def test_report_data_must_match_all_64_bytes(pki: DevPki) -> None:
    rd = os.urandom(64)
    quote = tdx_quote(pki, report_data=rd)
    v = _verifier(pki)
    assert v.verify("tdx", quote, rd).sim is True
    assert v.verify("tdx", quote, NO_REPORT_DATA).report_data == rd
    with pytest.raises(VerificationError) as exc:
        v.verify("tdx", quote, rd[:63] + bytes([rd[63] ^ 1]))
    assert exc.value.check == "report_data"


def test_tee_mismatch(pki: DevPki) -> None:
    quote = sgx_quote(pki, report_data=bytes(64))
    with pytest.raises(VerificationError) as exc:
        _verifier(pki).verify("tdx", quote, NO_REPORT_DATA)
    assert exc.value.check == "tee_type"
    with pytest.raises(InvalidInput):
        _verifier(pki).verify("snp", quote, NO_REPORT_DATA)


def test_untrusted_dev_root_rejected(pki: DevPki) -> None:
    quote = sgx_quote(pki, report_data=bytes(64))
    with pytest.raises(VerificationError) as exc:
        _verifier(pki, dev=False).verify("sgx", quote, NO_REPORT_DATA)
    assert exc.value.check == "pck_chain"


def test_missing_collateral_names_what_was_asked(pki: DevPki) -> None:
    quote = sgx_quote(pki, report_data=bytes(64))
    v = Verifier(dcap_verifiers(StaticCollateral(), [pki.root_cert]))
    with pytest.raises(CollateralNotFound, match="FMSPC 00DE5C000000"):
        v.verify("sgx", quote, NO_REPORT_DATA)


def test_injected_clock(pki: DevPki) -> None:
    quote = sgx_quote(pki, report_data=bytes(64))
    late = Verifier(
        dcap_verifiers(_source(pki), [pki.root_cert]),
        clock=lambda: datetime.now(UTC) + timedelta(days=400),
    )
    with pytest.raises(VerificationError):
        late.verify("sgx", quote, NO_REPORT_DATA)
