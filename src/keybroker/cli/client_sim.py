"""The dev TEE simulator as an evidence provider of ``keybroker-client`` (``--tee sim-tdx|sim-sgx``).

NOT FOR PRODUCTION: real-format quotes signed by a dev PKI (``keybroker.tee.sim``), which verify only
where that dev root is trusted (``keybroker serve --dev``). It lives here, not in ``keybroker.client``,
because the signing is server code: the workload library imports only ``keybroker.wire``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from keybroker.client import evidence as ev
from keybroker.errors import InvalidInput
from keybroker.tee.sim import DevPki, sgx_quote, tdx_quote

__all__ = ["Simulator"]


class Simulator:
    """Real-format quotes signed by a dev PKI (NOT FOR PRODUCTION)."""

    def __init__(
        self, tee: Literal["sgx", "tdx"], dev_pki: Path, fields: Mapping[str, str] | None = None
    ) -> None:
        self._tee: Literal["sgx", "tdx"] = tee
        self._fields = ev.parse_sim_fields(tee, fields or {})
        try:
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

    def evidence(self, report_data: bytes) -> ev.Evidence:
        ev.check_report_data(report_data)
        if self._tee == "tdx":
            quote = tdx_quote(self._pki, report_data=report_data, **self._fields)
        else:
            quote = sgx_quote(self._pki, report_data=report_data, **self._fields)
        return ev.Evidence(self._tee, quote, self.source, simulated=True)
