"""The ``snp`` section of a transfer policy: an AMD SEV-SNP guest's identity and launch configuration.

What it checks (every clause evaluated, every failure a reason; empty lists and unset values are
not checked):

* the guest: ``measurement`` (launch digest), ``host_data``, ``id_key_digest`` /
  ``author_key_digest`` (the ID block's signers), ``family_id`` / ``image_id``, a minimum
  ``guest_svn``; at least one of measurement, ID key or author key digest is required, so a
  policy always names whose guest it trusts;
* ``vmpl``: the VMPLs a report may come from (default ``[0]``: the guest's most privileged level);
* ``guest_policy``: guest POLICY bits required (true) or forbidden (false): ``migrate_ma`` is
  forbidden unless the section says otherwise (a migration agent can export the guest's memory),
  ``smt``, ``single_socket`` and ``debug`` are not checked unless set (debug guests are denied by
  the shared clause unless the policy sets ``allow_debug``);
* ``minimum_tcb``: a minimum SPL per component of REPORTED_TCB (the TCB the VCEK certifies; the
  verifier has checked REPORTED <= COMMITTED <= CURRENT): ``bootloader``, ``tee``, ``snp``,
  ``microcode``, and ``fmc`` where the product has one (Turin).

AMD publishes no TCB status, so this section has no ``enforce_tcb_upto_date``: the TCB is judged by
``minimum_tcb`` (the evidence's ``tcb.status`` is ``NoVendorStatus``, ``tee.snp.plugin``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from pydantic import Field, StrictBool, model_validator

from keybroker.appraisal.clauses import Clauses
from keybroker.appraisal.decision import Reason
from keybroker.appraisal.fields import (
    U8,
    U32,
    Hex16Bytes,
    Permission,
    Sha256Hex,
    Sha384Hex,
    Strict,
)
from keybroker.appraisal.section import PolicySection

__all__ = ["SECTION", "SnpAttributes", "SnpGuestPolicy", "SnpMinimumTcb", "SnpSection"]

#: The TCB components in reasons' order, with the name AMD's documents give them.
_TCB_COMPONENTS: Final = (
    ("bootloader", "boot loader"),
    ("tee", "TEE"),
    ("snp", "SNP firmware"),
    ("microcode", "microcode"),
    ("fmc", "FMC"),
)
#: Guest POLICY bits a section can require or forbid, with their ABI names.
_POLICY_BITS: Final = (
    ("debug", "DEBUG"),
    ("migrate_ma", "MIGRATE_MA"),
    ("smt", "SMT"),
    ("single_socket", "SINGLE_SOCKET"),
)


class SnpMinimumTcb(Strict):
    """Minimum security patch levels of REPORTED_TCB; None: not checked. ``fmc`` applies to
    products that have an FMC SPL (Turin) and is not checked on the others."""

    bootloader: U8 | None = None
    tee: U8 | None = None
    snp: U8 | None = None
    microcode: U8 | None = None
    fmc: U8 | None = None


class SnpGuestPolicy(Strict):
    """Guest POLICY bits: true, the bit must be set; false, it must be clear; None: not checked."""

    debug: StrictBool | None = None
    migrate_ma: StrictBool | None = False
    smt: StrictBool | None = None
    single_socket: StrictBool | None = None


class SnpAttributes(Strict):
    measurement: list[Sha384Hex] = Field(default_factory=list, max_length=256)
    host_data: list[Sha256Hex] = Field(default_factory=list, max_length=256)
    id_key_digest: list[Sha384Hex] = Field(default_factory=list, max_length=64)
    author_key_digest: list[Sha384Hex] = Field(default_factory=list, max_length=64)
    family_id: list[Hex16Bytes] = Field(default_factory=list, max_length=64)
    image_id: list[Hex16Bytes] = Field(default_factory=list, max_length=64)
    #: Minimum GUEST_SVN (>=). None: not checked.
    guest_svn: U32 | None = None
    #: The VMPLs a report may have been requested at.
    vmpl: list[int] = Field(default_factory=lambda: [0], min_length=1, max_length=4)
    guest_policy: SnpGuestPolicy = Field(default_factory=SnpGuestPolicy)
    minimum_tcb: SnpMinimumTcb | None = None
    client_permissions: list[Permission] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names_the_guest(self) -> SnpAttributes:
        if not (self.measurement or self.id_key_digest or self.author_key_digest):
            raise ValueError(
                "an snp section must name the guest it trusts: measurement, id_key_digest or author_key_digest"
            )
        if any(v not in (0, 1, 2, 3) for v in self.vmpl) or len(set(self.vmpl)) != len(self.vmpl):
            raise ValueError("vmpl lists distinct VMPLs 0-3")
        return self

    @property
    def enforce_tcb_upto_date(self) -> bool:
        """AMD publishes no TCB status to enforce: ``minimum_tcb`` judges the TCB instead."""
        return False


class SnpSection(Strict):
    attributes: SnpAttributes


def _tcb_clauses(c: Clauses, minimum: SnpMinimumTcb) -> None:
    tcb = c.claims.get("tcb")
    reported = tcb.get("reported") if isinstance(tcb, Mapping) else None
    if not isinstance(reported, Mapping):
        c.reasons.append(Reason.plain("the report's TCB (claims.tcb.reported) is missing", "minimum_tcb"))
        return
    for key, label in _TCB_COMPONENTS:
        want = getattr(minimum, key)
        if want is None:
            continue
        have = reported.get(key)
        if key == "fmc" and have is None:
            c.notes.append(f"minimum_tcb.fmc not checked: the {c.claims.get('product')} TCB has no FMC SPL")
            continue
        check = f"minimum_tcb.{key}"
        if isinstance(have, bool) or not isinstance(have, int):
            c.reasons.append(Reason.plain(f"the report's {label} SPL is missing", check))
        elif have < want:
            said = f"{label} SPL {have} in REPORTED_TCB is below the policy minimum"
            c.reasons.append(
                Reason(
                    check=check, text=f"{said} {want}", public=said, presented=str(have), expected=str(want)
                )
            )


def _policy_bit_clauses(c: Clauses, wanted: SnpGuestPolicy) -> None:
    bits = c.claims.get("policy")
    for key, abi_name in _POLICY_BITS:
        want = getattr(wanted, key)
        if want is None:
            continue
        have = bits.get(key) if isinstance(bits, Mapping) else None
        check = f"guest_policy.{key}"
        if not isinstance(have, bool):
            c.reasons.append(
                Reason.plain(f"the guest POLICY bit {abi_name} is missing from the claims", check)
            )
        elif have != want:
            state = "set" if have else "clear"
            needed = "requires it set" if want else "forbids it"
            c.reasons.append(
                Reason(
                    check=check,
                    text=f"guest POLICY.{abi_name} is {state} and the policy {needed} "
                    f"(snp.attributes.guest_policy.{key} is {str(want).lower()})",
                    public=f"guest POLICY.{abi_name} is {state}, which the policy does not allow",
                    presented=state,
                    expected="set" if want else "clear",
                )
            )


def _evaluate(c: Clauses, section: SnpSection) -> None:
    a = section.attributes
    c.hex_any_of("measurement", "measurement", a.measurement)
    c.hex_any_of("host_data", "host_data", a.host_data)
    c.hex_any_of("id_key_digest", "id_key_digest", a.id_key_digest)
    c.hex_any_of("author_key_digest", "author_key_digest", a.author_key_digest)
    c.hex_any_of("family_id", "family_id", a.family_id)
    c.hex_any_of("image_id", "image_id", a.image_id)
    c.minimum("guest_svn", "guest_svn", a.guest_svn)
    c.int_any_of("vmpl", "vmpl", a.vmpl)
    _policy_bit_clauses(c, a.guest_policy)
    if a.minimum_tcb is not None:
        _tcb_clauses(c, a.minimum_tcb)


SECTION = PolicySection(
    tee="snp",
    model=SnpSection,
    subject="guest",
    debug_flag="POLICY.DEBUG",
    vendor="AMD",
    evaluate=_evaluate,
    no_tcb_status_note="AMD publishes no TCB status; snp.attributes.minimum_tcb sets the minimum SPLs",
)
