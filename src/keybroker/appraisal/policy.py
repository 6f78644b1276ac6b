"""Key-transfer policies in the Intel SecL KBS v5 form (validated; evaluation is in ``appraisal.secl``).

A policy names the attestation types it accepts and has one section per type, named after the TEE
(``sgx``, ``tdx``: ``appraisal.sections``; the sections and types come from
``appraisal.registry``), or ``NONE`` and a ``none`` section (release without attestation).

Differences from SecL, on purpose: ``isvsvn``/``seamsvn`` are minimums (SecL's docs say so, its
code checked equality); hex values are normalized to lower case; ``allow_debug`` and
``allow_simulated`` default to false so that debug TEEs and simulator evidence are denied unless a
policy says otherwise; ``client_permissions`` may also be given for TDX.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

from pydantic import BaseModel, Field, StrictBool, ValidationError, create_model, model_validator

from keybroker import stages
from keybroker.appraisal.fields import Permission, Strict
from keybroker.appraisal.registry import REGISTRY, TeeRegistry
from keybroker.appraisal.sections.sgx import SgxAttributes, SgxSection
from keybroker.appraisal.sections.tdx import TdxAttributes, TdxSection
from keybroker.errors import Forbidden

__all__ = [
    "DEFAULT_POLICY_NAME",
    "NoneAttributes",
    "NoneSection",
    "SgxAttributes",
    "SgxSection",
    "TdxAttributes",
    "TdxSection",
    "TransferPolicyBase",
    "TransferPolicyBody",
    "stored_policy",
    "transfer_policy_model",
]

DEFAULT_POLICY_NAME = "urn:intel:trustedcomputing:key-transfer-policy:require-trust-or-authorization"


class NoneAttributes(Strict):
    #: Required and non-empty: without attestation, the caller's token is the only credential.
    client_permissions: list[Permission] = Field(min_length=1)


class NoneSection(Strict):
    attributes: NoneAttributes


class TransferPolicyBase(Strict):
    """The checks of a transfer policy; :data:`TransferPolicyBody` is the model, with its members
    in this order: ``attestation_type``, one section per registered TEE, ``none``, ``allow_debug``,
    ``allow_simulated`` (built by :func:`transfer_policy_model` for a registry)."""

    #: The TEEs whose sections the model has.
    registry: ClassVar[TeeRegistry] = REGISTRY

    if TYPE_CHECKING:
        attestation_type: list[str]
        #: The seed's "good" tier: release to an authenticated client *without attestation*.
        #: Explicit and warned; never the default ("best": attestation required).
        none: NoneSection | None
        allow_debug: bool
        allow_simulated: bool

    def section(self, tee: str) -> BaseModel | None:
        """The policy's section for ``tee`` (None: the policy has none)."""
        value = getattr(self, tee, None) if self.registry.get(tee) is not None else None
        return value if isinstance(value, BaseModel) else None

    @model_validator(mode="after")
    def _sections_match_types(self) -> TransferPolicyBase:
        types = set(self.attestation_type)
        if len(types) != len(self.attestation_type):
            raise ValueError("attestation_type lists a type twice")
        for tee in self.registry:
            if tee.attestation_type in types and self.section(tee.name) is None:
                raise ValueError(
                    f"attestation_type has {tee.attestation_type} but the policy has no {tee.name} section"
                )
        for tee in self.registry:
            if self.section(tee.name) is not None and tee.attestation_type not in types:
                raise ValueError(
                    f"the policy has {_a(tee.name)} {tee.name} section but attestation_type lacks "
                    f"{tee.attestation_type}"
                )
        if "NONE" in types:
            if len(types) != 1:
                raise ValueError("attestation_type NONE (no attestation) cannot be combined with TEE types")
            if self.none is None:
                raise ValueError("attestation_type NONE needs a none section with client_permissions")
        elif self.none is not None:
            raise ValueError("the policy has a none section but attestation_type lacks NONE")
        return self

    @property
    def without_attestation(self) -> bool:
        return self.attestation_type == ["NONE"]


def _a(word: str) -> str:
    return "an" if word[0] in "aeiosx" else "a"


def transfer_policy_model(registry: TeeRegistry) -> type[TransferPolicyBase]:
    """The transfer policy model for the TEEs of ``registry``: ``attestation_type`` lists their
    types (and ``NONE``), and each has its section, named after it."""
    types: Any = Literal[(*registry.attestation_types, "NONE")]
    fields: dict[str, Any] = {
        "attestation_type": (list[types], Field(min_length=1)),
        **{tee.name: (tee.section.model | None, None) for tee in registry},
        "none": (NoneSection | None, None),
        "allow_debug": (StrictBool, False),
        "allow_simulated": (StrictBool, False),
    }
    model = create_model(
        "TransferPolicyBody",
        __base__=TransferPolicyBase,
        __doc__="What an admin sends to ``POST /kbs/v1/key-transfer-policies``.",
        __module__=__name__,
        **fields,
    )
    model.registry = registry
    return model


if TYPE_CHECKING:
    TransferPolicyBody = TransferPolicyBase
else:
    TransferPolicyBody = transfer_policy_model(REGISTRY)

#: Stored policies parsed, by their content (:func:`stored_policy`); the least recently used go first.
_PARSED: OrderedDict[str, TransferPolicyBase] = OrderedDict()
_PARSED_MAX: Final = 256
_PARSED_LOCK = threading.Lock()


@stages.timed("policy")
def stored_policy(body: Mapping[str, Any], *, policy_id: str) -> TransferPolicyBase:
    """A transfer policy read back from the database (``TransferPolicyBody.model_validate(body)``),
    parsed once per content: every release reads its key's policy, and validating the model is most
    of the cost.

    The cache is keyed by the body itself (its JSON text, keys sorted), so a policy that changes is a
    new key and is parsed again; nothing needs to be told. The model returned is shared between
    requests: read it, never change it.

    A policy stored under an older, looser model that no longer validates (a section whose rules were
    tightened) denies with ``Forbidden`` naming the first error: it is never evaluated loosely, it is
    not a server error, and it is not kept (each call refuses it again).
    """
    key = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    with _PARSED_LOCK:
        policy = _PARSED.get(key)
        if policy is not None:
            _PARSED.move_to_end(key)
            return policy
    try:
        policy = TransferPolicyBody.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the policy"
        said = f"the transfer policy no longer validates ({where}: {first['msg']})"
        raise Forbidden(
            f"{said}: an administrator replaces transfer policy {policy_id}", reasons=[said]
        ) from None
    with _PARSED_LOCK:
        _PARSED[key] = policy
        while len(_PARSED) > _PARSED_MAX:
            _PARSED.popitem(last=False)
    return policy
