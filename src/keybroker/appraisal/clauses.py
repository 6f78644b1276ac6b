"""The clauses of a SecL-form policy: each compares a claim with the policy's expected values.

Every clause is checked and every failure reported (no early exit), each a :class:`Reason` whose
full text names the expected values and whose public text only the clause and the presented value.
Hex values are compared as bytes, so case never matters. Used by the transfer policy's evaluation
(``secl``) and by each TEE's policy section (``appraisal.sections``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from keybroker.appraisal.decision import Reason

__all__ = ["Clauses", "listing"]

#: How many expected values a reason lists before it abbreviates.
_LIST_LIMIT: Final = 4


def listing(values: Sequence[str]) -> str:
    n = len(values)
    shown = ", ".join(values[:_LIST_LIMIT])
    more = f", and {n - _LIST_LIMIT} more" if n > _LIST_LIMIT else ""
    return f"{n} value{'s' if n != 1 else ''}: {shown}{more}"


class Clauses:
    """Collects failed clauses (reasons) and non-fatal facts (notes) for one evaluation.

    Each reason is a :class:`Reason`: its full text names the policy's expected values, its
    public text only the clause and the presented value."""

    def __init__(self, doc: Mapping[str, Any], claims: Mapping[str, Any]) -> None:
        self.doc = doc
        self.claims = claims
        self.reasons: list[Reason] = []
        self.notes: list[str] = []
        self.measurement_failed = False

    def _mismatch(self, name: str, presented: str, public: str, expected: str, text: str) -> None:
        self.reasons.append(
            Reason(check=name, text=text, public=public, presented=presented, expected=expected)
        )
        self.measurement_failed = True

    def _hex(self, key: str, name: str) -> bytes | None:
        value = self.claims.get(key)
        try:
            if not isinstance(value, str):
                raise ValueError
            return bytes.fromhex(value)
        except ValueError:
            self.reasons.append(Reason.plain(f"{name}: claim {key} is missing or not hex", check=name))
            self.measurement_failed = True
            return None

    def _int(self, key: str, name: str) -> int | None:
        value = self.claims.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            self.reasons.append(Reason.plain(f"{name}: claim {key} is missing or not an integer", check=name))
            self.measurement_failed = True
            return None
        return value

    def hex_any_of(self, name: str, key: str, allowed: Sequence[str]) -> None:
        """The claim must equal one of ``allowed``; an empty list is not checked."""
        if not allowed:
            return
        actual = self._hex(key, name)
        if actual is None:
            return
        if actual not in {bytes.fromhex(v) for v in allowed}:
            said = f"{name} {actual.hex()} is not in the policy's list"
            expected = listing([v.lower() for v in allowed])
            self._mismatch(name, actual.hex(), said, expected, f"{said} ({expected})")

    def hex_exact(self, name: str, key: str, expected: str | None) -> None:
        if expected is None:
            return
        actual = self._hex(key, name)
        if actual is not None and actual != bytes.fromhex(expected):
            said = f"{name} {actual.hex()} differs from the policy's"
            self._mismatch(
                name, actual.hex(), f"{said} value", expected.lower(), f"{said} {expected.lower()}"
            )

    def int_any_of(self, name: str, key: str, allowed: Sequence[int]) -> None:
        if not allowed:
            return
        actual = self._int(key, name)
        if actual is not None and actual not in allowed:
            said = f"{name} {actual} is not in the policy's list"
            expected = listing([str(v) for v in allowed])
            self._mismatch(name, str(actual), said, expected, f"{said} ({expected})")

    def minimum(self, name: str, key: str, minimum: int | None) -> None:
        if minimum is None:
            return
        actual = self._int(key, name)
        if actual is not None and actual < minimum:
            said = f"{name} {actual} is below the policy minimum"
            self._mismatch(name, str(actual), said, str(minimum), f"{said} {minimum}")

    def fail(self, name: str, text: str, *, measurement: bool = True) -> None:
        """A failed clause whose text reveals nothing of the policy (a missing claim, a fact)."""
        self.reasons.append(Reason.plain(text, name))
        if measurement:
            self.measurement_failed = True

    def value_any_of(
        self, name: str, presented: object, allowed: Sequence[str], *, hex_values: bool = True
    ) -> None:
        """A claim the caller read (``presented``; not a string: missing) must be one of ``allowed``;
        an empty list is not checked. Hex values compare case-insensitively."""
        if not allowed:
            return
        if not isinstance(presented, str):
            self.fail(name, f"{name}: the claim is missing from the evidence")
            return

        def norm(v: str) -> str:
            return v.lower() if hex_values else v

        if norm(presented) not in {norm(v) for v in allowed}:
            shown = norm(presented) if hex_values else repr(presented)
            said = f"{name} {shown} is not in the policy's list"
            expected = listing([norm(v) if hex_values else repr(v) for v in allowed])
            self._mismatch(name, shown, said, expected, f"{said} ({expected})")

    def client_permissions(self, required: Sequence[str], presented: object) -> None:
        if not required:
            return
        check = "client_permissions"
        if presented is None:
            self.reasons.append(
                Reason(
                    check=check,
                    text=f"the policy requires client permissions [{', '.join(required)}] "
                    "but the request presented no token",
                    public="the policy requires client permissions but the request presented no token",
                    expected=", ".join(required),
                )
            )
            return
        if not isinstance(presented, list) or not all(isinstance(p, str) for p in presented):
            self.reasons.append(Reason.plain("client_permissions in the input document are malformed", check))
            return
        held = set(presented)
        shown = ", ".join(sorted(held))
        for permission in required:
            if permission not in held:
                self.reasons.append(
                    Reason(
                        check=check,
                        text=f"client permission {permission} is not in the caller's token",
                        public=f"the caller's token (client permissions [{shown}]) lacks one the policy requires",
                        presented=shown,
                        expected=permission,
                    )
                )

    def tcb(self, tcb: object, *, enforce: bool) -> None:
        status = tcb.get("status") if isinstance(tcb, Mapping) else None
        advisories = tcb.get("advisory_ids") if isinstance(tcb, Mapping) else None
        if not isinstance(status, str):
            self.reasons.append(Reason.plain("the TCB status is missing from the input document", "tcb"))
            return
        if status == "UpToDate":
            return
        suffix = ""
        if isinstance(advisories, list) and advisories:
            suffix = "; advisories " + ", ".join(str(a) for a in advisories)
        if enforce:
            self.reasons.append(
                Reason.plain(
                    f"TCB status {status} is not UpToDate (enforce_tcb_upto_date is true){suffix}", "tcb"
                )
            )
        else:
            self.notes.append(f"TCB status {status} allowed (enforce_tcb_upto_date is false){suffix}")

    def trust_authority_policy_ids(self, tee: str, ids: Sequence[str]) -> None:
        """Intel Trust Authority appraisal policies: keybroker cannot evaluate them, so any denies."""
        if not ids:
            return
        said = "name Trust Authority appraisal policies, which keybroker does not evaluate"
        listed = ", ".join(ids)
        self.reasons.append(
            Reason(
                check="policy_ids",
                text=f"the policy's {tee}.policy_ids [{listed}] {said}",
                public=f"the policy's {tee}.policy_ids {said}",
                expected=listed,
            )
        )
