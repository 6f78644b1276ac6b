"""``keybroker-client evidence``: produce simulated SGX/TDX evidence from a dev PKI.

NOT FOR PRODUCTION: the quote verifies only where the dev root is trusted explicitly.
Register into a CLI with ``register(app)`` (adds the command ``evidence``), or invoke the
single-command Typer ``app`` directly.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from keybroker.tee.sim.pki import TCB_CHOICES, DevPki, TcbChoice
from keybroker.tee.sim.quote import (
    DEFAULT_MRENCLAVE,
    DEFAULT_MRSEAM,
    DEFAULT_MRSIGNER,
    DEFAULT_MRSIGNERSEAM,
    DEFAULT_MRTD,
    DEFAULT_RTMRS,
    DEFAULT_SEAMSVN,
    sgx_quote,
    tdx_quote,
)

EXIT_USAGE = 2
REPORT_DATA_SIZE = 64


class SimTee(StrEnum):
    sim_sgx = "sim-sgx"
    sim_tdx = "sim-tdx"


class TcbLevelName(StrEnum):
    uptodate = "uptodate"
    swhardening = "swhardening"
    outofdate = "outofdate"
    revoked = "revoked"


def _usage_error(message: str) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


def _hex(option: str, value: str, size: int) -> bytes:
    """Decode ``value`` as exactly ``size`` bytes of hex, or raise a usage error naming it."""
    text = value.strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise _usage_error(f"{option} is not hex: {value!r}") from None
    if len(raw) != size:
        raise _usage_error(
            f"{option} must be exactly {size} bytes ({2 * size} hex characters), got {len(raw)}"
        )
    return raw


def _hex_or(option: str, value: str | None, size: int, default: bytes) -> bytes:
    return default if value is None else _hex(option, value, size)


def _tcb(value: TcbLevelName) -> TcbChoice:
    for choice in TCB_CHOICES:
        if choice == value.value:
            return choice
    raise _usage_error(f"unknown TCB level {value.value!r}")


app = typer.Typer(help="Produce simulated TEE evidence (NOT FOR PRODUCTION).")


@app.command("evidence")
def evidence(
    tee: Annotated[SimTee, typer.Option("--tee", help="Simulated TEE.")],
    dev_pki: Annotated[Path, typer.Option("--dev-pki", help="Dev PKI directory (keybroker dev-pki init).")],
    report_data: Annotated[
        str, typer.Option("--report-data", help="Report data: exactly 64 bytes as 128 hex characters.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Write the raw quote to this file.")],
    tcb: Annotated[
        TcbLevelName, typer.Option("--tcb", help="TCB level of the platform.")
    ] = TcbLevelName.uptodate,
    debug: Annotated[bool, typer.Option("--debug", help="Debug enclave / debug TD.")] = False,
    mrenclave: Annotated[str | None, typer.Option("--mrenclave", help="SGX: 32 bytes hex.")] = None,
    mrsigner: Annotated[str | None, typer.Option("--mrsigner", help="SGX: 32 bytes hex.")] = None,
    isvprodid: Annotated[int | None, typer.Option("--isvprodid", min=0, max=0xFFFF, help="SGX.")] = None,
    isvsvn: Annotated[int | None, typer.Option("--isvsvn", min=0, max=0xFFFF, help="SGX.")] = None,
    mrtd: Annotated[str | None, typer.Option("--mrtd", help="TDX: 48 bytes hex.")] = None,
    rtmr0: Annotated[str | None, typer.Option("--rtmr0", help="TDX: 48 bytes hex.")] = None,
    rtmr1: Annotated[str | None, typer.Option("--rtmr1", help="TDX: 48 bytes hex.")] = None,
    rtmr2: Annotated[str | None, typer.Option("--rtmr2", help="TDX: 48 bytes hex.")] = None,
    rtmr3: Annotated[str | None, typer.Option("--rtmr3", help="TDX: 48 bytes hex.")] = None,
    mrseam: Annotated[str | None, typer.Option("--mrseam", help="TDX: 48 bytes hex.")] = None,
    mrsignerseam: Annotated[
        str | None, typer.Option("--mrsignerseam", help="TDX: 48 bytes hex (dev TCB Info expects zeros).")
    ] = None,
    seamsvn: Annotated[
        int | None, typer.Option("--seamsvn", min=0, max=0xFFFF, help="TDX: major << 8 | minor.")
    ] = None,
    sept_ve_disable: Annotated[
        bool | None,
        typer.Option("--sept-ve-disable/--no-sept-ve-disable", help="TDX: TD attribute SEPT_VE_DISABLE."),
    ] = None,
) -> None:
    """Write a real-format SGX v3 / TDX v4 quote signed by the dev PKI to --out."""
    rd = _hex("--report-data", report_data, REPORT_DATA_SIZE)
    sgx_only = {
        "--mrenclave": mrenclave,
        "--mrsigner": mrsigner,
        "--isvprodid": isvprodid,
        "--isvsvn": isvsvn,
    }
    tdx_only = {
        "--mrtd": mrtd,
        "--rtmr0": rtmr0,
        "--rtmr1": rtmr1,
        "--rtmr2": rtmr2,
        "--rtmr3": rtmr3,
        "--mrseam": mrseam,
        "--mrsignerseam": mrsignerseam,
        "--seamsvn": seamsvn,
        "--sept-ve-disable/--no-sept-ve-disable": sept_ve_disable,
    }
    other = tdx_only if tee is SimTee.sim_sgx else sgx_only
    misplaced = [name for name, value in other.items() if value is not None]
    if misplaced:
        raise _usage_error(f"{', '.join(misplaced)} cannot be used with --tee {tee.value}")
    try:
        pki = DevPki.load(dev_pki)
    except (OSError, ValueError, KeyError) as e:
        raise _usage_error(f"--dev-pki {dev_pki} is not a readable dev PKI: {e}") from e
    level = _tcb(tcb)
    if tee is SimTee.sim_sgx:
        quote = sgx_quote(
            pki,
            report_data=rd,
            mrenclave=_hex_or("--mrenclave", mrenclave, 32, DEFAULT_MRENCLAVE),
            mrsigner=_hex_or("--mrsigner", mrsigner, 32, DEFAULT_MRSIGNER),
            isvprodid=isvprodid or 0,
            isvsvn=isvsvn or 0,
            debug=debug,
            tcb=level,
        )
        kind = "SGX quote v3"
    else:
        quote = tdx_quote(
            pki,
            report_data=rd,
            mrtd=_hex_or("--mrtd", mrtd, 48, DEFAULT_MRTD),
            rtmr0=_hex_or("--rtmr0", rtmr0, 48, DEFAULT_RTMRS[0]),
            rtmr1=_hex_or("--rtmr1", rtmr1, 48, DEFAULT_RTMRS[1]),
            rtmr2=_hex_or("--rtmr2", rtmr2, 48, DEFAULT_RTMRS[2]),
            rtmr3=_hex_or("--rtmr3", rtmr3, 48, DEFAULT_RTMRS[3]),
            mrseam=_hex_or("--mrseam", mrseam, 48, DEFAULT_MRSEAM),
            mrsignerseam=_hex_or("--mrsignerseam", mrsignerseam, 48, DEFAULT_MRSIGNERSEAM),
            seamsvn=DEFAULT_SEAMSVN if seamsvn is None else seamsvn,
            debug=debug,
            sept_ve_disable=True if sept_ve_disable is None else sept_ve_disable,
            tcb=level,
        )
        kind = "TDX quote v4"
    try:
        out.write_bytes(quote)
    except OSError as e:
        raise _usage_error(f"cannot write --out {out}: {e}") from e
    typer.echo(
        f"Wrote a simulated {kind} ({len(quote)} bytes, TCB {level}) to {out}; "
        f"it verifies only with the dev root {pki.root_fingerprint} trusted (NOT FOR PRODUCTION)"
    )


def register(target: typer.Typer) -> None:
    """Add the ``evidence`` command to ``target`` (e.g. the ``keybroker-client`` app)."""
    target.command("evidence")(evidence)
