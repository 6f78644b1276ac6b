"""``keybroker role``: list, show, create, update and delete roles (named sets of permissions).

Local operator access, as ``keybroker token``: these commands write the data dir's database directly,
audited as ``cli:<user>``; the admin API has ``/kbs/v1/roles`` too. A running server sees a change
made here within 5 seconds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Optional, Protocol

import typer
from rich.table import Table

from keybroker import datadir
from keybroker.auth.roles import Role
from keybroker.auth.rolestore import RoleStore
from keybroker.cli.common import (
    EXIT_FAILED,
    ConfigOpt,
    DatabaseOpt,
    DataDirOpt,
    console,
    fail,
    handle_errors,
    open_existing_database,
)
from keybroker.cli.token import _actor, _split
from keybroker.config import load_settings

app = typer.Typer(
    help="Roles: named sets of permissions for tokens and console sign-ins (needs the data dir).",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
PermissionsOpt = Annotated[
    str, typer.Option("--permissions", help="comma-separated, e.g. keys:search,audit:read")
]
DescriptionOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--description", help="what the role is for"),
]


def _store(config: Path | None, data_dir: Path | None, database: str | None) -> RoleStore:
    """The data dir's roles, its database brought up to date as the server would."""
    from keybroker.store.db import Database

    datadir.restrict_umask()
    settings = load_settings(config, None, data_dir=data_dir, database=database)
    db = Database(settings.database_url)
    db.migrate()
    return RoleStore(db)


def _reader(config: Path | None, data_dir: Path | None, database: str | None) -> RoleStore:
    settings = load_settings(config, None, data_dir=data_dir, database=database)
    return RoleStore(open_existing_database(settings))


class _WriteRole(Protocol):
    """:meth:`RoleStore.create` or :meth:`RoleStore.update`."""

    def __call__(
        self, name: str, permissions: Sequence[str], *, actor: str, description: str | None = None
    ) -> Role: ...


def _write(write: _WriteRole, name: str, permissions: str, description: str | None) -> None:
    """Create or update a role from the command's options, as the local operator, and print it."""
    role = write(name, _split(permissions), actor=_actor(), description=description)
    console.print(f"role {role.name}: {', '.join(sorted(role.permissions))}", highlight=False)


def _as_dict(r: Role) -> dict[str, object]:
    return {
        "name": r.name,
        "permissions": sorted(r.permissions),
        "description": r.description,
        "builtin": r.builtin,
    }


@app.command("list")
@handle_errors
def list_roles(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The built-in roles, then the custom ones."""
    rows = [_as_dict(r) for r in _reader(config, data_dir, database).list()]
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    table = Table("role", "permissions", "built in", "description", expand=True)
    for row in rows:
        table.add_row(
            str(row["name"]),
            ",".join(row["permissions"]),  # type: ignore[arg-type]
            "yes" if row["builtin"] else "",
            str(row["description"] or ""),
        )
    console.print(table)


@app.command("show")
@handle_errors
def show(
    name: Annotated[str, typer.Argument(help="the role's name")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """One role, as JSON."""
    typer.echo(json.dumps(_as_dict(_reader(config, data_dir, database).get(name))))


@app.command("create")
@handle_errors
def create(
    name: Annotated[str, typer.Argument(help="a-z, 0-9 and '-', starting with a letter")],
    permissions: PermissionsOpt,
    description: DescriptionOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Create a custom role."""
    _write(_store(config, data_dir, database).create, name, permissions, description)


@app.command("update")
@handle_errors
def update(
    name: Annotated[str, typer.Argument(help="the custom role's name")],
    permissions: PermissionsOpt,
    description: DescriptionOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Replace a custom role's permissions: every token and session naming it gets the new set."""
    _write(_store(config, data_dir, database).update, name, permissions, description)


@app.command("delete")
@handle_errors
def delete(
    name: Annotated[str, typer.Argument(help="the custom role's name")],
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Delete a custom role: tokens and sessions naming it lose what it granted."""
    store = _store(config, data_dir, database)
    store.get(name)
    if not yes and not typer.confirm(
        f"Tokens and sessions with role {name} lose its permissions. Delete it?"
    ):
        fail("not deleted", EXIT_FAILED)
    store.delete(name, actor=_actor())
    console.print(f"deleted role {name}", highlight=False)
