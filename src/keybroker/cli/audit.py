"""``keybroker audit list`` and ``keybroker audit verify``: read and verify the audit log.

Local operator commands: they read the database and the data dir directly, like ``keybroker
token create``. ``verify`` holds the database to the signed checkpoints in the data dir
(:mod:`keybroker.audit.checkpoint`), read before the database.
"""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.table import Table
from rich.text import Text

from keybroker.cli.common import (
    EXIT_FAILED,
    ConfigOpt,
    DatabaseOpt,
    DataDirOpt,
    console,
    handle_errors,
    no_data,
    open_existing_database,
)
from keybroker.config import Settings, load_settings

app = typer.Typer(help="Read and verify the signed, hash-chained audit log.", no_args_is_help=True)


#: Shown as escapes: control, format (bidi overrides, zero-width) and line/paragraph separators.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def printable(text: str) -> str:
    """``text`` with unprintable characters (and the backslash) escaped, so that a record prints as
    one row and shows what it holds: a newline in a reason cannot print as a fake record."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif unicodedata.category(ch) in _UNPRINTABLE:
            out.append(
                f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
            )
        else:
            out.append(ch)
    return "".join(out)


def _broken(message: str) -> NoReturn:
    """One unwrapped line on stderr (to grep for), exit 1."""
    typer.echo(f"error: {printable(message)}", err=True)  # it may quote what the database holds
    raise typer.Exit(EXIT_FAILED)


def _settings(config: Path | None, data_dir: Path | None, database: str | None) -> Settings:
    return load_settings(config, None, data_dir=data_dir, database=database)


@app.command("list")
@handle_errors
def audit_list(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
    after: Annotated[int, typer.Option(min=0, help="show records after this sequence number")] = 0,
    limit: Annotated[int, typer.Option(min=1, help="at most this many records")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """List audit records (unprintable characters shown escaped). Reads only: a data dir or database
    without keybroker data is an error (exit 2), never created."""
    from keybroker.audit import log as audit

    db = open_existing_database(_settings(config, data_dir, database))
    with db.session() as s:
        rows = [audit.to_dict(r) for r in audit.iter_records(s, after=after, limit=limit)]
    if as_json:
        for r in rows:
            typer.echo(json.dumps(r))  # ASCII, one line: control characters escaped by JSON
        return
    table = Table("seq", "time", "actor", "action", "object", "outcome", "reason", expand=True)
    for r in rows:
        cells = (r["actor"], r["action"], r["object_id"] or "", r["outcome"], r["reason"] or "")
        table.add_row(str(r["seq"]), r["time"], *(Text(printable(c)) for c in cells))  # Text: no markup
    console.print(table)


@app.command("verify")
@handle_errors
def audit_verify(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
    checkpoints: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--checkpoints", help="checkpoint file (default: <data-dir>/audit-checkpoints.jsonl)"),
    ] = None,
    checkpoint_key: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--checkpoint-key",
            help="checkpoint key: the data dir's, or its public key in PEM (default: <data-dir>/audit-checkpoint-key.pem)",
        ),
    ] = None,
    grace: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            "--grace",
            min=0,
            help="seconds a record may stay uncovered by a checkpoint (default: the checkpoint interval + 10)",
        ),
    ] = None,
    no_checkpoints: Annotated[
        bool,
        typer.Option(
            "--no-checkpoints",
            help="check the hash chain alone (anyone who can write the database can recompute it)",
        ),
    ] = False,
) -> None:
    """Verify the audit log against the signed checkpoints. Exit 0 intact; 1 naming the first bad
    record and the check that failed (chain, head, signature, checkpoint, coverage); 2 when the data
    dir or database holds no keybroker data (nothing is created there)."""
    from keybroker.audit import log as audit
    from keybroker.audit.checkpoint import (
        CHECKPOINT_FILE,
        CHECKPOINT_KEY_FILE,
        CheckpointError,
        CheckpointFile,
        load_public_key,
    )

    settings = _settings(config, data_dir, database)
    db = open_existing_database(settings)  # a wrong data dir: exit 2, and nothing created in it
    anchors: audit.Anchors | None = None
    if not no_checkpoints:
        if checkpoints is None and not settings.data_dir.is_dir():
            raise no_data(settings.data_dir, "no such directory")
        cp_path = checkpoints or settings.data_dir / CHECKPOINT_FILE
        if not cp_path.exists():
            _broken(
                f"no audit checkpoints at {cp_path}: give the data dir of a replica that has run "
                "(--data-dir), or --no-checkpoints to check the hash chain alone"
            )
        public = load_public_key(checkpoint_key or settings.data_dir / CHECKPOINT_KEY_FILE)
        try:
            found = CheckpointFile(cp_path).read_all(public)  # before the database: never ahead of it
        except CheckpointError as exc:
            _broken(f"audit checkpoints broken (checkpoint-file check): {cp_path} {exc}")
        window = (
            timedelta(seconds=grace)
            if grace is not None
            else timedelta(seconds=settings.audit.checkpoint_interval_seconds) + audit.CHECKPOINT_SLACK
        )
        anchors = audit.Anchors(found, datetime.now(UTC), window)
    with db.session() as s:
        result = audit.verify_chain(s, anchors)
    if not result.ok:
        where = f" at record {result.bad_seq}" if result.bad_seq is not None else ""
        _broken(f"audit chain broken{where} ({result.check} check): {result.problem}")
    typer.echo(f"audit chain intact: {result.records} records")
    if anchors is None:
        typer.echo("hash chain only: no signature or checkpoint checked (--no-checkpoints)")
        return
    named = any(c.record_key is not None for c in anchors.checkpoints)
    unsigned = (
        f"; {result.unsigned} sealed-time records unsigned, covered by checkpoints" if result.unsigned else ""
    )
    typer.echo(
        f"signatures: {result.signatures_checked} checked, required from record {result.signed_from}"
        + ("" if named else " (no checkpoint names the record key yet: not checked)")
        + unsigned
    )
    cp = result.checkpoint
    if cp is None:
        typer.echo(f"checkpoints: none yet; {result.uncovered} records, all recent")
    else:
        typer.echo(
            f"checkpoints: {len(anchors.checkpoints)}, the newest covers record {cp.seq} "
            f"({cp.time.strftime('%Y-%m-%dT%H:%M:%SZ')}, key {cp.key_id}); "
            f"{result.uncovered} records after it, all recent"
        )
