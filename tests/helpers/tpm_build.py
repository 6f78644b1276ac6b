"""Build TPM structures in tests: TPMS_ATTEST quotes signed by a software AK, TPMT_PUBLIC areas.

Marshalling per TCG TPM 2.0 Part 2 (big-endian), independent of ``keybroker.tee.tpm.abi``: a
test that parses what this builds checks the parser against a second implementation.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

ALGS = {"sha1": 0x0004, "sha256": 0x000B, "sha384": 0x000C, "sha512": 0x000D}
HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
#: restricted | sign | fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth
AK_ATTRIBUTES = 0x00050072


def b2(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def pcr_selection(selection: dict[str, list[int]]) -> bytes:
    out = struct.pack(">I", len(selection))
    for bank, pcrs in selection.items():
        bitmap = bytearray(3)
        for i in pcrs:
            bitmap[i // 8] |= 1 << (i % 8)
        out += struct.pack(">HB", ALGS[bank], 3) + bytes(bitmap)
    return out


@dataclass
class AttestFields:
    pcrs: dict[str, dict[int, bytes]]
    extra_data: bytes = b"nonce"
    qualified_signer: bytes = b"\x00\x0b" + bytes(32)
    clock: int = 1000
    reset_count: int = 1
    restart_count: int = 0
    safe: int = 1
    firmware_version: int = 0x2019102300163636
    digest_hash: str = "sha256"
    magic: int = 0xFF544347
    type: int = 0x8018
    pcr_digest: bytes | None = None
    selection: dict[str, list[int]] = field(default_factory=dict)


def attest(f: AttestFields) -> bytes:
    selection = f.selection or {bank: sorted(vals) for bank, vals in f.pcrs.items()}
    values = b"".join(
        f.pcrs[bank][i] for bank, pcrs in selection.items() for i in pcrs if i in f.pcrs.get(bank, {})
    )
    digest = f.pcr_digest if f.pcr_digest is not None else hashlib.new(f.digest_hash, values).digest()
    return (
        struct.pack(">IH", f.magic, f.type)
        + b2(f.qualified_signer)
        + b2(f.extra_data)
        + struct.pack(">QIIB", f.clock, f.reset_count, f.restart_count, f.safe)
        + struct.pack(">Q", f.firmware_version)
        + pcr_selection(selection)
        + b2(digest)
    )


def sign(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, message: bytes, scheme: str, hash_name: str
) -> bytes:
    """A TPMT_SIGNATURE over ``message``: scheme ``rsassa``, ``rsapss`` or ``ecdsa``."""
    algorithm = HASHES[hash_name]()
    head = struct.pack(">H", {"rsassa": 0x0014, "rsapss": 0x0016, "ecdsa": 0x0018}[scheme])
    head += struct.pack(">H", ALGS[hash_name])
    if scheme == "ecdsa":
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        r, s = decode_dss_signature(key.sign(message, ec.ECDSA(algorithm)))
        size = (key.curve.key_size + 7) // 8
        return head + b2(r.to_bytes(size, "big")) + b2(s.to_bytes(size, "big"))
    assert isinstance(key, rsa.RSAPrivateKey)
    pad: padding.AsymmetricPadding = (
        padding.PKCS1v15()
        if scheme == "rsassa"
        else padding.PSS(mgf=padding.MGF1(algorithm), salt_length=padding.PSS.DIGEST_LENGTH)
    )
    return head + b2(key.sign(message, pad, algorithm))


def rsa_public_area(
    key: rsa.RSAPublicKey,
    *,
    attributes: int = AK_ATTRIBUTES,
    scheme: str = "rsassa",
    hash_name: str = "sha256",
    name_alg: str = "sha256",
    auth_policy: bytes = b"",
) -> bytes:
    """A TPM2B_PUBLIC for an RSA key (symmetric NULL, the given signing scheme, exponent 0 = 65537)."""
    n = key.public_numbers().n.to_bytes(key.key_size // 8, "big")
    scheme_bytes = struct.pack(">HH", {"rsassa": 0x0014, "rsapss": 0x0016}[scheme], ALGS[hash_name])
    body = (
        struct.pack(">HHI", 0x0001, ALGS[name_alg], attributes)
        + b2(auth_policy)
        + struct.pack(">H", 0x0010)
        + scheme_bytes
        + struct.pack(">HI", key.key_size, 0)
        + b2(n)
    )
    return b2(body)


def ecc_public_area(
    key: ec.EllipticCurvePublicKey, *, attributes: int = AK_ATTRIBUTES, hash_name: str = "sha256"
) -> bytes:
    curve = {"secp256r1": (0x0003, 32), "secp384r1": (0x0004, 48)}[key.curve.name]
    nums = key.public_numbers()
    body = (
        struct.pack(">HHI", 0x0023, ALGS["sha256"], attributes)
        + b2(b"")
        + struct.pack(">H", 0x0010)
        + struct.pack(">HH", 0x0018, ALGS[hash_name])
        + struct.pack(">HH", curve[0], 0x0010)
        + b2(nums.x.to_bytes(curve[1], "big"))
        + b2(nums.y.to_bytes(curve[1], "big"))
    )
    return b2(body)


# --- certificates ---------------------------------------------------------------------------------


T0 = _dt.datetime(2025, 1, 1, tzinfo=_dt.UTC)
T1 = _dt.datetime(2035, 1, 1, tzinfo=_dt.UTC)


@dataclass
class Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _builder(
    subject: str, issuer: x509.Name | None, public_key: Any, not_before: _dt.datetime, not_after: _dt.datetime
) -> x509.CertificateBuilder:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]) if subject else x509.Name([])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer if issuer is not None else name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )


def make_ca(
    cn: str,
    parent: Issuer | None = None,
    *,
    path_length: int | None = None,
    key_cert_sign: bool = True,
    not_before: _dt.datetime = T0,
    not_after: _dt.datetime = T1,
) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    b = _builder(cn, parent.cert.subject if parent else None, key.public_key(), not_before, not_after)
    b = b.add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
    b = b.add_extension(
        x509.KeyUsage(False, False, False, False, False, key_cert_sign, True, False, False), critical=True
    )
    cert = b.sign(parent.key if parent else key, hashes.SHA256())
    return Issuer(cert, key)


def make_leaf(
    issuer: Issuer,
    public_key: Any,
    *,
    digital_signature: bool = True,
    key_encipherment: bool = False,
    not_before: _dt.datetime = T0,
    not_after: _dt.datetime = T1,
    extra_critical: bool = False,
    ca: bool = False,
    hash_alg: hashes.HashAlgorithm | None = None,
) -> x509.Certificate:
    """A TPM-style leaf: empty subject, critical SAN with a TPM directory name."""
    b = _builder("", issuer.cert.subject, public_key, not_before, not_after)
    b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    b = b.add_extension(
        x509.KeyUsage(digital_signature, False, key_encipherment, False, False, False, False, False, False),
        critical=True,
    )
    tpm_name = x509.Name(
        [
            x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.1"), "id:474F4F47"),
            x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.2"), "vTPM"),
        ]
    )
    b = b.add_extension(x509.SubjectAlternativeName([x509.DirectoryName(tpm_name)]), critical=True)
    if extra_critical:
        b = b.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4"), b"\x05\x00"), critical=True
        )
    return b.sign(issuer.key, hash_alg or hashes.SHA256())
