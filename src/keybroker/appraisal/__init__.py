"""Appraisal: policies over verified claims, ending in an explained :class:`Decision`.

Pure: no HTTP, no database, no clock. Policy languages: the Intel SecL v5 key-transfer policy
(:mod:`.secl`) and Rego (:mod:`.rego`), both over one input document (:mod:`.input`); built-in
defaults in :mod:`.defaults`. Documented in ``docs/policies.md``.
"""

from __future__ import annotations

from keybroker.appraisal.decision import Decision, EarStatus, TrustVector, decide
from keybroker.appraisal.defaults import default_attestation_policy, default_resource_policy
from keybroker.appraisal.input import AppraisalInput, appraisal_input

__all__ = [
    "AppraisalInput",
    "Decision",
    "EarStatus",
    "TrustVector",
    "appraisal_input",
    "decide",
    "default_attestation_policy",
    "default_resource_policy",
]
