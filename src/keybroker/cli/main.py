"""``keybroker``: the server, operator and admin command line."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from keybroker import __version__, datadir
from keybroker.cli import audit, collateral, devpki, evidence, keystore, policy, token
from keybroker.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    ConfigOpt,
    DatabaseOpt,
    DataDirOpt,
    ServerClient,
    console,
    err_console,
    fail,
    handle_errors,
)
from keybroker.config import Settings, load_settings

app = typer.Typer(
    name="keybroker",
    help="Key Broker Service and Attestation Service for confidential computing.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
operator_app = typer.Typer(help="Initialize, unseal and seal the key store.", no_args_is_help=True)
app.add_typer(operator_app, name="operator")
app.add_typer(token.app, name="token")
app.add_typer(audit.app, name="audit")
app.add_typer(devpki.app, name="dev-pki")
app.add_typer(evidence.app, name="evidence")
app.add_typer(collateral.app, name="collateral")
app.add_typer(keystore.app, name="keystore")
app.add_typer(policy.app, name="policy")

ServerOpt = Annotated[str, typer.Option("--server", envvar="KEYBROKER_ADDR", help="the service's URL")]
CaOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--ca-file", help="CA to trust for HTTPS (default: <data-dir>/ca/ca.pem)"),
]


def _version(value: bool) -> None:
    if value:
        console.print(f"keybroker {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")
    ] = False,
) -> None:
    """keybroker."""


app.command("version", help="Print the version (the same as --version).")(lambda: _version(True))


def _settings(config: Path | None, data_dir: Path | None, database: str | None, **extra: Any) -> Settings:
    return load_settings(config, None, data_dir=data_dir, database=database, **extra)


# --- serve ----------------------------------------------------------------------------------------


@app.command()
@handle_errors
def serve(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    listen: Annotated[
        str | None, typer.Option("--listen", help="HOST:PORT (default: 127.0.0.1:9443)")
    ] = None,  # noqa: UP045
    database: DatabaseOpt = None,
    insecure_http: Annotated[
        Optional[bool], typer.Option("--insecure-http", help="plain HTTP, loopback only (testing)")  # noqa: UP045
    ] = None,
    dev: Annotated[
        bool | None,
        typer.Option("--dev", help="development mode: auto-unseal from a key file; never for real keys"),  # noqa: UP045
    ] = None,
    log_format: Annotated[Optional[str], typer.Option("--log-format", help="text or json")] = None,  # noqa: UP045
) -> None:
    """Run the service (HTTPS by default, with a local CA created in the data dir on first start)."""
    import uvicorn

    from keybroker import logs
    from keybroker.api.app import create_app
    from keybroker.api.services import Services
    from keybroker.serviceca import load_or_create_server_cert

    settings = _settings(
        config, data_dir, database, listen=listen, insecure_http=insecure_http, dev=dev, log_format=log_format
    )
    datadir.restrict_umask()
    logs.configure(settings.log_format, settings.log_level)
    host = settings.host
    if settings.insecure_http:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            fail(
                f"--insecure-http serves plain HTTP on loopback only; {host} is not a loopback address",
                EXIT_USAGE,
            )
    services = Services.build(settings)
    application = create_app(services)
    ssl: dict[str, str] = {}
    scheme = "http"
    if not settings.insecure_http:
        names = sorted({"localhost", "127.0.0.1", "::1", host} - {"0.0.0.0", "::"})  # noqa: S104
        cert, key = load_or_create_server_cert(settings.data_dir, services.tls_ca, names)
        ssl = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
        scheme = "https"
        typer.echo(f"TLS anchor (clients pin it): {services.tls_ca.cert_path}", err=True)
        typer.echo(f"TLS anchor SHA-384 fingerprint: {services.tls_ca.fingerprint_sha384}", err=True)
        typer.echo(f"issuing CA of key certificates: {services.issuing_ca.cert_path}", err=True)
    else:
        err_console.print(
            "[yellow]WARNING: --insecure-http: serving plain HTTP; tokens and keys cross unencrypted[/yellow]"
        )
    st = services.barrier.status()
    state = "not initialized" if not st.initialized else ("sealed" if st.sealed else "unsealed")
    err_console.print(
        f"keybroker {__version__} listening on {scheme}://{settings.listen} (key store {state})"
    )
    uvicorn.run(application, host=host, port=settings.port, log_config=None, access_log=False, **ssl)  # type: ignore[arg-type]


# --- operator -------------------------------------------------------------------------------------


def _client(
    server: str, ca_file: Path | None, data_dir: Path | None, token: str | None = None
) -> ServerClient:
    if server.startswith("https://") and ca_file is None:
        candidate = (data_dir or Path("data")) / "ca" / "ca.pem"
        ca_file = candidate if candidate.exists() else None
    return ServerClient(server, ca_file, token)


DEFAULT_SERVER = "https://127.0.0.1:9443"


@operator_app.command("init")
@handle_errors
def operator_init(
    shares: Annotated[int, typer.Option(min=1, max=255, help="number of unseal shares")] = 5,
    threshold: Annotated[int, typer.Option(min=1, max=255, help="shares needed to unseal")] = 3,
    server: ServerOpt = DEFAULT_SERVER,
    ca_file: CaOpt = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Initialize the key store: prints the unseal shares and a first admin token, once."""
    if threshold > shares:
        fail(f"--threshold {threshold} is larger than --shares {shares}", EXIT_USAGE)
    out = _client(server, ca_file, data_dir).call(
        "POST", "/sys/v1/init", {"shares": shares, "threshold": threshold}
    )
    if as_json:
        console.print_json(json.dumps(out))
        return
    kind = "Recovery" if out.get("recovery") else "Unseal"
    for i, share in enumerate(out["unseal_shares"], 1):
        console.print(f"{kind} share {i}: {share}", highlight=False)
    console.print(f"\nInitial admin token (*:*, 24 h): {out['admin_token']}", highlight=False)
    if out.get("recovery"):
        console.print(
            "\nThe key store is unsealed and will auto-unseal through its seal backend (HSM / Transit) at every start."
            f"\nThe recovery shares ({out['threshold']} needed) unseal it by hand if that backend is lost."
            "\nThey are shown only now: store them apart, with different people."
        )
    else:
        console.print(
            f"\nThe key store is sealed. Unseal it with {out['threshold']} shares: 'keybroker operator unseal' once per share."
            "\nThese shares and the token are shown only now: store them apart, with different people."
        )


@operator_app.command("unseal")
@handle_errors
def operator_unseal(
    share: Annotated[
        str | None, typer.Argument(help="one unseal share; read from stdin when omitted")
    ] = None,  # noqa: UP045
    reset: Annotated[
        bool,
        typer.Option(
            "--reset", help="discard the shares given so far (someone else's bogus share among them)"
        ),
    ] = False,
    server: ServerOpt = DEFAULT_SERVER,
    ca_file: CaOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Give one unseal share, or --reset the attempt under way."""
    client = _client(server, ca_file, data_dir)
    if reset:
        if share is not None:
            fail("give either a share or --reset, not both", EXIT_USAGE)
        out = client.call("POST", "/sys/v1/unseal", {"reset": True})
        console.print(f"unseal attempt reset: {out['progress']}/{out['t']} shares given", highlight=False)
        return
    if share is None:
        if os.isatty(0):
            share = typer.prompt("Unseal share", hide_input=True)
        else:
            share = input().strip()
    out = client.call("POST", "/sys/v1/unseal", {"key": share})
    if out["sealed"]:
        console.print(
            f"sealed: {out['progress']}/{out['t']} shares given (unseal attempt {out['nonce']})",
            highlight=False,
        )
    else:
        console.print("unsealed")


@operator_app.command("seal")
@handle_errors
def operator_seal(
    token: Annotated[str, typer.Option(envvar="KEYBROKER_TOKEN", help="a token with sys:seal")],
    server: ServerOpt = DEFAULT_SERVER,
    ca_file: CaOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Seal the key store now (drops the root key from memory)."""
    _client(server, ca_file, data_dir, token).call("POST", "/sys/v1/seal")
    console.print("sealed")


@operator_app.command("status")
@handle_errors
def operator_status(
    server: ServerOpt = DEFAULT_SERVER,
    ca_file: CaOpt = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show whether the key store is initialized and sealed, and the unseal progress (this
    replica's: each is unsealed on its own). Exit 0 unsealed, 1 sealed."""
    out = _client(server, ca_file, data_dir).call("GET", "/sys/v1/seal-status")
    if as_json:
        console.print_json(json.dumps(out))
    else:
        for k, v in out.items():
            if k not in ("t", "n", "progress", "nonce"):
                console.print(f"{k:12} {v}", highlight=False)
        if out["initialized"] and out["sealed"]:
            attempt = f" (unseal attempt {out['nonce']})" if out["nonce"] else ""
            console.print(f"{'progress':12} {out['progress']}/{out['t']}{attempt}", highlight=False)
    if out["sealed"]:
        raise typer.Exit(EXIT_FAILED)


if __name__ == "__main__":  # pragma: no cover
    app()
