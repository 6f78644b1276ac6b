"""Property tests seeded from corpus quotes.

* A changed byte is rejected: every byte of three real quotes (SGX v3, TDX v4 with configfs
  padding, TDX v5 1.5ex) is changed once, and each change must be rejected by a check that covers
  that byte (``tests/helpers/quote_layout.py`` says which signature, hash or structure does).
  Bytes outside any signature (lengths and types, PEM framing, padding) are no exception: a change
  to one is rejected too, except the few changes that leave the verdict as it was (a line break
  swapped for another in the PEM chain; zero padding added), checked on their own.
* Any input yields a result or a clean rejection: ``parse_quote`` may raise only
  ``EvidenceParseError``; ``verify_quote`` only ``EvidenceParseError``, ``VerificationError`` or
  ``CollateralError``; the collateral loaders only ``CollateralError``; the PCK extension reader
  only ``EvidenceParseError``. Anything else (IndexError, struct.error, ValueError from a lazily
  decoded certificate...) is a bug.
"""

from __future__ import annotations

import base64
import dataclasses
import struct
from collections import Counter
from datetime import UTC, datetime

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.helpers.quote_layout import Cover, pem_blocks, regions
from tests.vectors.corpus import case, read_bytes, read_text, verify_at

from keybroker.errors import CollateralError, EvidenceParseError, VerificationError
from keybroker.tee.dcap.abi import Quote, parse_quote
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.pck import SGX_EXTENSIONS_OID, parse_sgx_extensions_der, split_pem_chain
from keybroker.tee.dcap.verify import verify_quote

SEEDS = [
    case(i)
    for i in (
        "dcap-sgx-phala",
        "dcap-tdx-phala",
        "dcap-tdx15ex-nopckchain",
        "dcap-tdxv5-gtdx-on-phala-coll",
        "dcap-tdx-gcp-cos113-2025-06",
    )
]
QUOTES = [read_bytes(c["quote"]) for c in SEEDS]
COLLATERALS = [QuoteCollateral.from_json(read_text(c["collateral"])) for c in SEEDS]
TIMES = [verify_at(c) for c in SEEDS]
FUZZ = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)

#: The checks that may refuse a change to bytes of each kind (``parse`` for EvidenceParseError).
REFUSED_BY: dict[Cover, set[str]] = {
    "attestation key": {"parse", "qe_vendor_id", "quote_signature"},
    "QE report data": {"qe_report_data"},
    "PCK key": {"parse", "qe_report_signature"},
    "signature": {"quote_signature", "qe_report_signature"},
    "structure": {"parse", "pck_chain"},
    "PCK chain": {"parse", "pck_chain"},
    "padding": {"parse"},
}
#: Every byte outside the PEM chain is changed; inside it, every PEM_STRIDE-th byte (the chain's
#: bytes all fail the same few ways, and each costs a certificate chain verification).
PEM_STRIDE = 7


def _flip(raw: bytes, pos: int) -> bytes:
    """One bit of byte ``pos`` flipped; which bit rotates with the position."""
    return raw[:pos] + bytes([raw[pos] ^ (1 << (pos % 8))]) + raw[pos + 1 :]


@pytest.mark.parametrize("i", range(3), ids=[c["id"] for c in SEEDS[:3]])
def test_every_changed_byte_is_rejected_by_the_check_that_covers_it(i: int) -> None:
    quote, collateral, at = QUOTES[i], COLLATERALS[i], TIMES[i]
    verify_quote(quote, collateral, at=at)  # the seed itself verifies
    refused: Counter[tuple[Cover, str]] = Counter()
    for region in regions(quote):
        step = PEM_STRIDE if region.cover == "PCK chain" else 1
        for pos in range(region.start + (i % step), region.end, step):
            try:
                verify_quote(_flip(quote, pos), collateral, at=at)
            except EvidenceParseError:
                refused[region.cover, "parse"] += 1
            except VerificationError as exc:
                assert exc.check in REFUSED_BY[region.cover], (region.name, pos, str(exc))
                refused[region.cover, exc.check] += 1
            else:
                raise AssertionError(f"a change at {pos} ({region.name}) was accepted")
    covers = {cover for cover, _ in refused}
    assert covers == set(REFUSED_BY) - ({"padding"} if parse_quote(quote).trailing_size == 0 else set())
    # the signatures and the QE report data hash each did their part
    for cover, check in [
        ("attestation key", "quote_signature"),
        ("QE report data", "qe_report_data"),
        ("PCK key", "qe_report_signature"),
        ("PCK chain", "pck_chain"),
    ]:
        assert refused[cover, check] > 0, (cover, check)


@pytest.mark.parametrize("i", range(3), ids=[c["id"] for c in SEEDS[:3]])
def test_unsigned_encoding_changes_that_keep_the_verdict(i: int) -> None:
    """The only changes accepted: PEM line breaks (the DER they frame is what is signed) and zero
    padding. They leave every verified fact as it was; padding does not even change the digest."""
    quote, collateral, at = QUOTES[i], COLLATERALS[i], TIMES[i]
    baseline = verify_quote(quote, collateral, at=at)
    start, end = pem_blocks(quote)[0]
    newline = quote.index(b"\n", start, end)
    crlf_framed = quote[:newline] + b"\r" + quote[newline + 1 :]
    reframed = verify_quote(crlf_framed, collateral, at=at)
    assert reframed.evidence_sha256 != baseline.evidence_sha256
    assert dataclasses.replace(reframed, evidence_sha256=baseline.evidence_sha256) == baseline
    padded = verify_quote(quote + bytes(512), collateral, at=at)
    assert padded == baseline


edits = st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=4)


def _mutate(raw: bytes, changes: list[tuple[int, int]]) -> bytes:
    out = bytearray(raw)
    for pos, value in changes:
        out[pos % len(out)] = value
    return bytes(out)


@FUZZ
@given(st.sampled_from(range(len(QUOTES))), edits, st.integers(0, 6000))
def test_parse_quote_mutations(i: int, changes: list[tuple[int, int]], cut: int) -> None:
    mutated = _mutate(QUOTES[i], changes)[: max(cut, 0) or None]
    try:
        parse_quote(mutated)
    except EvidenceParseError as exc:
        assert exc.field is not None


@FUZZ
@given(st.binary(max_size=2048))
def test_parse_quote_arbitrary_bytes(data: bytes) -> None:
    try:
        parse_quote(data)
    except EvidenceParseError:
        pass


@FUZZ
@given(st.sampled_from(range(len(QUOTES))), edits)
def test_verify_quote_mutations(i: int, changes: list[tuple[int, int]]) -> None:
    try:
        verify_quote(_mutate(QUOTES[i], changes), COLLATERALS[i], at=TIMES[i])
    except (EvidenceParseError, VerificationError, CollateralError):
        pass


def _with_chain(raw: bytes, quote: Quote, pem: bytes) -> bytes:
    """The quote with its PCK chain replaced and every enclosing length field adjusted."""
    cert = quote.signature.certification
    delta = len(pem) - len(cert.data)
    out = bytearray(raw[: cert.offset] + pem + raw[cert.offset + len(cert.data) :])
    body_end = len(quote.signed_data)

    def bump(at: int) -> None:
        struct.pack_into("<I", out, at, struct.unpack_from("<I", out, at)[0] + delta)

    bump(cert.offset - 4)
    if quote.header.version >= 4:
        bump(body_end + 4 + 128 + 2)
    bump(body_end)
    return bytes(out)


@FUZZ
@given(st.sampled_from(range(len(QUOTES))), st.integers(0, 2), edits)
def test_verify_quote_with_mutated_certificates(i: int, which: int, changes: list[tuple[int, int]]) -> None:
    """Mutate the DER of one PCK chain certificate (re-encoded as valid PEM) to reach the X.509 code."""
    quote = parse_quote(QUOTES[i])
    pem = quote.signature.pck_chain_pem
    assert pem is not None
    ders = list(split_pem_chain(pem))
    ders[which] = _mutate(ders[which], changes)
    new_pem = b"".join(
        b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(d) + b"-----END CERTIFICATE-----\n"
        for d in ders
    )
    mutated = _with_chain(QUOTES[i], quote, new_pem + b"\x00")
    try:
        verify_quote(mutated, COLLATERALS[i], at=TIMES[i])
    except (EvidenceParseError, VerificationError, CollateralError):
        pass


def test_chain_replacement_helper_round_trips() -> None:
    quote = parse_quote(QUOTES[1])
    pem = quote.signature.pck_chain_pem
    assert pem is not None
    assert _with_chain(QUOTES[1], quote, pem) == QUOTES[1]
    assert verify_quote(_with_chain(QUOTES[1], quote, pem + b"\x00"), COLLATERALS[1], at=TIMES[1]).status


COLLATERAL_TEXT = read_text("intel-dcap/phala-dcap-qvl/tdx_quote_collateral.json")


@FUZZ
@given(edits)
def test_collateral_json_mutations(changes: list[tuple[int, int]]) -> None:
    data = _mutate(COLLATERAL_TEXT.encode(), changes)
    try:
        coll = QuoteCollateral.from_json(data)
    except CollateralError:
        return
    try:
        verify_quote(QUOTES[1], coll, at=datetime.fromtimestamp(case("dcap-tdx-phala")["verify_at"], UTC))
    except (EvidenceParseError, VerificationError, CollateralError):
        pass


PCS = COLLATERALS[1].to_pcs()


@FUZZ
@given(st.sampled_from(["tcb_info_body", "qe_identity_body", "tcb_info_issuer_chain", "pck_crl"]), edits)
def test_pcs_loader_mutations(key: str, changes: list[tuple[int, int]]) -> None:
    args = dict(PCS)
    value = args[key]
    mutated = _mutate(value if isinstance(value, bytes) else value.encode(), changes)
    args[key] = mutated if isinstance(value, bytes) else mutated.decode("latin-1")  # type: ignore[literal-required]
    try:
        QuoteCollateral.from_pcs(**args)  # type: ignore[arg-type]
    except CollateralError:
        pass


_LEAF = x509.load_der_x509_certificate(
    split_pem_chain(parse_quote(QUOTES[0]).signature.pck_chain_pem or b"")[0]
)
_EXT = _LEAF.extensions.get_extension_for_oid(SGX_EXTENSIONS_OID).value
assert isinstance(_EXT, x509.UnrecognizedExtension)
SGX_EXTENSION = _EXT.value


@FUZZ
@given(edits, st.integers(0, 600))
def test_pck_extension_mutations(changes: list[tuple[int, int]], cut: int) -> None:
    try:
        parse_sgx_extensions_der(_mutate(SGX_EXTENSION, changes)[: cut or None])
    except EvidenceParseError:
        pass
