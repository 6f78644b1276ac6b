"""``keybroker tpm ak``: list, show, approve and revoke the TPM attestation keys enrolled through
their EK (``keybroker-client tpm enrol``).

Local operator access, as ``keybroker role``: list, show and revoke use the data dir's database
directly, audited as ``cli:<user>`` (a revocation works while sealed). ``approve`` asks the running,
unsealed server, which tags the approval under the root key (``keybroker.seal.integrity``); the admin
API has ``/kbs/v1/tpm/aks`` too. A running server sees a change at its next verification (nothing is
cached).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from keybroker import datadir
from keybroker.cli.common import (
    CaOpt,
    ConfigOpt,
    DatabaseOpt,
    DataDirOpt,
    ServerOpt,
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
    ctx: typer.Context,
    name: NameArg,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
    server: ServerOpt = None,
    ca_file: CaOpt = None,
) -> None:
    """Trust a pending AK (again for an approved one: forget its clock history, after a TPM2_Clear).

    The running, unsealed server approves it, since an approval is tagged under the root key (a row
    set to approved in the database is never trusted): this command signs itself a 5-minute token
    with tpm_aks:approve from the data dir's key, as 'keybroker token create' would, and asks the
    server the data dir's server.json names (or --server)."""
    from keybroker.cli.serving import server_client
    from keybroker.cli.token import _registry
    from keybroker.tpmaks.service import check_ak_name

    name = check_ak_name(name)
    settings = load_settings(config, None, data_dir=data_dir, database=database)
    registry = _registry(config, data_dir, database)
    actor = _actor()
    issued = registry.issue(actor, ["tpm_aks:approve"], ttl=timedelta(minutes=5), actor=actor)
    out = server_client(ctx, server, ca_file, settings.data_dir, issued.token).call(
        "POST", f"/kbs/v1/tpm/aks/{name}/approval"
    )
    console.print(f"AK {out['name']}: {out['status']}", highlight=False)


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
