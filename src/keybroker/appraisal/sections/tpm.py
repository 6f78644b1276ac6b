"""The ``tpm`` section of a transfer policy: PCR values per bank and index, measured-boot claims
from the event log, which attestation keys may vouch, and the clock.

:class:`TpmChecks` (PCRs, event log, clock) is shared with the Azure vTPM sections, whose AK the
hardware report vouches for; :class:`TpmAttributes` adds the AK constraints of a plain TPM and the
attributes every section has. Every clause is checked and reported:

* ``pcrs``: ``{"sha256": {"7": [allowed values]}}``: the quoted value of each listed PCR must be one
  of its allowed values (a PCR the quote does not hold denies).
* ``event_log``: present (even ``{}``): the evidence must carry an event log that replayed to the
  quote. Then ``secure_boot`` (the measured SecureBoot variable), ``pk``/``kek``/``db``/``dbx``
  (digests of the measured variables), ``boot_applications`` (every PCR 4 application must be
  listed), ``kernel``/``initrd`` (the files GRUB measured that the measured command line names;
  with either, or with ``ipl_files``, every PCR 9 file must be one of the three lists, since PCR 9's
  paths are not measured), ``kernel_cmdline`` (exact command lines). A claim the log does not
  establish denies.
* ``allow_clock_regression`` (default false): a quote whose reset count, restart count (same reset)
  or clock (same boot) is below the latest one seen for its AK is denied: an old quote replayed,
  or a TPM whose state was rolled back.
* ``ak_trust`` (default certificate and enrolled), ``ak_vendors`` (certificate mode: the AK root
  stores allowed), ``ak_names`` (the AK Names allowed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, Field, StrictBool, model_validator

from keybroker.appraisal.clauses import Clauses
from keybroker.appraisal.fields import Permission, Strict
from keybroker.appraisal.section import PolicySection

__all__ = [
    "SECTION",
    "EventLogChecks",
    "TpmAttributes",
    "TpmChecks",
    "TpmSection",
    "clock_regression",
    "evaluate_checks",
]

_HEX: Final = re.compile(r"^[0-9a-fA-F]*$")
_DIGEST_SIZES: Final = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}


def _digest(value: str) -> str:
    if len(value) // 2 not in _DIGEST_SIZES.values() or len(value) % 2 or not _HEX.match(value):
        raise ValueError("must be the hex of a SHA-1, SHA-256, SHA-384 or SHA-512 digest")
    return value.lower()


def _name(value: str) -> str:
    if len(value) % 2 or len(value) // 2 - 2 not in _DIGEST_SIZES.values() or not _HEX.match(value):
        raise ValueError("must be the hex of a TPM Name (nameAlg || digest)")
    return value.lower()


HexDigest = Annotated[str, AfterValidator(_digest)]
AkName = Annotated[str, AfterValidator(_name)]
PcrBank = Literal["sha1", "sha256", "sha384", "sha512"]
PcrIndex = Annotated[str, Field(pattern=r"^(0|[1-9]|[12][0-9]|3[01])$")]
VendorName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
CmdLine = Annotated[str, Field(min_length=1, max_length=4096)]


AkTrustMode = Literal["certificate", "enrolled", "given"]


def _default_ak_trust() -> list[AkTrustMode]:
    return ["certificate", "enrolled"]


class EventLogChecks(Strict):
    """Claims of the event log. Present: the evidence must carry a log that replayed to the quote."""

    #: True: Secure Boot was on (the measured SecureBoot variable is 1); False: it was off. None: not checked.
    secure_boot: StrictBool | None = None
    pk: list[HexDigest] = Field(default_factory=list, max_length=64)
    kek: list[HexDigest] = Field(default_factory=list, max_length=64)
    db: list[HexDigest] = Field(default_factory=list, max_length=64)
    dbx: list[HexDigest] = Field(default_factory=list, max_length=64)
    #: Every boot application (PCR 4: shim, boot loader, kernel as EFI image) must be listed.
    boot_applications: list[HexDigest] = Field(default_factory=list, max_length=256)
    #: The files GRUB measured into PCR 9 whose paths the measured command line (kernel) and the
    #: measured ``initrd`` command name. The paths in PCR 9 events are not measured, and the OS can
    #: extend PCR 9 after boot: a kernel or initrd clause therefore also requires every PCR 9 file
    #: to be one of ``kernel``, ``initrd`` or ``ipl_files``, so a file relabelled or added afterwards
    #: cannot stand in for the one that booted.
    kernel: list[HexDigest] = Field(default_factory=list, max_length=64)
    initrd: list[HexDigest] = Field(default_factory=list, max_length=64)
    #: Every other file GRUB may measure into PCR 9 (its configuration, modules, fonts). Set (or
    #: with ``kernel``/``initrd``): every PCR 9 file must be listed in one of the three.
    ipl_files: list[HexDigest] = Field(default_factory=list, max_length=256)
    kernel_cmdline: list[CmdLine] = Field(default_factory=list, max_length=64)


class TpmChecks(Strict):
    """What a quote's PCRs, its event log and its AK's clock must show (plain TPM and Azure vTPM)."""

    #: Per bank and PCR index, the allowed values. Empty: PCRs not checked.
    pcrs: dict[PcrBank, dict[PcrIndex, list[HexDigest]]] = Field(default_factory=dict)
    #: None: no event log required.
    event_log: EventLogChecks | None = None
    allow_clock_regression: StrictBool = False

    @model_validator(mode="after")
    def _pcr_values_fit_their_bank(self) -> TpmChecks:
        for bank, indices in self.pcrs.items():
            if not indices:
                raise ValueError(f"pcrs.{bank} lists no PCR")
            for index, values in indices.items():
                if not values:
                    raise ValueError(f"pcrs.{bank}.{index}: an empty allowlist would deny every quote")
                for v in values:
                    if len(v) != 2 * _DIGEST_SIZES[bank]:
                        raise ValueError(
                            f"pcrs.{bank}.{index}: {v[:16]}... is not a {bank} value ({_DIGEST_SIZES[bank]} bytes)"
                        )
        return self


class TpmAttributes(TpmChecks):
    #: How the AK may be trusted: its certificate, its enrolment through the EK (and "given", the
    #: operator's own AK on the command line only).
    ak_trust: list[AkTrustMode] = Field(default_factory=_default_ak_trust, min_length=1)
    #: Certificate mode: the AK root stores (tpm.ak_roots vendors) allowed. Empty: any configured.
    ak_vendors: list[VendorName] = Field(default_factory=list, max_length=64)
    #: The AK Names (hex) allowed. Empty: any trusted AK.
    ak_names: list[AkName] = Field(default_factory=list, max_length=1024)
    client_permissions: list[Permission] = Field(default_factory=list)
    #: No vendor publishes a TPM's TCB status (NoVendorStatus): true denies every TPM quote.
    enforce_tcb_upto_date: StrictBool = False


class TpmSection(Strict):
    attributes: TpmAttributes


def _at(claims: Mapping[str, Any], *path: str) -> Any:
    node: Any = claims
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def _event_log(c: Clauses, prefix: str, claims: Mapping[str, Any], checks: EventLogChecks) -> None:
    log = claims.get("event_log")
    if not isinstance(log, Mapping):
        c.fail(f"{prefix}event_log", "the policy requires an event log, and the evidence carries none")
        return
    if checks.secure_boot is not None:
        enabled = _at(log, "secure_boot", "enabled")
        if not isinstance(enabled, bool):
            c.fail(
                f"{prefix}secure_boot",
                "the Secure Boot state is not known from the event log (no SecureBoot variable measured "
                "in a PCR the quote holds)",
            )
        elif enabled != checks.secure_boot:
            c.fail(
                f"{prefix}secure_boot",
                f"Secure Boot was {'on' if enabled else 'off'}; the policy requires it "
                f"{'on' if checks.secure_boot else 'off'}",
            )
    for var in ("pk", "kek", "db", "dbx"):
        c.value_any_of(f"{prefix}{var}", _at(log, "secure_boot", var), getattr(checks, var))
    if checks.boot_applications:
        apps = log.get("boot_applications")
        if not isinstance(apps, list):
            c.fail(f"{prefix}boot_applications", "the boot applications are not known from the event log")
        else:
            for app in apps:
                c.value_any_of(f"{prefix}boot_applications", app, checks.boot_applications)
    c.value_any_of(f"{prefix}kernel", log.get("kernel"), checks.kernel)
    c.value_any_of(f"{prefix}initrd", log.get("initrd"), checks.initrd)
    if checks.kernel or checks.initrd or checks.ipl_files:
        _every_ipl_file_listed(c, prefix, log, [*checks.kernel, *checks.initrd, *checks.ipl_files])
    c.value_any_of(
        f"{prefix}kernel_cmdline", log.get("kernel_cmdline"), checks.kernel_cmdline, hex_values=False
    )


def _every_ipl_file_listed(c: Clauses, prefix: str, log: Mapping[str, Any], allowed: list[str]) -> None:
    """Every file measured into PCR 9 is an allowed one (the kernel and initrd claims rest on paths
    that are not measured; this makes them safe to rely on)."""
    files = log.get("ipl_files")
    if not isinstance(files, list) or not all(isinstance(f, Mapping) for f in files):
        c.fail(f"{prefix}ipl_files", "the files measured into PCR 9 are not known from the event log")
        return
    for f in files:
        c.value_any_of(f"{prefix}ipl_files", f.get("digest"), allowed)


def clock_regression(claims: Mapping[str, Any]) -> str | None:
    """What went back since the AK's latest quote, as a reason; None when nothing did."""
    history = claims.get("clock_history")
    went_back = [
        what
        for what, key in (
            ("reset count", "reset_count_decreased"),
            ("restart count", "restart_count_decreased"),
            ("clock", "clock_decreased"),
        )
        if not isinstance(history, Mapping) or history.get(key) is not False
    ]
    if not went_back:
        return None
    previous = history.get("previous") if isinstance(history, Mapping) else None
    quote = claims.get("quote")
    now = (
        {k: quote.get(k) for k in ("reset_count", "restart_count", "clock")}
        if isinstance(quote, Mapping)
        else {}
    )
    return (
        f"the TPM's {', '.join(went_back)} went back since the AK's latest quote ({previous} -> {now}): "
        "an old quote replayed, or a TPM whose state was rolled back"
    )


def evaluate_checks(c: Clauses, claims: Mapping[str, Any], checks: TpmChecks, *, prefix: str = "") -> None:
    """The PCR, event log and clock clauses on a quote's claims (``tee.tpm.claims``)."""
    for bank, indices in checks.pcrs.items():
        for index, allowed in indices.items():
            c.value_any_of(f"{prefix}pcrs.{bank}.{index}", _at(claims, "pcrs", bank, index), allowed)
    if checks.event_log is not None:
        _event_log(c, prefix, claims, checks.event_log)
    text = clock_regression(claims)
    if text is not None:
        if checks.allow_clock_regression:
            c.notes.append(f"{text}; allowed ({prefix}allow_clock_regression is true)")
        else:
            c.fail(
                f"{prefix}clock",
                f"{text}, and the policy does not set allow_clock_regression",
                measurement=False,
            )


def _evaluate(c: Clauses, section: TpmSection) -> None:
    a = section.attributes
    trust = _at(c.claims, "ak", "trust")
    mode = _at(trust, "mode")
    if mode not in a.ak_trust:
        c.fail(
            "ak_trust",
            f"the AK is trusted by {mode or 'nothing known'}, which the policy's ak_trust "
            f"[{', '.join(a.ak_trust)}] does not list",
            measurement=False,
        )
    if mode == "certificate":
        c.value_any_of("ak_vendors", _at(trust, "vendor"), a.ak_vendors, hex_values=False)
    c.value_any_of("ak_names", _at(c.claims, "ak", "name"), a.ak_names)
    evaluate_checks(c, c.claims, a)


def _default_findings(doc: Mapping[str, Any]) -> list[str]:
    """The default policies deny a clock regression too."""
    claims = doc.get("claims")
    if doc.get("tee") != "tpm" or not isinstance(claims, Mapping):
        return []
    text = clock_regression(claims)
    return [] if text is None else [text]


SECTION = PolicySection(
    tee="tpm",
    model=TpmSection,
    subject="TPM",
    debug_flag="debug",
    vendor="a TPM manufacturer or a configured AK root",
    evaluate=_evaluate,
    default_findings=_default_findings,
)
