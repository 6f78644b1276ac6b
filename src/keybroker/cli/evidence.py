"""``keybroker evidence``: verify attestation evidence from the command line, through the one verifier
(the TEEs of ``appraisal.registry``: Intel SGX/TDX DCAP quotes, AMD SEV-SNP reports, TPM 2.0 quotes,
Azure vTPM evidence).

Exit codes: 0 verified, 1 rejected (the failed check and why are printed), 2 usage error (unreadable
file, bad ``--at``, evidence that is not raw, hex or base64, unusable collateral, certificate or
trust root).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final, Optional

import typer
from cryptography import x509
from rich.console import Console
from rich.table import Table
from rich.text import Text

from keybroker.appraisal.registry import REGISTRY
from keybroker.cli.common import ConfigOpt, DatabaseOpt, DataDirOpt
from keybroker.cli.evidence_tpm import (
    CliInputError,
    azure_endorsements,
    parse_nonce,
    tpm_cli_evidence,
    tpm_cli_trust,
)
from keybroker.collateral.trust import dev_pki_dir, dev_root_path, evidence_trust
from keybroker.config import Settings, load_settings
from keybroker.errors import (
    CollateralError,
    CollateralNotFound,
    EvidenceParseError,
    InvalidInput,
    VerificationError,
)
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.plugin import DCAP_TEES
from keybroker.tee.dcap.sources import CollateralSource, StaticCollateral
from keybroker.tee.tpm.trust import AkRegistry, ClockReading, EnrolledAk, dry_run_trust
from keybroker.tee.trust import EvidenceTrust
from keybroker.tee.verifier import (
    NO_REPORT_DATA,
    ExpectedReportData,
    VerifiedEvidence,
    Verifier,
    evidence_readings,
)
from keybroker.tee.x509 import pem_certificates_and_crls

__all__ = [
    "CertOpt",
    "CollateralLookup",
    "DevOpt",
    "TeeOpt",
    "UsageError",
    "app",
    "check_tee",
    "cli_settings",
    "checks_before",
    "decode_evidence",
    "decode_quote",
    "dev_hint",
    "needs_collateral_store",
    "parse_at",
    "server_trust",
    "waive_crl_requirement",
    "set_collateral_lookup",
    "read_endorsements",
    "read_evidence",
    "verify_command",
    "verify_with",
]

EXIT_VERIFIED: Final = 0
EXIT_REJECTED: Final = 1
EXIT_USAGE: Final = 2
_MAX_INPUT: Final = 1024 * 1024

#: (FMSPC bytes, PCK CA "processor"/"platform", TEE "sgx"/"tdx") -> collateral, or raise CollateralError.
CollateralLookup = Callable[[bytes, str, str], QuoteCollateral]
_collateral_lookup: CollateralLookup | None = None

app = typer.Typer(
    help="Verify attestation evidence: Intel SGX and TDX DCAP quotes, AMD SEV-SNP reports, TPM 2.0 quotes, "
    "Azure vTPM evidence.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _group() -> None:
    """Verify attestation evidence: Intel SGX and TDX DCAP quotes, AMD SEV-SNP reports, TPM 2.0 quotes,
    Azure vTPM evidence."""


_out = Console()
_err = Console(stderr=True)


def _error(message: str) -> None:
    """One line, never wrapped (a path broken across lines cannot be pasted back), text not markup."""
    _err.print(Text.assemble(("error:", "red"), " ", message), highlight=False, soft_wrap=True)


def _warn(message: str) -> None:
    _err.print(Text.assemble(("warning:", "yellow"), " ", message), highlight=False, soft_wrap=True)


class UsageError(Exception):
    """Bad command-line input (exit 2)."""


def set_collateral_lookup(lookup: CollateralLookup | None) -> None:
    """Install the collateral store used when ``--collateral`` is not given (the server wires its DB here)."""
    global _collateral_lookup
    _collateral_lookup = lookup


def _detector() -> Verifier:
    """The registered TEEs' verifiers without trust: enough to recognize evidence."""
    return REGISTRY.verifier(EvidenceTrust())


def decode_evidence(
    data: bytes, verifier: Verifier | None = None, *, tee: str | None = None
) -> tuple[str, bytes]:
    """(TEE, evidence) of evidence given raw, as hex, or as base64, detected strictly: the one
    reading a registered TEE's verifier recognizes (a DCAP quote: its header, version 3-5,
    ECDSA-P256 key type, the TEE type; an SEV-SNP report: its length, version 2-5, signature
    algorithm). ``tee``: the evidence must be that TEE's (``--tee``)."""
    found = (verifier or _detector()).detect(evidence_readings(data))
    if found is None:
        raise UsageError(f"the evidence is not {REGISTRY.listing()} evidence in raw, hex or base64 form")
    if tee is not None and found[0] != tee:
        raise UsageError(f"--tee {tee}: the evidence is {found[0].upper()} evidence, not {tee.upper()}")
    return found


def decode_quote(data: bytes) -> bytes:
    """The evidence of :func:`decode_evidence`, without its TEE."""
    return decode_evidence(data)[1]


def parse_at(value: str) -> datetime:
    """``--at``: ISO 8601 with a timezone (``Z`` or an offset) or UNIX seconds."""
    text = value.strip()
    if re.fullmatch(r"\d{1,12}(\.\d+)?", text):
        return datetime.fromtimestamp(float(text), UTC)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(f"--at {value!r} is neither ISO 8601 nor UNIX seconds") from None
    if parsed.tzinfo is None:
        raise UsageError(f"--at {value!r} has no timezone; add Z or an offset")
    return parsed.astimezone(UTC)


def _read(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > _MAX_INPUT:
            raise UsageError(f"{what} {path} is larger than {_MAX_INPUT} bytes")
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _load_roots(paths: Sequence[Path]) -> list[x509.Certificate]:
    roots: list[x509.Certificate] = []
    for path in paths:
        try:
            roots.extend(x509.load_pem_x509_certificates(_read(path, "trust root")))
        except ValueError as exc:
            raise UsageError(f"trust root {path} is not a PEM certificate: {exc}") from None
    return roots


def verify_command(
    evidence: bytes,
    *,
    collateral: object | None,
    at: datetime,
    trust_roots: Sequence[x509.Certificate] = (),
    collateral_lookup: CollateralLookup | None = None,
) -> VerifiedEvidence:
    """What ``evidence verify`` does once its inputs are decoded.

    Without ``collateral`` the quote's (unverified) FMSPC / PCK CA / TEE select it through
    ``collateral_lookup`` (or the one installed with ``set_collateral_lookup``).
    """
    source: CollateralSource = StaticCollateral()
    if collateral is None:
        lookup = collateral_lookup or _collateral_lookup
        if lookup is None:
            raise UsageError("collateral store lookup arrives with the server; pass --collateral")
        source = _HookSource(lookup)
    return verify_with(
        EvidenceTrust(dev_roots=tuple(trust_roots), collateral=source), evidence, collateral, at
    )


def verify_with(
    trust: EvidenceTrust,
    evidence: bytes,
    endorsements: object | None,
    at: datetime,
    *,
    tee: str | None = None,
) -> VerifiedEvidence:
    """Verify ``evidence`` (raw, hex or base64) as a server with ``trust`` would, through the one
    verifier; ``endorsements``: the caller's (``--collateral``, ``--cert``), else ``trust``'s sources
    (and for SEV-SNP the certificates the evidence carries)."""
    verifier = REGISTRY.verifier(trust)
    found, raw = decode_evidence(evidence, verifier, tee=tee)
    return verifier.verify(found, raw, NO_REPORT_DATA, at=at, endorsements=endorsements)


def read_endorsements(
    evidence: bytes, path: Path | None, certs: Sequence[Path] = (), *, tee: str | None = None
) -> object | None:
    """The caller's endorsements for the TEE of ``evidence`` (UsageError if unusable):
    ``--collateral`` (DCAP: QuoteCollateralV3 JSON) or ``--cert`` files (SEV-SNP: the VCEK or VLEK,
    DER or PEM, and ASK/ASVK/ARK PEM chains, in any order; PEM CRLs may come along)."""
    if path is None and not certs:
        return None
    detector = _detector()
    tee, _ = decode_evidence(evidence, detector, tee=tee)
    if certs:
        if path is not None:
            raise UsageError("give --collateral or --cert, not both")
        if tee in DCAP_TEES:
            raise UsageError(f"--cert is for SEV-SNP reports; {tee.upper()} quotes take --collateral")
        if tee != "snp":
            raise UsageError(
                f"--cert is for SEV-SNP reports (evidence verify: --tee az-snp-vtpm too), not {tee.upper()} evidence"
            )
        text = _certificates_json(certs)
        where = "--cert"
    else:
        assert path is not None
        text = _read(path, "collateral").decode("utf-8", errors="replace")
        where = f"collateral {path}"
    try:
        return detector.plugin(tee).endorsements(text)
    except CollateralError as exc:
        raise UsageError(f"{where}: {exc.detail}") from None


def _certificates_json(paths: Sequence[Path]) -> str:
    """``--cert`` files as ``{"certificates": [...], "crls": [...]}``: PEM blocks as they are (a
    CERTIFICATE or an X509 CRL), a file that is not PEM as one base64 DER certificate."""
    certificates: list[str] = []
    crls: list[str] = []
    for path in paths:
        data = _read(path, "certificate")
        if not data.lstrip().startswith(b"-----BEGIN"):
            if not data.startswith(b"\x30"):
                raise UsageError(f"certificate {path} is neither PEM nor a DER certificate")
            certificates.append(base64.b64encode(data).decode("ascii"))
            continue
        try:
            found, found_crls = pem_certificates_and_crls(data)
        except ValueError as exc:
            raise UsageError(f"certificate {path}: {exc}") from None
        certificates += found
        crls += found_crls
    return json.dumps({"certificates": certificates, "crls": crls})


def read_evidence(
    path: Path, *, tee: str | None, collateral: Path | None, certs: Sequence[Path]
) -> tuple[bytes, str, object | None]:
    """``--quote``/``--report`` (raw, hex or base64), its TEE, and the caller's endorsements."""
    raw = _read(path, "evidence")
    found, _ = decode_evidence(raw, tee=tee)
    return raw, found, read_endorsements(raw, collateral, certs, tee=found)


def needs_collateral_store(tee: str, endorsements: object | None) -> bool:
    """Whether ``tee``'s endorsements come from the collateral store: DCAP quotes (an Azure TDX
    vTPM's TD quote too) without ``--collateral`` (SEV-SNP reports carry theirs, or a KDS source is
    configured; a TPM quote has none)."""
    return endorsements is None and tee in (*DCAP_TEES, "az-tdx-vtpm")


def checks_before(check: str, tee: str | None) -> list[str]:
    """The checks of ``tee``'s verifier that passed before ``check`` failed."""
    detector = _detector()
    done: list[str] = []
    for name in detector.plugin(tee).checks if tee in detector.tees else ():
        if name == check:
            break
        done.append(name)
    return done


def _claims_table(claims: dict[str, Any]) -> Table:
    table = Table(title="Claims", show_header=True, header_style="bold")
    table.add_column("claim")
    table.add_column("value", overflow="fold")
    for key, value in claims.items():
        if isinstance(value, dict):
            for sub, sub_value in value.items():
                table.add_row(f"{key}.{sub}", str(sub_value))
        else:
            table.add_row(key, "—" if value is None else str(value))
    return table


def _print_verified(result: VerifiedEvidence) -> None:
    _out.print("[bold green]VERIFIED[/bold green]")
    if result.sim:
        _out.print(
            "[bold yellow]warning:[/bold yellow] the chain ends at a dev root: simulated evidence, not a real TEE"
        )
    summary = Table(show_header=False, box=None)
    summary.add_column(style="bold")
    summary.add_column(overflow="fold")
    for label, value in result.summary():
        summary.add_row(label, value)
    _out.print(summary)
    _out.print(_claims_table(dict(result.claims)))


def cli_settings(
    config: Path | None, data_dir: Path | None, database: str | None, dev: bool | None
) -> Settings:
    try:
        return load_settings(config, None, data_dir=data_dir, database=database, dev=dev)
    except InvalidInput as exc:
        raise UsageError(exc.detail) from None


def server_trust(
    settings: Settings,
    *,
    at: datetime,
    extra_roots: Sequence[x509.Certificate],
    need_store: bool,
) -> EvidenceTrust:
    """What ``keybroker serve`` with ``settings`` verifies quotes against (``collateral.trust``),
    plus ``extra_roots`` (``--trust-root``); its collateral store read at ``at``.

    ``need_store``: no ``--collateral`` was given, so collateral comes from the store (or from a
    lookup installed with ``set_collateral_lookup``)."""
    from keybroker.collateral.store import lookup_for_cli

    store: CollateralSource = StaticCollateral()
    if need_store:
        hook = _collateral_lookup
        if hook is not None:
            store = _HookSource(hook)
        elif (
            settings.database is None
            and not settings.dev
            and not (settings.data_dir / "keybroker.db").exists()
        ):
            raise UsageError(
                f"no --collateral and no collateral store at {settings.data_dir} "
                "(give --collateral, or --data-dir/--database/--config of a keybroker)"
            )
        else:
            store = lookup_for_cli(settings, at=at)
    # SEV-SNP: asked only for a report that carries no certificates and was given no --cert
    from keybroker.collateral.kds_store import crl_source_for_cli, endorsement_source_for_cli

    snp = endorsement_source_for_cli(settings)
    try:
        return evidence_trust(
            settings,
            store,
            extra_roots=extra_roots,
            snp_endorsements=snp,
            snp_crls=crl_source_for_cli(settings),
        )
    except InvalidInput as exc:
        raise UsageError(exc.detail) from None


class _ReadOnlyAks:
    """The data dir's enrolled AKs, read only (no clock is recorded by a dry run)."""

    def __init__(self, settings: Settings) -> None:
        from keybroker.cli.common import open_existing_database
        from keybroker.tpmaks.store import DbAkRegistry

        # approvals as recorded: their integrity tags need the root key, and a dry run releases nothing
        self._registry = DbAkRegistry(open_existing_database(settings), None)

    def enrolled(self, name: bytes) -> EnrolledAk | None:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return self._registry.enrolled(name)
        except SQLAlchemyError:  # a database from before TPM AKs
            return None

    def revoked(self, ak: str) -> EnrolledAk | None:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return self._registry.revoked(ak)
        except SQLAlchemyError:  # a database from before TPM AKs
            return None

    def observe(self, ak: str, reading: ClockReading) -> ClockReading | None:
        return None


def dry_run_tpm_trust(settings: Settings, trust: EvidenceTrust) -> EvidenceTrust:
    """``policy test``: a TPM AK is trusted as enrolled in the data dir's database (read only) when it
    is, else as given (the operator tests the policy on evidence they chose)."""
    from keybroker.errors import KeybrokerError

    registry: AkRegistry | None
    try:
        registry = _ReadOnlyAks(settings)
    except KeybrokerError:
        registry = None
    return replace(trust, tpm=dry_run_trust(trust.tpm, registry))


class _HookSource:
    """A lookup installed with ``set_collateral_lookup`` as a ``CollateralSource``."""

    def __init__(self, lookup: CollateralLookup) -> None:
        self._lookup = lookup

    def collateral_for(
        self, *, tee: str, fmspc: str, pck_ca: str, at: datetime | None = None
    ) -> QuoteCollateral:
        return self._lookup(bytes.fromhex(fmspc), pck_ca, tee)


def dev_hint(settings: Settings | None) -> str:
    """When a dev PKI sits in the data dir but dev mode is off: how to trust it as the server would."""
    if settings is None or settings.dev or not dev_root_path(settings).exists():
        return ""
    return (
        f" ({dev_pki_dir(settings)} holds the dev simulator's PKI: add --dev to trust its root and "
        "collateral as 'keybroker serve --dev' does)"
    )


#: ``--dev`` of the commands that verify evidence as the server does.
DevOpt = Annotated[
    Optional[bool],  # noqa: UP045
    typer.Option(
        "--dev",
        help="the data dir is one of 'keybroker serve --dev': trust its dev PKI (root and collateral) as that server does",
    ),
]


TeeOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--tee",
        help=f"The evidence's TEE ({', '.join(REGISTRY.names)}); default: recognized from the evidence.",
    ),
]
CertOpt = Annotated[
    Optional[list[Path]],  # noqa: UP045
    typer.Option(
        "--cert",
        help="SEV-SNP: the VCEK or VLEK (DER or PEM) and the ASK/ASVK/ARK chain (PEM), in any order; "
        "PEM CRLs too. Repeatable. Default: the certificates the evidence carries, else the KDS cache.",
    ),
]
AllowMissingCrlOpt = Annotated[
    bool,
    typer.Option(
        "--allow-missing-crl",
        help="SEV-SNP, az-snp-vtpm: UNSAFE, verify even when no CRL of the chain's ARK is held (the KDS "
        "cache of --data-dir; without a database, among the CRLs given or carried): a revoked ASK/ASVK "
        "then passes. The CRLs held are still applied.",
    ),
]


def waive_crl_requirement(trust: EvidenceTrust) -> EvidenceTrust:
    """``--allow-missing-crl``: ``trust`` without the SEV-SNP CRL requirement, said on stderr."""
    _warn(
        "--allow-missing-crl: an SEV-SNP chain is accepted without a CRL of its ARK, so a revoked "
        "ASK/ASVK passes when none is held (the CRLs held are still applied)"
    )
    return replace(trust, snp_require_crl=False)


PathsOpt = Optional[list[Path]]  # noqa: UP045
#: TEEs whose ``evidence verify`` input is not one evidence file: a TPM quote's parts, Trustee's JSON.
_FILES_TEES: Final = ("tpm", "az-snp-vtpm", "az-tdx-vtpm")


def check_tee(tee: str | None) -> str | None:
    if tee is not None and tee not in REGISTRY.names:
        raise UsageError(f"--tee {tee!r} is not one of {', '.join(REGISTRY.names)}")
    return tee


def _option(value: object, name: str, tee: str | None) -> None:
    if value not in (None, [], False):
        raise UsageError(f"{name} is not an option of --tee {tee or '(recognized from the evidence)'}")


def _verify_inputs(
    *,
    tee: str | None,
    quote: Path | None,
    signature: Path | None,
    ak: Path | None,
    ak_cert: Path | None,
    ak_ca: list[Path],
    pcrs: Path | None,
    event_log: Path | None,
    nonce: str | None,
    evidence_file: Path | None,
    cert: list[Path],
    collateral: Path | None,
) -> tuple[str, bytes, object | None, ExpectedReportData, list[bytes], bool]:
    """(TEE, evidence, endorsements, expected report data, ``--ak-ca`` bytes, whether the
    collateral store is needed) of the command line."""
    check_tee(tee)
    tpm_only = {"--signature": signature, "--ak": ak, "--ak-cert": ak_cert, "--ak-ca": ak_ca, "--pcrs": pcrs}
    tpm_only["--event-log"] = event_log
    try:
        expected: ExpectedReportData = NO_REPORT_DATA
        if tee not in _FILES_TEES:  # one evidence file: a DCAP quote, an SEV-SNP report, a TPM document
            for name, value in {**tpm_only, "--nonce": nonce, "--evidence": evidence_file}.items():
                _option(value, name, tee)
            if quote is None:
                raise UsageError("--report/--quote FILE is required")
            raw, found, endorsements = read_evidence(quote, tee=tee, collateral=collateral, certs=cert)
            _, decoded = decode_evidence(raw, tee=found)
            return found, decoded, endorsements, expected, [], needs_collateral_store(found, endorsements)
        want = parse_nonce(nonce)
        if want is not None:
            expected = want
        if tee == "tpm":
            for name, value in {
                "--evidence": evidence_file,
                "--cert": cert,
                "--collateral": collateral,
            }.items():
                _option(value, name, tee)
            if quote is None or signature is None or ak is None:
                raise UsageError("--tee tpm needs --quote, --signature and --ak")
            ca = [_read(p, "--ak-ca certificate") for p in ak_ca]
            raw = tpm_cli_evidence(
                quote=_read(quote, "quote"),
                signature=_read(signature, "signature"),
                ak=_read(ak, "AK"),
                pcrs=_read(pcrs, "PCR values") if pcrs is not None else None,
                ak_cert=_read(ak_cert, "AK certificate") if ak_cert is not None else None,
                ak_ca=ca,
                event_log=_read(event_log, "event log") if event_log is not None else None,
            )
            return "tpm", raw, None, expected, ca, False
        assert tee is not None
        for name, value in {**tpm_only, "--quote": quote}.items():
            _option(value, name, tee)
        if evidence_file is None:
            raise UsageError(f"--tee {tee} needs --evidence FILE (Trustee's JSON)")
        endorsements = azure_endorsements(
            tee,
            [_read(p, "certificate") for p in cert],
            _read(collateral, "collateral") if collateral else None,
        )
        return (
            tee,
            _read(evidence_file, "evidence"),
            endorsements,
            expected,
            [],
            needs_collateral_store(tee, endorsements),
        )
    except CliInputError as exc:
        raise UsageError(str(exc)) from None


@app.command("verify")
def verify(
    quote: Annotated[
        Optional[Path],  # noqa: UP045 - typer needs Optional here
        typer.Option(
            "--report",
            "--quote",
            help="The evidence: a DCAP quote or an SEV-SNP report (optionally followed by its certificate "
            "table), raw, hex or base64, or keybroker's TPM evidence document; --tee tpm: the TPMS_ATTEST.",
        ),
    ] = None,
    tee_name: TeeOpt = None,
    signature: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--signature", help="--tee tpm: the TPMT_SIGNATURE (or the bare signature of an RSA AK)."
        ),
    ] = None,
    ak: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--ak", help="--tee tpm: the AK, a PEM public key or its TPM2B_PUBLIC (trusted as given)."
        ),
    ] = None,
    ak_cert: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--ak-cert", help="--tee tpm: the AK certificate (PEM or DER); it must chain to --ak-ca."
        ),
    ] = None,
    ak_ca: Annotated[
        PathsOpt,
        typer.Option(
            "--ak-ca", help="--tee tpm: a CA certificate of the AK's chain (self-signed: a root). Repeatable."
        ),
    ] = None,
    pcrs: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--pcrs", help="--tee tpm: the PCR values, JSON {index: hex} (or per bank), or tpm2-tools' file."
        ),
    ] = None,
    event_log: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--event-log", help="--tee tpm: the TCG crypto-agile event log to replay against the quote."
        ),
    ] = None,
    nonce: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--nonce",
            help='--tee tpm/az-*: the expected extraData, hex ("" for a quote without one); default: not checked.',
        ),
    ] = None,
    evidence_file: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--evidence", help="--tee az-snp-vtpm/az-tdx-vtpm: Trustee's evidence JSON."),
    ] = None,
    cert: Annotated[
        PathsOpt,
        typer.Option(
            "--cert",
            help="SEV-SNP: the VCEK or VLEK (DER or PEM) and the ASK/ASVK/ARK chain (PEM), in any order; "
            "PEM CRLs too (default: the certificates the report carries, else the KDS cache). --tee "
            "az-snp-vtpm: AMD's ASK/ARK for the VCEK (default: the shipped ones). Repeatable.",
        ),
    ] = None,
    collateral: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--collateral",
            help="DCAP collateral of a quote (an az-tdx-vtpm TD quote too): QuoteCollateralV3 JSON.",
        ),
    ] = None,
    at: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--at", help="Verification time: ISO 8601 with timezone, or UNIX seconds (default: now)."
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    trust_root: Annotated[
        PathsOpt,
        typer.Option(
            "--trust-root",
            help="Extra trusted root (PEM) besides the server's, e.g. another dev PKI's root. Repeatable.",
        ),
    ] = None,
    write_evidence: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--write-evidence",
            help="--tee tpm: also write the TPM evidence document the files make (what keybroker-client "
            "sends, what policy test --quote takes).",
        ),
    ] = None,
    allow_missing_crl: AllowMissingCrlOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
    dev: DevOpt = None,
) -> None:
    """Verify evidence: verdict, TCB status, advisories, checks performed and claims. It trusts what
    the server of --data-dir/--database/--config trusts (with --dev, a 'serve --dev' one: its dev PKI
    too); DCAP collateral comes from --collateral or else from that server's collateral store, SEV-SNP
    certificates from --cert, else from the report's certificate table, else the KDS cache. A TPM AK
    given with --ak is trusted as given; without --nonce the quote's extraData is a claim, not checked."""
    settings: Settings | None = None
    found: str | None = None
    when = datetime.now(UTC)
    try:
        when = parse_at(at) if at is not None else when
        found, raw, endorsements, expected, ca, need_store = _verify_inputs(
            tee=tee_name,
            quote=quote,
            signature=signature,
            ak=ak,
            ak_cert=ak_cert,
            ak_ca=ak_ca or [],
            pcrs=pcrs,
            event_log=event_log,
            nonce=nonce,
            evidence_file=evidence_file,
            cert=cert or [],
            collateral=collateral,
        )
        if write_evidence is not None:
            if found != "tpm" or tee_name != "tpm":
                raise UsageError("--write-evidence is for --tee tpm")
            try:
                write_evidence.write_bytes(raw)
            except OSError as exc:
                raise UsageError(f"cannot write --write-evidence {write_evidence}: {exc.strerror}") from None
        extra = _load_roots(trust_root or [])
        settings = cli_settings(config, data_dir, database, dev)
        trust = server_trust(settings, at=when, extra_roots=extra, need_store=need_store)
        if allow_missing_crl:
            trust = waive_crl_requirement(trust)
        if (
            found == "tpm" and tee_name is None
        ):  # a TPM evidence document given whole, as policy test takes it
            trust = dry_run_tpm_trust(settings, trust)
        elif found == "tpm":
            try:
                trust = tpm_cli_trust(trust, ca)
            except CliInputError as exc:
                raise UsageError(str(exc)) from None
        verifier = REGISTRY.verifier(trust)
        assert found is not None
        result = verifier.verify(found, raw, expected, at=when, endorsements=endorsements)
    except UsageError as exc:
        _error(str(exc))
        raise typer.Exit(EXIT_USAGE) from None
    except CollateralNotFound as exc:
        _error(f"{exc.diagnostics()}{dev_hint(settings)}")
        raise typer.Exit(EXIT_REJECTED) from None
    except CollateralError as exc:
        _error(exc.diagnostics())
        raise typer.Exit(EXIT_USAGE) from None
    except (EvidenceParseError, VerificationError) as exc:
        check = exc.check if isinstance(exc, VerificationError) else "parse"
        if json_output:
            doc: dict[str, Any] = {
                "verdict": "rejected",
                "failed_check": check,
                "reason": exc.detail,
                "checks_passed": checks_before(check, found),
                "at": when.isoformat(),
                "claims": None,
            }
            if isinstance(exc, EvidenceParseError):
                doc["field"], doc["offset"] = exc.field, exc.offset
            typer.echo(json.dumps(doc, indent=2))
        else:
            _out.print("[bold red]REJECTED[/bold red]")
            _out.print(f"failed check: [bold]{check}[/bold]", highlight=False)
            hint = dev_hint(settings) if check in ("pck_chain", "collateral_chains") else ""
            _out.print(f"why: {exc.detail}{hint}", highlight=False)
        raise typer.Exit(EXIT_REJECTED) from None
    if json_output:
        report = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in result.report().items()}
        typer.echo(
            json.dumps(
                {"verdict": "verified", "failed_check": None, "at": when.isoformat(), **report}, indent=2
            )
        )
    else:
        _print_verified(result)
