"""Verify a TPM 2.0 quote: the AK's signature over TPMS_ATTEST, the nonce, the PCR values.

Steps (each a named check, in this order; a failure raises ``VerificationError(check=<name>)``,
malformed input ``EvidenceParseError``):

1. ``parse``: TPMS_ATTEST (type QUOTE, no trailing byte), the signature (TPMT_SIGNATURE or a bare
   RSA signature given as :meth:`TpmSignature.raw_rsassa`), the reported PCR values.
2. ``ak_public``: given as TPMT_PUBLIC, the AK is a restricted signing key that never leaves its
   TPM (restricted, sign, not decrypt, fixedTPM, fixedParent, sensitiveDataOrigin: a key the TPM
   made and will sign only digests it computed itself, so a forged TPMS_ATTEST cannot be signed);
   RSA of at least 2048 bits or ECDSA on P-256/P-384. Given as a bare public key, only the key type
   and size can be checked: the caller vouches for the rest.
3. ``ak_certificate`` (when given): chains to a configured root at ``at`` (``certs``), and its key
   is the AK's.
4. ``signature``: over the raw TPMS_ATTEST with the AK: RSASSA-PKCS1-v1_5, RSASSA-PSS (salt length
   auto: TPMs use the hash length or the maximum, Part 1 Annex B.7) or ECDSA; SHA-1 is refused. If
   the AK's public area fixes a scheme, the signature must use it.
5. ``qualified_signer`` (when ``ak_parent`` is given): qualifiedSigner is the AK's Qualified Name,
   nameAlg || H_nameAlg(QN(parent) || Name(AK)) ([P1] 16 "Names"), which the TPM fills in for the
   key that signs. ``qualified_signer_alg`` (an AK given as TPMT_PUBLIC, no ``ak_parent``): only
   its form, nameAlg || a digest of that size, with the AK's nameAlg. The rest of a Qualified Name
   is the chain of the AK's ancestors up to its hierarchy, which a TPMT_PUBLIC does not tell: it
   can be recomputed only by a caller who knows the parent (an enrolled AK's EK, ``plugin``). The
   signature covers the field, so either check refuses only a quote the TPM made for another key
   than the public area sent (another nameAlg: the same key under another Name) or under another
   parent. Nothing is checked for a bare key (no nameAlg).
6. ``extra_data``: extraData equals the expected nonce, compared in constant time;
   :data:`NO_NONCE` skips it explicitly (the caller proves freshness otherwise).
7. ``pcr_selection``: the reported PCR values are exactly the quote's selection: every selected PCR
   present in its bank, nothing else claimed (TPMS_PCR_SELECTION is signed; the values are not).
8. ``pcr_digest``: H_sig(selected values, in selection order) equals pcrDigest, where H_sig is the
   signature's hash, not the bank's (TPM2_Quote hashes with the signing scheme's hash).
9. ``clock`` (when ``previous_clock`` is given): within one reset and restart the TPM clock did not
   go back.

Everything the caller may rely on afterwards is in :class:`VerifiedQuote`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from keybroker.errors import EvidenceParseError, VerificationError
from keybroker.tee.tpm.abi import (
    ALG_ECDSA,
    ALG_NULL,
    ALG_RSAPSS,
    ALG_RSASSA,
    ALG_SHA1,
    ATTR_DECRYPT,
    ATTR_FIXED_PARENT,
    ATTR_FIXED_TPM,
    ATTR_RESTRICTED,
    ATTR_SENSITIVE_DATA_ORIGIN,
    ATTR_SIGN,
    BANK_NAMES,
    HASH_ALGS,
    HASH_SIZES,
    Attest,
    ClockInfo,
    TpmPublic,
    TpmSignature,
    hash_digest,
    parse_attest,
    parse_signature,
    qualified_name,
)
from keybroker.tee.tpm.certs import CertChain, load_certificate, spki_der, verify_certificate_chain

__all__ = [
    "AK_REQUIRED_ATTRIBUTES",
    "CHECKS",
    "NO_NONCE",
    "AkKey",
    "ExpectedExtraData",
    "Pcrs",
    "VerifiedQuote",
    "check_ak",
    "normalize_pcrs",
    "verify_quote",
]

CHECKS: Final = (
    "parse",
    "ak_public",
    "ak_certificate",
    "signature",
    "qualified_signer",
    "qualified_signer_alg",
    "extra_data",
    "pcr_selection",
    "pcr_digest",
    "clock",
)

#: What a TPMT_PUBLIC must assert to be trusted as an attestation key.
AK_REQUIRED_ATTRIBUTES: Final = (
    ATTR_RESTRICTED | ATTR_SIGN | ATTR_FIXED_TPM | ATTR_FIXED_PARENT | ATTR_SENSITIVE_DATA_ORIGIN
)
_MIN_RSA_BITS: Final = 2048
_HASH_OBJECTS: Final[dict[int, type[hashes.HashAlgorithm]]] = {
    0x0004: hashes.SHA1,
    0x000B: hashes.SHA256,
    0x000C: hashes.SHA384,
    0x000D: hashes.SHA512,
}


class _NoNonce(enum.Enum):
    NO_NONCE = "no nonce expected"


#: "No nonce is expected": extraData is not compared (freshness is the caller's business).
NO_NONCE: Final = _NoNonce.NO_NONCE
ExpectedExtraData = bytes | _NoNonce
AkKey = TpmPublic | rsa.RSAPublicKey | ec.EllipticCurvePublicKey
#: PCR values per bank name (``sha256``) and index.
Pcrs = Mapping[str, Mapping[int, bytes]]


@dataclass(frozen=True, slots=True)
class VerifiedQuote:
    """A quote whose signature, nonce and PCR values verified. ``attest`` is now trustworthy;
    ``claims.tpm_claims`` turns it into the claims document."""

    attest: Attest
    signature_scheme: str
    #: The AK's Name (nameAlg || H(TPMT_PUBLIC)) when it was given as a public area, else None.
    ak_name: bytes | None
    ak_attributes: tuple[str, ...] | None
    ak_key_type: str
    ak_spki_sha256: str
    ak_certificate: CertChain | None
    #: The quoted PCR values, per bank name and index (bound to the quote by pcrDigest).
    pcrs: tuple[tuple[str, tuple[tuple[int, bytes], ...]], ...]
    nonce_checked: bool
    checks: tuple[str, ...]
    #: SHA-256 of the TPMS_ATTEST bytes: one quote, one digest.
    evidence_sha256: str

    @property
    def extra_data(self) -> bytes:
        return self.attest.extra_data

    @property
    def clock_info(self) -> ClockInfo:
        return self.attest.clock_info

    def pcr_values(self) -> dict[str, dict[int, bytes]]:
        return {bank: dict(values) for bank, values in self.pcrs}


def normalize_pcrs(pcrs: Pcrs) -> dict[int, dict[int, bytes]]:
    """Reported PCR values keyed by TPM_ALG_ID, each value the bank's digest size.

    Raises ``EvidenceParseError`` naming the bank or index that is malformed.
    """
    out: dict[int, dict[int, bytes]] = {}
    for bank, values in pcrs.items():
        alg = BANK_NAMES.get(bank) if isinstance(bank, str) else None
        if alg is None:
            detail = f"pcrs: unknown bank {bank!r}; expected one of {sorted(BANK_NAMES)}"
            raise EvidenceParseError(detail, field="pcrs")
        size = HASH_SIZES[alg]
        bank_values: dict[int, bytes] = {}
        for index, value in values.items():
            field = f"pcrs.{bank}.{index}"
            if type(index) is not int or not 0 <= index < 32:
                raise EvidenceParseError(f"{field}: PCR index must be an integer 0-31", field=field)
            if not isinstance(value, bytes) or len(value) != size:
                got = len(value) if isinstance(value, bytes) else type(value).__name__
                raise EvidenceParseError(
                    f"{field}: a {bank} PCR value is {size} bytes, got {got}", field=field
                )
            bank_values[index] = value
        out[alg] = bank_values
    return out


def check_ak(ak: AkKey) -> tuple[rsa.RSAPublicKey | ec.EllipticCurvePublicKey, TpmPublic | None]:
    """What an attestation key must be (``VerificationError(check="ak_public")`` otherwise), at
    enrolment and at every quote: a restricted signing key bound to its TPM, whose Name (its
    identity in the registry and in policies) is not a SHA-1 digest, RSA of at least 2048 bits or
    ECC on P-256/P-384. A bare key (the operator's own) is checked for its type and size only."""
    public = ak if isinstance(ak, TpmPublic) else None
    if public is not None:
        if public.name_alg == ALG_SHA1:
            raise VerificationError(
                "the AK's nameAlg is SHA-1: its Name, the AK's identity, would be a SHA-1 digest",
                check="ak_public",
            )
        missing = [n for bit, n in _REQUIRED_NAMES if not public.attributes & bit]
        if missing:
            raise VerificationError(
                f"AK public area lacks {', '.join(missing)} (attributes 0x{public.attributes:08x}): not a "
                "restricted signing key bound to its TPM",
                check="ak_public",
            )
        if public.attributes & ATTR_DECRYPT:
            raise VerificationError(
                "AK public area has decrypt set: not a signing-only key", check="ak_public"
            )
        key = public.public_key()
    else:
        key = ak  # type: ignore[assignment]
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise VerificationError(
                f"AK is RSA-{key.key_size}, below {_MIN_RSA_BITS} bits", check="ak_public"
            )
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
            raise VerificationError(f"AK curve {key.curve.name} is not P-256 or P-384", check="ak_public")
    else:
        raise VerificationError(f"AK is a {type(key).__name__}, not an RSA or EC key", check="ak_public")
    return key, public


_REQUIRED_NAMES: Final = (
    (ATTR_RESTRICTED, "restricted"),
    (ATTR_SIGN, "sign"),
    (ATTR_FIXED_TPM, "fixedTPM"),
    (ATTR_FIXED_PARENT, "fixedParent"),
    (ATTR_SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
)


def _check_signature(
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    public: TpmPublic | None,
    signature: TpmSignature,
    message: bytes,
) -> None:
    if signature.hash_alg == ALG_SHA1:
        raise VerificationError("the quote is signed with SHA-1, which is not accepted", check="signature")
    if (
        public is not None
        and public.scheme.alg != ALG_NULL
        and (public.scheme.alg != signature.sig_alg or public.scheme.hash_alg != signature.hash_alg)
    ):
        raise VerificationError(
            f"signature scheme {signature.scheme} is not the AK's scheme "
            f"0x{public.scheme.alg:04x}/{HASH_ALGS.get(public.scheme.hash_alg, '?')}",
            check="signature",
        )
    algorithm = _HASH_OBJECTS[signature.hash_alg]()
    try:
        if signature.sig_alg in (ALG_RSASSA, ALG_RSAPSS):
            if not isinstance(key, rsa.RSAPublicKey):
                raise VerificationError(f"an {signature.scheme} signature needs an RSA AK", check="signature")
            if len(signature.sig) != (key.key_size + 7) // 8:
                raise VerificationError(
                    f"RSA signature of {len(signature.sig)} bytes, the AK's modulus is {(key.key_size + 7) // 8}",
                    check="signature",
                )
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15()
                if signature.sig_alg == ALG_RSASSA
                else padding.PSS(mgf=padding.MGF1(algorithm), salt_length=padding.PSS.AUTO)
            )
            key.verify(signature.sig, message, pad, algorithm)
        elif signature.sig_alg == ALG_ECDSA:
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise VerificationError("an ECDSA signature needs an EC AK", check="signature")
            der = encode_dss_signature(int.from_bytes(signature.r, "big"), int.from_bytes(signature.s, "big"))
            key.verify(der, message, ec.ECDSA(algorithm))
        else:  # pragma: no cover - parse_signature admits only these
            raise VerificationError(
                f"unsupported signature scheme 0x{signature.sig_alg:04x}", check="signature"
            )
    except InvalidSignature:
        raise VerificationError(
            f"the {signature.scheme} signature over TPMS_ATTEST does not verify under the AK",
            check="signature",
        ) from None


def _pcr_bank_name(alg: int) -> str:
    return HASH_ALGS.get(alg, f"0x{alg:04x}")


def verify_quote(
    quote: bytes,
    signature: bytes | TpmSignature,
    ak: AkKey,
    *,
    pcrs: Pcrs,
    expected_extra_data: ExpectedExtraData,
    ak_certificate: bytes | x509.Certificate | None = None,
    ak_intermediates: Sequence[x509.Certificate] = (),
    ak_roots: Sequence[x509.Certificate] = (),
    at: datetime | None = None,
    ak_parent: bytes | None = None,
    ak_parent_what: str = "the given parent",
    previous_clock: ClockInfo | None = None,
) -> VerifiedQuote:
    """Verify ``quote`` (TPMS_ATTEST bytes) and its ``signature`` (TPMT_SIGNATURE bytes or a parsed
    :class:`TpmSignature`) under the attestation key ``ak``, against the reported ``pcrs``.

    ``ak_certificate``: the AK's certificate (DER or PEM), verified to ``ak_roots`` through
    ``ak_intermediates`` at ``at`` (required then); None: no certificate is checked and the caller
    trusts ``ak`` by other means (an enrolled key). ``ak_parent``: the Qualified Name of the AK's
    parent (:func:`abi.hierarchy_qualified_name` for a primary key), ``ak_parent_what`` naming it in
    the refusal; None: only qualifiedSigner's nameAlg and size are checked (see step 5).
    ``previous_clock``: the clock of an earlier quote by the same AK; None: not compared.
    """
    checks: list[str] = []
    unverified = parse_attest(quote)
    sig = signature if isinstance(signature, TpmSignature) else parse_signature(signature)
    reported = normalize_pcrs(pcrs)
    checks.append("parse")

    key, public = check_ak(ak)
    checks.append("ak_public")

    chain = None
    if ak_certificate is not None:
        if at is None:
            raise ValueError("at is required to check an AK certificate")
        leaf = load_certificate(ak_certificate, "AK certificate", "ak_certificate")
        chain = verify_certificate_chain(
            leaf,
            ak_intermediates,
            ak_roots,
            at=at,
            what="AK",
            check="ak_certificate",
            leaf_key_usage="digital_signature",
        )
        if spki_der(leaf) != spki_der(key):
            raise VerificationError(
                "the AK certificate is for another key than the AK", check="ak_certificate"
            )
        checks.append("ak_certificate")

    _check_signature(key, public, sig, unverified.raw)
    attest = unverified
    checks.append("signature")

    if ak_parent is not None:
        if public is None:
            raise ValueError("ak_parent needs the AK as a TPMT_PUBLIC (its Name)")
        want = qualified_name(ak_parent, public)
        if not hmac.compare_digest(attest.qualified_signer, want):
            raise VerificationError(
                f"qualifiedSigner {attest.qualified_signer.hex()} is not the AK's Qualified Name {want.hex()} "
                f"as a child of {ak_parent_what}",
                check="qualified_signer",
            )
        checks.append("qualified_signer")
    elif public is not None:
        signer = attest.qualified_signer
        alg = int.from_bytes(signer[:2], "big") if len(signer) >= 2 else None
        if alg != public.name_alg or len(signer) != 2 + HASH_SIZES[public.name_alg]:
            named = "none" if alg is None else HASH_ALGS.get(alg, f"0x{alg:04x}")
            raise VerificationError(
                f"qualifiedSigner ({len(signer)} bytes, nameAlg {named}) is not a Qualified Name with the "
                f"AK's nameAlg {HASH_ALGS[public.name_alg]} ({2 + HASH_SIZES[public.name_alg]} bytes): the "
                "TPM signed for its key under another public area than the one sent",
                check="qualified_signer_alg",
            )
        checks.append("qualified_signer_alg")

    if expected_extra_data is not NO_NONCE:
        assert isinstance(expected_extra_data, bytes)
        if not hmac.compare_digest(attest.extra_data, expected_extra_data):
            raise VerificationError(
                f"extraData ({len(attest.extra_data)} bytes) is not the expected nonce "
                f"({len(expected_extra_data)} bytes)",
                check="extra_data",
            )
        checks.append("extra_data")

    selected = {s.hash_alg: s.pcrs for s in attest.pcr_select}
    for alg in reported:
        if alg not in selected:
            raise VerificationError(
                f"PCR values reported for the {_pcr_bank_name(alg)} bank, which the quote does not select",
                check="pcr_selection",
            )
    ordered: list[bytes] = []
    verified_pcrs: list[tuple[str, tuple[tuple[int, bytes], ...]]] = []
    for selection in attest.pcr_select:
        bank = _pcr_bank_name(selection.hash_alg)
        if selection.hash_alg not in HASH_SIZES:
            raise VerificationError(f"the quote selects the unsupported bank {bank}", check="pcr_selection")
        values = reported.get(selection.hash_alg, {})
        missing = [i for i in selection.pcrs if i not in values]
        extra = sorted(set(values) - set(selection.pcrs))
        if missing:
            raise VerificationError(
                f"the quote selects {bank} PCRs {missing} whose values were not reported",
                check="pcr_selection",
            )
        if extra:
            raise VerificationError(
                f"{bank} PCRs {extra} were reported but the quote does not select them", check="pcr_selection"
            )
        ordered.extend(values[i] for i in selection.pcrs)
        verified_pcrs.append((bank, tuple((i, values[i]) for i in selection.pcrs)))
    checks.append("pcr_selection")

    digest = hash_digest(sig.hash_alg, b"".join(ordered))
    if not hmac.compare_digest(digest, attest.pcr_digest):
        raise VerificationError(
            f"pcrDigest {attest.pcr_digest.hex()} is not the {HASH_ALGS[sig.hash_alg]} of the reported PCR "
            f"values ({digest.hex()})",
            check="pcr_digest",
        )
    checks.append("pcr_digest")

    if previous_clock is not None:
        now = attest.clock_info
        same_boot = (now.reset_count, now.restart_count) == (
            previous_clock.reset_count,
            previous_clock.restart_count,
        )
        if same_boot and now.clock < previous_clock.clock:
            raise VerificationError(
                f"TPM clock {now.clock} ms is before the previous quote's {previous_clock.clock} ms in the same "
                f"boot (resetCount {now.reset_count}, restartCount {now.restart_count})",
                check="clock",
            )
        checks.append("clock")

    return VerifiedQuote(
        attest=attest,
        signature_scheme=sig.scheme,
        ak_name=public.name if public is not None else None,
        ak_attributes=public.attribute_names if public is not None else None,
        ak_key_type=public.key_type if public is not None else _key_type(key),
        ak_spki_sha256=hashlib.sha256(spki_der(key)).hexdigest(),
        ak_certificate=chain,
        pcrs=tuple(verified_pcrs),
        nonce_checked=expected_extra_data is not NO_NONCE,
        checks=tuple(checks),
        evidence_sha256=hashlib.sha256(attest.raw).hexdigest(),
    )


def _key_type(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    return {"secp256r1": "ecc-P-256", "secp384r1": "ecc-P-384"}.get(key.curve.name, key.curve.name)
