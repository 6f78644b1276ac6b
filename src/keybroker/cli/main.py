"""``keybroker``: the server, operator and admin command line."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from keybroker import __version__, datadir
from keybroker.cli import audit, collateral, devpki, evidence, keystore, policy, role, serving, token, tpm
from keybroker.cli import workers as serve_workers
from keybroker.cli.common import (
    EXIT_CODES_HELP,
    EXIT_FAILED,
    EXIT_USAGE,
    CaOpt,
    ConfigOpt,
    DatabaseOpt,
    DataDirOpt,
    ServerOpt,
    console,
    err_console,
    fail,
    handle_errors,
)
from keybroker.cli.serving import server_client
from keybroker.config import Settings, load_settings

if TYPE_CHECKING:
    import uvicorn

app = typer.Typer(
    name="keybroker",
    help="Key Broker Service and Attestation Service for confidential computing.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
operator_app = typer.Typer(
    help="Initialize, unseal and seal the key store of a running server.\n\nThe server: --server, else "
    "KEYBROKER_ADDR, else the URL keybroker serve recorded in <data-dir>/server.json, else "
    "https://127.0.0.1:9443; its CA: --ca-file, else <data-dir>/ca/ca.pem.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
)
app.add_typer(operator_app, name="operator")
app.add_typer(token.app, name="token")
app.add_typer(role.app, name="role")
app.add_typer(audit.app, name="audit")
app.add_typer(devpki.app, name="dev-pki")
app.add_typer(evidence.app, name="evidence")
app.add_typer(collateral.app, name="collateral")
app.add_typer(keystore.app, name="keystore")
app.add_typer(policy.app, name="policy")
app.add_typer(tpm.app, name="tpm")

ServerDataDirOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--data-dir",
        help="the server's data directory: its server.json names the server's URL, its ca/ca.pem the CA",
        envvar="KEYBROKER_DATA_DIR",
        show_envvar=True,
        show_default="./data",
    ),
]


def _version(value: bool) -> None:
    if value:
        console.print(f"keybroker {__version__}")
        raise typer.Exit()


@app.callback(
    help=f"Key Broker Service and Attestation Service for confidential computing. {EXIT_CODES_HELP}"
)
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


@app.command(epilog=EXIT_CODES_HELP)
@handle_errors
def serve(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    listen: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--listen",
            help="HOST:PORT to listen on; 0.0.0.0 or [::] for every address",
            envvar="KEYBROKER_LISTEN",
            show_envvar=True,
            show_default="127.0.0.1:9443",
        ),
    ] = None,
    database: DatabaseOpt = None,
    insecure_http: Annotated[
        Optional[bool],  # noqa: UP045
        typer.Option(
            "--insecure-http",
            help="plain HTTP, loopback only (testing)",
            envvar="KEYBROKER_INSECURE_HTTP",
            show_envvar=True,
            show_default="false",
        ),
    ] = None,
    dev: Annotated[
        Optional[bool],  # noqa: UP045
        typer.Option(
            "--dev",
            help="development mode, for one data dir on one node: auto-unseal from a key file in the "
            "data dir, trust the dev TEE simulator; never for real keys",
            envvar="KEYBROKER_DEV",
            show_envvar=True,
            show_default="false",
        ),
    ] = None,
    workers: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            "--workers",
            min=1,
            max=64,
            help="processes serving the listening socket, e.g. one per core: PostgreSQL only, each unsealing "
            "itself (an auto-unseal seal, or --dev)",
            envvar="KEYBROKER_WORKERS",
            show_envvar=True,
            show_default="1",
        ),
    ] = None,
    tls_name: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--tls-name",
            metavar="NAME",
            help="a name (DNS or IP) this replica's HTTPS certificate carries besides the listen address "
            "and loopback: the load balancer's name, the host's; repeat for several (KEYBROKER_TLS_NAMES: "
            "comma-separated)",
            show_default=False,
        ),
    ] = None,
    log_format: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--log-format",
            help="text or json (one object per line)",
            envvar="KEYBROKER_LOG_FORMAT",
            show_envvar=True,
            show_default="text",
        ),
    ] = None,
) -> None:
    """Run the service (HTTPS by default, with a local CA created in the data dir on first start).

    It says where it listens once the address is bound, and records that in <data-dir>/server.json
    for the operator commands (marked stopped at a clean shutdown).
    """
    import uvicorn

    from keybroker import logs
    from keybroker.api.app import create_app
    from keybroker.api.services import Services
    from keybroker.keys.certs import subject_alt_names
    from keybroker.replica import Served

    settings = _settings(
        config,
        data_dir,
        database,
        listen=listen,
        insecure_http=insecure_http,
        dev=dev,
        log_format=log_format,
        tls_names=tls_name or None,
        workers=workers,
    )
    serve_workers.check(settings)
    datadir.restrict_umask()
    logs.configure(settings.log_format, settings.log_level)
    host, port = settings.host, settings.port
    subject_alt_names(settings.tls_names, field="tls_names")  # a bad name is a usage error, before anything
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
    # Bound before anything is created: a port in use leaves the data dir as it was. Not listening
    # until the service is built, so that early clients are refused rather than left hanging.
    sockets = serving.bind(settings.listen, host, port)
    try:
        services = Services.build(settings)
        ssl: dict[str, Any] = {}
        scheme, anchor = "http", None
        identity = serving.TlsIdentity()
        names: list[str] | None = None
        if not settings.insecure_http:
            names = sorted({"localhost", "127.0.0.1", "::1", host, *settings.tls_names} - {"0.0.0.0", "::"})  # noqa: S104
            served = services.replica.serve_tls(names)
            ssl = {
                "ssl_certfile": str(served.cert),
                "ssl_keyfile": str(served.key),
                "ssl_context_factory": identity.factory,
            }
            scheme, anchor = "https", served.anchor.relative_to(settings.data_dir).as_posix()
            if services.tls_ca.cert_path.exists():
                typer.echo(f"TLS anchor (clients pin it): {services.tls_ca.cert_path}", err=True)
                typer.echo(f"TLS anchor SHA-384 fingerprint: {services.tls_ca.fingerprint_sha384}", err=True)
                typer.echo(f"issuing CA of key certificates: {services.issuing_ca.cert_path}", err=True)
            else:  # a new replica: the database's anchor is authenticated only by unsealing
                typer.echo(
                    f"TLS anchor (clients pin it): written to {services.tls_ca.cert_path} once this replica "
                    "is unsealed",
                    err=True,
                )
            if served.bootstrap:
                typer.echo(
                    f"until it is unsealed this replica serves a bootstrap certificate (CA {served.anchor}) "
                    f"that only the operator commands on this host trust: keybroker operator unseal "
                    f"--data-dir {settings.data_dir}",
                    err=True,
                )
        else:
            err_console.print(
                "[yellow]WARNING: --insecure-http: serving plain HTTP; tokens and keys cross unencrypted[/yellow]"
            )
        for sock in sockets:
            sock.listen(serving.BACKLOG)
        record = serving.new_record(serving.client_url(scheme, host, port), settings.listen, anchor)
        serving.write_record(settings.data_dir, record)

        def switch(new: Served) -> None:
            # a certificate from the TLS anchor, once unsealed (or renewed): new connections get it
            identity.switch(new.cert, new.key)
            serving.update_anchor(
                settings.data_dir, record, new.anchor.relative_to(settings.data_dir).as_posix()
            )

        services.replica.on_certificate(switch)
        st = services.barrier.status()
        state = "not initialized" if not st.initialized else ("sealed" if st.sealed else "unsealed")
        err_console.print(
            f"keybroker {__version__} listening on {scheme}://{settings.listen} (key store {state}); "
            f"operator commands reach it at {record.url} (recorded in {settings.data_dir / serving.RECORD_FILE})",
            highlight=False,
            soft_wrap=True,
        )
        if settings.workers > 1:
            _serve_workers(settings, services, names, sockets, ssl)
            serving.mark_stopped(settings.data_dir, record)
            return
        server = _uvicorn_server(
            uvicorn.Config(
                create_app(services), host=host, port=port, log_config=None, access_log=False, **ssl
            ),
            on_shutdown=lambda: serving.mark_stopped(settings.data_dir, record),
        )
        try:
            server.run(sockets=sockets)
        except SystemExit:  # uvicorn exits so when the app's start-up fails (it logged why)
            fail("the service did not start (the log above says why)", EXIT_FAILED)
        finally:
            serving.mark_stopped(settings.data_dir, record)
    finally:
        for sock in sockets:
            sock.close()


def _serve_workers(
    settings: Settings,
    services: Any,
    names: list[str] | None,
    sockets: list[socket.socket],
    ssl: dict[str, Any],
) -> None:
    """Hand the bound sockets to ``settings.workers`` processes (uvicorn's supervisor); each builds
    its own services (:class:`keybroker.cli.workers.WorkerApp`). This process only supervises."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    services.db.dispose()
    config = uvicorn.Config(
        serve_workers.WorkerApp(settings, None if names is None else tuple(names)),
        factory=True,
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        **ssl,
    )
    Multiprocess(config, sockets=sockets).run()


def _uvicorn_server(config: uvicorn.Config, on_shutdown: Callable[[], None]) -> uvicorn.Server:
    """uvicorn's server, calling ``on_shutdown`` as its shutdown ends: uvicorn re-raises a SIGTERM
    once it has shut down, so code after ``run`` does not run then."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            await super().shutdown(sockets=sockets)
            on_shutdown()

    return Server(config)


# --- operator -------------------------------------------------------------------------------------


@operator_app.command("init", epilog=EXIT_CODES_HELP)
@handle_errors
def operator_init(
    ctx: typer.Context,
    shares: Annotated[int, typer.Option(min=1, max=255, help="number of unseal shares")] = 5,
    threshold: Annotated[int, typer.Option(min=1, max=255, help="shares needed to unseal")] = 3,
    server: ServerOpt = None,
    ca_file: CaOpt = None,
    data_dir: ServerDataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Initialize the key store: prints the unseal shares and a first admin token, once."""
    if threshold > shares:
        fail(f"--threshold {threshold} is larger than --shares {shares}", EXIT_USAGE)
    out = server_client(ctx, server, ca_file, data_dir).call(
        "POST", "/sys/v1/init", {"shares": shares, "threshold": threshold}
    )
    if as_json:
        console.print_json(json.dumps(out))
        return
    kind = "Recovery" if out.get("recovery") else "Unseal"
    # Each on one line, never wrapped: what is copied from the terminal must be the whole value.
    for i, share in enumerate(out["unseal_shares"], 1):
        console.print(f"{kind} share {i}: {share}", highlight=False, soft_wrap=True)
    console.print(f"\nInitial admin token (*:*, 24 h): {out['admin_token']}", highlight=False, soft_wrap=True)
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


@operator_app.command("unseal", epilog=EXIT_CODES_HELP)
@handle_errors
def operator_unseal(
    ctx: typer.Context,
    share: Annotated[
        str | None, typer.Argument(help="one unseal share; read from stdin when omitted")
    ] = None,  # noqa: UP045
    reset: Annotated[
        bool,
        typer.Option(
            "--reset", help="discard the shares given so far (someone else's bogus share among them)"
        ),
    ] = False,
    server: ServerOpt = None,
    ca_file: CaOpt = None,
    data_dir: ServerDataDirOpt = None,
) -> None:
    """Give one unseal share, or --reset the attempt under way."""
    client = server_client(ctx, server, ca_file, data_dir)
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


@operator_app.command("seal", epilog=EXIT_CODES_HELP)
@handle_errors
def operator_seal(
    ctx: typer.Context,
    token: Annotated[str, typer.Option(envvar="KEYBROKER_TOKEN", help="a token with sys:seal")],
    server: ServerOpt = None,
    ca_file: CaOpt = None,
    data_dir: ServerDataDirOpt = None,
) -> None:
    """Seal the key store now (drops the root key from memory)."""
    server_client(ctx, server, ca_file, data_dir, token).call("POST", "/sys/v1/seal")
    console.print("sealed")


@operator_app.command("status", epilog=EXIT_CODES_HELP)
@handle_errors
def operator_status(
    ctx: typer.Context,
    server: ServerOpt = None,
    ca_file: CaOpt = None,
    data_dir: ServerDataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show whether the key store is initialized and sealed, and the unseal progress (this
    replica's: each is unsealed on its own). Exit 0 unsealed, 1 sealed."""
    out = server_client(ctx, server, ca_file, data_dir).call("GET", "/sys/v1/seal-status")
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


@operator_app.command("integrity", epilog=EXIT_CODES_HELP)
@handle_errors
def operator_integrity(
    ctx: typer.Context,
    token: Annotated[str, typer.Option(envvar="KEYBROKER_TOKEN", help="a token with sys:integrity")],
    adopt: Annotated[
        bool,
        typer.Option(
            "--adopt",
            help="tag the untagged rows as they are now (after reviewing them: they are released on from then)",
        ),
    ] = False,
    include_changed: Annotated[
        bool,
        typer.Option(
            "--include-changed", help="with --adopt: also rows changed in the database since they were tagged"
        ),
    ] = False,
    server: ServerOpt = None,
    ca_file: CaOpt = None,
    data_dir: ServerDataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Check the integrity tags of the rows that decide a release (transfer policies, keys, /kbs/v0
    resources); --adopt tags the untagged ones. Exit 0 when every row verifies, 1 otherwise."""
    if include_changed and not adopt:
        fail("--include-changed goes with --adopt", EXIT_USAGE)
    client = server_client(ctx, server, ca_file, data_dir, token)
    if adopt:
        out = client.call("POST", "/sys/v1/integrity/adopt", {"include_changed": include_changed})
    else:
        out = client.call("GET", "/sys/v1/integrity")
    if as_json:
        console.print_json(json.dumps(out))
    else:
        verified = ", ".join(f"{n} {table}" for table, n in out["verified"].items())
        console.print(f"verified: {verified}", highlight=False)
        for f in out["findings"]:
            console.print(f"{f['state']:9} {f['table']:17} {f['id']}  sha256 {f['sha256']}", highlight=False)
    if any(f["state"] != "adopted" for f in out["findings"]):
        raise typer.Exit(EXIT_FAILED)


if __name__ == "__main__":  # pragma: no cover
    app()
