"""Collateral items: one root for the four pieces of a quote's collateral; undecodable pieces are
``CollateralError`` (never another exception)."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from tests.unit.collateral.conftest import SIM_ISSUED

from keybroker.collateral.items import (
    TrustedRoots,
    collateral_from_items,
    items_from_collateral,
    pck_crl_item,
    root_ca_crl_item,
    signed_item,
)
from keybroker.errors import CollateralError, VerificationError
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.verify import verify_quote
from keybroker.tee.sim import DevPki, sgx_quote


@pytest.fixture(scope="module")
def two_pkis(tmp_path_factory: pytest.TempPathFactory) -> tuple[DevPki, DevPki]:
    base = tmp_path_factory.mktemp("items-two-roots")
    return DevPki.create(base / "a", now=SIM_ISSUED), DevPki.create(base / "b", now=SIM_ISSUED)


def test_pieces_of_two_roots_are_not_assembled(two_pkis: tuple[DevPki, DevPki]) -> None:
    """With two trusted roots, a quote's collateral is four pieces of one root: the verifier reads
    that root's CRL, so pieces of the other root would leave the first root's CRL unread."""
    a, b = two_pkis
    roots = TrustedRoots([a.root_cert, b.root_cert])
    items_a = items_from_collateral(QuoteCollateral.from_json(a.collateral_json("sgx")), roots)
    items_b = items_from_collateral(QuoteCollateral.from_json(b.collateral_json("sgx")), roots)
    assert collateral_from_items(*items_a) == QuoteCollateral.from_json(a.collateral_json("sgx"))
    for i in range(4):
        mixed = [*items_b]
        mixed[i] = items_a[i]
        with pytest.raises(CollateralError, match="2 different roots"):
            collateral_from_items(*mixed)


def _mutations(der: bytes) -> list[bytes]:
    """Every byte of ``der`` changed once (a rotating single-bit flip), and a few truncations."""
    out = [der[:i] + bytes([der[i] ^ (1 << (i % 8))]) + der[i + 1 :] for i in range(len(der))]
    return out + [der[:n] for n in (0, 1, len(der) // 2, len(der) - 1)]


def test_undecodable_pieces_are_collateral_errors(two_pkis: tuple[DevPki, DevPki]) -> None:
    """Every single-byte change to a CRL or to the signer certificate of an issuer chain is refused
    as a CollateralError: cryptography's lazy decoding never leaks a ValueError from here."""
    a, _ = two_pkis
    roots = TrustedRoots([a.root_cert])
    coll = QuoteCollateral.from_json(a.collateral_json("sgx"))
    root_pem = a.root_cert.public_bytes(Encoding.PEM).decode()
    refused = 0
    for der in _mutations(coll.pck_crl):
        try:
            pck_crl_item(der, coll.pck_crl_issuer_chain, roots)
        except CollateralError:
            refused += 1
    for der in _mutations(coll.root_ca_crl):
        try:
            root_ca_crl_item(der, roots)
        except CollateralError:
            refused += 1
    signer = a.tcb_signing.cert.public_bytes(Encoding.DER)
    for der in _mutations(signer):
        pem = (
            "-----BEGIN CERTIFICATE-----\n"
            + base64.encodebytes(der).decode()
            + "-----END CERTIFICATE-----\n"
            + root_pem
        )
        try:
            signed_item("tcb_info", coll.tcb_info, coll.tcb_info_signature, pem, roots)
        except CollateralError:
            refused += 1
    # Every change is refused: the signed part, the signature, the structure, and the one unsigned
    # byte cryptography would ignore (the signature BIT STRING's unused-bits count).
    assert refused == len(_mutations(coll.pck_crl)) + len(_mutations(coll.root_ca_crl)) + len(
        _mutations(signer)
    )


def test_the_cache_refuses_a_signer_the_quote_verifier_refuses(two_pkis: tuple[DevPki, DevPki]) -> None:
    """One trust decision for both: a TCB Info signed by a "TCB Signing" certificate that the quote
    verifier refuses (here an unknown critical extension; before, the cache checked only the name,
    the CA flag and the root's signature) is not stored either. The cache used to accept it, and
    every quote of that platform then failed at collateral_chains."""
    a, _ = two_pkis
    roots = TrustedRoots([a.root_cert])
    coll = QuoteCollateral.from_json(a.collateral_json("sgx"))
    key = ec.generate_private_key(ec.SECP256R1())
    signer = (
        x509.CertificateBuilder()
        .subject_name(a.tcb_signing.cert.subject)
        .issuer_name(a.root_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(a.tcb_signing.cert.not_valid_before_utc)
        .not_valid_after(a.tcb_signing.cert.not_valid_after_utc)
        .add_extension(
            x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00"),
            critical=True,
        )
        .sign(a.root.key, hashes.SHA256())
    )
    r, s = decode_dss_signature(key.sign(coll.tcb_info.encode(), ec.ECDSA(hashes.SHA256())))
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    chain = (signer.public_bytes(Encoding.PEM) + a.root_cert.public_bytes(Encoding.PEM)).decode()

    with pytest.raises(CollateralError, match="unknown critical extension 1.3.6.1.4.1.55555.1"):
        signed_item("tcb_info", coll.tcb_info, signature, chain, roots)

    # the quote verifier's verdict on the same collateral, for the same reason
    doc = json.loads(a.collateral_json("sgx"))
    doc.update(tcb_info_issuer_chain=chain, tcb_info_signature=signature.hex())
    quote = sgx_quote(a, report_data=bytes(64))
    with pytest.raises(VerificationError, match="unknown critical extension") as failed:
        verify_quote(
            quote,
            QuoteCollateral.from_json(json.dumps(doc)),
            at=SIM_ISSUED + dt.timedelta(hours=1),
            dev_roots=[a.root_cert],
        )
    assert failed.value.check == "collateral_chains"
