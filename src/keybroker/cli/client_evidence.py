"""``keybroker-client evidence``: produce evidence (a quote over given report data) and write it to a file.

The quote comes from the same providers ``get-key`` uses: the TEE of this machine (configfs-tsm,
``/dev/tdx_guest``, Gramine) or the simulator (``--tee sim-tdx|sim-sgx --dev-pki DIR``, NOT FOR
PRODUCTION: its quotes verify only where the dev root is trusted). ``keybroker evidence verify``
verifies what it writes. Register into a CLI with ``register(app)`` (adds the command ``evidence``),
or invoke the single-command Typer ``app`` directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from keybroker.cli.client_common import (
    DevPkiOpt,
    RootOpt,
    SimFieldOpt,
    TeeOpt,
    TpmOpt,
    VerboseOpt,
    exits,
    provider,
    say,
    setup_logging,
)
from keybroker.client.errors import OutputError
from keybroker.client.evidence import REPORT_DATA_SIZE, TPM_QUOTE_TEES
from keybroker.errors import InvalidInput

app = typer.Typer(
    help="Produce evidence: a quote from this machine's TEE or the simulator.", add_completion=False
)


def _report_data(value: str, tee: str) -> bytes:
    """Exactly 64 bytes of hex: shorter report data is not padded (a binding must be explicit); a TPM
    quote's extraData: 1 to 64 bytes, as given."""
    try:
        raw = bytes.fromhex(value.strip())
    except ValueError:
        raise InvalidInput(f"--report-data is not hex: {value[:40]!r}", field="report_data") from None
    if tee in TPM_QUOTE_TEES:
        if not 1 <= len(raw) <= REPORT_DATA_SIZE:
            raise InvalidInput(
                f"--report-data (the quote's extraData) must be 1 to {REPORT_DATA_SIZE} bytes, got {len(raw)}",
                field="report_data",
            )
        return raw
    if len(raw) != REPORT_DATA_SIZE:
        raise InvalidInput(
            f"--report-data must be exactly {REPORT_DATA_SIZE} bytes ({2 * REPORT_DATA_SIZE} hex characters), "
            f"got {len(raw)}",
            field="report_data",
        )
    return raw


def _write(path: Path, data: bytes, option: str) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise OutputError(f"cannot write {option} {path}: {exc.strerror}") from None


@app.command("evidence")
@exits
def evidence(
    report_data: Annotated[
        str,
        typer.Option(
            "--report-data",
            metavar="HEX",
            help="the report data: exactly 64 bytes, 128 hex characters (--tee tpm, az-*: the quote's "
            "extraData, 1 to 64 bytes)",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", metavar="FILE", help="write the quote (raw bytes; TPM: the evidence document, JSON) here"
        ),
    ],
    tee: TeeOpt = "auto",
    dev_pki: DevPkiOpt = None,
    sim_field: SimFieldOpt = None,
    tpm: TpmOpt = None,
    aux_out: Annotated[
        Path | None,
        typer.Option("--aux-out", metavar="FILE", help="SEV-SNP: write the certificate table (auxblob) here"),
    ] = None,
    verbose: VerboseOpt = 0,
    system_root: RootOpt = Path("/"),
) -> None:
    """Produce evidence: a quote over --report-data from this machine's TEE or the simulator, to --out.

    The same evidence get-key would send; keybroker evidence verify checks it. Simulated quotes
    (--tee sim-tdx, sim-sgx) verify only where the dev root is trusted: NOT FOR PRODUCTION.
    """
    setup_logging(verbose)
    data = _report_data(report_data, tee)
    source = provider(tee, dev_pki, sim_field, system_root, tpm)
    produced = source.evidence(data)
    _write(out, produced.quote, "--out")
    what = f"{'simulated ' if produced.simulated else ''}{produced.tee.upper()} evidence"
    say(f"wrote {what} ({len(produced.quote)} bytes) from {produced.source} to {out}")
    if produced.aux is not None:
        if aux_out is None:
            say(f"the certificate table ({len(produced.aux)} bytes) was not written: give --aux-out FILE")
        else:
            _write(aux_out, produced.aux, "--aux-out")
            say(f"wrote the certificate table ({len(produced.aux)} bytes) to {aux_out}")
    elif aux_out is not None:
        say(f"{produced.source} gives no certificate table: nothing written to --aux-out")
    if produced.simulated:
        say("it verifies only where the dev root is trusted (NOT FOR PRODUCTION)")


def register(target: typer.Typer) -> None:
    """Add the ``evidence`` command to ``target`` (e.g. the ``keybroker-client`` app)."""
    target.command("evidence")(evidence)
