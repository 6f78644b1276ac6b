"""The TEEs this broker supports: one registration each, the one list every entry point reads.

A registration ties a TEE's verifier (a ``keybroker.tee.verifier.TeeVerifier`` built from the
trust the settings give, ``keybroker.tee.trust.EvidenceTrust``) to its transfer-policy
section (``keybroker.appraisal.sections``). From this list come: the verifier the server and the
CLI build (:meth:`TeeRegistry.verifier`), the transfer policy's sections and ``attestation_type``
values, ``/kbs/v0``'s and ``/attestation/v1``'s ``tee`` values, the EARs accepted, and the
default policies' per-TEE findings.

Adding a TEE: its package under ``keybroker/tee/``, its section under ``appraisal/sections/``,
and one :class:`TeeRegistration` below (``docs/architecture.md``, "Adding a TEE").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from keybroker.appraisal.section import PolicySection
from keybroker.appraisal.sections import azure, sgx, snp, tdx, tpm
from keybroker.tee.azure.plugin import AzureVtpmVerifier
from keybroker.tee.dcap.plugin import DCAP_TCB_MEMBERS, DcapVerifier
from keybroker.tee.snp.plugin import SnpVerifier
from keybroker.tee.tpm.plugin import TpmVerifier
from keybroker.tee.trust import EvidenceTrust
from keybroker.tee.verifier import TeeVerifier, Verifier

__all__ = ["REGISTRY", "TeeRegistration", "TeeRegistry"]


@dataclass(frozen=True)
class TeeRegistration:
    """One TEE: its name, its policy section, the ``tcb`` members its results carry besides
    ``status`` and ``advisory_ids``, and how its verifier is built from the configured trust."""

    name: str
    section: PolicySection[Any]
    tcb_members: tuple[str, ...]
    verifier: Callable[[EvidenceTrust], TeeVerifier[Any, Any]]

    def __post_init__(self) -> None:
        if self.section.tee != self.name:
            raise ValueError(f"TEE {self.name!r} registered with the {self.section.tee!r} policy section")

    @property
    def attestation_type(self) -> str:
        """``Attestation-Type`` and the policy's ``attestation_type`` value: the name upper-cased."""
        return self.name.upper()


class TeeRegistry:
    def __init__(self, *tees: TeeRegistration) -> None:
        self._tees = {t.name: t for t in tees}
        if len(self._tees) != len(tees):
            raise ValueError("a TEE is registered twice")
        self.names: tuple[str, ...] = tuple(self._tees)
        self.attestation_types: tuple[str, ...] = tuple(t.attestation_type for t in tees)

    def __iter__(self) -> Iterator[TeeRegistration]:
        return iter(self._tees.values())

    def get(self, name: object) -> TeeRegistration | None:
        return self._tees.get(name) if isinstance(name, str) else None

    def listing(self) -> str:
        """The attestation types for messages: "SGX or TDX", "SGX, TDX or SNP"."""
        types = self.attestation_types
        return types[0] if len(types) == 1 else f"{', '.join(types[:-1])} or {types[-1]}"

    def verifier(
        self, trust: EvidenceTrust, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> Verifier:
        """The verifier of every registered TEE, each with ``trust``."""
        plugins = []
        for tee in self:
            plugin = tee.verifier(trust)
            if plugin.name != tee.name:
                raise ValueError(f"TEE {tee.name!r} registered with a verifier of {plugin.name!r}")
            plugins.append(plugin)
        return Verifier(plugins, clock=clock)


def _snp_verifier(t: EvidenceTrust) -> SnpVerifier:
    """One SEV-SNP verifier shape for ``snp`` and ``az-snp-vtpm``: the same sources and CRL rule."""
    return SnpVerifier(t.dev_roots, t.snp_endorsements, crl_source=t.snp_crls, require_crl=t.snp_require_crl)


REGISTRY = TeeRegistry(
    TeeRegistration(
        "sgx", sgx.SECTION, DCAP_TCB_MEMBERS, lambda t: DcapVerifier("sgx", t.collateral, t.dev_roots)
    ),
    TeeRegistration(
        "tdx", tdx.SECTION, DCAP_TCB_MEMBERS, lambda t: DcapVerifier("tdx", t.collateral, t.dev_roots)
    ),
    TeeRegistration("snp", snp.SECTION, (), lambda t: _snp_verifier(t)),
    TeeRegistration("tpm", tpm.SECTION, (), lambda t: TpmVerifier(t.tpm)),
    TeeRegistration(
        "az-snp-vtpm",
        azure.AZ_SNP_VTPM,
        (),
        lambda t: AzureVtpmVerifier("az-snp-vtpm", _snp_verifier(t), tpm=t.tpm),
    ),
    TeeRegistration(
        "az-tdx-vtpm",
        azure.AZ_TDX_VTPM,
        DCAP_TCB_MEMBERS,
        lambda t: AzureVtpmVerifier("az-tdx-vtpm", DcapVerifier("tdx", t.collateral, t.dev_roots), tpm=t.tpm),
    ),
)
