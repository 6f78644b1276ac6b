"""``keybroker-client``: the workload side, run inside the TEE.

Exit codes: 0 ok, 1 denied or failed (the broker's reasons are printed), 2 usage, 3 the broker is
unreachable or unavailable (network, 5xx after the retries), 4 TLS verification failed. Key material is never
printed or logged: ``get-key`` writes it only to ``--out`` (mode 0600) or into a PKCS#11 token.

A key already where it should go is not released again: the broker's challenge names the key's public
half before any evidence is sent, and the token (or the ``--out`` file) is checked against it first.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Annotated

import typer

from keybroker import __version__
from keybroker.cli import client_evidence
from keybroker.cli.client_common import (
    EXIT_DENIED,
    EXIT_OK,
    DevPkiOpt,
    RootOpt,
    SimFieldOpt,
    TeeOpt,
    TpmOpt,
    VerboseOpt,
    describe,
    exit_code,
    exits,
    log,
    provider,
    say,
    setup_logging,
)
from keybroker.client import evidence as ev
from keybroker.client.errors import OutputError
from keybroker.client.http import RetryPolicy, TlsConfig, Transport, parse_sha384_pin
from keybroker.client.material import ReleasedKey, check_writable, holds_private_key, write_private_file
from keybroker.client.pkcs11_import import TokenTarget
from keybroker.client.protocol_v1 import Challenge
from keybroker.errors import InvalidInput, KeybrokerError


def _version(value: bool) -> None:
    if value:
        typer.echo(f"keybroker-client {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="keybroker-client",
    help="keybroker workload client: obtains evidence inside a TEE and fetches keys.",
    epilog=(
        "Exit codes: 0 ok; 1 denied or failed; 2 usage; 3 broker unreachable or unavailable; "
        "4 TLS verification failed (give --ca-file or --ca-sha384)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")
    ] = False,
) -> None:
    """keybroker workload client: obtains evidence inside a TEE and fetches keys."""


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
RetriesOpt = Annotated[
    int, typer.Option("--retries", min=0, max=20, help="retries after a network error or 5xx")
]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=0.1, help="seconds per HTTP request")]
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
    try:
        return str(uuid.UUID(key_id))
    except ValueError:
        raise InvalidInput(f"KEY_ID {key_id!r} is not a key id (UUID)", field="key_id") from None


def _not_a_token_key(key_id: str, what: str) -> InvalidInput:
    return InvalidInput(
        f"key {key_id} is a {what}; only RSA and EC private keys go into a token (nothing was released)",
        field="key_id",
    )


def _in_token_already(challenge: Challenge, key_id: str, target: TokenTarget, replace: bool) -> str | None:
    """Before the release: the key's URI when the token already holds it; None when it is to be
    imported. Raises when it cannot be (a secret, another key under the label or id, token errors)."""
    from keybroker.client.pkcs11_import import inspect_target, load_public_key

    if challenge.kind == "secret":
        raise _not_a_token_key(key_id, "secret (AES or raw bytes)")
    public = load_public_key(challenge.public_key) if challenge.public_key is not None else None
    result = inspect_target(target, public, replace=replace)
    if result is None:
        return None
    say(
        f"unchanged: key {key_id} is already in token {target.token_label!r} as {target.label!r}; nothing released"
    )
    return result.uri


def _import(released: ReleasedKey, target: TokenTarget, replace: bool) -> str:
    from keybroker.client.pkcs11_import import import_private_key

    if released.kind == "secret":
        raise _not_a_token_key(released.key_id, released.describe())
    result = import_private_key(target, released.private_key(), replace=replace)
    say(
        f"{result.action}: {released.describe()} {released.key_id} as {target.label!r} "
        f"in token {target.token_label!r}"
    )
    return result.uri


def _file_is_current(challenge: Challenge, key_id: str, out: Path, keep_existing: bool) -> bool:
    """Before the release: whether ``out`` already holds the key (or is to be kept as it is)."""
    if challenge.public_key is not None:
        held = holds_private_key(out, challenge.public_key)
        if held:
            say(f"unchanged: {out} already holds key {key_id} (the same public key); nothing released")
            return True
        if held is False:
            if keep_existing:
                raise OutputError(
                    f"{out} holds something other than key {key_id}; --keep-existing keeps only a file "
                    "that cannot be compared without a release (a secret): remove it or drop --keep-existing"
                )
            say(f"{out} holds something other than key {key_id}: replacing it")
        return False
    if not out.exists():
        return False
    if keep_existing:
        say(f"kept {out} (--keep-existing): not compared with key {key_id}; nothing released")
        return True
    why = (
        "a secret cannot be compared with it without a release"
        if challenge.kind == "secret"
        else "the broker does not name the key's public half"
    )
    say(
        f"{out} exists and {why}: releasing key {key_id} again to replace it "
        "(--keep-existing keeps the file and releases nothing)"
    )
    return False


# --- commands --------------------------------------------------------------------------------------


@app.command("get-key")
@exits
def get_key(
    key_id: Annotated[str, typer.Argument(help="the key's id")],
    server: ServerOpt,
    tee: TeeOpt = "auto",
    dev_pki: DevPkiOpt = None,
    sim_field: SimFieldOpt = None,
    tpm: TpmOpt = None,
    ca_file: CaFileOpt = None,
    ca_sha384: CaPinOpt = None,
    token: TokenOpt = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="write the key here (PEM for private keys, raw for secrets), mode 0600"),
    ] = None,
    keep_existing: Annotated[
        bool,
        typer.Option(
            "--keep-existing",
            help="keep an existing --out file that cannot be compared with the key (a secret) and release "
            "nothing; a private key file is always compared, and kept only when it holds this key",
        ),
    ] = False,
    pkcs11_module: ModuleOpt = None,
    token_label: Annotated[
        str | None, typer.Option("--token-label", help="the PKCS#11 token's label")
    ] = None,
    pin: PinOpt = None,
    pin_file: PinFileOpt = None,
    label: Annotated[str | None, typer.Option("--label", help="CKA_LABEL of the imported key")] = None,
    obj_id: Annotated[
        str | None,
        typer.Option("--id", help="CKA_ID in hex", show_default="the key's Subject Key Identifier"),
    ] = None,
    replace: ReplaceOpt = False,
    retries: RetriesOpt = 3,
    timeout: TimeoutOpt = 30.0,
    timings: TimingsOpt = False,
    verbose: VerboseOpt = 0,
    system_root: RootOpt = Path("/"),
) -> None:
    """Attest and fetch a key over /kbs/v1: to --out FILE, or into a PKCS#11 token (prints its URI).

    A key already there is not released again: the broker names the key's public half first, and a
    token holding it under --label, or an --out file holding it, is left as it is. A wrong PIN, a
    missing token or another key under --label or --id (without --replace) stop before any release.
    """
    from keybroker.client.pkcs11_import import inspect_target, read_pin
    from keybroker.client.protocol_v1 import Timings, fetch_key, request_challenge

    setup_logging(verbose)
    key_id = _check_uuid(key_id)
    to_token = any(v is not None for v in (pkcs11_module, token_label, label, obj_id))
    if (out is None) == (not to_token):
        raise InvalidInput("give either --out FILE or --pkcs11-module/--token-label/--label", field="out")
    target: TokenTarget | None = None
    if to_token:
        if keep_existing:
            raise InvalidInput(
                "--keep-existing is for --out FILE (a token keeps the same key anyway)", field="keep_existing"
            )
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
        assert pkcs11_module is not None and token_label is not None and label is not None
        target = TokenTarget(pkcs11_module, token_label, read_pin(pin, pin_file), label, _hex_id(obj_id))
    if out is not None:
        check_writable(out)
    source = provider(tee, dev_pki, sim_field, system_root, tpm)
    if target is not None:
        inspect_target(target, None)  # the module, the token and the PIN, before the broker is asked
    steps = Timings()
    started = time.perf_counter()
    with _transport(server, ca_file, ca_sha384, token, retries, timeout) as transport:
        challenge = request_challenge(transport, key_id, retry=True)
        steps.steps["challenge"] = time.perf_counter() - started
        if target is not None:
            uri = _in_token_already(challenge, key_id, target, replace)
            if uri is not None:
                typer.echo(uri)
                return
        elif out is not None and _file_is_current(challenge, key_id, out, keep_existing):
            return
        released = fetch_key(transport, key_id, source, challenge=challenge, timings=steps)
    fetched = time.perf_counter()
    if out is not None:
        write_private_file(out, released.file_bytes())
        say(f"wrote {released.describe()} {key_id} to {out} (mode 0600)")
    else:
        assert target is not None
        typer.echo(_import(released, target, replace))
    if timings:
        parts = [f"{k} {v * 1000:.0f} ms" for k, v in steps.steps.items()]
        parts.append(f"total fetch {(fetched - started) * 1000:.0f} ms")
        parts.append(f"store {(time.perf_counter() - fetched) * 1000:.0f} ms")
        say("timings: " + ", ".join(parts))


@app.command()
@exits
def provision(
    config: Annotated[Path, typer.Option("--config", help="keys file: '<pkcs11 URI> <key id>' per line")],
    server: ServerOpt,
    tee: TeeOpt = "auto",
    dev_pki: DevPkiOpt = None,
    sim_field: SimFieldOpt = None,
    tpm: TpmOpt = None,
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

    Each line: 'pkcs11:token=KMS;id=%01;object=RSAKEY;type=private KEY_ID'; the URI's module-path and
    pin-source query attributes override --pkcs11-module and --pin-file for that line. A key already in
    its token is left as it is without a release; the token, the PIN and the label are checked before
    a key is released. Every line is tried; the exit code is the highest of the lines' codes.
    """
    from keybroker.client.pkcs11_import import inspect_target, parse_keys_file, read_pin
    from keybroker.client.protocol_v1 import fetch_key, request_challenge

    setup_logging(verbose)
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
        plans.append((e, TokenTarget(module, e.uri.token, the_pin, e.uri.object, e.uri.id)))
    source = provider(tee, dev_pki, sim_field, system_root, tpm)
    worst = EXIT_OK
    with _transport(server, ca_file, ca_sha384, token, retries, timeout) as transport:
        for e, target in plans:
            try:
                inspect_target(target, None)  # the module, the token and the PIN first
                challenge = request_challenge(transport, e.key_id, retry=True)
                uri = _in_token_already(challenge, e.key_id, target, replace)
                if uri is None:
                    released = fetch_key(transport, e.key_id, source, challenge=challenge)
                    uri = _import(released, target, replace)
            except KeybrokerError as exc:
                say(f"error: {config}:{e.line} {e.key_id}: {describe(exc)}")
                worst = max(worst, exit_code(exc))
                continue
            typer.echo(f"{uri} {e.key_id}")
    if worst != EXIT_OK:
        raise typer.Exit(worst)


@app.command("get-resource")
@exits
def get_resource(
    resource: Annotated[str, typer.Argument(help="REPOSITORY/TYPE/TAG")],
    server: ServerOpt,
    tee: TeeOpt = "auto",
    dev_pki: DevPkiOpt = None,
    sim_field: SimFieldOpt = None,
    tpm: TpmOpt = None,
    ca_file: CaFileOpt = None,
    ca_sha384: CaPinOpt = None,
    key_type: Annotated[
        str, typer.Option("--key-type", help="ephemeral key: rsa (RSA-3072) or ec (P-256)")
    ] = "rsa",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="write the resource here (mode 0600)",
            show_default="stdout; private keys need --out",
        ),
    ] = None,
    retries: RetriesOpt = 3,
    timeout: TimeoutOpt = 30.0,
    verbose: VerboseOpt = 0,
    system_root: RootOpt = Path("/"),
) -> None:
    """Attest and fetch a resource over the Confidential Containers KBS protocol (/kbs/v0)."""
    from keybroker.client.protocol_v0 import fetch_resource

    setup_logging(verbose)
    if key_type not in ("rsa", "ec"):
        raise InvalidInput(f"--key-type {key_type!r} is not rsa or ec", field="key_type")
    if out is not None:
        check_writable(out)
    source = provider(tee, dev_pki, sim_field, system_root, tpm)
    with _transport(server, ca_file, ca_sha384, None, retries, timeout) as transport:
        released = fetch_resource(transport, resource, source, key_type="rsa" if key_type == "rsa" else "ec")
    if out is not None:
        write_private_file(out, released.file_bytes())
        say(f"wrote {released.describe()} {resource} to {out} (mode 0600)")
    elif released.kind != "secret":
        raise InvalidInput(f"{resource} is a {released.describe()}: give --out FILE", field="out")
    else:
        sys.stdout.buffer.write(released.material)
        sys.stdout.buffer.flush()


@app.command()
@exits
def detect(system_root: RootOpt = Path("/")) -> None:
    """Say which TEE interfaces this machine offers (what --tee auto would use)."""
    found = ev.detect(system_root)
    for line in found.findings:
        typer.echo(line)
    if found.provider is None:
        say("no TEE interface found")
        raise typer.Exit(EXIT_DENIED)
    typer.echo(f"--tee auto uses: {found.provider.source}")


client_evidence.register(app)

tpm_app = typer.Typer(
    help="This machine's TPM: enrol its attestation key (AK) with the broker.", no_args_is_help=True
)
app.add_typer(tpm_app, name="tpm")


@tpm_app.command("enrol")
@exits
def tpm_enrol(
    server: ServerOpt,
    token: Annotated[
        str, typer.Option("--token", envvar="KEYBROKER_TOKEN", help="a bearer token with tpm_aks:create")
    ],
    label: Annotated[
        str | None, typer.Option("--label", help="a name for the machine (its host name)")
    ] = None,
    tpm: TpmOpt = None,
    ca_file: CaFileOpt = None,
    ca_sha384: CaPinOpt = None,
    retries: RetriesOpt = 3,
    timeout: TimeoutOpt = 30.0,
    verbose: VerboseOpt = 0,
) -> None:
    """Enrol the TPM's AK (made under the EK, kept at a persistent handle) with the broker: the broker
    checks the EK certificate and makes a credential only this TPM can activate; the AK is registered,
    pending an administrator's approval unless the token may approve AKs. Prints the AK's record (JSON)."""
    import json

    from keybroker.cli.client_common import tpm_settings
    from keybroker.client.tpm import DEFAULT_AK_HANDLE, DEFAULT_EK_HANDLE, TpmTools, enrol

    setup_logging(verbose)
    settings = tpm_settings(tpm)
    unknown = sorted(set(settings) - {"tcti", "ak-handle", "ek-handle", "ek-cert"})
    if unknown:
        raise InvalidInput(f"--tpm {', '.join(unknown)}: not an enrolment setting", field="tpm")

    def one(name: str, default: str) -> str:
        return settings.get(name, [default])[0]

    ek_cert = None
    if "ek-cert" in settings:
        try:
            ek_cert = Path(settings["ek-cert"][0]).read_bytes()
        except OSError as exc:
            raise InvalidInput(f"--tpm ek-cert: {exc.strerror}", field="tpm") from None
    tools = TpmTools(settings["tcti"][0] if "tcti" in settings else None)
    with _transport(server, ca_file, ca_sha384, token, retries, timeout) as transport:

        def post(path: str, body: dict[str, object]) -> dict[str, object]:
            answer = transport.request("POST", path, json_body=body, retry=False).json()
            if not isinstance(answer, dict):
                raise InvalidInput(f"the broker's answer to {path} is not a JSON object", field="enrolment")
            return answer

        record = enrol(
            tools,
            post,
            ek_handle=one("ek-handle", DEFAULT_EK_HANDLE),
            ak_handle=one("ak-handle", DEFAULT_AK_HANDLE),
            ek_certificate=ek_cert,
            label=label,
        )
    typer.echo(json.dumps(record))
    if record.get("status") == "pending":
        say(
            f"AK {record.get('name')} enrolled, pending: an administrator approves it (keybroker tpm ak approve NAME)"
        )
    else:
        say(f"AK {record.get('name')} enrolled and {record.get('status')}")


@app.command()
def version() -> None:
    """Print the version (the same as --version)."""
    typer.echo(f"keybroker-client {__version__}")
