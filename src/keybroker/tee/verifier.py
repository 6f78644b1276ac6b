"""One verifier for every TEE: a plugin per TEE (parse -> verify -> claims), one result, dispatch by TEE.

A TEE plugin (:class:`TeeVerifier`) turns evidence bytes into a :class:`VerifiedEvidence` in three
steps: ``parse`` (structure only, trusts nothing), ``verify`` (signatures, chains to pinned roots,
revocation, freshness, at an injected time, with the endorsements its trust sources give) and
``claims`` (the normalized result). :class:`Verifier` holds the plugins the broker was built with
(``keybroker.appraisal.registry``), dispatches by TEE name and checks the report data binding, so
that every entry point (``/kbs/v1``, ``/kbs/v0``, ``/attestation/v1``, the CLI) verifies the same way.

What is expected in the report data is explicit: :data:`NO_REPORT_DATA` (never a forgotten None),
exact bytes, or a protocol's binding (:class:`KbsV1Binding`, :class:`KbsV0Binding`) that the plugin
turns into its TEE's report data (64 bytes of REPORTDATA for SGX/TDX/SEV-SNP, a 32- or 48-byte
``extraData`` for a TPM quote).

Pure: no HTTP, no database; time and trust are injected.
"""

from __future__ import annotations

import base64
import binascii
import copy
import enum
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Generic, Protocol, TypeVar

from keybroker import stages
from keybroker.errors import InvalidInput, VerificationError
from keybroker.wire import binding

__all__ = [
    "NO_REPORT_DATA",
    "NO_VENDOR_STATUS",
    "Binding",
    "ExpectedReportData",
    "KbsV0Binding",
    "KbsV1Binding",
    "TeeResult",
    "TeeVerifier",
    "VerifiedEvidence",
    "Verifier",
    "evidence_readings",
    "report_data_64",
]

#: ``tcb.status`` of evidence whose vendor publishes no TCB status to compare it with (SEV-SNP, TPMs,
#: the Azure vTPMs on SEV-SNP): never UpToDate; the TEE's section judges the TCB by its own clauses.
NO_VENDOR_STATUS: Final = "NoVendorStatus"


class _NoReportData(enum.Enum):
    NO_REPORT_DATA = "no report data expected"


NO_REPORT_DATA = _NoReportData.NO_REPORT_DATA


@dataclass(frozen=True, slots=True)
class KbsV1Binding:
    """``/kbs/v1`` and ``/attestation/v1``: the challenge nonce's bytes and the user data (the
    workload key's DER SubjectPublicKeyInfo)."""

    nonce: bytes
    user_data: bytes


@dataclass(frozen=True, slots=True)
class KbsV0Binding:
    """``/kbs/v0``: the session's nonce, the TEE's public key (JWK), the additional evidence (the
    JSON text, possibly empty) and the hash the session negotiated."""

    nonce: str
    tee_pubkey: Mapping[str, Any]
    additional_evidence: str
    hash_alg: str


Binding = KbsV1Binding | KbsV0Binding


def report_data_64(bound: Binding) -> bytes:
    """A 64-byte REPORTDATA / REPORT_DATA (SGX, TDX, SEV-SNP) for a protocol binding: SHA-512(nonce ||
    SPKI) on ``/kbs/v1``, the ``/kbs/v0`` hash zero-padded."""
    if isinstance(bound, KbsV1Binding):
        return binding.v1_report_data(bound.nonce, bound.user_data)
    return binding.v0_report_data(
        bound.nonce, dict(bound.tee_pubkey), bound.additional_evidence, bound.hash_alg
    )


#: Exact report data bytes, a protocol's binding, or :data:`NO_REPORT_DATA`.
ExpectedReportData = bytes | Binding | _NoReportData


class TeeResult(Protocol):
    """What a plugin's own verified result offers beyond :class:`VerifiedEvidence`'s common fields
    (DCAP: ``tee.dcap.verify.VerifiedQuote``)."""

    def report(self) -> dict[str, Any]:
        """Every fact of the verification (``/attestation/v1/verify``, ``evidence verify --json``);
        JSON values, except times, which are aware ``datetime`` objects (each caller formats them)."""
        ...

    def summary(self) -> list[tuple[str, str]]:
        """The verification in a few labelled lines, for people (``keybroker evidence verify``)."""
        ...

    def ear_claims(self) -> dict[str, Any]:
        """The EAR's flat per-TEE claims (for SGX/TDX Intel Trust Authority's names)."""
        ...


_IMMUTABLE: Final = frozenset({str, int, float, bool, type(None), bytes})


def _json_copy(value: Any) -> Any:
    """``copy.deepcopy`` for the JSON-shaped claims (dicts, lists and scalars): the same copy at a
    fraction of its cost (no memo); anything else is handed to ``copy.deepcopy``."""
    kind = type(value)
    if kind in _IMMUTABLE:
        return value
    if kind is dict:
        return {k: _json_copy(v) for k, v in value.items()}
    if kind is list:
        return [_json_copy(v) for v in value]
    if kind is tuple:
        return tuple(_json_copy(v) for v in value)
    return copy.deepcopy(value)


@dataclass(frozen=True, slots=True)
class VerifiedEvidence:
    """Evidence that verified: what appraisal, attestation results, release, audit and the CLI use.

    ``claims`` are the TEE's normalized claims (JSON, hex lower case; ``claims["tee"] == tee``);
    ``tcb`` is ``{"status", "advisory_ids", ...}`` with the TEE's own string members (DCAP:
    ``collateral_expiry``, ``tcb_date``); ``sim``: the evidence chains to a configured dev root,
    not to the vendor's. ``evidence_sha256`` is over the canonical evidence (one report, one
    digest). ``detail`` is the plugin's own result.
    """

    tee: str
    claims: Mapping[str, Any]
    tcb: Mapping[str, Any]
    report_data: bytes
    sim: bool
    evidence_sha256: str
    checks: tuple[str, ...]
    detail: TeeResult

    @property
    def status(self) -> str:
        return str(self.tcb["status"])

    @property
    def advisory_ids(self) -> tuple[str, ...]:
        return tuple(str(a) for a in self.tcb["advisory_ids"])

    def annotated_evidence(self, runtime_data: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What an attestation result (EAR) carries of the evidence, and what the appraisal input
        is built from (``keybroker.appraisal.input``) in both passport and background-check modes."""
        evidence: dict[str, Any] = {
            "tee": self.tee,
            # copies: each caller (the EAR, the input document) may hold or change its own
            "claims": _json_copy(dict(self.claims)),
            "tcb": _json_copy(dict(self.tcb)),
            "sim": self.sim,
            "report_data": self.report_data.hex(),
        }
        if runtime_data is not None:
            evidence["runtime_data_claims"] = dict(runtime_data)
        return evidence

    def report(self) -> dict[str, Any]:
        return self.detail.report()

    def summary(self) -> list[tuple[str, str]]:
        return self.detail.summary()

    def ear_claims(self) -> dict[str, Any]:
        return self.detail.ear_claims()


ParsedT = TypeVar("ParsedT")
VerifiedT = TypeVar("VerifiedT")


class TeeVerifier(Protocol, Generic[ParsedT, VerifiedT]):
    """One TEE's verifier, holding the trust it was built with (pinned vendor roots in its package,
    configured dev roots, its endorsement sources). ``name`` is the TEE's id: ``tee`` of the
    appraisal input, ``/kbs/v0``'s ``tee``, the lower-cased ``Attestation-Type``.

    Errors: ``EvidenceParseError`` (malformed; field and offset), ``VerificationError`` (``check``
    names the failed step), ``CollateralNotFound`` (no endorsements for this platform).
    """

    @property
    def name(self) -> str: ...

    @property
    def checks(self) -> tuple[str, ...]:
        """The named checks ``verify`` makes, in order (a failure's ``check`` is one of them)."""
        ...

    def recognizes(self, evidence: bytes) -> bool:
        """Whether ``evidence`` looks like this TEE's (a header check; trusts nothing)."""
        ...

    def parse(self, evidence: bytes) -> ParsedT:
        """Structure only: exact lengths, versions, must-be-zero ranges. Trusts nothing."""
        ...

    def verify(self, parsed: ParsedT, *, at: datetime, endorsements: object | None) -> VerifiedT:
        """Every check, at ``at``. ``endorsements``: the caller's (see :meth:`endorsements`), else
        the plugin's sources are asked (for what is valid at ``at``)."""
        ...

    def claims(self, verified: VerifiedT) -> VerifiedEvidence:
        """The normalized result of verified evidence."""
        ...

    def expected_report_data(self, binding: Binding) -> bytes:
        """The report data a protocol's binding requires in this TEE's evidence."""
        ...

    def evidence_sha256(self, evidence: bytes) -> str:
        """SHA-256 of the canonical form of (unverified) evidence, for the audit log; never fails."""
        ...

    def endorsements(self, text: str | bytes) -> object:
        """A caller's endorsements as JSON text (``/attestation/v1/verify``'s ``collateral``,
        ``evidence verify --collateral``), decoded and checked for form; ``CollateralError``
        naming what is wrong."""
        ...

    def kbs_v0_evidence(self, primary: Mapping[str, Any]) -> bytes:
        """The evidence in ``/kbs/v0``'s ``primary_evidence`` (Trustee's JSON for this TEE);
        ``InvalidInput`` naming the member."""
        ...


_HEX: Final = re.compile(rb"(?:0x)?([0-9A-Fa-f]+)")
_B64: Final = re.compile(rb"[A-Za-z0-9+/]+={0,2}|[A-Za-z0-9_-]+={0,2}")


def evidence_readings(data: bytes) -> list[bytes]:
    """``data`` as given, then one hex or base64 (standard or URL-safe) token decoded (surrounding
    whitespace allowed): the readings of evidence given as a file or pasted that
    :meth:`Verifier.detect` tries, in that order."""
    out = [data]
    text = data.strip()
    hex_match = _HEX.fullmatch(text)
    if hex_match and len(hex_match.group(1)) % 2 == 0:
        out.append(bytes.fromhex(hex_match.group(1).decode("ascii")))
    elif _B64.fullmatch(text) and len(text) % 4 in (0, 2, 3):
        padded = text + b"=" * (-len(text) % 4)
        try:
            if b"-" in text or b"_" in text:
                out.append(base64.urlsafe_b64decode(padded))
            else:
                out.append(base64.b64decode(padded, validate=True))
        except binascii.Error:
            pass
    return out


class Verifier:
    """Dispatches evidence to the plugin of its TEE and checks the report data binding."""

    def __init__(
        self,
        plugins: Iterable[TeeVerifier[Any, Any]],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._plugins: dict[str, TeeVerifier[Any, Any]] = {}
        for plugin in plugins:
            if plugin.name in self._plugins:
                raise ValueError(f"two verifiers for TEE {plugin.name!r}")
            self._plugins[plugin.name] = plugin
        self._clock = clock

    @property
    def tees(self) -> tuple[str, ...]:
        """The TEEs this verifier verifies, in registration order."""
        return tuple(self._plugins)

    def plugin(self, tee: str) -> TeeVerifier[Any, Any]:
        found = self._plugins.get(tee)
        if found is None:
            raise InvalidInput(
                f"tee {tee!r} is not supported; use one of {', '.join(self._plugins)}", field="tee"
            )
        return found

    def detect(self, candidates: Sequence[bytes]) -> tuple[str, bytes] | None:
        """The first (TEE, evidence) among decodings of one input that a plugin recognizes."""
        for raw in candidates:
            for name, plugin in self._plugins.items():
                if plugin.recognizes(raw):
                    return name, raw
        return None

    @stages.timed("verify")
    def evidence_sha256(self, tee: str, evidence: bytes) -> str:
        """SHA-256 of the canonical evidence of ``tee`` (plain SHA-256 for an unknown TEE)."""
        plugin = self._plugins.get(tee)
        return hashlib.sha256(evidence).hexdigest() if plugin is None else plugin.evidence_sha256(evidence)

    @stages.timed("verify")
    def verify(
        self,
        tee: str,
        evidence: bytes,
        expected: ExpectedReportData,
        *,
        at: datetime | None = None,
        endorsements: object | None = None,
    ) -> VerifiedEvidence:
        """Verify ``evidence`` of ``tee`` at ``at`` (default now) and check its report data.

        Raises InvalidInput (unknown TEE), EvidenceParseError, VerificationError (``check`` names
        the failed step; ``report_data`` for a binding that does not match), CollateralNotFound.
        """
        plugin = self.plugin(tee)
        parsed = plugin.parse(evidence)
        verified = plugin.claims(plugin.verify(parsed, at=at or self._clock(), endorsements=endorsements))
        if verified.tee != tee:  # a plugin's own check should have caught it
            raise VerificationError(
                f"the evidence is {verified.tee.upper()} evidence, not {tee.upper()}", check="tee_type"
            )
        if expected is NO_REPORT_DATA:
            return verified
        want = expected if isinstance(expected, bytes) else plugin.expected_report_data(expected)
        if not hmac.compare_digest(verified.report_data, want):
            raise VerificationError(
                "the evidence's report data does not bind this nonce and public key", check="report_data"
            )
        return verified
