"""``keybroker dev-pki``: create and manage the development PKI of the TEE simulator.

NOT FOR PRODUCTION: the dev root must never be configured as a trust root outside
development (``--trust-root`` / ``trust.dev_roots``). Every command names the directory with
``--dev-pki DIR``, as ``keybroker-client --tee sim-* --dev-pki DIR`` does.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from keybroker.tee.sim.pki import PLATFORM_SGX, PLATFORM_TDX, TCB_CHOICES, DevPki, TcbChoice
from keybroker.tee.sim.snp import SnpDevPki
from keybroker.tee.snp.abi import PRODUCTS

app = typer.Typer(
    name="dev-pki",
    help="Development PKI for the TEE simulator (NOT FOR PRODUCTION).",
    no_args_is_help=True,
)

EXIT_USAGE = 2


class PlatformName(StrEnum):
    sgx = PLATFORM_SGX
    tdx = PLATFORM_TDX


class TcbLevelName(StrEnum):
    uptodate = "uptodate"
    swhardening = "swhardening"
    outofdate = "outofdate"
    revoked = "revoked"


def _tcb(value: TcbLevelName) -> TcbChoice:
    for choice in TCB_CHOICES:
        if choice == value.value:
            return choice
    raise typer.BadParameter(f"unknown TCB level {value.value!r}")


def _usage_error(message: str) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


DevPkiDir = Annotated[Path, typer.Option("--dev-pki", metavar="DIR", help="The dev PKI directory.")]


@app.command("init")
def init(
    directory: Annotated[
        Path,
        typer.Option("--dev-pki", metavar="DIR", help="Directory to create the dev PKI in (made 0700)."),
    ],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing dev PKI in DIR.")] = False,
    snp_product: Annotated[
        str,
        typer.Option("--snp-product", help=f"The SEV-SNP dev PKI's product: {', '.join(PRODUCTS)}."),
    ] = "Genoa",
) -> None:
    """Create a dev root CA, PCK CAs, TCB signing cert, CRLs, PCK certs, signed collateral; and in
    DIR/snp an SEV-SNP dev PKI (ARK, ASK, ASVK, CRLs; VCEKs issued as reports are made)."""
    if directory.exists() and not directory.is_dir():
        raise _usage_error(f"{directory} exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise _usage_error(f"{directory} is not empty; refusing to overwrite it without --force")
    product = next((p for p in PRODUCTS if p == snp_product), None)
    if product is None:
        raise _usage_error(f"--snp-product {snp_product!r} is not one of {', '.join(PRODUCTS)}")
    pki = DevPki.create(directory)
    snp = SnpDevPki.create(directory / "snp", product=product)
    typer.echo(f"Created a development PKI in {directory} (NOT FOR PRODUCTION):")
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        typer.echo(f"  {path.relative_to(directory)}")
    typer.echo(f"Root CA: {pki.root_cert.subject.rfc4514_string()}")
    typer.echo(f"Root CA SHA-256 fingerprint: {pki.root_fingerprint}")
    typer.echo(f"Trust it only for development: --trust-root {pki.root_pem_path}")
    typer.echo(f"SEV-SNP dev ARK ({product}) SHA-256 fingerprint: {snp.root_fingerprint}")
    typer.echo(f"Trust it only for development: --trust-root {snp.directory / 'ark.pem'}")


@app.command("revoke-pck")
def revoke_pck(
    directory: DevPkiDir,
    platform: Annotated[PlatformName, typer.Option("--platform", help="Simulated platform to revoke.")],
    tcb: Annotated[
        TcbLevelName | None,
        typer.Option("--tcb", help="Revoke only the PCK certificate of this TCB level (default: all)."),
    ] = None,
) -> None:
    """Revoke a simulated platform's PCK certificates: rewrites its CA's CRL and the collateral."""
    try:
        pki = DevPki.load(directory)
    except (OSError, ValueError, KeyError) as e:
        raise _usage_error(f"{directory} is not a readable dev PKI: {e}") from e
    serials = pki.revoke_pck(platform.value, tcb=None if tcb is None else _tcb(tcb))
    ca = pki.platform(platform.value).ca
    if serials:
        for serial in serials:
            typer.echo(f"Revoked PCK serial {serial:x} (platform {platform.value}, {ca} CA)")
    else:
        typer.echo(f"Nothing new to revoke for platform {platform.value}; CRL reissued")
    typer.echo(f"Rewrote pck-{ca}-crl.der and collateral-{pki.platform(platform.value).tee}.json")


@app.command("refresh")
def refresh(
    directory: DevPkiDir,
) -> None:
    """Reissue the CRLs, TCB Info and QE Identities (valid 30 days from now) and the collateral."""
    try:
        pki = DevPki.load(directory)
    except (OSError, ValueError, KeyError) as e:
        raise _usage_error(f"{directory} is not a readable dev PKI: {e}") from e
    pki.reissue_collateral()
    typer.echo(f"Reissued the collateral of {directory}: collateral-sgx.json, collateral-tdx.json")
