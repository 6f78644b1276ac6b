"""Dry runs of a policy: ``keybroker policy test`` and the console's *Test this policy*.

One path for both, so that they cannot disagree: :func:`load_policy` reads the policy text (SecL
JSON through the API's strict JSON reader and model, or a Rego module through
:func:`keybroker.appraisal.rego.compile_policy`, the check ``/kbs/v0/resource-policy`` runs when a
policy is stored), and :meth:`TrialPolicy.evaluate` evaluates it on an appraisal input document
with the same function a release does (:func:`keybroker.appraisal.secl.evaluate_input`,
:func:`keybroker.appraisal.rego.evaluate`). The input document comes from evidence verified now
(:func:`keybroker.appraisal.input.appraisal_input`) or from a recorded attempt; either way it is the
document a release decides on. Nothing is stored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import ValidationError

from keybroker import strictjson
from keybroker.appraisal import rego, secl
from keybroker.appraisal.decision import Decision
from keybroker.appraisal.policy import TransferPolicyBody
from keybroker.errors import InvalidInput

__all__ = ["LANGUAGES", "Language", "TrialPolicy", "load_policy", "parse_secl", "validation_errors"]

Language = Literal["secl", "rego"]
#: The policy languages, as the console names them.
LANGUAGES: Final[Mapping[Language, str]] = {"secl": "SecL JSON", "rego": "Rego"}


@dataclass(frozen=True)
class TrialPolicy:
    """A policy read and checked, ready to evaluate on input documents."""

    language: Language
    policy_id: str
    _decide: Callable[[Mapping[str, Any]], Decision]

    def evaluate(self, doc: Mapping[str, Any]) -> Decision:
        """The decision on ``doc`` with every reason (the full form, as the audit log has it)."""
        return self._decide(doc)


def validation_errors(exc: ValidationError) -> list[str]:
    """A model's validation errors as the API words them: ``field: message``."""
    out = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err.get("loc", ())) or "body"
        msg = (
            "unknown field" if err.get("type") == "extra_forbidden" else str(err.get("msg", "invalid value"))
        )
        out.append(f"{field}: {msg.removeprefix('Value error, ')}")
    return out


def parse_secl(text: str) -> TransferPolicyBody:
    """A SecL policy's JSON text read by the API's strict JSON reader and checked by the API's model.
    :class:`InvalidInput` (field ``policy``) lists every problem in ``errors``."""
    try:
        data = strictjson.loads(text.encode("utf-8", errors="surrogatepass"))
    except InvalidInput as exc:
        raise InvalidInput(
            f"the policy is not valid JSON: {exc.detail}", field="policy", errors=[exc.detail]
        ) from None
    try:
        return TransferPolicyBody.model_validate(data)
    except ValidationError as exc:
        errors = validation_errors(exc)
        raise InvalidInput(errors[0], field="policy", errors=errors) from None


def load_policy(text: str, *, language: Language, policy_id: str) -> TrialPolicy:
    """Read ``text`` as a policy in ``language``; :class:`InvalidInput` says what is wrong (a Rego
    syntax error with its line and column, as ``/kbs/v0/resource-policy`` answers)."""
    if language == "rego":
        compiled = rego.compile_policy(text, policy_id=policy_id)
        return TrialPolicy("rego", policy_id, lambda doc: rego.evaluate(compiled, doc))
    if language == "secl":
        body = parse_secl(text)
        return TrialPolicy("secl", policy_id, lambda doc: secl.evaluate_input(body, doc, policy_id=policy_id))
    raise InvalidInput(f"policy language {language!r}: secl or rego", field="language")
