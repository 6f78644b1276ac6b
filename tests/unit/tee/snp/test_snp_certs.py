"""The VCEK/VLEK chain: pinned roots, names, signature scheme, extensions, tampering, CRLs, dev roots."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from tests.unit.tee.snp.conftest import CORPUS_AT, ISSUED, SIM_AT
from tests.vectors.corpus import CORPUS, read_bytes

from keybroker.errors import EvidenceParseError, VerificationError
from keybroker.tee.sim import _der
from keybroker.tee.sim.snp import SnpDevPki, snp_report
from keybroker.tee.snp import certs
from keybroker.tee.snp.abi import Tcb
from keybroker.tee.snp.certs import (
    ARK_SPKI_SHA256,
    RSA_PSS_SHA384,
    amd_roots,
    check_crls,
    load_certificate_ders,
    parse_amd_extensions,
    verify_chain,
)
from keybroker.tee.snp.verify import verify_report

# AMD's VCEKs and VLEKs have serial number 0: cryptography warns (keybroker silences it outside pytest).
pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number")

MILAN_CHAIN = load_certificate_ders(read_bytes("amd-sev-snp/coco-trustee/milan_ask_ark_asvk.pem"))
ASK, ARK, ASVK = MILAN_CHAIN
VCEK = read_bytes("amd-sev-snp/coco-trustee/test-vcek.der")
VLEK = read_bytes("amd-sev-snp/coco-trustee/test-vlek.der")
REPORT = read_bytes("amd-sev-snp/coco-trustee/test-report.bin")
VLEK_REPORT = read_bytes("amd-sev-snp/coco-trustee/test-vlek-report.bin")
AMD = "1.3.6.1.4.1.3704.1"


def _check(fn: Callable[[], Any]) -> str:
    with pytest.raises(VerificationError) as exc:
        fn()
    return exc.value.check


# --- the pinned roots ------------------------------------------------------------------------------


def test_shipped_roots_have_the_pinned_keys_and_amd_names() -> None:
    roots = amd_roots()
    assert set(roots) == {"Milan", "Genoa", "Turin"}
    for product, p in roots.items():
        spki = p.ark.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        assert hashlib.sha256(spki).hexdigest() == ARK_SPKI_SHA256[product]
        names = {
            c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value for c in (p.ark, p.ask, p.asvk)
        }
        assert names == {f"ARK-{product}", f"SEV-{product}", f"SEV-VLEK-{product}"}
        p.ask.verify_directly_issued_by(p.ark)  # cryptography's own check agrees with ours
        p.asvk.verify_directly_issued_by(p.ark)
    # The files in the corpus chains are the shipped ones.
    assert roots["Milan"].ark.public_bytes(Encoding.DER) == ARK
    assert roots["Milan"].ask.public_bytes(Encoding.DER) == ASK
    assert roots["Milan"].asvk.public_bytes(Encoding.DER) == ASVK


def test_the_real_turin_vcek_chain_verifies() -> None:
    chain = load_certificate_ders(read_bytes("amd-sev-snp/virtee-sev/cert_chain_turin"))
    vc = verify_chain(read_bytes("amd-sev-snp/virtee-sev/vcek_turin.der"), chain, kind="vcek")
    assert vc.product == "Turin" and vc.root == "amd"
    assert vc.ext.struct_version == 1 and vc.ext.product_name == "Turin"
    assert vc.ext.tcb == Tcb(bootloader=0, tee=0, snp=0, microcode=9, fmc=0)
    assert vc.ext.hwid is not None and vc.ext.hwid.hex() == "1e550a8ee5cf9f4d"  # 8 raw bytes on Turin
    assert verify_chain(read_bytes("amd-sev-snp/virtee-sev/vcek_turin.der"), None, kind="vcek").ext == vc.ext


def test_the_real_genoa_vcek_chain_verifies() -> None:
    vcek = load_certificate_ders(read_bytes("azure-vtpm/coco-trustee/az-snp-vtpm/vcek-genoa.pem"))[0]
    vc = verify_chain(vcek, None, kind="vcek")
    assert vc.product == "Genoa" and vc.ext.product_name == "Genoa" and vc.ext.tcb.microcode == 0x54


@pytest.mark.filterwarnings("ignore:Parsed a serial number")
def test_extension_encodings_seen_on_real_certificates() -> None:
    vlek = x509.load_der_x509_certificate(VLEK)
    ext = parse_amd_extensions(vlek, "vlek", "Milan")
    assert ext.tcb.microcode == 0xD9  # DER INTEGER 02 02 00 d9
    assert ext.csp_id == "CN=cc-us-east-2.amazonaws.com" and ext.hwid is None and ext.product_name == "Milan"
    # hwID as a DER OCTET STRING (confidential-containers/attestation-service#131).
    new = x509.load_der_x509_certificate(read_bytes("amd-sev-snp/coco-trustee/test-vcek-invalid-new.der"))
    assert parse_amd_extensions(new, "vcek", "Milan").hwid == bytes(range(64))
    assert (
        parse_amd_extensions(x509.load_der_x509_certificate(VCEK), "vcek", "Milan").product_name == "Milan-B0"
    )


def test_load_certificate_ders() -> None:
    assert load_certificate_ders(VCEK) == (VCEK,)
    assert len(load_certificate_ders(read_bytes("amd-sev-snp/coco-trustee/milan_ask_ark_asvk.pem"))) == 3
    with pytest.raises(EvidenceParseError, match="neither PEM nor a DER"):
        load_certificate_ders(b"hello")
    with pytest.raises(EvidenceParseError):
        load_certificate_ders(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n")


# --- tampering with real certificates --------------------------------------------------------------


def _verify_real(
    leaf: bytes = VCEK, chain: Sequence[bytes] | None = MILAN_CHAIN, report: bytes = REPORT
) -> Any:
    # the corpus keeps no AMD CRL current at CORPUS_AT: the chain is what these tests tamper with
    return verify_report(report, vcek_or_vlek=leaf, chain=chain, at=CORPUS_AT, require_crl=False)


@pytest.mark.parametrize(
    ("which", "report", "step"),
    [
        ("leaf", REPORT, 1),
        ("ask", REPORT, 2),
        ("ark", REPORT, 3),
        ("leaf", VLEK_REPORT, 2),
        ("asvk", VLEK_REPORT, 3),
    ],
)
def test_every_byte_of_every_certificate_is_bound(which: str, report: bytes, step: int) -> None:
    """Flip one bit in each byte of a real VCEK/VLEK, ASK, ASVK or ARK: always ``cert_chain``, never another error.

    Covers the outer signatureAlgorithm (checked equal to the signed copy), the signature value,
    the BIT STRING's unused-bits byte, names, extensions, keys, and DER that no longer decodes.
    """
    leaf = VLEK if report is VLEK_REPORT else VCEK
    base = {"leaf": leaf, "ask": ASK, "ark": ARK, "asvk": ASVK}
    target = base[which]
    for offset in range(0, len(target), step):
        mutated = bytearray(target)
        mutated[offset] ^= 0x01 if offset % 3 else 0x40
        certs_ = dict(base, **{which: bytes(mutated)})
        check = _check(
            lambda c=certs_: _verify_real(c["leaf"], [c["ask"], c["ark"], c["asvk"]], report)  # type: ignore[misc]
        )
        assert check == "cert_chain", offset


def test_undecodable_certificates_are_verification_errors() -> None:
    for junk in (b"", b"\x30", b"\x30\x03\x02\x01\x00", VCEK[:-1], VCEK + b"\x00"):
        with pytest.raises(VerificationError, match="undecodable certificate") as exc:
            _verify_real(junk)
        assert exc.value.check == "cert_chain"
    with pytest.raises(VerificationError, match=r"chain\[0\]: undecodable"):
        _verify_real(chain=[b"\x30\x00", ARK])


def test_a_self_made_amd_lookalike_chain_is_refused(genoa_pki: SnpDevPki) -> None:
    """An attacker's own ARK-Milan -> SEV-Milan -> SEV-VCEK with AMD's exact names: not trusted."""
    real_ark, real_ask, real_vcek = (x509.load_der_x509_certificate(d) for d in (ARK, ASK, VCEK))
    ark_key, ask_key = genoa_pki.ark.key, genoa_pki.ask.key  # any RSA-4096 keys the attacker holds
    leaf_key = ec.generate_private_key(ec.SECP384R1())

    def issue(
        subject: x509.Name, issuer: x509.Name, public: Any, signer: Any, *, ca: bool, exts: Any = ()
    ) -> bytes:
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public)
            .serial_number(1)
            .not_valid_before(ISSUED - dt.timedelta(days=900))
            .not_valid_after(ISSUED + dt.timedelta(days=3650))
        )
        if ca:
            b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            b = b.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
            )
        for ext in exts:
            b = b.add_extension(ext.value, ext.critical)
        return b.sign(signer, hashes.SHA384(), rsa_padding=RSA_PSS_SHA384).public_bytes(Encoding.DER)

    fake_ark = issue(real_ark.subject, real_ark.subject, ark_key.public_key(), ark_key, ca=True)
    fake_ask = issue(real_ask.subject, real_ark.subject, ask_key.public_key(), ark_key, ca=True)
    fake_vcek = issue(
        real_vcek.subject,
        real_ask.subject,
        leaf_key.public_key(),
        ask_key,
        ca=False,
        exts=real_vcek.extensions,
    )
    for chain in ([fake_ask], [fake_ask, fake_ark]):
        with pytest.raises(
            VerificationError, match="'SEV-Milan' is not signed by a trusted ARK-Milan"
        ) as exc:
            verify_report(REPORT, vcek_or_vlek=fake_vcek, chain=chain, at=CORPUS_AT)
        assert exc.value.check == "cert_chain"
    # Even configured as a dev root, the lookalike is only ever "dev": results say sim.
    vc = verify_chain(
        fake_vcek, [fake_ask], kind="vcek", dev_roots=[x509.load_der_x509_certificate(fake_ark)]
    )
    assert vc.root == "dev"
    # The real ASK with a forged ARK beside it: the ARK given must be the trusted one.
    with pytest.raises(VerificationError, match="the chain's ARK-Milan has key sha256"):
        _verify_real(chain=[ASK, fake_ark])


def test_wrong_product_chains_are_refused() -> None:
    genoa = load_certificate_ders(read_bytes("amd-sev-snp/coco-trustee/genoa_ask_ark_asvk.pem"))
    with pytest.raises(VerificationError, match="no ASK 'SEV-Milan'"):
        _verify_real(chain=genoa)
    with pytest.raises(VerificationError, match=r"chain\[1\] 'ARK-Genoa' is neither ARK-Milan"):
        _verify_real(chain=[ASK, genoa[1]])
    with pytest.raises(VerificationError, match="no ASK 'SEV-Milan'"):
        _verify_real(chain=[ARK])


def test_duplicates_of_the_same_certificate_are_fine() -> None:
    _verify_real(chain=[ASK, ASK, ARK, ARK])


# --- crafted leaves under a dev ASK: each rule of the profile ------------------------------------


def _spl(value: int) -> bytes:
    return _der.integer(value)


def _ia5(text: str) -> bytes:
    return bytes([0x16, len(text)]) + text.encode()


def _genoa_exts(pki: SnpDevPki, **changes: bytes | None) -> dict[str, bytes]:
    """AMD's VCEK extensions for the PKI's chip at its default TCB, with ``changes`` (None drops)."""
    exts = {
        ".1": _spl(0),
        ".2": _ia5("Genoa"),
        ".3.1": _spl(10),
        ".3.2": _spl(0),
        ".3.4": _spl(0),
        ".3.5": _spl(0),
        ".3.6": _spl(0),
        ".3.7": _spl(0),
        ".3.3": _spl(23),
        ".3.8": _spl(84),
        ".4": pki.chip_id,
    }
    for k, v in changes.items():
        key = k.replace("_", ".")
        if v is None:
            exts.pop(key, None)
        else:
            exts[key] = v
    return exts


def _leaf(
    pki: SnpDevPki,
    exts: dict[str, bytes],
    *,
    cn: str = "SEV-VCEK",
    key: Any = None,
    issuer: Any = None,
    name: x509.Name | None = None,
    sign: Callable[[x509.CertificateBuilder], x509.Certificate] | None = None,
    extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> bytes:
    issuer = issuer or pki.ask
    subject = name or x509.Name(
        [attr for attr in issuer.cert.subject if attr.oid != NameOID.COMMON_NAME]
        + [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )
    key = key or ec.generate_private_key(ec.SECP384R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(ISSUED)
        .not_valid_after(ISSUED + dt.timedelta(days=365))
    )
    for oid, value in exts.items():
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(AMD + oid), value), False
        )
    for ext, critical in extra:
        builder = builder.add_extension(ext, critical)
    cert = sign(builder) if sign else builder.sign(issuer.key, hashes.SHA384(), rsa_padding=RSA_PSS_SHA384)
    return cert.public_bytes(Encoding.DER)


def _chain_check(pki: SnpDevPki, leaf: bytes, kind: str = "vcek") -> tuple[str, str]:
    with pytest.raises(VerificationError) as exc:
        verify_chain(leaf, pki.chain(kind), kind=kind, dev_roots=[pki.root_cert])  # type: ignore[arg-type]
    return exc.value.check, str(exc.value)


def test_a_well_formed_crafted_leaf_passes(genoa_pki: SnpDevPki) -> None:
    vc = verify_chain(
        _leaf(genoa_pki, _genoa_exts(genoa_pki)),
        genoa_pki.chain(),
        kind="vcek",
        dev_roots=[genoa_pki.root_cert],
    )
    assert vc.root == "dev" and vc.ext.hwid == genoa_pki.chip_id


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({".4": None}, r"hwID \(1.3.6.1.4.1.3704.1.4\) is missing"),
        ({".3.8": None}, "ucodeSPL .* is missing"),
        ({".1": None}, "structVersion .* is missing"),
        ({".1": _spl(1)}, "structVersion 1 is not 0"),
        ({".3.3": bytes.fromhex("02020005")}, "snpSPL: non-minimal INTEGER"),
        ({".3.3": bytes.fromhex("02020100")}, "snpSPL: 256 does not fit"),
        ({".3.3": bytes.fromhex("0201ff")}, "snpSPL: not a non-negative INTEGER"),
        ({".3.3": bytes.fromhex("040105")}, "snpSPL: expected DER tag 0x02"),
        ({".3.3": bytes.fromhex("02010500")}, "DER length 1 does not cover"),
        ({".3.3": bytes.fromhex("0281010a")}, "non-minimal DER length"),
        ({".3.5": _spl(1)}, "spl_5 is not zero"),
        ({".3.9": _spl(0)}, "a Genoa certificate has no fmcSPL"),
        ({".3.10": _spl(0)}, r"unknown AMD extension 1.3.6.1.4.1.3704.1.3.10"),
        ({".6": b"\x05\x00"}, r"unknown AMD extension 1.3.6.1.4.1.3704.1.6"),
        ({".5": _ia5("csp")}, "a VCEK has no cspID"),
        ({".4": bytes(32)}, "hwID is 32 bytes"),
        ({".4": b"\x04\x40" + bytes(63)}, "hwID is 65 bytes"),
        ({".2": b"\x0c\x05Genoa"}, "productName: expected DER tag 0x16"),
        ({".2": _ia5("Gen\x01a")}, "not a printable IA5String"),
    ],
)
def test_extension_rules(genoa_pki: SnpDevPki, changes: dict[str, bytes | None], message: str) -> None:
    check, text = _chain_check(genoa_pki, _leaf(genoa_pki, _genoa_exts(genoa_pki, **changes)))
    assert check == "vcek_extensions"
    assert re.search(message, text), text


def test_product_name_must_be_the_chain_product(genoa_pki: SnpDevPki) -> None:
    check, text = _chain_check(
        genoa_pki, _leaf(genoa_pki, _genoa_exts(genoa_pki, **{".2": _ia5("Milan-B0")}))
    )
    assert check == "product" and "productName 'Milan-B0' is not Genoa" in text


def test_hwid_as_der_octet_string_is_accepted(genoa_pki: SnpDevPki) -> None:
    leaf = _leaf(genoa_pki, _genoa_exts(genoa_pki, **{".4": b"\x04\x40" + genoa_pki.chip_id}))
    vc = verify_chain(leaf, genoa_pki.chain(), kind="vcek", dev_roots=[genoa_pki.root_cert])
    assert vc.ext.hwid == genoa_pki.chip_id


def test_turin_extension_rules(turin_pki: SnpDevPki) -> None:
    base = {
        ".1": _spl(1),
        ".2": _ia5("Turin"),
        ".3.9": _spl(1),
        ".3.1": _spl(1),
        ".3.2": _spl(1),
        ".3.3": _spl(1),
        ".3.8": _spl(9),
        ".4": turin_pki.chip_id[:8],
    }
    ok = verify_chain(_leaf(turin_pki, base), turin_pki.chain(), kind="vcek", dev_roots=[turin_pki.root_cert])
    assert ok.ext.tcb.fmc == 1
    for changes, message in (
        ({".3.4": _spl(0)}, "a Turin certificate has no spl_4"),
        ({".3.9": None}, "fmcSPL .* is missing"),
        ({".4": turin_pki.chip_id}, "hwID is 64 bytes; a Turin VCEK's is 8"),
        ({".1": _spl(0)}, "structVersion 0 is not 1"),
    ):
        exts = {**base, **{k: v for k, v in changes.items() if v is not None}}
        for k, v in changes.items():
            if v is None:
                exts.pop(k)
        check, text = _chain_check(turin_pki, _leaf(turin_pki, exts))
        assert check == "vcek_extensions" and re.search(message, text), text


def test_vlek_extension_rules(genoa_pki: SnpDevPki) -> None:
    vlek = {**_genoa_exts(genoa_pki, **{".4": None}), ".5": _ia5("csp")}
    vc = verify_chain(
        _leaf(genoa_pki, vlek, cn="SEV-VLEK", issuer=genoa_pki.asvk),
        genoa_pki.chain("vlek"),
        kind="vlek",
        dev_roots=[genoa_pki.root_cert],
    )
    assert vc.ext.csp_id == "csp" and vc.kind == "vlek"
    check, text = _chain_check(
        genoa_pki,
        _leaf(genoa_pki, {**vlek, ".4": genoa_pki.chip_id}, cn="SEV-VLEK", issuer=genoa_pki.asvk),
        "vlek",
    )
    assert check == "vcek_extensions" and "a VLEK has no hwID" in text
    check, text = _chain_check(
        genoa_pki,
        _leaf(genoa_pki, _genoa_exts(genoa_pki, **{".4": None}), cn="SEV-VLEK", issuer=genoa_pki.asvk),
        "vlek",
    )
    assert "cspID" in text and "missing" in text
    # A VLEK issued by the ASK (not the ASVK) is refused: its issuer is not SEV-VLEK-Genoa.
    check, text = _chain_check(genoa_pki, _leaf(genoa_pki, vlek, cn="SEV-VLEK", issuer=genoa_pki.ask), "vlek")
    assert check == "cert_chain" and "SEV-VLEK-{Milan,Genoa,Turin}" in text


def test_profile_rules(genoa_pki: SnpDevPki) -> None:
    exts = _genoa_exts(genoa_pki)
    cases: list[tuple[bytes, str]] = [
        (_leaf(genoa_pki, exts, cn="SEV-VCEK2"), "CN is 'SEV-VCEK2', not 'SEV-VCEK'"),
        (
            _leaf(genoa_pki, exts, key=rsa.generate_private_key(65537, 2048)),
            "does not have an ECDSA P-384 key",
        ),
        (
            _leaf(genoa_pki, exts, key=ec.generate_private_key(ec.SECP256R1())),
            "does not have an ECDSA P-384 key",
        ),
        (
            _leaf(
                genoa_pki,
                exts,
                sign=lambda b: b.sign(genoa_pki.ask.key, hashes.SHA384(), rsa_padding=padding.PKCS1v15()),
            ),
            "not signed with RSASSA-PSS SHA-384",
        ),
        (
            _leaf(
                genoa_pki,
                exts,
                sign=lambda b: b.sign(
                    genoa_pki.ask.key,
                    hashes.SHA256(),
                    rsa_padding=padding.PSS(padding.MGF1(hashes.SHA256()), 32),
                ),
            ),
            "not signed with RSASSA-PSS SHA-384",
        ),
        (
            _leaf(
                genoa_pki,
                exts,
                sign=lambda b: b.sign(
                    genoa_pki.ask.key,
                    hashes.SHA384(),
                    rsa_padding=padding.PSS(padding.MGF1(hashes.SHA384()), 32),
                ),
            ),
            "is not signed by 'SEV-Genoa' (RSASSA-PSS SHA-384 salt 48)",
        ),
        (
            _leaf(
                genoa_pki,
                exts,
                sign=lambda b: b.sign(genoa_pki.asvk.key, hashes.SHA384(), rsa_padding=RSA_PSS_SHA384),
            ),
            "is not signed by 'SEV-Genoa'",
        ),
        (
            _leaf(genoa_pki, exts, extra=[(x509.BasicConstraints(ca=True, path_length=None), True)]),
            "is a CA certificate",
        ),
        (
            _leaf(genoa_pki, exts, extra=[(x509.OCSPNoCheck(), True)]),
            "unknown critical extension",
        ),
        (
            _leaf(
                genoa_pki,
                exts,
                name=x509.Name(
                    [
                        x509.NameAttribute(NameOID.COMMON_NAME, "SEV-VCEK"),
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
                    ]
                ),
            ),
            "VCEK subject has name attributes",
        ),
        (
            _leaf(
                genoa_pki,
                exts,
                name=x509.Name(
                    [
                        x509.NameAttribute(NameOID.COMMON_NAME, "SEV-VCEK"),
                        x509.NameAttribute(NameOID.EMAIL_ADDRESS, "a@b"),
                    ]
                ),
            ),
            "unexpected or repeated name attribute",
        ),
    ]
    for leaf, message in cases:
        check, text = _chain_check(genoa_pki, leaf)
        assert check == "cert_chain" and message in text, (message, text)


def test_dev_roots_must_look_like_an_ark(genoa_pki: SnpDevPki) -> None:
    ev = snp_report(genoa_pki, now=SIM_AT)
    with pytest.raises(VerificationError, match=r"dev root \[0\] CN 'SEV-Genoa' is not ARK-") as exc:
        verify_report(
            ev.report, vcek_or_vlek=ev.signer, chain=ev.chain, at=SIM_AT, dev_roots=[genoa_pki.ask.cert]
        )
    assert exc.value.check == "cert_chain"
    # AMD's own ARK given as a "dev root" is still AMD's: results are not marked sim.
    verified = verify_report(
        REPORT,
        vcek_or_vlek=VCEK,
        at=CORPUS_AT,
        dev_roots=[x509.load_der_x509_certificate(ARK)],
        require_crl=False,  # no AMD CRL of CORPUS_AT is vendored
    )
    assert verified.root == "amd" and not verified.sim


# --- CRLs ------------------------------------------------------------------------------------------


def _crl(
    issuer_name: x509.Name,
    key: rsa.RSAPrivateKey,
    *,
    serials: Sequence[int] = (),
    at: dt.datetime = SIM_AT,
    next_update: dt.timedelta = dt.timedelta(days=7),
    rsa_padding: Any = RSA_PSS_SHA384,
) -> bytes:
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_name)
        .last_update(at - dt.timedelta(hours=1))
    )
    b = b.next_update(at + next_update)
    for s in serials:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(s).revocation_date(at).build()
        )
    return b.sign(key, hashes.SHA384(), rsa_padding=rsa_padding).public_bytes(Encoding.DER)


def test_crl_rules(genoa_pki: SnpDevPki) -> None:
    ev = snp_report(genoa_pki, now=SIM_AT)
    vc = verify_chain(ev.signer, ev.chain, kind="vcek", dev_roots=[genoa_pki.root_cert])
    ark_name, ark_key = genoa_pki.ark.cert.subject, genoa_pki.ark.key
    ask_serial = genoa_pki.ask.cert.serial_number
    assert len(check_crls(vc, [_crl(ark_name, ark_key)], at=SIM_AT)) == 1
    assert check_crls(vc, [], at=SIM_AT) == ()
    rules: list[tuple[bytes, str]] = [
        (_crl(ark_name, ark_key, serials=[ask_serial]), "is revoked by ARK-Genoa's CRL"),
        (_crl(ark_name, genoa_pki.ask.key), "names ARK-Genoa as its issuer but is not signed by its key"),
        (_crl(ark_name, ark_key, rsa_padding=padding.PKCS1v15()), "is not signed by its key"),
        (
            _crl(ark_name, ark_key, rsa_padding=padding.PSS(padding.MGF1(hashes.SHA384()), 32)),
            "is not signed by its key",
        ),
        (_crl(ark_name, ark_key, at=SIM_AT - dt.timedelta(days=30)), "not at 2026-03-01T13:00:00Z"),
        (_crl(ark_name, ark_key, at=SIM_AT + dt.timedelta(days=2)), "not at"),
        (b"\x30\x03\x02\x01\x00", "undecodable CRL"),
    ]
    for crl, message in rules:
        with pytest.raises(VerificationError, match=message) as exc:
            check_crls(vc, [crl], at=SIM_AT)
        assert exc.value.check == "crl"
    # Another issuer's CRL is not this chain's: ignored.
    other = _crl(genoa_pki.ask.cert.subject, genoa_pki.ask.key, serials=[ask_serial])
    assert check_crls(vc, [other], at=SIM_AT) == ()


def test_every_byte_of_a_crl_is_bound(genoa_pki: SnpDevPki) -> None:
    ev = snp_report(genoa_pki, now=SIM_AT)
    vc = verify_chain(ev.signer, ev.chain, kind="vcek", dev_roots=[genoa_pki.root_cert])
    crl = genoa_pki.crl()
    for offset in range(len(crl)):
        mutated = bytearray(crl)
        mutated[offset] ^= 0x01
        try:
            applied = check_crls(vc, [bytes(mutated)], at=SIM_AT, require=True)
        except VerificationError as exc:
            assert exc.check == "crl", offset
            continue
        raise AssertionError(f"CRL byte {offset} changed and the CRL still applied: {applied}")


def test_the_amd_crl_distribution_points_match_kds() -> None:
    ark = amd_roots()["Milan"].ark
    dp = ark.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert dp[0].full_name[0].value == "https://kdsintf.amd.com/vcek/v1/Milan/crl"  # type: ignore[index,union-attr]
    assert certs.RSA_PSS_SHA384.mgf is not None


def test_the_leaf_may_come_along_in_the_chain() -> None:
    """[VCEK, ASK, ARK], as some tools pass the whole chain."""
    assert _verify_real(chain=[VCEK, ASK, ARK]).signing_key == "vcek"


def test_serial_zero_warning_is_silenced_for_the_decoder_only() -> None:
    """Outside pytest (which resets filters per test), even ``-W error`` does not trip on AMD's serial 0."""
    import subprocess
    import sys

    code = (
        "import datetime as dt, pathlib\n"
        "from keybroker.tee.snp import verify_report\n"
        f"d = pathlib.Path({str(CORPUS)!r}) / 'amd-sev-snp/coco-trustee'\n"
        "v = verify_report((d / 'test-report.bin').read_bytes(), vcek_or_vlek=(d / 'test-vcek.der').read_bytes(),"
        " at=dt.datetime(2025, 6, 1, tzinfo=dt.UTC), require_crl=False)\n"
        "print(v.product)\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-W", "error::UserWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip() == "Milan", done.stderr[-1500:]


# --- AMD's cert_chain and CRLs on their own (the KDS cache stores them before any leaf) ----------


def test_amd_cert_chains_of_every_product_verify_on_their_own() -> None:
    for product in ("milan", "genoa", "turin"):
        ders = load_certificate_ders(read_bytes(f"amd-sev-snp/coco-trustee/{product}_ask_ark_asvk.pem"))
        got = certs.verify_cert_chain(ders)
        assert [(v.product.lower(), v.kind, v.root) for v in got] == [
            (product, "vcek", "amd"),
            (product, "vlek", "amd"),
        ]
        assert {v.ark_spki_sha256 for v in got} == {ARK_SPKI_SHA256[got[0].product]}
        # the ARK is the pinned certificate, and the intermediates are AMD's shipped ones
        pinned = amd_roots()[got[0].product]
        assert (
            got[0].ark == pinned.ark
            and got[0].intermediate == pinned.ask
            and got[1].intermediate == pinned.asvk
        )
        assert got[0].intermediate_sha256 == hashlib.sha256(pinned.ask.public_bytes(Encoding.DER)).hexdigest()
    kds_chain = load_certificate_ders(read_bytes("amd-sev-snp/virtee-sev/cert_chain_milan"))
    assert [(v.kind, v.product) for v in certs.verify_cert_chain(kds_chain)] == [("vcek", "Milan")]
    vlek_chain = load_certificate_ders(read_bytes("amd-sev-snp/google-go-sev-guest/asvk_ark_milan.pem"))
    assert [(v.kind, v.product) for v in certs.verify_cert_chain(vlek_chain)] == [("vlek", "Milan")]
    # without the ARK, and repeated: the same answer
    assert certs.verify_cert_chain([ASK, ASK])[0].intermediate == amd_roots()["Milan"].ask


def test_cert_chain_refusals(genoa_pki: SnpDevPki) -> None:
    genoa = load_certificate_ders(read_bytes("amd-sev-snp/coco-trustee/genoa_ask_ark_asvk.pem"))
    dev_ask, dev_ark = (c.public_bytes(Encoding.DER) for c in genoa_pki.chain("vcek"))
    dev = [genoa_pki.root_cert]
    cases: list[tuple[Sequence[bytes], Sequence[x509.Certificate], str]] = [
        ([], (), "holds no certificate"),
        ([ARK], (), "holds no ASK or ASVK"),
        ([ASK, genoa[1]], (), "mixes products: Genoa, Milan"),
        ([VCEK, ASK], (), "CN 'SEV-VCEK' is not SEV-{Milan,Genoa,Turin}"),
        # the simulator's chain: its ARK is not trusted unless configured
        ([dev_ask, dev_ark], (), "'SEV-Genoa' is not signed by a trusted ARK-Genoa"),
        # AMD's ASK with a look-alike ARK-Genoa: the ARK given must be the trusted one
        ([genoa[0], dev_ark], dev, "ARK-Genoa has key sha256"),
        # two different ASKs for one product (AMD's and the simulator's, both trusted)
        ([genoa[0], dev_ask], dev, "holds two different ASKs"),
        ([b"junk"], (), "undecodable certificate"),
    ]
    for chain, roots, message in cases:
        with pytest.raises(VerificationError, match=re.escape(message)) as exc:
            certs.verify_cert_chain(chain, dev_roots=roots)
        assert exc.value.check == "cert_chain", message
    (v,) = certs.verify_cert_chain([dev_ask, dev_ark], dev_roots=dev)
    assert (v.product, v.kind, v.root) == ("Genoa", "vcek", "dev")


def test_every_byte_of_an_intermediate_is_bound() -> None:
    """A changed byte anywhere in the ASK (name, key, extensions, signature) is refused."""
    for offset in range(0, len(ASK), 3):
        mutated = bytearray(ASK)
        mutated[offset] ^= 0x01
        try:
            got = certs.verify_cert_chain([bytes(mutated), ARK])
        except VerificationError as exc:
            assert exc.check == "cert_chain", offset
            continue
        raise AssertionError(f"ASK byte {offset} changed and the chain still verified: {got}")


def test_crls_verify_on_their_own(genoa_pki: SnpDevPki) -> None:
    for side in ("vcek", "vlek"):
        v = certs.verify_crl(genoa_pki.crl(side), dev_roots=[genoa_pki.root_cert])  # type: ignore[arg-type]
        assert (v.product, v.root) == ("Genoa", "dev") and v.this_update == ISSUED
        assert (
            v.ark_spki_sha256 == certs.spki_sha256(genoa_pki.root_cert) and v.revoked_serials == frozenset()
        )
    with pytest.raises(VerificationError, match="is not a trusted ARK") as exc:
        certs.verify_crl(genoa_pki.crl())
    assert exc.value.check == "crl"
    # A CRL that names AMD's ARK-Milan but is signed by another key is a forgery.
    forged = _crl(amd_roots()["Milan"].ark.subject, genoa_pki.ark.key)
    with pytest.raises(VerificationError, match="names ARK-Milan as its issuer but is not signed by its key"):
        certs.verify_crl(forged, dev_roots=[genoa_pki.root_cert])
    with pytest.raises(VerificationError, match="CRL: undecodable"):
        certs.verify_crl(b"\x30\x03\x02\x01\x00")
    revoked = _crl(genoa_pki.ark.cert.subject, genoa_pki.ark.key, serials=[genoa_pki.ask.cert.serial_number])
    got = certs.verify_crl(revoked, dev_roots=[genoa_pki.root_cert])
    assert got.revoked_serials == {genoa_pki.ask.cert.serial_number}
