"""Which attestation keys a TPM verifier trusts, and what it remembers of each.

An AK is trusted in one of three ways, named in the claims (``ak.trust``):

* ``certificate``: its certificate chains to a configured AK root store (one per vendor, e.g. GCE's
  vTPM AK CA; ``tpm.ak_roots``);
* ``enrolled``: it was enrolled through its TPM's EK (the EK certificate chained to a configured
  manufacturer root, the TPM proved with ``TPM2_ActivateCredential`` that it holds both keys) and an
  administrator approved it (:class:`AkRegistry`, the database behind it);
* ``given``: the operator gave it out of band (``keybroker evidence verify --ak``), never on the
  server.

The registry also remembers each AK's latest clock (:meth:`AkRegistry.observe`), so that a quote
whose reset or restart count or clock went back is a claim policy denies by default.

Pure: the registry is a protocol, implemented over the database by ``keybroker.tpmaks``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal, Protocol

from cryptography import x509

__all__ = [
    "AkRegistry",
    "AkStatus",
    "ClockReading",
    "EkRoot",
    "EnrolledAk",
    "ReadOnlyAks",
    "TpmTrust",
    "dry_run_trust",
]

AkStatus = Literal["pending", "approved", "revoked"]
#: Whose root the EK certificate chained to at enrolment: a TPM manufacturer's, or (``--dev``
#: only) a dev root such as swtpm's local CA.
EkRoot = Literal["manufacturer", "dev"]


@dataclass(frozen=True, slots=True)
class EnrolledAk:
    """An AK enrolled through its EK: what the registry holds of it."""

    name: bytes
    #: The AK's TPMT_PUBLIC (its Name is nameAlg || H(this)).
    public: bytes
    #: The TPMT_PUBLIC of the EK it was enrolled through, the AK's parent (a quote's
    #: qualifiedSigner is checked against it: ``plugin``).
    ek_public: bytes
    status: AkStatus
    ek_root: EkRoot
    #: The EK certificate's issuer and the SHA-256 of the root its chain ended at.
    ek_issuer: str
    ek_root_sha256: str
    enrolled_by: str
    enrolled_at: datetime
    approved_by: str | None
    revoked_by: str | None
    label: str | None


@dataclass(frozen=True, slots=True)
class ClockReading:
    """A quote's TPMS_CLOCK_INFO: the TPM's clock (ms), reset and restart counts."""

    clock: int
    reset_count: int
    restart_count: int

    def to_dict(self) -> dict[str, int]:
        return {"clock": self.clock, "reset_count": self.reset_count, "restart_count": self.restart_count}


class AkRegistry(Protocol):
    """The enrolled AKs and the latest clock seen per AK."""

    def enrolled(self, name: bytes) -> EnrolledAk | None:
        """The AK enrolled under ``name`` (any status), or None."""
        ...

    def revoked(self, ak: str) -> EnrolledAk | None:
        """A revoked AK whose key is ``ak`` (its SPKI's SHA-256), under whatever Name it was
        enrolled, or None: a revocation is of the key, which a certificate may also vouch for under
        another public area (another Name)."""
        ...

    def observe(self, ak: str, reading: ClockReading) -> ClockReading | None:
        """The latest reading recorded for ``ak`` (its SPKI's SHA-256) before this call, None for
        its first; ``reading`` becomes the latest unless it goes back (reset count, then restart
        count in the same reset, then clock in the same boot), so a regression stays visible."""
        ...


@dataclass(frozen=True, slots=True)
class TpmTrust:
    """``ak_roots``: per vendor, the CA certificates an AK certificate may chain to (self-signed ones
    are the trust anchors, the others intermediates). ``registry``: the enrolled AKs (None: none,
    and no clock history). ``dev``: AKs enrolled through a dev EK root are trusted (their evidence
    is simulated). ``ak_given``: the AK in the evidence is the operator's own input and trusted as
    given (``keybroker evidence verify``; never the server)."""

    ak_roots: Mapping[str, tuple[x509.Certificate, ...]] = field(default_factory=dict)
    registry: AkRegistry | None = None
    dev: bool = False
    ak_given: bool = False


class ReadOnlyAks:
    """An :class:`AkRegistry` for dry runs: the enrolled AKs of ``registry``, and no clock recorded
    (a dry run changes nothing, so its quote's clock is compared with nothing either)."""

    def __init__(self, registry: AkRegistry) -> None:
        self._registry = registry

    def enrolled(self, name: bytes) -> EnrolledAk | None:
        return self._registry.enrolled(name)

    def revoked(self, ak: str) -> EnrolledAk | None:
        return self._registry.revoked(ak)

    def observe(self, ak: str, reading: ClockReading) -> ClockReading | None:
        return None


def dry_run_trust(trust: TpmTrust, registry: AkRegistry | None) -> TpmTrust:
    """The TPM trust of a policy's dry run (``keybroker policy test``, the console's *Test this
    policy*): an AK as enrolled in ``registry`` (read only) when it is, else as given, which its
    claims say (``ak.trust.mode`` "given") and the tpm section denies unless the policy lists it.
    Never the trust of a release."""
    return replace(trust, registry=None if registry is None else ReadOnlyAks(registry), ak_given=True)
