"""``keybroker-client``: the workload side, run inside the TEE.

Exit codes: 0 ok, 1 denied or failed (the broker's reasons are printed), 2 usage, 3 the broker is
unreachable or unavailable (network, TLS verification, 5xx after the retries). Key material is never
printed or logged: ``get-key`` writes it only to ``--out`` (mode 0600) or into a PKCS#11 token.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer

from keybroker import __version__
from keybroker.cli import client_evidence
from keybroker.client import evidence as ev
from keybroker.client.errors import Denied, EvidenceUnavailable, Unreachable
from keybroker.client.http import RetryPolicy, TlsConfig, Transport, parse_sha384_pin
from keybroker.client.material import ReleasedKey, check_writable, write_private_file
from keybroker.errors import InvalidInput, KeybrokerError

app = typer.Typer(
    name="keybroker-client",
    help="keybroker workload client: obtains evidence inside a TEE and fetches keys.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

EXIT_OK, EXIT_DENIED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
log = logging.getLogger("keybroker.client")

P = ParamSpec("P")
R = TypeVar("R")


def _say(message: str) -> None:
    typer.echo(message, err=True)


def exit_code(exc: KeybrokerError) -> int:
    if isinstance(exc, InvalidInput):
        return EXIT_USAGE
    if isinstance(exc, Unreachable):
        return EXIT_UNREACHABLE
    return EXIT_DENIED


def _exits(fn: Callable[P, R]) -> Callable[P, R]:
    """Client errors become a message on stderr and an exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except KeybrokerError as exc:
            _say("error: " + (exc.diagnostics() if isinstance(exc, Denied) else f"{exc.title}: {exc.detail}"))
            raise typer.Exit(exit_code(exc)) from None

    return wrapper


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(self.format(record), err=True)


def _logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("keybroker-client: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    # httpx/httpcore stay quiet: their debug output would include request details.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


# --- shared options --------------------------------------------------------------------------------

ServerOpt = Annotated[
    str, typer.Option("--server", envvar="KEYBROKER_ADDR", help="the key broker's https:// URL")
]
CaFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--ca-file", envvar="KEYBROKER_CA_FILE", help="CA certificate(s) the server's chain must verify to"
    ),
]
CaPinOpt = Annotated[
    str | None,
    typer.Option(
        "--ca-sha384",
        envvar="KEYBROKER_CA_SHA384",
        help="SHA-384 fingerprint (hex) of the broker's TLS anchor (ca/ca.pem) or of its certificate",
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token", envvar="KEYBROKER_TOKEN", help="workload bearer token (client permissions, /kbs/v1)"
    ),
]
TeeOpt = Annotated[
    str,
    typer.Option(
        "--tee",
        help="auto (detect), tdx (configfs-tsm or /dev/tdx_guest), snp (configfs-tsm), sgx (Gramine), "
        "sim-tdx or sim-sgx (simulator, NOT FOR PRODUCTION)",
    ),
]
DevPkiOpt = Annotated[
    Path | None,
    typer.Option("--dev-pki", help="the broker's dev PKI directory (--tee sim-*)"),
]
SimFieldOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--sim-field",
        help="simulated measurement NAME=VALUE, repeatable (tdx: mrtd, rtmr0..3, mrseam, seamsvn, debug, tcb; "
        "sgx: mrenclave, mrsigner, isvprodid, isvsvn, debug, tcb)",
    ),
]
RetriesOpt = Annotated[
    int, typer.Option("--retries", min=0, max=20, help="retries after a network error or 5xx")
]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=0.1, help="seconds per HTTP request")]
VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, help="-v: progress, -vv: debug")]
RootOpt = Annotated[Path, typer.Option("--system-root", hidden=True, help="prefix for /sys and /dev (tests)")]
TimingsOpt = Annotated[bool, typer.Option("--timings", help="print how long each step took (stderr)")]

ModuleOpt = Annotated[
    Path | None,
    typer.Option("--pkcs11-module", envvar="KEYBROKER_PKCS11_MODULE", help="PKCS#11 module (.so)"),
]
PinOpt = Annotated[
    str | None,
    typer.Option("--pin", help="token user PIN (visible to other local users in ps: prefer --pin-file)"),
]
PinFileOpt = Annotated[
    Path | None,
    typer.Option("--pin-file", envvar="KEYBROKER_PKCS11_PIN_FILE", help="file holding the token user PIN"),
]
ReplaceOpt = Annotated[
    bool, typer.Option("--replace", help="overwrite a different key already under the same label or id")
]


def _sim_fields(values: list[str] | None) -> dict[str, str]:
    fields: dict[str, str] = {}
    for item in values or []:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise InvalidInput(f"--sim-field {item!r} is not NAME=VALUE", field="sim-field")
        fields[name.strip().lower()] = value.strip()
    return fields


def _provider(tee: str, dev_pki: Path | None, sim_field: list[str] | None, root: Path) -> ev.Provider:
    fields = _sim_fields(sim_field)
    if tee == "auto":
        if fields:
            raise InvalidInput("--sim-field is for --tee sim-tdx or sim-sgx only", field="sim-field")
        found = ev.detect(root)
        _say("--tee auto: " + found.summary())
        if found.provider is None:
            raise EvidenceUnavailable("no TEE interface found (--tee sim-tdx or sim-sgx for the simulator)")
        provider = found.provider
    else:
        provider = ev.provider_for(tee, root=root, dev_pki=dev_pki, sim_fields=fields)
    if isinstance(provider, ev.Simulator):
        _say(f"WARNING: simulated {provider.tee.upper()} evidence; NOT FOR PRODUCTION")
    log.info("evidence from %s", provider.source)
    return provider


def _transport(
    server: str, ca_file: Path | None, ca_sha384: str | None, token: str | None, retries: int, timeout: float
) -> Transport:
    pin = parse_sha384_pin(ca_sha384) if ca_sha384 else None
    return Transport(
        server,
        TlsConfig(ca_file, pin),
        token=token,
        timeout=timeout,
        retry=RetryPolicy(attempts=retries + 1),
    )


def _hex_id(value: str | None) -> bytes | None:
    if value is None:
        return None
    try:
        raw = bytes.fromhex(value.replace(":", ""))
    except ValueError:
        raise InvalidInput(f"--id {value!r} is not hex", field="id") from None
    if not 1 <= len(raw) <= 64:
        raise InvalidInput("--id must be 1 to 64 bytes of hex", field="id")
    return raw


def _check_uuid(key_id: str) -> str:
    import uuid

    try:
        return str(uuid.UUID(key_id))
    except ValueError:
        raise InvalidInput(f"KEY_ID {key_id!r} is not a key id (UUID)", field="key_id") from None


def _import(
    released: ReleasedKey,
    module: Path,
    token_label: str,
    pin: str,
    label: str,
    obj_id: bytes | None,
    replace: bool,
) -> str:
    from keybroker.client.pkcs11_import import TokenTarget, import_private_key

    if released.kind == "secret":
        raise InvalidInput(
            f"key {released.key_id} is a {released.describe()}; only RSA and EC private keys go into a token",
            field="key_id",
        )
    result = import_private_key(
        TokenTarget(module, token_label, pin, label, obj_id), released.private_key(), replace=replace
    )
    _say(f"{result.action}: {released.describe()} {released.key_id} as {label!r} in token {token_label!r}")
    return result.uri


# --- commands --------------------------------------------------------------------------------------


@app.command("get-key")
@_exits
def get_key(
    key_id: Annotated[str, typer.Argument(help="the key's id")],
    server: ServerOpt,
    tee: TeeOpt = "auto",
    dev_pki: DevPkiOpt = None,
    sim_field: SimFieldOpt = None,
    ca_file: CaFileOpt = None,
    ca_sha384: CaPinOpt = None,
    token: TokenOpt = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="write the key here (PEM for private keys, raw for secrets), mode 0600"),
    ] = None,
    pkcs11_module: ModuleOpt = None,
    token_label: Annotated[
        str | None, typer.Option("--token-label", help="the PKCS#11 token's label")
    ] = None,
    pin: PinOpt = None,
    pin_file: PinFileOpt = None,
    label: Annotated[str | None, typer.Option("--label", help="CKA_LABEL of the imported key")] = None,
    obj_id: Annotated[
        str | None,
        typer.Option("--id", help="CKA_ID in hex [default: the key's Subject Key Identifier]"),
    ] = None,
    replace: ReplaceOpt = False,
    retries: RetriesOpt = 3,
    timeout: TimeoutOpt = 30.0,
    timings: TimingsOpt = False,
    verbose: VerboseOpt = 0,
    system_root: RootOpt = Path("/"),
) -> None:
    """Attest and fetch a key over /kbs/v1: to --out FILE, or into a PKCS#11 token (prints its URI)."""
    from keybroker.client.pkcs11_import import read_pin
    from keybroker.client.protocol_v1 import Timings, fetch_key

    _logging(verbose)
    key_id = _check_uuid(key_id)
    to_token = any(v is not None for v in (pkcs11_module, token_label, label, obj_id))
    if (out is None) == (not to_token):
        raise InvalidInput("give either --out FILE or --pkcs11-module/--token-label/--label", field="out")
    the_pin = ""
    if to_token:
        missing = [
            n
            for n, v in (
                ("--pkcs11-module", pkcs11_module),
                ("--token-label", token_label),
                ("--label", label),
            )
            if v is None
        ]
        if missing:
            raise InvalidInput(f"importing into a token needs {', '.join(missing)}", field="pkcs11")
        the_pin = read_pin(pin, pin_file)
    ident = _hex_id(obj_id)
    if out is not None:
        check_writable(out)
    provider = _provider(tee, dev_pki, sim_field, system_root)
    steps = Timings()
    started = time.perf_counter()
    with _transport(server, ca_file, ca_sha384, token, retries, timeout) as transport:
        released = fetch_key(transport, key_id, provider, timings=steps)
    fetched = time.perf_counter()
    if out is not None:
        write_private_file(out, released.file_bytes())
        _say(f"wrote {released.describe()} {key_id} to {out} (mode 0600)")
    else:
        assert pkcs11_module is not None and token_label is not None and label is not None
        typer.echo(_import(released, pkcs11_module, token_label, the_pin, label, ident, replace))
    if timings:
        parts = [f"{k} {v * 1000:.0f} ms" for k, v in steps.steps.items()]
        parts.append(f"total fetch {(fetched - started) * 1000:.0f} ms")
        parts.append(f"store {(time.perf_counter() - fetched) * 1000:.0f} ms")
        _say("timings: " + ", ".join(parts))


@app.command()
@_exits
def provision(
    config: Annotated[Path, typer.Option("--config", help="keys file: '<pkcs11 URI> <key id>' per line")],
    server: ServerOpt,
    tee: TeeOpt = "auto",
    dev_pki: DevPkiOpt = None,
    sim_field: SimFieldOpt = None,
    ca_file: CaFileOpt = None,
    ca_sha384: CaPinOpt = None,
    token: TokenOpt = None,
    pkcs11_module: ModuleOpt = None,
    pin: PinOpt = None,
    pin_file: PinFileOpt = None,
    replace: ReplaceOpt = False,
    retries: RetriesOpt = 3,
    timeout: TimeoutOpt = 30.0,
    verbose: VerboseOpt = 0,
    system_root: RootOpt = Path("/"),
) -> None:
    """Fetch every key a keys file lists into its PKCS#11 token (idempotent: run it at every boot).

    Each line: ``pkcs11:token=KMS;id=%01;object=RSAKEY;type=private <key id>``; ``module-path`` and
    ``pin-source`` query attributes override --pkcs11-module and --pin-file for that line. Every line
    is tried; the exit code is the highest of the lines' codes.
    """
    from keybroker.client.pkcs11_import import parse_keys_file, read_pin
    from keybroker.client.protocol_v1 import fetch_key

    _logging(verbose)
    try:
        text = config.read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read --config {config}: {exc.strerror}", field="config") from None
    entries = parse_keys_file(text, str(config))
    plans = []
    for e in entries:
        module = e.uri.module_path or pkcs11_module
        if module is None:
            raise InvalidInput(
                f"{config}:{e.line}: no module-path in the URI and no --pkcs11-module", field="config"
            )
        if e.uri.pin_value is not None:
            log.warning("%s:%d: pin-value puts the PIN in the keys file; prefer pin-source", config, e.line)
            the_pin = e.uri.pin_value
        else:
            the_pin = read_pin(pin if e.uri.pin_source is None else None, e.uri.pin_source or pin_file)
        plans.append((e, module, the_pin))
    provider = _provider(tee, dev_pki, sim_field, system_root)
    worst = EXIT_OK
    with _transport(server, ca_file, ca_sha384, token, retries, timeout) as transport:
        for e, module, the_pin in plans:
            try:
                released = fetch_key(transport, e.key_id, provider)
                uri = _import(released, module, e.uri.token, the_pin, e.uri.object, e.uri.id, replace)
            except KeybrokerError as exc:
                text = exc.diagnostics() if isinstance(exc, Denied) else f"{exc.title}: {exc.detail}"
                _say(f"error: {config}:{e.line} {e.key_id}: {text}")
                worst = max(worst, exit_code(exc))
                continue
            typer.echo(f"{uri} {e.key_id}")
    if worst != EXIT_OK:
        raise typer.Exit(worst)


@app.command("get-resource")
@_exits
def get_resource(
    resource: Annotated[str, typer.Argument(help="REPOSITORY/TYPE/TAG")],
    server: ServerOpt,
    tee: TeeOpt = "auto",
    dev_pki: DevPkiOpt = None,
    sim_field: SimFieldOpt = None,
    ca_file: CaFileOpt = None,
    ca_sha384: CaPinOpt = None,
    key_type: Annotated[
        str, typer.Option("--key-type", help="ephemeral key: rsa (RSA-3072) or ec (P-256)")
    ] = "rsa",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="write the resource here (mode 0600) [default: stdout; private keys need --out]"
        ),
    ] = None,
    retries: RetriesOpt = 3,
    timeout: TimeoutOpt = 30.0,
    verbose: VerboseOpt = 0,
    system_root: RootOpt = Path("/"),
) -> None:
    """Attest and fetch a resource over the Confidential Containers KBS protocol (/kbs/v0)."""
    from keybroker.client.protocol_v0 import fetch_resource

    _logging(verbose)
    if key_type not in ("rsa", "ec"):
        raise InvalidInput(f"--key-type {key_type!r} is not rsa or ec", field="key_type")
    if out is not None:
        check_writable(out)
    provider = _provider(tee, dev_pki, sim_field, system_root)
    with _transport(server, ca_file, ca_sha384, None, retries, timeout) as transport:
        released = fetch_resource(
            transport, resource, provider, key_type="rsa" if key_type == "rsa" else "ec"
        )
    if out is not None:
        write_private_file(out, released.file_bytes())
        _say(f"wrote {released.describe()} {resource} to {out} (mode 0600)")
    elif released.kind != "secret":
        raise InvalidInput(f"{resource} is a {released.describe()}: give --out FILE", field="out")
    else:
        sys.stdout.buffer.write(released.material)
        sys.stdout.buffer.flush()


@app.command()
@_exits
def detect(system_root: RootOpt = Path("/")) -> None:
    """Say which TEE interfaces this machine offers (what --tee auto would use)."""
    found = ev.detect(system_root)
    for line in found.findings:
        typer.echo(line)
    if found.provider is None:
        _say("no TEE interface found")
        raise typer.Exit(EXIT_DENIED)
    typer.echo(f"--tee auto uses: {found.provider.source}")


client_evidence.register(app)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"keybroker-client {__version__}")
