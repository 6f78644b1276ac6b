"""What quotes are verified against, from the settings: one place for the server and the CLI.

``keybroker serve`` (``api.services``) and the local commands that verify evidence or store
collateral (``evidence verify``, ``policy test``, ``collateral import/fetch``) build their trust
here, so that for one data dir and configuration the command line trusts exactly what the server
trusts:

* roots: the Intel SGX Root CA and AMD's three ARKs (always; pinned in ``tee.dcap`` and
  ``tee.snp``), every certificate in the ``trust.dev_roots`` files, and in dev mode the data dir's
  dev PKI roots (``dev-pki/root.pem``, Intel-shaped; ``dev-pki/snp/ark.pem``, AMD-shaped);
* collateral: in dev mode the dev PKI's own (``dev-pki/collateral-{sgx,tdx}.json``) first, then
  the collateral store; SEV-SNP endorsements from the evidence itself or, when given, a KDS source;
  SEV-SNP CRLs from the KDS cache and, in dev mode, the SEV-SNP dev PKI's own
  (``dev-pki/snp/{vcek,vlek}-crl.der``), applied to every report (``snp.require_crl``).
* TPM: the ``tpm.ak_roots`` stores and the enrolled attestation keys (``tpm_trust``).

The dev PKI is created and refreshed by the server (``api.services``); this module only reads it,
so the command line never writes a data dir it inspects. The server hands :func:`evidence_trust` its
renewal of the SEV-SNP dev CRLs (``snp_dev_crl_renewal``), called before they are read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

from cryptography import x509

from keybroker.config import Settings
from keybroker.errors import CollateralError, InvalidInput
from keybroker.tee.dcap.chain import TrustedRoots
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.plugin import DCAP_TEES
from keybroker.tee.dcap.sources import ChainedCollateral, CollateralSource, StaticCollateral
from keybroker.tee.snp.certs import spki_sha256
from keybroker.tee.snp.sources import SnpCrlQuery, SnpCrls, SnpCrlSource, SnpEndorsementSource
from keybroker.tee.tpm.trust import AkRegistry, TpmTrust
from keybroker.tee.trust import EvidenceTrust

__all__ = [
    "DEV_PKI_DIR",
    "EvidenceTrust",
    "chained_crls",
    "collateral_roots",
    "configured_roots",
    "dev_pki_dir",
    "dev_root_path",
    "ek_roots",
    "evidence_trust",
    "snp_dev_pki_dir",
    "snp_dev_root_path",
    "tpm_trust",
]

#: The dev TEE simulator's PKI inside the data dir (``keybroker serve --dev`` creates it).
DEV_PKI_DIR: Final = "dev-pki"


def dev_pki_dir(settings: Settings) -> Path:
    return settings.data_dir / DEV_PKI_DIR


def dev_root_path(settings: Settings) -> Path:
    """Where the data dir's dev root is (whether or not it exists, whether or not dev mode is on)."""
    return dev_pki_dir(settings) / "root.pem"


def snp_dev_pki_dir(settings: Settings) -> Path:
    """The SEV-SNP simulator's dev PKI (an AMD-shaped ARK, ASK, ASVK) inside the dev PKI."""
    return dev_pki_dir(settings) / "snp"


def snp_dev_root_path(settings: Settings) -> Path:
    """The SEV-SNP simulator's dev ARK."""
    return snp_dev_pki_dir(settings) / "ark.pem"


def _dev_pki_missing(settings: Settings, path: Path, why: str) -> InvalidInput:
    return InvalidInput(
        f"dev mode trusts the data dir's dev PKI, but {path} {why}: start 'keybroker serve --dev "
        f"--data-dir {settings.data_dir}' once to create it, or leave dev mode off",
        field="dev",
    )


def configured_roots(settings: Settings) -> list[x509.Certificate]:
    """The roots trusted besides the vendors': ``trust.dev_roots``, then (dev mode) the dev PKI's
    roots (Intel-shaped and AMD-shaped; each TEE's verifier takes those of its own kind)."""
    certs: list[x509.Certificate] = []
    for path in settings.trust.dev_roots:
        try:
            certs.extend(x509.load_pem_x509_certificates(path.read_bytes()))
        except (OSError, ValueError) as exc:
            raise InvalidInput(
                f"trust.dev_roots: cannot load a PEM certificate from {path}: {exc}", field="trust.dev_roots"
            ) from None
    if settings.dev:
        for path in (dev_root_path(settings), snp_dev_root_path(settings)):
            try:
                certs.append(x509.load_pem_x509_certificate(path.read_bytes()))
            except FileNotFoundError:
                raise _dev_pki_missing(settings, path, "does not exist") from None
            except (OSError, ValueError) as exc:
                raise _dev_pki_missing(settings, path, f"is not a readable PEM certificate ({exc})") from None
    return certs


def collateral_roots(settings: Settings, extra: Iterable[x509.Certificate] = ()) -> TrustedRoots:
    """The roots that collateral must chain to before it is stored (``collateral import/fetch``)."""
    return TrustedRoots([*configured_roots(settings), *extra])


def _dev_collateral(settings: Settings) -> StaticCollateral:
    directory = dev_pki_dir(settings)
    static = StaticCollateral()
    for tee in DCAP_TEES:
        path = directory / f"collateral-{tee}.json"
        try:
            static.add(QuoteCollateral.from_json(path.read_text()))
        except FileNotFoundError:
            raise _dev_pki_missing(settings, path, "does not exist") from None
        except (OSError, CollateralError) as exc:
            why = exc.detail if isinstance(exc, CollateralError) else str(exc)
            raise _dev_pki_missing(settings, path, f"is not usable collateral ({why})") from None
    return static


def _pem_store(paths: Iterable[Path], field: str) -> tuple[x509.Certificate, ...]:
    """The certificates of a root store's files: PEM (one or more), or one DER certificate (as
    vendors publish their TPM CAs)."""
    certs: list[x509.Certificate] = []
    for path in paths:
        try:
            raw = path.read_bytes()
            if raw.lstrip().startswith(b"-----BEGIN"):
                certs.extend(x509.load_pem_x509_certificates(raw))
            else:
                certs.append(x509.load_der_x509_certificate(raw))
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"{field}: cannot load certificates from {path}: {exc}", field=field) from None
    return tuple(certs)


def tpm_trust(settings: Settings, registry: AkRegistry | None) -> TpmTrust:
    """Which TPM AKs ``settings`` trust: ``tpm.ak_roots`` (per vendor) and the enrolled ones."""
    roots = {
        vendor: _pem_store(paths, f"tpm.ak_roots.{vendor}") for vendor, paths in settings.tpm.ak_roots.items()
    }
    return TpmTrust(ak_roots=roots, registry=registry, dev=settings.dev)


def ek_roots(
    settings: Settings,
) -> tuple[dict[str, tuple[x509.Certificate, ...]], tuple[x509.Certificate, ...]]:
    """(``tpm.ek_roots`` per manufacturer, ``tpm.dev_ek_roots`` in dev mode only) for enrolment."""
    stores = {
        vendor: _pem_store(paths, f"tpm.ek_roots.{vendor}") for vendor, paths in settings.tpm.ek_roots.items()
    }
    dev = _pem_store(settings.tpm.dev_ek_roots, "tpm.dev_ek_roots") if settings.dev else ()
    return stores, dev


def evidence_trust(
    settings: Settings,
    store: CollateralSource,
    *,
    extra_roots: Iterable[x509.Certificate] = (),
    aks: AkRegistry | None = None,
    snp_endorsements: SnpEndorsementSource | None = None,
    snp_crls: SnpCrlSource | None = None,
    snp_dev_crl_renewal: Callable[[], None] | None = None,
) -> EvidenceTrust:
    """The server's trust for ``settings``: in dev mode the dev PKI's collateral before ``store``
    (the collateral store), the configured roots plus ``extra_roots`` (``--trust-root``), and the
    TPM AK roots with the enrolled AKs of ``aks``; ``snp_endorsements``: the KDS cache SEV-SNP
    reports without certificates are verified with (None: such a report is refused, saying so);
    ``snp_crls``: the trusted SEV-SNP CRLs (the KDS cache's), in dev mode with the SEV-SNP dev
    PKI's; ``snp.require_crl`` whether one of them must apply to every SEV-SNP report.
    ``snp_dev_crl_renewal`` (the dev server's; dev mode only): called before the SEV-SNP dev PKI's
    CRLs are read for a chain to its ARK, to re-issue them when they run out."""
    roots = (*configured_roots(settings), *extra_roots)
    sources: list[CollateralSource] = [_dev_collateral(settings)] if settings.dev else []
    dev_crls = _dev_snp_crls(settings, renew=snp_dev_crl_renewal) if settings.dev else None
    crls = [s for s in (snp_crls, dev_crls) if s is not None]
    return EvidenceTrust(
        dev_roots=roots,
        collateral=ChainedCollateral(*sources, store),
        tpm=tpm_trust(settings, aks),
        snp_endorsements=snp_endorsements,
        snp_crls=chained_crls(*crls) if crls else None,
        snp_require_crl=settings.snp.require_crl,
    )


def chained_crls(*sources: SnpCrlSource) -> SnpCrlSource:
    """Every source's CRLs together (each applied; the side is held when any source holds it)."""

    def lookup(query: SnpCrlQuery) -> SnpCrls:
        found = [source(query) for source in sources]
        return SnpCrls(
            side=tuple(c for f in found for c in f.side),
            other=tuple(c for f in found for c in f.other),
            held="; ".join(f.held for f in found if f.held),
            fix=next((f.fix for f in found if f.fix), ""),
        )

    return lookup


def _dev_snp_crls(settings: Settings, *, renew: Callable[[], None] | None = None) -> SnpCrlSource:
    """The SEV-SNP dev PKI's CRLs (``dev-pki/snp/{vcek,vlek}-crl.der``, which the dev server issues
    and re-issues before they expire: ``renew``, called first) for chains to its dev ARK, read at
    each lookup (a revocation there applies at once). Nothing for any other ARK."""
    directory = snp_dev_pki_dir(settings)
    ark_path = snp_dev_root_path(settings)

    def lookup(query: SnpCrlQuery) -> SnpCrls:
        try:
            ark = x509.load_pem_x509_certificate(ark_path.read_bytes())
        except (OSError, ValueError):
            return SnpCrls(side=(), held=f"no SEV-SNP dev ARK at {ark_path}")
        if spki_sha256(ark) != query.ark_spki_sha256:
            return SnpCrls(side=())
        if renew is not None:
            renew()
        read = []
        for side in (query.signing_key, "vlek" if query.signing_key == "vcek" else "vcek"):
            try:
                read.append((directory / f"{side}-crl.der").read_bytes())
            except OSError:
                read.append(b"")
        own, other = read
        return SnpCrls(
            side=(own,) if own else (),
            other=(other,) if other else (),
            held="" if own else f"no {query.signing_key}-crl.der in the SEV-SNP dev PKI {directory}",
            fix=(
                f"'keybroker serve --dev --data-dir {settings.data_dir}' (a running dev server re-issues "
                "the dev CRLs before they expire)"
            ),
        )

    return lookup
