"""``keybroker policy test``: dry-run a key-transfer policy (SecL JSON or Rego) on recorded evidence."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Optional

import typer

from keybroker.appraisal import trial
from keybroker.appraisal.decision import Decision
from keybroker.appraisal.input import appraisal_input
from keybroker.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    ConfigOpt,
    DatabaseOpt,
    DataDirOpt,
    console,
    fail,
    handle_errors,
)
from keybroker.cli.evidence import (
    AllowMissingCrlOpt,
    CertOpt,
    DevOpt,
    TeeOpt,
    UsageError,
    _load_roots,
    _read,
    check_tee,
    cli_settings,
    dev_hint,
    dry_run_tpm_trust,
    needs_collateral_store,
    parse_at,
    read_evidence,
    server_trust,
    verify_with,
    waive_crl_requirement,
)
from keybroker.cli.snp_measure import snp_measure
from keybroker.errors import CollateralNotFound, EvidenceError, InvalidInput

app = typer.Typer(
    help="Key-transfer policies: dry runs on recorded evidence; SEV-SNP launch measurements.",
    no_args_is_help=True,
)


def _load_policy(policy_path: Path) -> Callable[[dict[str, object]], Decision]:
    """Parse (SecL JSON) or compile (Rego) the policy up front: a bad policy is a usage error. The
    console's *Test this policy* reads and evaluates policies through the same ``appraisal.trial``."""
    text = _read(policy_path, "policy").decode("utf-8", errors="replace")
    language: trial.Language = "rego" if policy_path.suffix == ".rego" else "secl"
    try:
        policy = trial.load_policy(text, language=language, policy_id=policy_path.name)
    except InvalidInput as exc:
        if language == "rego":
            raise
        raise InvalidInput(f"policy {policy_path}: {exc.detail}", field=exc.field) from None
    return policy.evaluate


@app.command("test")
@handle_errors
def test(
    policy: Annotated[Path, typer.Option("--policy", help="SecL v5 policy (JSON) or a Rego module (.rego)")],
    quote: Annotated[
        Path,
        typer.Option(
            "--report",
            "--quote",
            help="the evidence: a DCAP quote or an SEV-SNP report (raw, hex or base64), keybroker's TPM "
            "evidence document, or Trustee's Azure vTPM JSON",
        ),
    ],
    tee_name: TeeOpt = None,
    cert: CertOpt = None,
    collateral: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--collateral",
            help="DCAP collateral JSON (corpus form) (default: the collateral store of --data-dir/--database/--config)",
        ),
    ] = None,
    at: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--at", help="verification time: ISO 8601 or UNIX seconds (default: now)"),
    ] = None,
    client_permissions: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--client-permissions",
            help="the caller token's client permissions, comma-separated; omit for no token",
        ),
    ] = None,
    trust_root: Annotated[
        list[Path], typer.Option("--trust-root", help="extra trusted root (PEM), e.g. another dev PKI's")
    ] = [],  # noqa: B006
    allow_missing_crl: AllowMissingCrlOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
    dev: DevOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the decision as JSON")] = False,
) -> None:
    """Verify the evidence as the server of --data-dir/--database/--config would (with --dev, a
    'serve --dev' one: its dev PKI too), then evaluate the policy on its claims and print every
    reason. Exit 0 allowed, 1 denied or evidence rejected, 2 usage error."""
    settings = None
    try:
        decide = _load_policy(policy)
        raw, tee, endorsements = read_evidence(
            quote, tee=check_tee(tee_name), collateral=collateral, certs=cert or ()
        )
        when = parse_at(at) if at else datetime.now(UTC)
        extra = _load_roots(trust_root)
        settings = cli_settings(config, data_dir, database, dev)
        trust = dry_run_tpm_trust(
            settings,
            server_trust(
                settings, at=when, extra_roots=extra, need_store=needs_collateral_store(tee, endorsements)
            ),
        )
        if allow_missing_crl:
            trust = waive_crl_requirement(trust)
    except UsageError as exc:
        fail(str(exc), EXIT_USAGE)
    try:
        verified = verify_with(trust, raw, endorsements, when, tee=tee)
    except CollateralNotFound as exc:
        fail(f"{exc.detail}{dev_hint(settings)}", EXIT_FAILED)
    except EvidenceError as exc:
        check = exc.extra.get("check", "parse")
        hint = dev_hint(settings) if check in ("pck_chain", "collateral_chains") else ""
        fail(f"evidence rejected ({check}): {exc.detail}{hint}", EXIT_FAILED)
    perms = (
        None
        if client_permissions is None
        else [p.strip() for p in client_permissions.split(",") if p.strip()]
    )
    doc = dict(appraisal_input(verified, client_permissions=perms))
    decision = decide(doc)
    if as_json:
        console.print_json(json.dumps(decision.to_dict()))
    else:
        verdict = "[green]ALLOWED[/green]" if decision.allowed else "[red]DENIED[/red]"
        console.print(f"{verdict} by {decision.policy_id} (ear.status {decision.ear_status})")
        for reason in decision.reasons:
            console.print(f"  reason: {reason}", highlight=False, soft_wrap=True)
        for note in decision.notes:
            console.print(f"  note:   {note}", highlight=False, soft_wrap=True)
    if not decision.allowed:
        raise typer.Exit(EXIT_FAILED)


app.command("snp-measure")(snp_measure)
