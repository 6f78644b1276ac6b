"""``keybroker keystore``: check the configured key store (and auto-unseal seal) from this host."""

from __future__ import annotations

import os

import typer
from rich.table import Table

from keybroker.cli.common import (
    EXIT_FAILED,
    ConfigOpt,
    DatabaseOpt,
    DataDirOpt,
    console,
    handle_errors,
    open_existing_database,
)
from keybroker.config import load_settings
from keybroker.errors import InvalidInput, KeybrokerError
from keybroker.keystores.base import CheckResult, run_checks

app = typer.Typer(help="Check the configured key store and auto-unseal seal.", no_args_is_help=True)


def _seal_checks(seal: object) -> list[CheckResult]:
    """Round trip a random value through the auto-unseal seal (the seal key is not created)."""
    from keybroker.seal.autounseal import build_seal
    from keybroker.seal.config import SealSettings

    assert isinstance(seal, SealSettings)
    auto = build_seal(seal)
    if auto is None:
        return []

    def roundtrip() -> str:
        probe = os.urandom(32)
        if auto.unwrap(auto.wrap(probe, create_key=False)) != probe:
            raise KeybrokerError("the seal returned different bytes")
        return f"{auto.describe()}: encrypt and decrypt work"

    return [CheckResult(f"seal: {r.step}", r.ok, r.detail) for r in run_checks([("round trip", roundtrip)])]


def _orphans(settings: object, ks: object, required: bool) -> CheckResult:
    """Backend objects made by keybroker that belong to no key. The database is read, never created:
    without keybroker data there, the step is skipped, or (``required``: --data-dir or --database
    given) the command fails with exit 2."""
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from keybroker.config import Settings
    from keybroker.keystores.base import KeyStore
    from keybroker.store.models import Key

    assert isinstance(settings, Settings)
    ks_typed: KeyStore = ks  # type: ignore[assignment]
    try:
        db = open_existing_database(settings)
    except InvalidInput as exc:
        if required:
            raise
        return CheckResult("orphans", True, f"skipped: {exc.detail.split(':')[0]}")
    try:
        with db.session() as s:
            known = set(s.scalars(select(Key.backend_ref).where(Key.keystore == ks_typed.name)))
    except SQLAlchemyError as exc:
        return CheckResult("orphans", True, f"skipped: database not readable here ({type(exc).__name__})")
    finally:
        db.dispose()
    try:
        refs = ks_typed.list_refs()
    except KeybrokerError as exc:
        return CheckResult("orphans", False, exc.detail)
    orphans = sorted(set(refs) - known)
    if orphans:
        shown = ", ".join(orphans[:10]) + (" ..." if len(orphans) > 10 else "")
        return CheckResult(
            "orphans",
            False,
            f"{len(orphans)} backend object(s) made by keybroker belong to no key (an interrupted create?): {shown}",
        )
    return CheckResult("orphans", True, f"{len(refs)} keybroker object(s) in the backend, all known")


@app.command("check")
@handle_errors
def check(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Test connectivity and permissions of the key store (and the seal); say what is wrong.

    With the data dir (or database) of a keybroker that has run, also look for backend objects that
    belong to no key; nothing is created there. Exit 0 when every check passes, 1 otherwise, 2 when
    the --data-dir or --database given holds no keybroker data.
    """
    from keybroker.keystores.factory import build_keystore

    settings = load_settings(config, None, data_dir=data_dir, database=database)
    if data_dir is not None or database is not None:
        open_existing_database(settings).dispose()  # a wrong path: exit 2 before any check runs
    kind = settings.keystore.type
    results: list[CheckResult] = []
    if kind == "builtin":
        results.append(CheckResult("backend", True, "builtin: keys are sealed in keybroker's own database"))
    else:
        ks = build_keystore(settings.keystore, None)
        results.extend(ks.check())
        if all(r.ok for r in results):
            results.append(_orphans(settings, ks, data_dir is not None or database is not None))
    results.extend(_seal_checks(settings.seal))
    table = Table("check", "result", "detail", title=f"key store: {kind}", expand=True)
    for r in results:
        table.add_row(r.step, "[green]ok[/green]" if r.ok else "[red]FAILED[/red]", r.detail)
    console.print(table)
    if not all(r.ok for r in results):
        raise typer.Exit(EXIT_FAILED)
