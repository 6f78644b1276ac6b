"""X.509 certificates for broker keys (the seed's nginx certificate) and the service's own CAs.

Pure: keys and times come in as arguments. Every name that goes into a certificate is checked here
and put in one canonical form first (see :func:`subject_alt_names`), so that a bad name is a 400
naming the field, never an exception from the X.509 encoder.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Sequence
from datetime import datetime, timedelta

import idna
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from keybroker.errors import InvalidInput

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

#: RFC 5280 ub-common-name; the X.509 encoder counts it in UTF-8 bytes.
MAX_COMMON_NAME_BYTES = 64
#: RFC 1035 2.3.4: a name of at most 255 octets on the wire, 253 characters written out.
MAX_DNS_NAME = 253
_LDH_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
#: Unicode categories never allowed in a common name: controls, format characters (bidi
#: overrides, zero-width joiners), surrogates, private use, unassigned, line and paragraph separators.
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})

#: Extended key usages of a workload (key) certificate: a TLS server or client.
WORKLOAD_EKU: tuple[ObjectIdentifier, ...] = (
    ExtendedKeyUsageOID.SERVER_AUTH,
    ExtendedKeyUsageOID.CLIENT_AUTH,
)
#: Extended key usage of the broker's own HTTPS certificate.
SERVER_EKU: tuple[ObjectIdentifier, ...] = (ExtendedKeyUsageOID.SERVER_AUTH,)


def check_common_name(value: str, *, field: str = "common_name") -> str:
    """``value`` if it is a usable subject common name: 1 to 64 UTF-8 bytes, no control or format
    characters, no surrounding spaces."""
    size = len(value.encode("utf-8", "surrogatepass"))
    if not value or size > MAX_COMMON_NAME_BYTES:
        raise InvalidInput(
            f"{field} must be 1 to {MAX_COMMON_NAME_BYTES} bytes in UTF-8, not {size} "
            f"({MAX_COMMON_NAME_BYTES} ASCII characters, fewer when others are used)",
            field=field,
        )
    bad = next((c for c in value if unicodedata.category(c) in _BAD_CATEGORIES), None)
    if bad is not None:
        raise InvalidInput(f"{field} contains the control or format character U+{ord(bad):04X}", field=field)
    if value != value.strip():
        raise InvalidInput(f"{field} must not begin or end with white space", field=field)
    return value


def _not_a_name(name: str, field: str, why: str) -> InvalidInput:
    return InvalidInput(f"{field}: {name!r} is neither an IP address nor a DNS name: {why}", field=field)


def _ip_address(name: str, field: str) -> x509.IPAddress | None:
    """The IP address ``name`` is written as, or None when it is not one."""
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise InvalidInput(
            f"{field}: {name!r} has an IPv6 zone id (%{address.scope_id}), which is local to one host "
            "and cannot be in a certificate",
            field=field,
        )
    if address.is_unspecified:
        raise InvalidInput(f"{field}: {name!r} is the unspecified address, not a host's", field=field)
    return x509.IPAddress(address)


def _a_label(label: str, name: str, field: str) -> str:
    """One label as its lowercase LDH A-label; U-labels are converted (IDNA 2008)."""
    if label.isascii():
        label = label.lower()
        if not _LDH_LABEL.match(label):
            why = (
                "an empty label"
                if not label
                else f"the label {label!r} is not 1 to 63 letters, digits and inner hyphens"
            )
            raise _not_a_name(name, field, why)
        if label.startswith("xn--"):
            try:
                ok = idna.alabel(idna.ulabel(label)).decode("ascii") == label
            except idna.IDNAError:
                ok = False
            if not ok:
                raise _not_a_name(name, field, f"{label!r} is not a valid IDNA A-label")
        return label
    try:
        return idna.alabel(label).decode("ascii")
    except idna.IDNAError as exc:
        raise _not_a_name(
            name, field, f"the label {label!r} is not a valid IDNA 2008 label ({exc})"
        ) from None


def dns_name(name: str, *, field: str = "sans") -> str:
    """``name`` as a certificate's DNS name: lowercase A-labels (U-labels converted by IDNA 2008
    after UTS #46 mapping, as browsers do), a wildcard only as the whole leftmost label of a name of
    at least three labels, no trailing dot, and not ending in an all-digit label (an IPv4 address
    in another notation, such as ``1.2.3`` or ``01.2.3.4``)."""
    wildcard = name.startswith("*.")
    body = name[2:] if wildcard else name
    if not body.isascii():
        try:
            body = idna.uts46_remap(body, std3_rules=True, transitional=False)
        except idna.IDNAError as exc:
            raise _not_a_name(name, field, str(exc)) from None
    labels = [_a_label(label, name, field) for label in body.split(".")]
    if labels[-1].isdigit():
        raise _not_a_name(name, field, "its last label is all digits (an IPv4 address in another notation?)")
    if wildcard and len(labels) < 2:
        raise InvalidInput(
            f"{field}: the wildcard {name!r} must stand for one label of a domain", field=field
        )
    out = ("*." if wildcard else "") + ".".join(labels)
    if len(out) > MAX_DNS_NAME:
        raise _not_a_name(name, field, f"{len(out)} characters as A-labels, more than {MAX_DNS_NAME}")
    return out


def subject_alt_names(names: Sequence[str], *, field: str = "sans") -> list[x509.GeneralName]:
    """Each of ``names`` as an IP address (the ``ipaddress`` module's notation, no zone id) or a DNS
    name (:func:`dns_name`), in order, without duplicates."""
    out: list[x509.GeneralName] = []
    for name in names:
        general: x509.GeneralName | None = _ip_address(name, field)
        if general is None:
            general = x509.DNSName(dns_name(name, field=field))
        if general not in out:
            out.append(general)
    return out


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer`` signed ``cert`` (names match and the signature verifies)."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _hash_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def issue_leaf(
    *,
    subject_public_key: PublicKey,
    common_name: str,
    sans: Sequence[str],
    not_before: datetime,
    validity: timedelta,
    issuer_cert: x509.Certificate | None,
    issuer_key: PrivateKey,
    extended_key_usage: Sequence[ObjectIdentifier] = WORKLOAD_EKU,
) -> x509.Certificate:
    """A TLS certificate. ``issuer_cert`` None: self-signed by ``issuer_key``. Without ``sans`` the
    common name is the certificate's one name, and must then be a DNS name or an IP address."""
    check_common_name(common_name)
    if sans:
        alt_names = subject_alt_names(sans)
    else:
        try:
            alt_names = subject_alt_names([common_name], field="common_name")
        except InvalidInput as exc:
            raise InvalidInput(
                f"{exc.detail} (without sans, the common name is the certificate's only name)",
                field="common_name",
            ) from None
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer = issuer_cert.subject if issuer_cert is not None else subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(subject_public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=isinstance(subject_public_key, rsa.RSAPublicKey),
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(list(extended_key_usage)),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_public_key), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    )
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    return builder.sign(issuer_key, _hash_for(issuer_key))


def make_ca(key: PrivateKey, common_name: str, not_before: datetime, validity: timedelta) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, _hash_for(key))
    )
