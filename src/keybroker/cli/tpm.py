"""``keybroker tpm ak``: list, show, approve and revoke the TPM attestation keys enrolled through
their EK (``keybroker-client tpm enrol``).

Local operator access, as ``keybroker role``: these commands use the data dir's database directly,
audited as ``cli:<user>``; the admin API has ``/kbs/v1/tpm/aks`` too. A running server sees a change
at its next verification (nothing is cached).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from keybroker import datadir
from keybroker.cli.common import (
    ConfigOpt,
    DatabaseOpt,
    DataDirOpt,
    console,
    handle_errors,
    open_existing_database,
)
from keybroker.cli.token import _actor
from keybroker.collateral.trust import ek_roots
from keybroker.config import load_settings
from keybroker.tpmaks.service import TpmAkService

app = typer.Typer(
    help="TPM attestation keys enrolled through their EK (needs the data dir).", no_args_is_help=True
)
ak_app = typer.Typer(help="List, show, approve and revoke enrolled TPM AKs.", no_args_is_help=True)
app.add_typer(ak_app, name="ak")

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
NameArg = Annotated[str, typer.Argument(help="the AK's Name, hex (as 'list' shows it)")]


def _service(
    config: Path | None, data_dir: Path | None, database: str | None, *, write: bool
) -> TpmAkService:
    """The data dir's AKs: for changes its database brought up to date as the server would; for
    reading only, an existing database opened as it is."""
    from keybroker.store.db import Database

    settings = load_settings(config, None, data_dir=data_dir, database=database)
    if write:
        datadir.restrict_umask()
        db = Database(settings.database_url)
        db.migrate()
    else:
        db = open_existing_database(settings)
    manufacturers, dev = ek_roots(settings)
    return TpmAkService(db, ek_roots=manufacturers, dev_ek_roots=dev)


@ak_app.command("list")
@handle_errors
def list_aks(
    status: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--status", help="pending, approved or revoked"),
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The enrolled AKs, oldest first."""
    records = _service(config, data_dir, database, write=False).list(status=status)
    if as_json:
        for r in records:
            typer.echo(json.dumps(r.to_dict()))
        return
    table = Table("name", "status", "label", "EK root", "enrolled by", "enrolled at", expand=True)
    for r in records:
        table.add_row(r.name, r.status, r.label or "", r.ek_root, r.enrolled_by, r.to_dict()["enrolled_at"])
    console.print(table)


@ak_app.command("show")
@handle_errors
def show(
    name: NameArg, config: ConfigOpt = None, data_dir: DataDirOpt = None, database: DatabaseOpt = None
) -> None:
    """One AK, as JSON."""
    typer.echo(json.dumps(_service(config, data_dir, database, write=False).get(name).to_dict()))


@ak_app.command("approve")
@handle_errors
def approve(
    name: NameArg, config: ConfigOpt = None, data_dir: DataDirOpt = None, database: DatabaseOpt = None
) -> None:
    """Trust a pending AK (again for an approved one: forget its clock history, after a TPM2_Clear)."""
    record = _service(config, data_dir, database, write=True).approve(name, actor=_actor())
    console.print(f"AK {record.name}: {record.status}", highlight=False)


@ak_app.command("revoke")
@handle_errors
def revoke(
    name: NameArg,
    reason: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--reason", help="why, for the audit log"),
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Never trust this AK again (whatever certificate it may carry)."""
    record = _service(config, data_dir, database, write=True).revoke(name, actor=_actor(), reason=reason)
    console.print(f"AK {record.name}: {record.status}", highlight=False)
