"""Collateral loaders: dcap-qvl JSON and Intel PCS/PCCS v4 form, round trips, typed views, errors."""

from __future__ import annotations

import json
import urllib.parse
from datetime import UTC, datetime

import dcap_qvl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from tests.vectors.corpus import load_cases, read_bytes, read_text

from keybroker.errors import CollateralError
from keybroker.tee.dcap.endorsements import QuoteCollateral, parse_enclave_identity, parse_tcb_info

GTDX = "intel-dcap/google-go-tdx-guest/"
ASSEMBLED_50806F = "intel-dcap/assembled/tdx_50806F000000_2023-06.json"
COLLATERAL_FILES = sorted({c["collateral"] for c in load_cases("dcap")})


def _pcs_50806f(**overrides: object) -> QuoteCollateral:
    args: dict[str, object] = {
        "tcb_info_body": read_bytes(GTDX + "sample_tcbInfo_response"),
        "tcb_info_issuer_chain": urllib.parse.quote(read_text(GTDX + "tcbInfoIssuerChain.pem"), safe=""),
        "qe_identity_body": read_text(GTDX + "sample_qeIdentity_response"),
        "qe_identity_issuer_chain": read_text(GTDX + "qeIdentityIssuerChain.pem"),
        "pck_crl": read_bytes(GTDX + "pckcrl"),
        "pck_crl_issuer_chain": urllib.parse.quote(read_text(GTDX + "pckCrlIssuerChain.pem")),
        "root_ca_crl": read_bytes(GTDX + "rootcrl.der"),
    }
    args.update(overrides)
    return QuoteCollateral.from_pcs(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("rel", COLLATERAL_FILES)
def test_json_round_trip(rel: str) -> None:
    text = read_text(rel)
    coll = QuoteCollateral.from_json(text)
    again = QuoteCollateral.from_json(coll.to_json())
    assert again == coll and again.digest == coll.digest
    assert json.loads(coll.to_json()) == json.loads(text)  # same fields and values as the source
    assert coll.fmspc == coll.fmspc.upper() and len(coll.fmspc) == 12


def test_to_json_is_loadable_by_dcap_qvl() -> None:
    coll = QuoteCollateral.from_json(read_text("intel-dcap/phala-dcap-qvl/sgx_quote_collateral.json"))
    theirs = dcap_qvl.QuoteCollateralV3.from_json(coll.to_json())
    assert theirs.tcb_info == coll.tcb_info
    assert bytes(theirs.pck_crl) == coll.pck_crl


def test_from_pcs_equals_the_assembled_json() -> None:
    pcs = _pcs_50806f()
    assert pcs == QuoteCollateral.from_json(read_text(ASSEMBLED_50806F))
    assert pcs.tee == "tdx" and pcs.fmspc == "50806F000000" and pcs.pck_ca == "platform"


def test_pcs_round_trip_keeps_signed_bytes() -> None:
    coll = QuoteCollateral.from_json(read_text("intel-dcap/phala-dcap-qvl/tdx_quote_collateral.json"))
    pcs = coll.to_pcs()
    assert pcs["tcb_info_body"].startswith('{"tcbInfo":' + coll.tcb_info)
    assert "%0A" in pcs["tcb_info_issuer_chain"]  # URL-encoded PEM, as the headers carry it
    back = QuoteCollateral.from_pcs(**pcs)
    assert back == coll


def test_pcs_crl_encodings() -> None:
    der = read_bytes(GTDX + "pckcrl")
    assert _pcs_50806f(pck_crl=der.hex()).pck_crl == der
    pem = x509.load_der_x509_crl(der).public_bytes(Encoding.PEM)
    assert _pcs_50806f(pck_crl=pem).pck_crl == der
    with pytest.raises(CollateralError, match="neither DER, PEM nor hex"):
        _pcs_50806f(pck_crl=b"not a crl")


@pytest.mark.parametrize(
    "body",
    [
        '{"tcbInfo":{"a":1}}',
        '{"tcbInfo":{},"signature":"00","extra":1}',
        '{"tcbInfo":{},"tcbInfo":{},"signature":"00"}',
        '["tcbInfo"]',
        '{"tcbInfo":{},"signature":"00"} trailing',
        '{"tcbInfo":{"x":[1,2}, "signature": "00"}',
    ],
)
def test_pcs_body_shape_is_strict(body: str) -> None:
    with pytest.raises(CollateralError):
        _pcs_50806f(tcb_info_body=body)


def test_pcs_body_whitespace_is_tolerated_and_inner_bytes_kept() -> None:
    raw = read_text(GTDX + "sample_tcbInfo_response")
    inner_start = raw.index("{", 1)
    inner_end = raw.rindex(',"signature"')
    spaced = '{ "tcbInfo" : ' + raw[inner_start:inner_end] + ' ,\n "signature" : ' + raw[inner_end + 13 :]
    coll = _pcs_50806f(tcb_info_body=spaced)
    assert coll.tcb_info == raw[inner_start:inner_end]


def _json_variant(**changes: object) -> str:
    doc = json.loads(read_text("intel-dcap/phala-dcap-qvl/sgx_quote_collateral.json"))
    for key, value in changes.items():
        if value is None:
            del doc[key]
        else:
            doc[key] = value
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pck_crl": None}, "missing keys"),
        ({"bogus": "x"}, "unknown keys"),
        ({"pck_crl": "zz"}, "not hex"),
        ({"tcb_info_signature": "00" * 63}, "expected 64 bytes"),
        ({"tcb_info": "{"}, "not valid JSON"),
        ({"tcb_info_issuer_chain": "nope"}, "PEM"),
        ({"root_ca_crl": "3000"}, "not a DER CRL"),
        ({"qe_identity": 5}, "expected a string"),
    ],
)
def test_json_errors(changes: dict[str, object], message: str) -> None:
    with pytest.raises(CollateralError, match=message):
        QuoteCollateral.from_json(_json_variant(**changes))


def test_non_object_json() -> None:
    with pytest.raises(CollateralError):
        QuoteCollateral.from_json("[]")
    with pytest.raises(CollateralError):
        QuoteCollateral.from_json(b"\xff")


def test_tcb_info_v2_pcs_body() -> None:
    raw = read_text("intel-dcap/automata-dcap/0625/tcbinfo.json")
    inner = raw[raw.index("{", 1) : raw.rindex(',"signature"')]
    info = parse_tcb_info(inner)
    assert info.version == 2 and info.id == "SGX" and info.fmspc.hex() == "00606a000000"
    assert info.tcb_levels[0].sgx_components[:4] == (14, 14, 3, 3)
    assert info.tcb_levels[0].tdx_components is None


def test_typed_views_of_tdx_collateral() -> None:
    coll = QuoteCollateral.from_json(read_text("intel-dcap/phala-dcap-qvl/tdx_quote_collateral.json"))
    info = coll.parsed_tcb_info
    assert info.id == "TDX" and info.version == 3 and info.tdx_module is not None
    assert [i.id for i in info.tdx_module_identities] == ["TDX_03", "TDX_01"]
    assert all(level.tdx_components is not None for level in info.tcb_levels)
    qe = coll.parsed_qe_identity
    assert qe.id == "TD_QE" and qe.isvprodid == 2 and qe.miscselect_mask == 0xFFFFFFFF
    assert coll.tcb_info_next_update == datetime(2025, 7, 19, 10, 16, 3, tzinfo=UTC)
    assert coll.next_update == datetime(2025, 7, 19, 10, 0, 35, tzinfo=UTC)  # the PCK CRL's
    assert coll.tcb_evaluation_data_number == 17 and coll.pce_id == "0000"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(version=4), "version 4 is not supported"),
        (lambda d: d.update(tcbType=1), "tcbType 1"),
        (lambda d: d.update(fmspc="00"), "fmspc"),
        (lambda d: d.update(issueDate="2025-06-19 10:00"), "issueDate"),
        (lambda d: d["tcbLevels"][0].update(tcbStatus="Fine"), "unknown status"),
        (lambda d: d["tcbLevels"][0]["tcb"]["sgxtcbcomponents"].pop(), "16 components"),
        (lambda d: d["tcbLevels"][0]["tcb"].update(pcesvn=-1), "pcesvn"),
        (lambda d: d.update(tcbLevels=[]), "empty"),
        (lambda d: d.update(id="SEV"), "neither SGX nor TDX"),
    ],
)
def test_tcb_info_validation(mutate: object, message: str) -> None:
    coll = json.loads(read_text("intel-dcap/phala-dcap-qvl/tdx_quote_collateral.json"))
    doc = json.loads(coll["tcb_info"])
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(CollateralError, match=message):
        parse_tcb_info(json.dumps(doc))


def test_enclave_identity_validation() -> None:
    coll = json.loads(read_text("intel-dcap/phala-dcap-qvl/tdx_quote_collateral.json"))
    doc = json.loads(coll["qe_identity"])
    doc["id"] = "XE"
    with pytest.raises(CollateralError, match="not QE, TD_QE or QVE"):
        parse_enclave_identity(json.dumps(doc))
    doc["id"], doc["version"] = "QE", 1
    with pytest.raises(CollateralError, match="version 1"):
        parse_enclave_identity(json.dumps(doc))


@pytest.mark.parametrize(
    "rel",
    [
        "intel-dcap/phala-dcap-qvl/tdx_quote_collateral.json",
        "intel-dcap/phala-dcap-qvl/sgx_quote_collateral.json",
    ],
)
def test_level_order_does_not_depend_on_the_json_order(rel: str) -> None:
    """Intel publishes levels highest first; shuffled, they parse to the same order (QVL's)."""
    coll = json.loads(read_text(rel))
    tcb, qe = json.loads(coll["tcb_info"]), json.loads(coll["qe_identity"])
    assert len(tcb["tcbLevels"]) >= 2  # the SGX QE identity has several levels too, TD_QE one
    as_published = (
        parse_tcb_info(json.dumps(tcb)).tcb_levels,
        parse_enclave_identity(json.dumps(qe)).tcb_levels,
    )
    for doc in (tcb, qe):
        doc["tcbLevels"].reverse()
        doc["tcbLevels"].insert(1, doc["tcbLevels"].pop())
    assert parse_tcb_info(json.dumps(tcb)).tcb_levels == as_published[0]
    assert parse_enclave_identity(json.dumps(qe)).tcb_levels == as_published[1]
    for doc in tcb["tdxModuleIdentities"] if "tdxModuleIdentities" in tcb else []:
        doc["tcbLevels"].reverse()
    levels = [i.tcb_levels for i in parse_tcb_info(json.dumps(tcb)).tdx_module_identities]
    assert all(list(lv) == sorted(lv, key=lambda m: m.isvsvn, reverse=True) for lv in levels)
