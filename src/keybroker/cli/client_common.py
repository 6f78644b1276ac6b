"""What every ``keybroker-client`` command shares: exit codes, errors as messages, logging, and the
evidence options (``--tee``, ``--dev-pki``, ``--sim-field``) with the provider they choose.

Exit codes (as for ``keybroker``): 0 ok, 1 denied or failed (the broker's reasons are printed),
2 usage, 3 the broker is unreachable or unavailable (network, 5xx after the retries), 4 its TLS
certificate did not verify against the pinned CA (a trust problem, not a network one).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer

from keybroker.client import evidence as ev
from keybroker.client.errors import Denied, EvidenceUnavailable, TlsVerificationFailed, Unreachable
from keybroker.errors import InvalidInput, KeybrokerError

EXIT_OK, EXIT_DENIED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TLS = 0, 1, 2, 3, 4
log = logging.getLogger("keybroker.client")

P = ParamSpec("P")
R = TypeVar("R")


def say(message: str) -> None:
    typer.echo(message, err=True)


def exit_code(exc: KeybrokerError) -> int:
    if isinstance(exc, InvalidInput):
        return EXIT_USAGE
    if isinstance(exc, TlsVerificationFailed):
        return EXIT_TLS
    if isinstance(exc, Unreachable):
        return EXIT_UNREACHABLE
    return EXIT_DENIED


def describe(exc: KeybrokerError) -> str:
    return exc.diagnostics() if isinstance(exc, Denied) else f"{exc.title}: {exc.detail}"


def exits(fn: Callable[P, R]) -> Callable[P, R]:
    """Client errors become a message on stderr and an exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except KeybrokerError as exc:
            say("error: " + describe(exc))
            raise typer.Exit(exit_code(exc)) from None

    return wrapper


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(self.format(record), err=True)


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("keybroker-client: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    # httpx/httpcore stay quiet: their debug output would include request details.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


TeeOpt = Annotated[
    str,
    typer.Option(
        "--tee",
        help="auto (detect), tdx (configfs-tsm or /dev/tdx_guest), snp (configfs-tsm), sgx (Gramine), "
        "sim-tdx, sim-sgx or sim-snp (simulator, NOT FOR PRODUCTION)",
    ),
]
DevPkiOpt = Annotated[
    Path | None,
    typer.Option("--dev-pki", metavar="DIR", help="the broker's dev PKI directory (--tee sim-*)"),
]
SimFieldOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--sim-field",
        metavar="NAME=VALUE",
        help="a simulated field, repeatable (--tee sim-*). TDX: "
        + ", ".join(ev.sim_field_names("tdx"))
        + "; SGX: "
        + ", ".join(ev.sim_field_names("sgx"))
        + "; SNP: "
        + ", ".join(ev.sim_field_names("snp"))
        + ". Measurements in hex, numbers decimal or 0x, flags true/false, tcb one of "
        + ", ".join(ev.TCB_LEVELS)
        + ", signing_key vcek or vlek",
    ),
]
VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, help="-v: progress, -vv: debug")]
RootOpt = Annotated[Path, typer.Option("--system-root", hidden=True, help="prefix for /sys and /dev (tests)")]


def sim_fields(values: list[str] | None) -> dict[str, str]:
    fields: dict[str, str] = {}
    for item in values or []:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise InvalidInput(f"--sim-field {item!r} is not NAME=VALUE", field="sim-field")
        key = name.strip().lower()
        if key in fields:
            raise InvalidInput(f"--sim-field {key} is given twice", field="sim-field")
        fields[key] = value.strip()
    return fields


def provider(tee: str, dev_pki: Path | None, sim_field: list[str] | None, root: Path) -> ev.Provider:
    """The evidence provider ``--tee`` names (``auto``: what this machine offers, said on stderr)."""
    from keybroker.cli.client_sim import Simulator  # the simulator's dev PKI: loaded only when asked for

    fields = sim_fields(sim_field)
    if dev_pki is not None and not tee.startswith("sim-"):
        raise InvalidInput("--dev-pki is for --tee sim-tdx, sim-sgx or sim-snp only", field="dev_pki")
    if tee == "auto":
        if fields:
            raise InvalidInput("--sim-field is for --tee sim-tdx, sim-sgx or sim-snp only", field="sim-field")
        found = ev.detect(root)
        say("--tee auto: " + found.summary())
        if found.provider is None:
            raise EvidenceUnavailable(
                "no TEE interface found (--tee sim-tdx, sim-sgx or sim-snp for the simulator)"
            )
        chosen = found.provider
    else:
        chosen = ev.provider_for(tee, root=root, dev_pki=dev_pki, sim_fields=fields, simulator=Simulator)
    if isinstance(chosen, Simulator):
        say(f"WARNING: simulated {chosen.tee.upper()} evidence; NOT FOR PRODUCTION")
    log.info("evidence from %s", chosen.source)
    return chosen
