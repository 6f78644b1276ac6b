"""``keybroker evidence verify --tee tpm`` and ``--tee az-snp-vtpm|az-tdx-vtpm``: their files to the
one verifier's evidence and trust.

``--tee tpm``: the quote (the marshalled TPMS_ATTEST), its signature (a TPMT_SIGNATURE, or the bare
signature of an RSA AK, taken as RSASSA-SHA256), the AK (a PEM public key or a TPM2B_PUBLIC), the PCR
values (JSON ``{"<index>": "<hex>"}`` of one bank, the bank known from the values' size, or
``{"sha256": {...}}``; or tpm2-tools' PCR file), the AK certificate and its CAs, the event log. The AK
the operator gives is trusted as given; an AK certificate given must chain to the ``--ak-ca``
certificates (self-signed ones are the anchors) or the server's ``tpm.ak_roots``.

``--tee az-*``: Trustee's evidence JSON; ``--cert``: AMD's ASK/ARK for the VCEK (default the shipped
ones); ``--collateral``: the TD quote's, as for ``--tee tdx``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

from keybroker.errors import CollateralError, EvidenceParseError, InvalidInput
from keybroker.tee.azure.plugin import AzureEndorsements
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.snp.certs import load_certificate_ders
from keybroker.tee.tpm.abi import TpmSignature, parse_signature, parse_tpm2b_public
from keybroker.tee.trust import EvidenceTrust
from keybroker.tee.x509 import pem_certificates_and_crls
from keybroker.wire.tpm import parse_tools_pcrs, tpm_evidence

__all__ = [
    "CLI_VENDOR",
    "CliInputError",
    "azure_endorsements",
    "parse_nonce",
    "parse_pcrs",
    "tpm_cli_evidence",
    "tpm_cli_trust",
]

#: The AK root store the ``--ak-ca`` certificates make.
CLI_VENDOR: Final = "command-line"
_SIZES: Final = {20: "sha1", 32: "sha256", 48: "sha384", 64: "sha512"}


class CliInputError(ValueError):
    """A file that is not what its option takes (the command's usage error)."""


def parse_nonce(text: str | None) -> bytes | None:
    """``--nonce``: hex (``""``: a quote taken without one); None: not checked."""
    if text is None:
        return None
    t = text.strip().removeprefix("0x")
    try:
        return bytes.fromhex(t)
    except ValueError:
        raise CliInputError(f"--nonce {text!r} is not hex") from None


def _pcr_json(doc: Any) -> dict[str, dict[int, bytes]]:
    if not isinstance(doc, dict) or not doc:
        raise CliInputError("--pcrs: expected a JSON object of PCR values")
    if all(isinstance(v, dict) for v in doc.values()):
        banks = doc
    else:
        sizes = set()
        for value in doc.values():
            if not isinstance(value, str):
                raise CliInputError("--pcrs: values are hex strings")
            sizes.add(len(value) // 2)
        if len(sizes) != 1 or next(iter(sizes)) not in _SIZES:
            raise CliInputError("--pcrs: the values are not of one bank (SHA-1, SHA-256, SHA-384 or SHA-512)")
        banks = {_SIZES[sizes.pop()]: doc}
    out: dict[str, dict[int, bytes]] = {}
    for bank, values in banks.items():
        try:
            out[str(bank)] = {int(i): bytes.fromhex(v) for i, v in values.items()}
        except (ValueError, TypeError, AttributeError):
            raise CliInputError(f"--pcrs: bank {bank}: indices are numbers, values hex") from None
    return out


def parse_pcrs(raw: bytes) -> dict[str, dict[int, bytes]]:
    """``--pcrs``: the corpus's JSON, or tpm2-tools' PCR values file."""
    if raw.lstrip()[:1] == b"{":
        try:
            return _pcr_json(json.loads(raw))
        except ValueError as exc:
            if isinstance(exc, CliInputError):
                raise
            raise CliInputError(f"--pcrs: not JSON ({exc})") from None
    try:
        return parse_tools_pcrs(raw)
    except ValueError as exc:
        raise CliInputError(f"--pcrs: neither JSON nor a tpm2-tools PCR file ({exc})") from None


def _certificate_der(raw: bytes, what: str) -> bytes:
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(raw).public_bytes(Encoding.DER)
        return x509.load_der_x509_certificate(raw).public_bytes(Encoding.DER)
    except ValueError as exc:
        raise CliInputError(f"{what}: not a PEM or DER certificate ({exc})") from None


def _certificates(raw: bytes, what: str) -> list[x509.Certificate]:
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificates(raw)
        return [x509.load_der_x509_certificate(raw)]
    except ValueError as exc:
        raise CliInputError(f"{what}: not PEM or DER certificates ({exc})") from None


def _signature(raw: bytes, ak_modulus: int | None) -> bytes:
    """A TPMT_SIGNATURE as given, or a bare RSA signature of the AK's modulus size, wrapped in one."""
    try:
        return parse_signature(raw).marshal()
    except EvidenceParseError as exc:
        if ak_modulus is not None and len(raw) == ak_modulus:
            return TpmSignature.raw_rsassa(raw).marshal()
        raise CliInputError(
            f"--signature: not a TPMT_SIGNATURE ({exc.detail}) nor a bare RSA signature"
        ) from None


def tpm_cli_evidence(
    *,
    quote: bytes,
    signature: bytes,
    ak: bytes,
    pcrs: bytes | None,
    ak_cert: bytes | None,
    ak_ca: Sequence[bytes],
    event_log: bytes | None,
) -> bytes:
    """keybroker's TPM evidence document for the files given."""
    ak_public = ak_public_key = None
    modulus: int | None = None
    if ak.lstrip().startswith(b"-----BEGIN"):
        try:
            key = load_pem_public_key(ak)
        except ValueError as exc:
            raise CliInputError(f"--ak: not a PEM public key ({exc})") from None
        ak_public_key = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        modulus = (key.key_size + 7) // 8 if isinstance(key, rsa.RSAPublicKey) else None
    else:
        ak_public = ak
        if len(ak) > 20 and ak[2:4] == b"\x00\x01":  # an RSA TPM2B_PUBLIC: the modulus size is its keyBits
            try:
                modulus = parse_tpm2b_public(ak).key_bits // 8
            except EvidenceParseError:
                modulus = None
    certificates: list[bytes] = []
    if ak_cert is not None:
        certificates.append(_certificate_der(ak_cert, "--ak-cert"))
    values = parse_pcrs(pcrs) if pcrs is not None else {}
    return tpm_evidence(
        quote=quote,
        signature=_signature(signature, modulus),
        pcrs=values,
        ak_public=ak_public,
        ak_public_key=ak_public_key,
        ak_certificates=certificates,
        event_log=event_log,
    )


def tpm_cli_trust(server: EvidenceTrust, ak_ca: Sequence[bytes]) -> EvidenceTrust:
    """The server's trust, the ``--ak-ca`` certificates as one more AK root store, the AK given."""
    roots = dict(server.tpm.ak_roots)
    cas = [c for raw in ak_ca for c in _certificates(raw, "--ak-ca")]
    if cas:
        roots[CLI_VENDOR] = tuple(cas)
    return replace(server, tpm=replace(server.tpm, ak_roots=roots, registry=None, ak_given=True))


def azure_endorsements(
    tee: str, certs: Sequence[bytes], collateral: bytes | None
) -> AzureEndorsements | None:
    """``--cert`` (az-snp-vtpm: ASK/ARK) and ``--collateral`` (az-tdx-vtpm)."""
    if tee == "az-snp-vtpm":
        if collateral is not None:
            raise CliInputError("--collateral is for the TD quote of --tee az-tdx-vtpm")
        if not certs:
            return None
        ders: list[bytes] = []
        crls: list[bytes] = []
        for raw in certs:
            try:
                if raw.lstrip().startswith(b"-----BEGIN"):
                    blocks, crl_blocks = pem_certificates_and_crls(raw)
                    crls += [
                        x509.load_pem_x509_crl(b.encode("ascii")).public_bytes(Encoding.DER)
                        for b in crl_blocks
                    ]
                    raw = "".join(blocks).encode("ascii")
                    if not blocks:
                        continue
                ders.extend(load_certificate_ders(raw, field="--cert"))
            except (EvidenceParseError, InvalidInput) as exc:
                raise CliInputError(exc.detail) from None
            except ValueError as exc:
                raise CliInputError(f"--cert: {exc}") from None
        return AzureEndorsements(snp_chain=tuple(ders) or None, snp_crls=tuple(crls))
    if certs:
        raise CliInputError("--cert is AMD's chain for --tee az-snp-vtpm")
    if collateral is None:
        return None
    try:
        return AzureEndorsements(td_collateral=QuoteCollateral.from_json(collateral))
    except CollateralError as exc:
        raise CliInputError(f"--collateral: {exc.detail}") from None
