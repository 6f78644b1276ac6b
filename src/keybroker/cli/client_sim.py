"""The dev TEE simulator as an evidence provider of ``keybroker-client`` (``--tee sim-tdx|sim-sgx|sim-snp``).

NOT FOR PRODUCTION: real-format quotes and SEV-SNP reports signed by a dev PKI (``keybroker.tee.sim``),
which verify only where that dev root is trusted (``keybroker serve --dev``). It lives here, not in
``keybroker.client``, because the signing is server code: the workload library imports only
``keybroker.wire``.

``--dev-pki DIR`` is the broker's dev PKI (``<data-dir>/dev-pki``); the SEV-SNP one is ``DIR/snp``
(or DIR itself when it is an SEV-SNP dev PKI). A simulated SEV-SNP report comes with its certificate
table, as configfs-tsm's ``auxblob`` does on a guest.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from keybroker.client import evidence as ev
from keybroker.errors import InvalidInput
from keybroker.tee.sim import DevPki, sgx_quote, tdx_quote
from keybroker.tee.sim.snp import DEFAULT_POLICY, SnpDevPki, snp_report

__all__ = ["Simulator"]

#: Guest POLICY bits the SNP simulator's boolean fields set.
_SNP_POLICY_BITS = {"debug": 1 << 19, "migrate_ma": 1 << 18}


def _snp_pki(dev_pki: Path) -> SnpDevPki:
    nested = dev_pki / "snp"
    return SnpDevPki.load(nested if (nested / "snp-pki.json").exists() else dev_pki)


class Simulator:
    """Real-format evidence signed by a dev PKI (NOT FOR PRODUCTION)."""

    def __init__(self, tee: ev.SimTee, dev_pki: Path, fields: Mapping[str, str] | None = None) -> None:
        self._tee: ev.SimTee = tee
        self._fields = ev.parse_sim_fields(tee, fields or {})
        self._pki: DevPki | None = None
        self._snp: SnpDevPki | None = None
        try:
            if tee == "snp":
                self._snp = _snp_pki(dev_pki)
            else:
                self._pki = DevPki.load(dev_pki)
        except (OSError, ValueError, KeyError) as exc:
            raise InvalidInput(
                f"--dev-pki {dev_pki} is not a readable dev PKI: {exc}", field="dev_pki"
            ) from None
        self._dir = dev_pki

    @property
    def tee(self) -> ev.TeeName:
        return self._tee

    @property
    def source(self) -> str:
        return f"simulator sim-{self._tee} (dev PKI {self._dir}; NOT FOR PRODUCTION)"

    def _snp_kwargs(self) -> dict[str, Any]:
        kwargs = {k: v for k, v in self._fields.items() if k not in _SNP_POLICY_BITS}
        policy = DEFAULT_POLICY
        for name, bit in _SNP_POLICY_BITS.items():
            if self._fields.get(name):
                policy |= bit
        kwargs["policy"] = policy
        if kwargs.get("signing_key") == "vlek":
            kwargs["mask_chip_id"] = True  # a VLEK is not chip-bound: report as a cloud guest does
        return kwargs

    def evidence(self, report_data: bytes) -> ev.Evidence:
        ev.check_report_data(report_data)
        if self._snp is not None:
            made = snp_report(self._snp, report_data=report_data, **self._snp_kwargs())
            return ev.Evidence("snp", made.report, self.source, aux=made.cert_table, simulated=True)
        assert self._pki is not None
        if self._tee == "tdx":
            quote = tdx_quote(self._pki, report_data=report_data, **self._fields)
        else:
            quote = sgx_quote(self._pki, report_data=report_data, **self._fields)
        return ev.Evidence(self._tee, quote, self.source, simulated=True)
