"""What every ``keybroker-client`` command shares: exit codes, errors as messages, logging, and the
evidence options (``--tee``, ``--dev-pki``, ``--sim-field``) with the provider they choose.

Exit codes (as for ``keybroker``): 0 ok, 1 denied or failed (the broker's reasons are printed),
2 usage, 3 the broker is unreachable or unavailable (network, 5xx after the retries), 4 its TLS
certificate did not verify against the pinned CA (a trust problem, not a network one).
"""

from __future__ import annotations

import functools
import logging
import os
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
        "tpm (a TPM through tpm2-tools: an enrolled or certified AK), az-snp-vtpm or az-tdx-vtpm (an Azure "
        "confidential VM's vTPM), sim-tdx, sim-sgx or sim-snp (simulator, NOT FOR PRODUCTION)",
    ),
]
#: ``--tpm NAME=VALUE`` settings and what each means.
TPM_SETTINGS = {
    "tcti": "the TPM's TCTI (default: $TPM2TOOLS_TCTI, else /dev/tpmrm0), e.g. swtpm:host=127.0.0.1,port=2321",
    "ak-handle": "the AK's persistent handle (default 0x81010002; Azure's vTPM: 0x81000003)",
    "ek-handle": "the EK's persistent handle (default 0x81010001; made from the template if absent)",
    "ek-cert": "the EK certificate file (default: read from the TPM's NV index 0x01c00002)",
    "pcrs": "the PCRs to quote (default all 24 SHA-256), e.g. sha256:0,7,8+sha1:7",
    "event-log": "the firmware event log to send, or none (default: the kernel's, when readable)",
    "ak-cert": "an AK certificate (then intermediates) file for a certified AK; repeatable",
    "vcek": "az-snp-vtpm: the VCEK file (default: from Azure's instance metadata service)",
}
TpmOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--tpm",
        metavar="NAME=VALUE",
        help="a TPM setting, repeatable (--tee tpm, az-*): "
        + "; ".join(f"{k}: {v}" for k, v in TPM_SETTINGS.items()),
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


def tpm_settings(values: list[str] | None) -> dict[str, list[str]]:
    """``--tpm NAME=VALUE`` values by name (``ak-cert`` may repeat)."""
    out: dict[str, list[str]] = {}
    for item in values or []:
        name, eq, value = item.partition("=")
        key = name.strip().lower()
        if not eq or key not in TPM_SETTINGS:
            raise InvalidInput(
                f"--tpm {item!r} is not NAME=VALUE with NAME one of {', '.join(TPM_SETTINGS)}", field="tpm"
            )
        if key in out and key != "ak-cert":
            raise InvalidInput(f"--tpm {key} is given twice", field="tpm")
        out.setdefault(key, []).append(value.strip())
    return out


def _read_file(value: str, what: str) -> bytes:
    try:
        return Path(value).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"--tpm {what}: cannot read {value}: {exc.strerror}", field="tpm") from None


def tpm_provider(tee: str, settings: dict[str, list[str]]) -> ev.Provider:
    """``--tee tpm``, ``az-snp-vtpm``, ``az-tdx-vtpm`` with their ``--tpm`` settings."""
    from keybroker.client.tpm import (
        AZURE_AK_HANDLE,
        DEFAULT_AK_HANDLE,
        DEFAULT_PCRS,
        EVENT_LOG,
        AzureVtpmProvider,
        TpmProvider,
        TpmTools,
    )

    def one(name: str, default: str | None = None) -> str | None:
        return settings.get(name, [default])[0]

    tools = TpmTools(one("tcti"))
    if tee == "tpm":
        for name in ("vcek",):
            if name in settings:
                raise InvalidInput(f"--tpm {name} is for --tee az-snp-vtpm", field="tpm")
        log_setting = one("event-log")
        event_log: Path | None
        if log_setting is None:
            event_log = EVENT_LOG if EVENT_LOG.is_file() and os.access(EVENT_LOG, os.R_OK) else None
        else:
            event_log = None if log_setting == "none" else Path(log_setting)
        return TpmProvider(
            tools,
            ak_handle=one("ak-handle", DEFAULT_AK_HANDLE) or DEFAULT_AK_HANDLE,
            selection=one("pcrs", DEFAULT_PCRS) or DEFAULT_PCRS,
            event_log=event_log,
            ak_certificates=[_read_file(p, "ak-cert") for p in settings.get("ak-cert", [])],
        )
    for name in ("pcrs", "event-log", "ak-cert", "ek-handle", "ek-cert"):
        if name in settings:
            raise InvalidInput(
                f"--tpm {name} is for --tee tpm (Azure's vTPM quotes its 24 SHA-256 PCRs)", field="tpm"
            )
    if tee == "az-tdx-vtpm" and "vcek" in settings:
        raise InvalidInput("--tpm vcek is for --tee az-snp-vtpm", field="tpm")
    vcek = settings.get("vcek")
    return AzureVtpmProvider(
        tools,
        "az-snp-vtpm" if tee == "az-snp-vtpm" else "az-tdx-vtpm",
        ak_handle=one("ak-handle", AZURE_AK_HANDLE) or AZURE_AK_HANDLE,
        vcek=_read_file(vcek[0], "vcek") if vcek else None,
    )


def provider(
    tee: str, dev_pki: Path | None, sim_field: list[str] | None, root: Path, tpm: list[str] | None = None
) -> ev.Provider:
    """The evidence provider ``--tee`` names (``auto``: what this machine offers, said on stderr)."""
    from keybroker.cli.client_sim import Simulator  # the simulator's dev PKI: loaded only when asked for

    settings = tpm_settings(tpm)
    if tee in ev.TPM_QUOTE_TEES:
        if dev_pki is not None or sim_field:
            raise InvalidInput(
                "--dev-pki and --sim-field are for --tee sim-tdx, sim-sgx or sim-snp only", field="tee"
            )
        chosen_tpm = tpm_provider(tee, settings)
        log.info("evidence from %s", chosen_tpm.source)
        return chosen_tpm
    if settings:
        raise InvalidInput("--tpm is for --tee tpm, az-snp-vtpm or az-tdx-vtpm", field="tpm")
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
