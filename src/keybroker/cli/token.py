"""``keybroker token``: issue, list and revoke bearer tokens, rotate their signing key.

Local operator access: these commands read the signing key in the data dir and write the database
directly (the admin API has ``GET /kbs/v1/tokens`` and ``DELETE /kbs/v1/tokens/{jti}`` too). A
running server sees a revocation or a rotation made here within 5 seconds.
"""

from __future__ import annotations

import getpass
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from keybroker import datadir
from keybroker.auth.registry import TokenRecord, TokenRegistry
from keybroker.cli.common import (
    EXIT_FAILED,
    ConfigOpt,
    DatabaseOpt,
    DataDirOpt,
    console,
    err_console,
    fail,
    handle_errors,
    open_existing_database,
)
from keybroker.config import load_settings
from keybroker.errors import InvalidInput

app = typer.Typer(
    help="Bearer tokens: create, list, revoke, rotate the signing key (needs the data dir).",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


def _actor() -> str:
    """Who runs the command, for the audit log."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return f"cli:uid-{os.getuid()}"


def _registry(config: Path | None, data_dir: Path | None, database: str | None) -> TokenRegistry:
    """The data dir's token registry (its database brought up to date, as the server would)."""
    from keybroker.api.services import TOKEN_KEY_FILE
    from keybroker.store.db import Database

    datadir.restrict_umask()
    settings = load_settings(config, None, data_dir=data_dir, database=database)
    key_file = settings.data_dir / TOKEN_KEY_FILE
    if not key_file.exists():
        raise InvalidInput(
            f"no token signing key at {key_file}: is this the service's data dir, and has it started once?",
            field="data_dir",
        )
    db = Database(settings.database_url)
    db.migrate()
    return TokenRegistry(db, key_file)


def _reader(config: Path | None, data_dir: Path | None, database: str | None) -> TokenRegistry:
    """The token registry for reading only: nothing is created or migrated, and a data dir or
    database without keybroker data is an error (exit 2)."""
    from keybroker.api.services import TOKEN_KEY_FILE

    settings = load_settings(config, None, data_dir=data_dir, database=database)
    return TokenRegistry(open_existing_database(settings), settings.data_dir / TOKEN_KEY_FILE)


def _split(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


@app.command("create")
@handle_errors
def create(
    permissions: Annotated[
        str, typer.Option("--permissions", help="comma-separated, e.g. keys:create,keys:search or *:*")
    ] = "",
    roles: Annotated[
        str,
        typer.Option("--roles", help="comma-separated roles, e.g. key-admin,auditor ('keybroker role list')"),
    ] = "",
    subject: Annotated[str, typer.Option("--subject", help="who the token is for")] = "admin",
    ttl: Annotated[str, typer.Option("--ttl", help="lifetime: 30m, 1h, 7d")] = "1h",
    client_permissions: Annotated[
        str, typer.Option("--client-permissions", help="workload labels, e.g. nginx,USA")
    ] = "",
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Issue a token signed with the service's key and record it. Prints the token; its id (what
    'revoke' takes) goes to stderr."""
    from keybroker.auth.rolestore import RoleStore
    from keybroker.auth.tokens import parse_ttl

    lifetime = parse_ttl(ttl)
    if not permissions and not roles and not client_permissions:
        raise InvalidInput("give --permissions, --roles or --client-permissions", field="permissions")
    registry = _registry(config, data_dir, database)
    RoleStore(registry.db).check_grantable(None, _split(roles))
    issued = registry.issue(
        subject,
        _split(permissions),
        ttl=lifetime,
        client_permissions=_split(client_permissions),
        roles=_split(roles),
        actor=_actor(),
    )
    typer.echo(issued.token)
    err_console.print(
        f"token id (jti): {issued.jti}, expires {issued.expires_at.isoformat()}", highlight=False
    )


def _as_dict(r: TokenRecord, now: datetime) -> dict[str, object]:
    return {
        "jti": r.jti,
        "subject": r.subject,
        "permissions": list(r.permissions),
        "roles": list(r.roles),
        "client_permissions": list(r.client_permissions),
        "issued_at": r.issued_at.isoformat(),
        "expires_at": r.expires_at.isoformat(),
        "issued_by": r.issued_by,
        "key_id": r.key_id,
        "status": r.status(now),
        "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
        "revoked_by": r.revoked_by,
        "revoke_reason": r.revoke_reason,
    }


@app.command("list")
@handle_errors
def list_tokens(
    include_inactive: Annotated[
        bool, typer.Option("--all", help="also expired, revoked and retired-key tokens still on record")
    ] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the tokens on record: every token the broker accepts is here (the active ones by default)."""
    now = datetime.now(UTC)
    rows = [
        _as_dict(r, now)
        for r in _reader(config, data_dir, database).records(include_inactive=include_inactive)
    ]
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    table = Table(
        "jti",
        "subject",
        "permissions",
        "roles",
        "client permissions",
        "expires",
        "status",
        "issued by",
        expand=True,
    )
    for row in rows:
        table.add_row(
            str(row["jti"]),
            str(row["subject"]),
            ",".join(row["permissions"]),  # type: ignore[arg-type]
            ",".join(row["roles"]),  # type: ignore[arg-type]
            ",".join(row["client_permissions"]),  # type: ignore[arg-type]
            str(row["expires_at"]),
            str(row["status"]),
            str(row["issued_by"]),
        )
    console.print(table)


@app.command("revoke")
@handle_errors
def revoke(
    jti: Annotated[str, typer.Argument(help="the token's id (jti), from 'keybroker token list'")],
    reason: Annotated[Optional[str], typer.Option("--reason", help="why, for the audit log")] = None,  # noqa: UP045
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Revoke one token: refused from now on (by a running server within 5 seconds)."""
    record = _registry(config, data_dir, database).revoke(jti, actor=_actor(), reason=reason)
    console.print(f"revoked {record.jti} (subject {record.subject})", highlight=False)


@app.command("rotate-key")
@handle_errors
def rotate_key(
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Replace the token signing key: every token issued before is refused from now on (by a running
    server within 5 seconds). Other replicas' data dirs need the new key file only to issue tokens."""
    registry = _registry(config, data_dir, database)
    if not yes and not typer.confirm("Every token issued so far will stop working. Rotate the signing key?"):
        fail("not rotated", EXIT_FAILED)
    kid = registry.rotate_key(actor=_actor())
    console.print(f"new token signing key {kid}; every older token is refused from now on", highlight=False)
