"""What quotes are verified against, from the settings: one place for the server and the CLI.

``keybroker serve`` (``api.services``) and the local commands that verify evidence or store
collateral (``evidence verify``, ``policy test``, ``collateral import/fetch``) build their trust
here, so that for one data dir and configuration the command line trusts exactly what the server
trusts:

* roots: the Intel SGX Root CA and AMD's three ARKs (always; pinned in ``tee.dcap`` and
  ``tee.snp``), every certificate in the ``trust.dev_roots`` files, and in dev mode the data dir's
  dev PKI roots (``dev-pki/root.pem``, Intel-shaped; ``dev-pki/snp/ark.pem``, AMD-shaped);
* collateral: in dev mode the dev PKI's own (``dev-pki/collateral-{sgx,tdx}.json``) first, then
  the collateral store; SEV-SNP endorsements from the evidence itself or, when given, a KDS source.
* TPM: the ``tpm.ak_roots`` stores and the enrolled attestation keys (``tpm_trust``).

The dev PKI is created and refreshed by the server (``api.services``); this module only reads it,
so the command line never writes a data dir it inspects.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Final

from cryptography import x509

from keybroker.config import Settings
from keybroker.errors import CollateralError, InvalidInput
from keybroker.tee.dcap.chain import TrustedRoots
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.plugin import DCAP_TEES
from keybroker.tee.dcap.sources import ChainedCollateral, CollateralSource, StaticCollateral
from keybroker.tee.snp.sources import SnpEndorsementSource
from keybroker.tee.tpm.trust import AkRegistry, TpmTrust
from keybroker.tee.trust import EvidenceTrust

__all__ = [
    "DEV_PKI_DIR",
    "EvidenceTrust",
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
) -> EvidenceTrust:
    """The server's trust for ``settings``: in dev mode the dev PKI's collateral before ``store``
    (the collateral store), the configured roots plus ``extra_roots`` (``--trust-root``), and the
    TPM AK roots with the enrolled AKs of ``aks``; ``snp_endorsements``: the KDS cache SEV-SNP
    reports without certificates are verified with (None: such a report is refused, saying so)."""
    roots = (*configured_roots(settings), *extra_roots)
    sources: list[CollateralSource] = [_dev_collateral(settings)] if settings.dev else []
    return EvidenceTrust(
        dev_roots=roots,
        collateral=ChainedCollateral(*sources, store),
        tpm=tpm_trust(settings, aks),
        snp_endorsements=snp_endorsements,
    )
